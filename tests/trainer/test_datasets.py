"""Dataset builders on a seeded database: each rule of what goes into SFT, DPO and KTO, and what stays out."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

from sqlmodel import Session

from sim.seeding import RATERS, bad_answer, good_answer, prompt, question, seed_community
from store import crud
from store.datasets import _prompt_key, build_datasets, is_holdout, prompt_sides
from store.db import make_engine, upgrade
from store.settings import TrainSettings

NO_FILTERS = TrainSettings(holdout_fraction=0.0, max_rater_share=1.0)  # type: ignore[call-arg]


def everything(session: Session, settings: TrainSettings = NO_FILTERS) -> dict[str, list[dict]]:
    data = build_datasets(session=session, settings=settings)
    return {kind: data.train[kind] + data.holdout[kind] for kind in ("sft", "dpo", "kto")}


def answers(rows: list[dict], column: str = "messages") -> list[str]:
    return [row[column][-1]["content"] for row in rows]


def test_sft_has_liked_replies_and_corrections_only(session: Session) -> None:
    community = seed_community(session, prompts=12, correct_every=6)
    rows = everything(session)["sft"]
    # one example per prompt: the correction wins over the liked reply on the two corrected prompts
    assert len(rows) == 12
    assert sum(text.endswith("Indeed.") for text in answers(rows)) == community.corrections == 2
    assert not any("homework" in text for text in answers(rows))  # disliked answers never
    assert rows[0]["messages"][0]["role"] == "system" and rows[0]["messages"][-1]["role"] == "assistant"


def test_min_votes_and_retracted_votes(session: Session) -> None:
    once = crud.record_generation(session=session, prompt=prompt("one vote?"), completion="Yes.", user_id=1)
    twice = crud.record_generation(
        session=session, prompt=prompt("two votes?"), completion="Sure.", user_id=1
    )
    gone = crud.record_generation(session=session, prompt=prompt("retracted?"), completion="Gone.", user_id=1)
    assert once.id and twice.id and gone.id
    crud.record_feedback(session=session, generation_id=once.id, rater_id=RATERS[0], value=1)
    for rater in RATERS[:2]:
        crud.record_feedback(session=session, generation_id=twice.id, rater_id=rater, value=1)
    crud.record_feedback(session=session, generation_id=gone.id, rater_id=RATERS[0], value=1)
    crud.retract_feedback(session=session, generation_id=gone.id, rater_id=RATERS[0])
    assert sorted(answers(everything(session)["sft"])) == ["Sure.", "Yes."]
    strict = NO_FILTERS.model_copy(update={"min_votes": 2})
    assert answers(everything(session, strict)["sft"]) == ["Sure."]


def test_dpo_pairs_from_regenerations_and_corrections(session: Session) -> None:
    seed_community(session, prompts=6, regenerate_every=2, correct_every=0)
    corrected = crud.record_generation(
        session=session, prompt=prompt(question(99)), completion="Nope.", user_id=1
    )
    assert corrected.id
    crud.record_correction(session=session, generation_id=corrected.id, author_id=RATERS[1], content="Paris.")
    rows = everything(session)["dpo"]
    assert len(rows) == 3 + 1  # prompts 0, 2, 4 were regenerated; plus the correction
    by_chosen = {row["chosen"][0]["content"]: row for row in rows}
    assert by_chosen["Paris."]["rejected"] == [{"role": "assistant", "content": "Nope."}]
    for i in (0, 2, 4):
        row = by_chosen[good_answer(i)]
        assert row["rejected"][0]["content"] == bad_answer(i)
        assert row["prompt"][-1] == {"role": "user", "content": question(i)}


def test_kto_has_every_clear_vote_paired_or_not(session: Session) -> None:
    community = seed_community(session, prompts=6, regenerate_every=2, correct_every=0)
    tied = crud.record_generation(session=session, prompt=prompt("tie?"), completion="Maybe.", user_id=1)
    assert tied.id
    crud.record_feedback(session=session, generation_id=tied.id, rater_id=RATERS[0], value=1)
    crud.record_feedback(session=session, generation_id=tied.id, rater_id=RATERS[1], value=-1)
    rows = everything(session)["kto"]
    assert sum(row["label"] for row in rows) == len(community.liked) == 6
    assert sum(not row["label"] for row in rows) == len(community.disliked) == 3
    assert "Maybe." not in answers(rows, "completion")  # a tie is no clear vote


def test_opted_out_and_forgotten_people_stay_out(session: Session) -> None:
    seed_community(session, prompts=4, correct_every=0)
    asker, rater, quoted = 777, RATERS[0], 888
    theirs = crud.record_generation(
        session=session, prompt=prompt("my secret question"), completion="A.", user_id=asker
    )
    assert theirs.id
    crud.record_feedback(session=session, generation_id=theirs.id, rater_id=RATERS[4], value=1)
    # someone who opts out (but is not forgotten) is quoted in another person's thread
    crud.record_message(session=session, role="user", content="quoted words of 888", author_id=quoted)
    thread = [*prompt("quoted words of 888"), {"role": "user", "content": "what do you think?"}]
    other = crud.record_generation(session=session, prompt=thread, completion="B.", user_id=1)
    assert other.id
    crud.record_feedback(session=session, generation_id=other.id, rater_id=RATERS[4], value=1)
    only_theirs = crud.record_generation(
        session=session, prompt=prompt("rated by one"), completion="C.", user_id=1
    )
    assert only_theirs.id
    crud.record_feedback(session=session, generation_id=only_theirs.id, rater_id=rater, value=1)
    before = everything(session)
    assert {"A.", "B.", "C."} <= set(answers(before["sft"]))
    crud.forget_user(session=session, user_id=asker)
    crud.set_opt_out(session=session, user_id=quoted, opted_out=True)
    crud.set_opt_out(session=session, user_id=rater, opted_out=True)
    after = everything(session)
    assert not {"A.", "B.", "C."} & set(answers(after["sft"]))
    dumped = json.dumps(after)
    assert "my secret question" not in dumped and "quoted words" not in dumped
    # A., B. and C. are gone from KTO too; replies the opted-out rater voted on with someone else stay
    assert len(after["kto"]) == len(before["kto"]) - 3


def test_personal_data_is_scrubbed(session: Session) -> None:
    text = (
        "mail bob@example.com, call +44 20 7946 0958, ping <@123456789012345678>, https://x.io/?token=s3cret"
    )
    generation = crud.record_generation(
        session=session, prompt=prompt(text), completion=f"ok {text}", user_id=1
    )
    assert generation.id
    crud.record_feedback(session=session, generation_id=generation.id, rater_id=RATERS[0], value=1)
    dumped = json.dumps(everything(session))
    for secret in ("bob@example.com", "7946", "123456789012345678", "s3cret"):
        assert secret not in dumped
    for placeholder in ("[email]", "[phone]", "[mention]", "[url]"):
        assert placeholder in dumped


def test_exact_and_near_duplicate_prompts_collapse(session: Session) -> None:
    texts = [
        "What is the capital of France, and why is it famous?",
        "what is the capital of france and why is it famous",  # the same words
        "What is the capital of France, and why is it so famous?",  # one word more
        "Tell me a short poem about the weather today",  # different
    ]
    for i, text in enumerate(texts):
        generation = crud.record_generation(
            session=session, prompt=prompt(text), completion=f"A{i}.", user_id=1
        )
        assert generation.id
        crud.record_feedback(session=session, generation_id=generation.id, rater_id=RATERS[i], value=1)
    data = build_datasets(session=session, settings=NO_FILTERS)
    assert len(data.train["sft"]) == 2
    assert data.dropped["sft_duplicates"] == 2


def test_a_flooding_rater_decides_at_most_their_share(session: Session) -> None:
    seed_community(session, prompts=12, correct_every=0)  # honest: every vote has two raters
    flooder = 666
    for i in range(40):
        generation = crud.record_generation(
            session=session, prompt=prompt(f"flood {i} " + "x" * i), completion="Buy my coin!", user_id=2
        )
        assert generation.id
        crud.record_feedback(session=session, generation_id=generation.id, rater_id=flooder, value=1)
    share = 0.25
    rows = everything(session, NO_FILTERS.model_copy(update={"max_rater_share": share}))["sft"]
    flooded = sum(text == "Buy my coin!" for text in answers(rows))
    assert 0 < flooded <= share * len(rows)
    assert len(rows) - flooded == 12  # honest examples are untouched
    uncapped = everything(session)["sft"]
    assert sum(text == "Buy my coin!" for text in answers(uncapped)) == 40


def test_holdout_is_a_deterministic_slice_by_prompt(session: Session) -> None:
    seed_community(session, prompts=40, correct_every=0)
    settings = NO_FILTERS.model_copy(update={"holdout_fraction": 0.3})
    first = build_datasets(session=session, settings=settings)
    held = {row["messages"][-2]["content"] for row in first.holdout["sft"]}
    assert 0 < len(held) < 40
    # more data arrives: nothing moves sides, and a prompt's pair and votes follow it
    seed_community(session, prompts=20, start=40, correct_every=0)
    second = build_datasets(session=session, settings=settings)
    assert held <= {row["messages"][-2]["content"] for row in second.holdout["sft"]}
    assert held.isdisjoint(row["messages"][-2]["content"] for row in second.train["sft"])
    assert {row["prompt"][-1]["content"] for row in second.holdout["dpo"]} >= held
    assert second.hashes() == build_datasets(session=session, settings=settings).hashes()
    assert is_holdout("some key", 0.0) is False and is_holdout("some key", 0.999999) is True


_PROMPT = (
    "What is the best way to learn Python if I already know a little JavaScript "
    "and want to build small web apps?"
)
# each at least 0.8 similar to every other (5-gram Jaccard): all are one neighbourhood
NEAR_DUPLICATES = (
    _PROMPT,
    _PROMPT.replace("Python", "Pythons"),
    _PROMPT.replace("What is", "Whats"),
    _PROMPT.replace("small ", ""),
    _PROMPT.upper().replace("?", "!"),  # the same key as the first: case and punctuation do not count
)


def _sides(session: Session, keys: list[str], fraction: float) -> dict[str, bool]:
    return prompt_sides(session=session, keys=set(keys), fraction=fraction, similarity=0.8)


def test_a_prompt_keeps_its_side_whatever_near_duplicates_arrive_later(tmp_path: Path) -> None:
    keys = [_prompt_key([{"role": "user", "content": text}]) for text in NEAR_DUPLICATES]
    assert len(set(keys)) == 4
    keys = sorted(set(keys))
    for number, order in enumerate(itertools.permutations(keys)):
        database = make_engine(f"sqlite:///{tmp_path / f'order-{number}.db'}")
        upgrade(database)
        with Session(database) as session:
            first = _sides(session, [order[0]], 0.5)[order[0]]
            assert first == is_holdout(order[0], 0.5)  # a prompt with no neighbour: placed by its own hash
            for count in range(1, len(order)):
                # each newcomer joins the first one's side, and nobody recorded earlier moves
                seen = _sides(session, list(order[: count + 1]), 0.5)
                assert set(seen.values()) == {first}, (order, seen)
            # a later change of the fraction moves nothing already recorded
            assert set(_sides(session, list(order), 0.0 if first else 0.999).values()) == {first}
        database.dispose()


def test_no_prompt_is_on_both_sides_as_data_grows(session: Session) -> None:
    settings = NO_FILTERS.model_copy(update={"holdout_fraction": 0.3})
    seen_train: set[str] = set()
    seen_held: set[str] = set()
    for start in (0, 15, 30):
        seed_community(session, prompts=15, start=start, correct_every=5, regenerate_every=3)
        built = build_datasets(session=session, settings=settings)
        train = {row["messages"][-2]["content"] for row in built.train["sft"]}
        train |= {row["prompt"][-1]["content"] for kind in ("dpo", "kto") for row in built.train[kind]}
        held = {row["messages"][-2]["content"] for row in built.holdout["sft"]}
        held |= {row["prompt"][-1]["content"] for kind in ("dpo", "kto") for row in built.holdout[kind]}
        assert train.isdisjoint(held)
        seen_train |= train
        seen_held |= held
        assert seen_train.isdisjoint(seen_held)  # nothing ever trained is judged on later
    assert seen_held
