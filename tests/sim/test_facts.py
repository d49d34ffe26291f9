"""The facts taste: its data holds up (unique, no echoes, reworded exams) and its judge is strict."""

from __future__ import annotations

import logging
import re
import sqlite3
from pathlib import Path

import pytest

from sim import facts
from sim.community import read_prompts
from sim.facts import (
    SPLITS,
    Fact,
    Split,
    facts_corrector,
    facts_judge,
    load_facts,
    main,
    mentions,
    normalise,
    prompts_path,
    render_prompts,
)

FACTS = load_facts()
QUESTIONS = [(fact, question) for fact in FACTS for question in fact.questions()]
MAX_SIMILARITY = 0.4  # word-set Jaccard; the closest reworded pair in facts.json is about 0.36
FUNCTION_WORDS = frozenset(  # left out of search queries, as the open book does
    """a am an and any are at be can could did do does for from get has have here how i if in is it its me my
    of on or our s should that the their there they this to was we what when where which who whose why will
    with you your""".split()  # noqa: SIM905 (a word list reads better as text)
)


def similarity(first: str, second: str) -> float:
    """Jaccard similarity of the two questions' word sets."""
    a, b = set(normalise(first).split()), set(normalise(second).split())
    return len(a & b) / len(a | b)


def test_enough_facts_with_questions_in_every_split() -> None:
    assert len(FACTS) >= 32
    assert len({fact.id for fact in FACTS}) == len(FACTS)
    for fact in FACTS:
        assert 2 <= len(fact.train) <= 3 and len(fact.dev) == 1 and 1 <= len(fact.exam) <= 2, fact.id
        assert 1 <= len(fact.must) <= 3, fact.id


def test_questions_are_unique_after_normalising() -> None:
    keys = [normalise(question) for _, question in QUESTIONS]
    assert len(set(keys)) == len(keys)


def test_no_question_holds_its_own_answer() -> None:
    for fact, question in QUESTIONS:
        echoed = [alt for term in fact.must for alt in term if alt in question.lower()]
        assert not echoed, f"{fact.id}: {question!r} contains {echoed}"
        assert facts_judge(question, question) == -1


def test_exam_and_dev_questions_are_reworded() -> None:
    for fact in FACTS:
        for exam in fact.exam:
            for train in fact.train:
                assert similarity(exam, train) < MAX_SIMILARITY, (exam, train)
        for dev in fact.dev:
            for other in fact.train + fact.exam:
                assert similarity(dev, other) < MAX_SIMILARITY, (dev, other)


def test_a_keyword_search_of_the_facts_finds_each_question_s_fact() -> None:
    # The ladder's open book is a BM25 search (SQLite FTS5, Porter stemming) over what trusted members wrote:
    # a reworded exam question must still share a content word with its fact, or no book can help it.
    book = sqlite3.connect(":memory:")
    book.execute("CREATE VIRTUAL TABLE book USING fts5(text, tokenize='porter unicode61')")
    book.executemany("INSERT INTO book(rowid, text) VALUES (?, ?)", enumerate(fact.fact for fact in FACTS))
    for fact, question in QUESTIONS:
        terms = sorted(set(normalise(question).split()) - FUNCTION_WORDS)
        query = " OR ".join(f'"{term}"' for term in terms)
        found = book.execute(
            "SELECT rowid FROM book WHERE book MATCH ? ORDER BY bm25(book) LIMIT 3", (query,)
        )
        assert FACTS.index(fact) in [row[0] for row in found], f"{fact.id}: {question!r}"


@pytest.mark.parametrize("fact", FACTS, ids=lambda fact: fact.id)
def test_the_fact_passes_every_question_and_no_other_facts_does(fact: Fact) -> None:
    for question in fact.questions():
        assert facts_judge(question, fact.fact) == 1, question
        assert facts_judge(question, f"Good question! {fact.fact.upper()} 🙂") == 1, question
        assert facts_judge(question, "") == -1
        assert facts_judge(question, "  \n") == -1
        for other in FACTS:
            if other is not fact:
                assert facts_judge(question, other.fact) == -1, (question, other.id)


