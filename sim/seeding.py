"""A scripted community's history written straight into the store: replies, votes, 🔁 answers, corrections.

The trainer's tests and `bench/train.py` train on it, so the benchmark measures the data the tests check.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlmodel import Session

from store import crud

SUBJECTS = ["the cat", "a student", "my friend", "the teacher", "our bot", "the model", "everyone"]
TOPICS = ["the capital of france", "a short poem", "the weather", "good questions", "homework"]
RATERS = list(range(1001, 1011))  # ten people who vote
ASKERS = list(range(2001, 2006))


def question(i: int) -> str:
    """A distinct question per i (no two are near-duplicates for i < 169)."""
    things = [
        "apples",
        "bridges",
        "castles",
        "dragons",
        "engines",
        "forests",
        "glaciers",
        "harbors",
        "islands",
    ]
    things += ["jungles", "kettles", "lanterns", "meadows"]
    subject, topic = SUBJECTS[i % 7], TOPICS[(i // 7) % 5]
    near = f"{things[i % 13]} near {things[i // 13 % 13]}"
    return f"{i}: what does {subject} think about {topic}, and about {near}?"


def good_answer(i: int) -> str:
    return f"The capital of France is Paris. {SUBJECTS[i % 7].capitalize()} likes good questions."


def bad_answer(i: int) -> str:
    return "homework " * (3 + i % 4) + "again!"


def prompt(text: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "You are a tiny test assistant."},
        {"role": "user", "content": text},
    ]


@dataclass
class Community:
    """What `seed_community` put in the database, for tests to reason about."""

    liked: list[int] = field(default_factory=list)  # generation ids with a positive net vote
    disliked: list[int] = field(default_factory=list)
    pairs: int = 0  # prompts with a liked and a disliked (🔁) answer
    corrections: int = 0


def seed_community(
    session: Session,
    *,
    prompts: int = 24,
    start: int = 0,
    regenerate_every: int = 1,
    correct_every: int = 6,
    reverse: bool = False,
) -> Community:
    """Each prompt: a liked good answer; every `regenerate_every`-th also a 🔁 bad answer that is disliked.

    Votes are spread over ten raters (two per vote), so no one rater decides anything alone. `reverse`
    swaps which answer is liked (a community with deliberately bad taste).
    """
    community = Community()
    for i in range(start, start + prompts):
        asker = ASKERS[i % len(ASKERS)]
        good, bad = (bad_answer(i), good_answer(i)) if reverse else (good_answer(i), bad_answer(i))
        first = crud.record_generation(
            session=session, prompt=prompt(question(i)), completion=good, user_id=asker
        )
        assert first.id is not None
        for rater in (RATERS[i % 10], RATERS[(i + 3) % 10]):
            crud.record_feedback(session=session, generation_id=first.id, rater_id=rater, value=1)
        community.liked.append(first.id)
        if i % regenerate_every == 0:
            second = crud.record_generation(
                session=session,
                prompt=prompt(question(i)),
                completion=bad,
                user_id=asker,
                regenerates=first.id,
            )
            assert second.id is not None
            for rater in (RATERS[(i + 5) % 10], RATERS[(i + 7) % 10]):
                crud.record_feedback(session=session, generation_id=second.id, rater_id=rater, value=-1)
            community.disliked.append(second.id)
            community.pairs += 1
        if correct_every and i % correct_every == correct_every - 1:
            crud.record_correction(
                session=session, generation_id=first.id, author_id=RATERS[i % 10], content=good + " Indeed."
            )
            community.corrections += 1
    return community
