"""The eval gate: it accepts an adapter trained on the community's taste, rejects one trained against it."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine as Database
from sqlmodel import Session

from sim.seeding import seed_community
from store.datasets import build_datasets
from store.db import make_engine, upgrade
from store.settings import Settings, TrainSettings
from trainer import gate, job
from trainer.runner import write_work


def train_adapter(database: Database, settings: Settings, work: Path) -> Path:
    with Session(database) as session:
        data = build_datasets(session=session, settings=settings.train)
    write_work(work, settings, data)
    job.main(work, work / "adapter")
    return work / "adapter"


@pytest.fixture
def reversed_database(tmp_path: Path) -> Database:
    """The same prompts, but the community liked the junk answers and disliked the good ones."""
    database = make_engine(f"sqlite:///{tmp_path / 'reversed.db'}")
    upgrade(database)
    with Session(database) as session:
        seed_community(session, prompts=32, reverse=True)
    return database


def test_gate_accepts_a_good_adapter_and_rejects_one_trained_on_reversed_preferences(
    sqlite_database: Database, reversed_database: Database, train_settings: Settings, tmp_path: Path
) -> None:
    with Session(sqlite_database) as session:
        seed_community(session, prompts=32)
    settings = train_settings.model_copy(
        update={
            "train": train_settings.train.model_copy(
                update={"max_steps": 6, "gate_min_pairs": 2, "gate_min_votes": 4}
            )
        }
    )
    good = train_adapter(sqlite_database, settings, tmp_path / "good")
    bad = train_adapter(reversed_database, settings, tmp_path / "bad")
    truth = gate.read_holdout(tmp_path / "good")  # the real community's hold-out; both share its prompts
    assert truth.pairs and truth.liked

    accepted = gate.evaluate(settings=settings, holdout=truth, adapter=good, reference=None)
    rejected = gate.evaluate(settings=settings, holdout=truth, adapter=bad, reference=None)

    assert accepted.passed, accepted.reason
    assert accepted.metrics["pref_accuracy"] >= 0.8 and accepted.metrics["reward_margin"] > 0
    assert not rejected.passed
    assert "preference accuracy" in rejected.reason and "NLL" in rejected.reason
    assert rejected.metrics["pref_accuracy"] <= 0.2

    # against an active adapter: the reversed one is no replacement for the good one, and not vice versa
    assert not gate.evaluate(settings=settings, holdout=truth, adapter=bad, reference=good).passed


def test_degenerate_answers() -> None:
    assert gate.is_degenerate("")
    assert gate.is_degenerate("   \n")
    assert gate.is_degenerate("ha" * 20)
    assert gate.is_degenerate("the the the the the the the the the the the the the")
    assert not gate.is_degenerate("The capital of France is Paris.")
    assert not gate.is_degenerate("Yes.")
    question = [{"role": "user", "content": "What is the capital of Germany?"}]
    french = "La capitale de l'Allemagne est Berlin, et elle est aussi la plus grande ville du pays."
    assert gate.is_degenerate(french, question)  # derailed into another language than the question's
    assert not gate.is_degenerate("The capital of Germany is Berlin.", question)


def scores(
    nll: float,
    degenerate: float,
    chosen: list[float],
    rejected: list[float],
    general: float = 2.0,
    *,
    liked: list[float] = (),  # type: ignore[assignment]
    disliked: list[float] = (),  # type: ignore[assignment]
) -> dict:
    """One model's scores on a hold-out; liked / disliked answers are 10 tokens each."""
    return {
        "chosen_logprobs": chosen,
        "rejected_logprobs": rejected,
        "liked_logprobs": list(liked),
        "liked_tokens": [10] * len(liked),
        "disliked_logprobs": list(disliked),
        "disliked_tokens": [10] * len(disliked),
        "nll": nll,
        "general_nll": general,
        "degenerate_share": degenerate,
        "sample_answers": [],
    }


