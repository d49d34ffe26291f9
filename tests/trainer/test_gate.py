"""The eval gate: it accepts an adapter trained on the community's taste, rejects one trained against it."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlmodel import Session

from sim.seeding import seed_community
from store.datasets import build_datasets
from store.db import make_engine, upgrade
from store.settings import Settings
from trainer import gate, job
from trainer.runner import write_work


def train_adapter(engine: Engine, settings: Settings, work: Path) -> Path:
    with Session(engine) as session:
        data = build_datasets(session=session, settings=settings.train)
    write_work(work, settings, data)
    job.main(work, work / "adapter")
    return work / "adapter"


@pytest.fixture
def reversed_engine(tmp_path: Path) -> Engine:
    """The same prompts, but the community liked the junk answers and disliked the good ones."""
    engine = make_engine(f"sqlite:///{tmp_path / 'reversed.db'}")
    upgrade(engine)
    with Session(engine) as session:
        seed_community(session, prompts=32, reverse=True)
    return engine


def test_gate_accepts_a_good_adapter_and_rejects_one_trained_on_reversed_preferences(
    sqlite_engine: Engine, reversed_engine: Engine, train_settings: Settings, tmp_path: Path
) -> None:
    with Session(sqlite_engine) as session:
        seed_community(session, prompts=32)
    settings = train_settings.model_copy(
        update={"train": train_settings.train.model_copy(update={"max_steps": 6})}
    )
    good = train_adapter(sqlite_engine, settings, tmp_path / "good")
    bad = train_adapter(reversed_engine, settings, tmp_path / "bad")
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


def scores(
    nll: float, degenerate: float, chosen: list[float], rejected: list[float], general: float = 2.0
) -> dict:
    return {
        "chosen_logprobs": chosen,
        "rejected_logprobs": rejected,
        "nll": nll,
        "general_nll": general,
        "degenerate_share": degenerate,
        "sample_answers": [],
    }


def test_nll_and_degeneracy_rules_compare_with_the_active_adapter(train_settings: Settings) -> None:
    train = train_settings.train  # NLL bound 0.1, at most 25% degenerate unless active is worse
    base = scores(3.0, 0.0, [-10.0], [-10.0])
    active = scores(2.0, 0.5, [-8.0], [-12.0])
    assert gate.decide(scores(2.05, 0.5, [-8.0], [-12.0]), active, base, train).passed
    worse_nll = gate.decide(scores(2.2, 0.0, [-8.0], [-12.0]), active, base, train)
    assert not worse_nll.passed and "NLL" in worse_nll.reason
    loops = gate.decide(scores(2.0, 0.75, [-8.0], [-12.0]), active, base, train)
    assert not loops.passed and "degenerate" in loops.reason
    no_pairs = gate.decide(
        scores(2.0, 0.0, [], []), scores(2.0, 0.0, [], []), scores(3.0, 0.0, [], []), train
    )
    assert no_pairs.passed and "no held-out pairs" in no_pairs.reason


def test_general_instructions_may_get_at_most_the_bound_worse_than_the_base_model(
    train_settings: Settings,
) -> None:
    train = train_settings.train.model_copy(update={"gate_general_nll_bound": 0.1})
    base = scores(3.0, 0.0, [-10.0], [-10.0], general=2.0)
    active = scores(2.0, 0.0, [-8.0], [-12.0], general=2.1)
    slightly_worse = gate.decide(scores(2.0, 0.0, [-8.0], [-12.0], general=2.18), active, base, train)
    assert slightly_worse.passed and slightly_worse.metrics["general_nll_rise"] == pytest.approx(0.09)
    forgot = gate.decide(scores(2.0, 0.0, [-8.0], [-12.0], general=2.3), active, base, train)
    assert not forgot.passed and "general instructions" in forgot.reason and "15%" in forgot.reason


def test_the_shipped_general_set_is_read_as_prompt_and_answer() -> None:
    general = gate.read_general(None)
    assert len(general) >= 20
    prompt, answer = general[0]
    assert prompt[-1]["role"] == "user" and answer and isinstance(answer, str)