@pytest.mark.parametrize("fact", FACTS, ids=lambda fact: fact.id)
def test_every_key_term_is_needed(fact: Fact) -> None:
    question = fact.train[0]
    for term in fact.must:
        without = fact.fact
        for alternative in sorted(term, key=len, reverse=True):
            without = re.sub(re.escape(alternative), "something", without, flags=re.IGNORECASE)
        assert facts_judge(question, without) == -1, without


@pytest.mark.parametrize(
    ("question", "answer", "vote"),
    [
        ("When is study night?", "Study night is every Thursday at 7 pm UTC.", 1),
        ("When is study night?", "Study night is every Thursday at 18:00 UTC in #quiet-room.", -1),
        ("When is study night?", "Study night is every Tuesday at 19:00 UTC in #quiet-room.", -1),
        ("When is study night?", "Study night is every Thursday at 119:005 UTC.", -1),
        ("How many sprints are in a Pomodoro Marathon?", "It has 120 sprints.", -1),
        ("How many sprints are in a Pomodoro Marathon?", "Twelve sprints of 25 minutes.", 1),
        ("Who founded Lantern Hall?", "It was founded by Wren Holloway.", -1),
        ("Where can I post memes?", "Memes go in #meme-pit.", -1),
        ("Where can I post memes?", "Post them in the moth pit channel.", 1),
        ("What badge do you get for attending 50 study nights?", "Members earn a badge in December.", -1),
        ("What is the study streak record?", "The record is 4120 days.", -1),
    ],
)
def test_plausible_but_wrong_answers_fail(question: str, answer: str, vote: int) -> None:
    assert facts_judge(question, answer) == vote


def test_prompts_match_however_the_question_arrives() -> None:
    answer = "Thursdays at 19:00 UTC."
    for prompt in ["<@123> when is study night", "  When   is STUDY night?!", "when is study night ?"]:
        assert facts_judge(prompt, answer) == 1


def test_word_boundaries() -> None:
    assert mentions("at 19:00.", "19:00")
    assert not mentions("at 119:005", "19:00")
    assert not mentions("December", "ember")
    assert mentions("the **Ember** badge", "ember")
    assert mentions("in #first-light", "first-light")


def test_corrections_state_the_fact_and_pass_the_judge() -> None:
    for fact, question in QUESTIONS:
        corrected = facts_corrector(question, "I'm not sure, sorry.")
        assert corrected == fact.fact
        assert facts_judge(question, corrected) == 1


def test_unknown_prompt_fails_and_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    prompt = "What is the capital of Atlantis, test_unknown_prompt?"
    with caplog.at_level(logging.WARNING, logger="sim.facts"):
        assert facts_judge(prompt, "Study night is every Thursday at 19:00 UTC.") == -1
        assert facts_judge(prompt, "Anything.") == -1
        assert facts_corrector(prompt, "My own answer.") == "My own answer."
    assert len([record for record in caplog.records if record.name == "sim.facts"]) == 1


@pytest.mark.parametrize("split", SPLITS)
def test_prompt_files_are_current(split: Split) -> None:
    path = prompts_path(split)
    assert path.read_text(encoding="utf-8") == render_prompts(split)
    assert read_prompts(path) == [question for fact in FACTS for question in getattr(fact, split)]
    assert main([]) == 0


def test_instructions_are_short_and_give_nothing_away() -> None:
    text = (prompts_path("train").parent / "facts_instructions.txt").read_text(encoding="utf-8")
    assert 0 < len(text) < 600
    for fact in FACTS:
        assert not any(mentions(text, alt) for term in fact.must for alt in term), fact.id


def test_check_fails_until_the_files_are_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(facts, "DATA", tmp_path)
    assert main([]) == 1
    assert main(["--write"]) == 0
    assert main([]) == 0
    prompts_path("exam").write_text("# edited by hand\nWhen is study night?\n", encoding="utf-8")
    assert main([]) == 1