@pytest.fixture
def train(train_settings: Settings) -> TrainSettings:
    """The gate's defaults, but 4 pairs or 6 votes are enough evidence (small hand-written hold-outs)."""
    return train_settings.train.model_copy(
        update={
            "gate_min_pairs": 4,
            "gate_min_votes": 6,
            "gate_min_pref_accuracy": 0.5,
            "gate_min_reward_margin": 0.0,
            "gate_min_vote_auc": 0.5,
            "gate_active_tolerance": 0.05,
            "gate_nll_regression_bound": 0.1,
            "gate_max_degenerate_share": 0.25,
            "gate_general_nll_bound": 0.1,
        }
    )


BASE_PAIRS = ([-10.0] * 4, [-10.0] * 4)


def test_worse_than_the_active_adapter_but_better_than_base_is_rejected(train: TrainSettings) -> None:
    base = scores(3.0, 0.0, *BASE_PAIRS)
    active = scores(2.0, 0.0, [-6.0] * 4, [-14.0] * 4)  # all four right, margin 0.8
    new = scores(2.0, 0.0, [-8.0, -8.0, -8.0, -12.0], [-12.0, -12.0, -12.0, -8.0])  # 3 of 4, margin 0.2
    better_than_base = gate.decide(new, None, base, train)
    assert better_than_base.decision == "pass", better_than_base.reason
    against_active = gate.decide(new, active, base, train)
    assert against_active.decision == "reject"
    assert "below the active adapter's" in against_active.reason
    assert against_active.metrics["active_pref_accuracy"] == 1.0
    as_good_as_active = gate.decide(scores(2.0, 0.0, [-6.0] * 4, [-14.0] * 4), active, base, train)
    assert as_good_as_active.decision == "pass", as_good_as_active.reason


def test_preference_accuracy_must_be_strictly_above_its_threshold(train: TrainSettings) -> None:
    base = scores(3.0, 0.0, *BASE_PAIRS)
    half = gate.decide(
        scores(2.0, 0.0, [-5.0, -5.0, -12.0, -12.0], [-12.0, -12.0, -11.0, -11.0]), None, base, train
    )
    assert half.metrics["pref_accuracy"] == 0.5 and half.metrics["reward_margin"] > 0
    assert half.decision == "reject" and "preference accuracy 0.50 <= 0.50" in half.reason
    three = gate.decide(scores(2.0, 0.0, [-5.0, -5.0, -5.0, -12.0], [-12.0] * 3 + [-11.0]), None, base, train)
    assert three.decision == "pass", three.reason
    no_margin = gate.decide(scores(2.0, 0.0, [-9.0] * 3 + [-20.0], [-10.0] * 4), None, base, train)
    assert no_margin.decision == "reject" and "reward margin" in no_margin.reason


def test_too_little_evidence_goes_to_the_canary_not_live(train: TrainSettings) -> None:
    base = scores(3.0, 0.0, [-10.0] * 3, [-10.0] * 3, liked=[-30.0] * 2, disliked=[-30.0] * 2)
    # 3 pairs < 4 and 4 votes < 6: even a perfect score on them is no proof, and a bad one no disproof
    for chosen, rejected in (([-5.0] * 3, [-15.0] * 3), ([-15.0] * 3, [-5.0] * 3)):
        verdict = gate.decide(
            scores(2.0, 0.0, chosen, rejected, liked=[-20.0] * 2, disliked=[-40.0] * 2), None, base, train
        )
        assert verdict.decision == "canary" and verdict.passed
        assert "too little held-out evidence" in verdict.reason and "3 pairs < 4" in verdict.reason
    no_pairs = gate.decide(
        scores(2.0, 0.0, [], []), scores(2.0, 0.0, [], []), scores(3.0, 0.0, [], []), train
    )
    assert no_pairs.decision == "canary"
    # unsafe with little evidence is still rejected
    unsafe = gate.decide(scores(2.0, 0.9, [], []), None, scores(3.0, 0.0, [], []), train)
    assert unsafe.decision == "reject" and not unsafe.passed


def test_unpaired_votes_pass_or_reject_by_how_well_the_reward_separates_them(train: TrainSettings) -> None:
    base = scores(3.0, 0.0, [], [], liked=[-30.0] * 4, disliked=[-30.0] * 4)
    # rewards per token: liked +1.0, +0.8, +0.6, -0.5; disliked -1.0, -0.8, +0.2, 0.0
    separates = scores(
        2.0, 0.0, [], [], liked=[-20.0, -22.0, -24.0, -35.0], disliked=[-40.0, -38.0, -28.0, -30.0]
    )
    verdict = gate.decide(separates, None, base, train)
    assert verdict.decision == "pass", verdict.reason
    assert verdict.metrics["vote_auc"] == pytest.approx(14 / 16) and "4 liked / 4 disliked" in verdict.reason
    backwards = scores(2.0, 0.0, [], [], liked=[-40.0] * 4, disliked=[-20.0] * 4)
    rejected = gate.decide(backwards, None, base, train)
    assert rejected.decision == "reject" and "vote AUC 0.00 <= 0.50" in rejected.reason
    flat = gate.decide(scores(2.0, 0.0, [], [], liked=[-30.0] * 4, disliked=[-30.0] * 4), None, base, train)
    assert flat.decision == "reject" and flat.metrics["vote_auc"] == 0.5  # a no-op adapter does not pass
    perfect = scores(2.0, 0.0, [], [], liked=[-10.0] * 4, disliked=[-50.0] * 4)
    worse_than_active = gate.decide(separates, perfect, base, train)
    assert (
        worse_than_active.decision == "reject"
        and "below the active adapter's 1.00" in worse_than_active.reason
    )


def test_liked_nll_is_bounded_by_the_best_of_base_and_active(train: TrainSettings) -> None:
    base = scores(1.8, 0.0, *BASE_PAIRS)
    active = scores(2.5, 0.0, [-8.0] * 4, [-12.0] * 4)  # drifted: worse than the base on liked answers
    pairs = ([-8.0] * 4, [-12.0] * 4)
    assert gate.decide(scores(1.85, 0.0, *pairs), active, base, train).decision == "pass"
    drift = gate.decide(scores(2.55, 0.0, *pairs), active, base, train)  # within 0.1 of active, not of base
    assert drift.decision == "reject" and "best of base and active 1.800" in drift.reason


def test_the_degeneracy_cap_is_fixed_not_inherited(train: TrainSettings) -> None:
    base = scores(3.0, 0.0, *BASE_PAIRS)
    pairs = ([-8.0] * 4, [-12.0] * 4)
    degenerate_active = scores(2.0, 0.75, *pairs)
    loops = gate.decide(scores(2.0, 0.5, *pairs), degenerate_active, base, train)
    assert loops.decision == "reject" and "degenerate answers 0.50 > 0.25" in loops.reason
    assert gate.decide(scores(2.0, 0.25, *pairs), degenerate_active, base, train).decision == "pass"


def test_general_instructions_may_get_at_most_the_bound_worse_than_the_base_model(
    train: TrainSettings,
) -> None:
    base = scores(3.0, 0.0, *BASE_PAIRS, general=2.0)
    active = scores(2.0, 0.0, [-8.0] * 4, [-12.0] * 4, general=2.1)
    pairs = ([-8.0] * 4, [-12.0] * 4)
    slightly_worse = gate.decide(scores(2.0, 0.0, *pairs, general=2.18), active, base, train)
    assert slightly_worse.passed and slightly_worse.metrics["general_nll_rise"] == pytest.approx(0.09)
    forgot = gate.decide(scores(2.0, 0.0, *pairs, general=2.3), active, base, train)
    assert not forgot.passed and "general instructions" in forgot.reason and "15%" in forgot.reason


def test_the_shipped_general_set_is_read_as_prompt_and_answer() -> None:
    general = gate.read_general(None)
    assert len(general) >= 20
    prompt, answer = general[0]
    assert prompt[-1]["role"] == "user" and answer and isinstance(answer, str)
