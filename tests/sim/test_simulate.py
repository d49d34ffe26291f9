"""`gradschool simulate` on the tiny model: emulator, real bot, trainer service, scripted community."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlmodel import Session, select
from typer.testing import CliRunner

from gradschool import simulate
from gradschool.cli import app
from sim.community import load_callable, read_prompts
from store import db
from store.datasets import KINDS, build_datasets
from store.models import Correction, Feedback, Generation, Message, TrainingRun
from store.settings import Settings, load_settings

PROMPTS = [f"Question number {i}: what do you know about topic {i}?" for i in range(12)]
HELDOUT = ["What is held out one?", "What is held out two?", "What is held out three?"]


def parity_judge(prompt: str, answer: str) -> int:
    """A taste the tiny model meets about half the time: answers of an even length."""
    return 1 if len(answer) % 2 == 0 else -1


def signoff_corrector(prompt: str, answer: str) -> str:
    return f"A short answer about {prompt[:20]}. Keep learning!"


def plan_for(tmp_path: Path, settings: Settings) -> simulate.Plan:
    prompts, heldout = tmp_path / "prompts.txt", tmp_path / "heldout.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    heldout.write_text("# held out\n" + "\n".join(HELDOUT) + "\n")
    return simulate.make_plan(
        settings=settings,
        rounds=1,
        prompts=prompts,
        heldout=heldout,
        users=3,
        channels=2,
        questions=len(PROMPTS),
        judge=f"{__name__}:parity_judge",
        corrector=f"{__name__}:signoff_corrector",
        seed=1,
        out=tmp_path / "sim",
    )


async def test_one_round_records_everything_once_and_trains_on_the_admins_request(
    tmp_path: Path, train_settings: Settings
) -> None:
    plan = plan_for(tmp_path, train_settings)
    settings = simulate.simulation_settings(train_settings, plan.out, max_new_tokens=8)
    said: list[str] = []

    result = await simulate.run(settings, plan, say=said.append)

    [row] = result["rounds"]
    assert json.loads((plan.out / "result.json").read_text())["rounds"][0]["round"] == 1
    assert (plan.out / "up_rate.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len((plan.out / "exams" / "round-1.jsonl").read_text().splitlines()) == len(HELDOUT)
    assert 0.0 <= result["base_held_out_up_rate"] <= 1.0 and 0.0 <= row["held_out_up_rate"] <= 1.0
    assert row["answers"] >= len(PROMPTS) and row["votes"] > 0 and row["corrections"] > 0

    database = db.make_engine(settings.database_url)
    with Session(database) as session:
        messages = session.exec(select(Message).where(Message.role == "user")).all()
        asked = row["question_ids"] + result["exam_question_ids"]
        assert sorted(m.discord_id for m in messages) == sorted(asked)  # every question, once
        generations = session.exec(select(Generation)).all()
        by_discord_id = {d: g.id for g in generations for d in g.discord_message_ids}
        live = session.exec(select(Feedback).where(Feedback.removed_at == None)).all()  # noqa: E711
        assert sorted((f.rater_id, f.generation_id, f.value) for f in live) == sorted(
            (member, by_discord_id[message], value) for member, message, value in row["vote_log"]
        )
        assert len(session.exec(select(Correction)).all()) == row["corrections"]
        [run] = session.exec(select(TrainingRun)).all()
        built = build_datasets(session=session, settings=settings.train, scope=run.scope)  # the server's own
    # no exam prompt is in any dataset, and no dataset hold-out prompt is in a training set
    train_prompts = {_question(example) for kind in KINDS for example in built.train[kind]}
    held_prompts = {_question(example) for kind in KINDS for example in built.holdout[kind]}
    assert train_prompts and train_prompts.isdisjoint(HELDOUT) and held_prompts.isdisjoint(HELDOUT)
    assert train_prompts.isdisjoint(held_prompts)
    database.dispose()
    assert (run.reason, run.requested_by, run.status) == ("admin", result["admin_id"], row["run_status"])
    assert run.status in ("succeeded", "rejected", "skipped"), run.error
    if run.status == "succeeded":  # the bot serves what the gate let through before the exam
        served = row["served_adapter"] if row["adapter_status"] == "active" else row["served_canary"]
        assert served == run.adapter_version == row["adapter_version"]
        assert row["gate"]["general_nll"] is not None
        assert row["gate_decision"] == ("pass" if row["adapter_status"] == "active" else "canary")
    assert any("held-out 👍-rate" in line for line in said)


def test_two_seeds_run_apart_and_report_the_mean_and_range(tmp_path: Path, train_settings: Settings) -> None:
    from dataclasses import replace

    plan = replace(plan_for(tmp_path, train_settings), seeds=2, questions=6)
    said: list[str] = []

    result = simulate.run_seeds(train_settings, plan, max_new_tokens=8, say=said.append)

    written = json.loads((plan.out / "result.json").read_text())
    assert [one["plan"]["seed"] for one in written["seeds"]] == [1, 2]
    for seed in (1, 2):  # each seed has a store, exams and a result of its own
        own = json.loads((plan.out / f"seed-{seed}" / "result.json").read_text())
        assert own["plan"]["seed"] == seed and (plan.out / f"seed-{seed}" / "gradschool.db").exists()
    rates = [one["rounds"][0]["held_out_up_rate"] for one in written["seeds"]]
    [row] = written["rounds"]
    assert row["held_out_up_rate"] == pytest.approx(sum(rates) / 2)
    assert (row["held_out_up_rate_min"], row["held_out_up_rate_max"]) == (min(rates), max(rates))
    bases = [one["base_held_out_up_rate"] for one in written["seeds"]]
    assert written["base_held_out_up_rate"] == pytest.approx(sum(bases) / 2)
    assert result["rounds"][0]["held_out_up_rate"] == row["held_out_up_rate"]
    assert (plan.out / "up_rate.png").exists() and any("seed 2 (2 of 2)" in line for line in said)


def test_seeds_combine_into_means_with_each_seed_kept() -> None:
    from sim.report import combine_seeds, table

    def one(base: float, rates: list[float], live: list[bool]) -> dict:
        rounds = [
            {"round": i + 1, "held_out_up_rate": rate, "votes": 10 + i, "up_votes": 5, "corrections": 2,
             "regenerations": 1, "adapter_status": "active" if on else "candidate",
             "gate": {"pref_accuracy": 0.75, "general_nll": 2.0}}
            for i, (rate, on) in enumerate(zip(rates, live, strict=True))
        ]  # fmt: skip
        return {"judge": "j", "base_held_out_up_rate": base, "base_general_nll": 2.0, "rounds": rounds}

    seeds = [one(0.1, [0.3, 0.5], [True, True]), one(0.2, [0.1, 0.6], [False, True])]
    combined = combine_seeds(seeds)
    assert combined["base_held_out_up_rate"] == pytest.approx(0.15) and combined["seeds"] == seeds
    first, second = combined["rounds"]
    assert (first["held_out_up_rate"], first["held_out_up_rate_min"], first["held_out_up_rate_max"]) == (
        pytest.approx(0.2), 0.1, 0.3,
    )  # fmt: skip
    assert first["adapter_version"] == "1/2 passed" and second["adapter_version"] == "2/2 passed"
    assert first["votes"] == 10 and second["votes"] == 11
    text = table(combined)
    assert "20% (10-30%)" in text and "55% (50-60%)" in text and "15% (10-20%)" in text


def _question(example: dict) -> str:
    prompt = example["messages"][:-1] if "messages" in example else example["prompt"]
    return next(m["content"] for m in reversed(prompt) if m["role"] == "user")


def test_plans_refuse_bad_prompt_files_and_tastes(tmp_path: Path, train_settings: Settings) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n")
    with pytest.raises(ValueError, match="no prompts"):
        read_prompts(empty)
    both = tmp_path / "both.txt"
    both.write_text("same\nother\n")
    with pytest.raises(ValueError, match="both train and held-out"):
        simulate.make_plan(
            settings=train_settings, rounds=1, prompts=both, heldout=both, users=1, channels=1,
            questions=1, judge="x:y", corrector=None, seed=0, out=tmp_path,
        )  # fmt: skip
    one_file = tmp_path / "eight.txt"
    one_file.write_text("\n".join(f"prompt {i}" for i in range(8)))
    plan = simulate.make_plan(
        settings=train_settings, rounds=1, prompts=one_file, heldout=None, users=1, channels=1,
        questions=1, judge="x:y", corrector=None, seed=0, out=tmp_path,
    )  # fmt: skip
    assert plan.heldout_prompts == ["prompt 3", "prompt 7"] and len(plan.train_prompts) == 6
    exam = tmp_path / "exam.txt"
    exam.write_text("prompt 3\nprompt 99\n")
    with pytest.raises(ValueError, match="both dev and held-out"):
        simulate.make_plan(
            settings=train_settings, rounds=1, prompts=None, heldout=exam, dev=exam, users=1,
            channels=1, questions=1, judge="x:y", corrector=None, seed=0, out=tmp_path,
        )  # fmt: skip
    shipped = simulate.make_plan(
        settings=train_settings, rounds=1, prompts=None, heldout=None, dev=simulate.DATA / "prompts_dev.txt",
        users=1, channels=1, questions=1, judge="x:y", corrector=None, seed=0, out=tmp_path,
    )  # fmt: skip
    assert len(shipped.dev_prompts) == len(shipped.heldout_prompts) == 20 and len(shipped.train_prompts) == 60
    for spec, message in [("nocolon", "module:function"), ("no_such_module:f", "cannot import")]:
        with pytest.raises(ValueError, match=message):
            load_callable(spec, "--judge")
    with pytest.raises(ValueError, match="has no function"):
        load_callable("sim.judges:nope", "--judge")


def test_the_cli_says_what_is_wrong_with_the_judge(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRADSCHOOL_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)  # no stray .env from the repo
    result = CliRunner().invoke(app, ["simulate", "--judge", "sim.judges:nope"])
    assert result.exit_code == 2
    assert "has no function 'nope'" in result.output


@pytest.mark.slow
async def test_one_round_on_smollm2_learns_the_default_taste(tmp_path: Path, smollm2_cache: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "models").symlink_to(smollm2_cache, target_is_directory=True)
    # A third of the prompts held out (the default is a tenth): with ~4 held-out prompts, one round once held
    # out no pair and no liked answer (the full suite here, 2026-12-07: 6 disliked votes alone), so the gate
    # could rank nothing and this test had nothing to check; ~12 held-out prompts give it evidence
    settings = load_settings(
        env_file=None, data_dir=data_dir, model={"device": "cpu"}, train={"holdout_fraction": 0.3}
    )
    plan = simulate.make_plan(
        settings=settings, rounds=1, prompts=None, heldout=None, users=8, channels=2, questions=40,
        judge=simulate.DEFAULT_JUDGE, corrector=simulate.DEFAULT_CORRECTOR, seed=0, out=tmp_path / "sim",
    )  # fmt: skip

    # 64 new tokens, not the simulation's 96: the test asserts the gate's verdict, not the exam's rate, and
    # answering was most of its time
    result = await simulate.run(
        simulate.simulation_settings(settings, plan.out, max_new_tokens=64), plan, say=print
    )

    [row] = result["rounds"]
    assert row["run_status"] == "succeeded", row["run_error"]
    gate = row["gate"]
    assert gate["general_nll_rise"] <= settings.train.gate_general_nll_bound
    # the adapter ranks the community's held-out choices above what it turned down, unlike the base model;
    # one round may hold out no pair or no liked answer (then that score is None), not both
    measured = [gate[score] for score in ("pref_accuracy", "vote_auc") if gate[score] is not None]
    assert measured and all(score > 0.5 for score in measured), gate
    # The bot's exam (20 prompts nobody voted on; a canary answers half) is not asserted here: one round
    # swings it from 0% to 25% between runs of this very test (CI, 2026-12-07: 0%; the same day here: 25%,
    # 25%), and with the gate's minimum evidence lowered to judge outright, the adapter once passed at 5% and
    # once fell to the general-NLL bound. Its rise is measured over rounds and seeds in docs/measurements.md.
    served = row["served_adapter"] if row["adapter_status"] == "active" else row["served_canary"]
    assert served == row["adapter_version"]


def short_judge(prompt: str, answer: str) -> int:
    """Another taste: answers under 30 characters."""
    return 1 if len(answer) < 30 else -1


async def test_two_communities_learn_apart_on_one_bot(tmp_path: Path, train_settings: Settings) -> None:
    from dataclasses import replace

    from store.models import AdapterVersion
    from store.scopes import guild_scope

    plan = replace(
        plan_for(tmp_path, train_settings), questions=8, others=[(f"{__name__}:short_judge", None)]
    )
    settings = simulate.simulation_settings(train_settings, plan.out, max_new_tokens=8)
    assert settings.train.scope == "guild"  # the default: each server learns its own adapter

    result = await simulate.run(settings, plan, say=lambda line: None)

    first, second = result["communities"]
    assert (first["judge"], second["judge"]) == (plan.judge, f"{__name__}:short_judge")
    assert first["guild"] != second["guild"] and second["corrector"] is None
    for one, other in ((first, second), (second, first)):
        assert one["scope"] == guild_scope(one["guild_id"])
        assert set(one["base_other_judge_up_rates"]) == {other["judge"]}
        [row] = one["rounds"]
        assert set(row["other_judge_up_rates"]) == {other["judge"]} and 0 <= row["cross_up_rate"] <= 1
        exams = plan.out / one["guild"].lower().replace(" ", "-") / "exams"
        assert len((exams / "round-1.jsonl").read_text().splitlines()) == len(HELDOUT)
    mean = (first["rounds"][0]["held_out_up_rate"] + second["rounds"][0]["held_out_up_rate"]) / 2
    assert result["rounds"][0]["held_out_up_rate"] == pytest.approx(mean) and "guild" not in result
    assert json.loads((plan.out / "result.json").read_text())["communities"][1]["guild"] == second["guild"]

    database = db.make_engine(settings.database_url)
    with Session(database) as session:
        generations = session.exec(select(Generation)).all()
        runs = session.exec(select(TrainingRun)).all()
        versions = session.exec(select(AdapterVersion)).all()
    database.dispose()
    scopes = {first["scope"], second["scope"]}
    # every answer belongs to the server it was asked in; each admin's /retrain trained that server's own
    assert {g.scope for g in generations} == scopes
    assert all(g.scope == guild_scope(g.guild_id) for g in generations if g.guild_id is not None)
    assert sorted(r.scope for r in runs) == sorted(scopes)
    assert all(v.scope in scopes for v in versions)
    by_run = {r.adapter_version: r.scope for r in runs if r.adapter_version}
    assert all(by_run[v.name] == v.scope for v in versions if v.name in by_run)


def test_tastes_for_several_communities() -> None:
    signoff = (simulate.DEFAULT_JUDGE, simulate.DEFAULT_CORRECTOR)
    concise = ("sim.judges:concise_judge", None)
    assert simulate.choose_tastes(1, [], []) == [signoff]
    assert simulate.choose_tastes(2, [], []) == [signoff, concise]
    assert simulate.choose_tastes(2, ["m:j"], ["none"]) == [("m:j", None), concise]
    assert simulate.choose_tastes(2, ["m:j", "m:k"], ["m:c"]) == [("m:j", "m:c"), ("m:k", None)]
    with pytest.raises(ValueError, match="needs its own --judge"):
        simulate.choose_tastes(3, [], [])
    with pytest.raises(ValueError, match=r"2 --judge .* for 1 communities"):
        simulate.choose_tastes(1, ["m:j", "m:k"], [])


def fact_judge(prompt: str, answer: str) -> int:
    """A facts taste the tiny model never meets on its own: the answer must carry the topic's fact."""
    topic = prompt.rstrip("?").split()[-1]
    return 1 if f"FACT-{topic}" in answer else -1


def fact_corrector(prompt: str, answer: str) -> str:
    """A member writes the fact; for topics 0-3 they get it wrong (the admin's review drops those)."""
    topic = prompt.rstrip("?").split()[-1]
    return f"It is FACT-{topic}." if int(topic) > 3 else "No idea, sorry."


async def test_the_ladder_measures_each_rung_and_fills_the_book_only_from_corrections(
    tmp_path: Path, train_settings: Settings
) -> None:
    from store.models import Passage
    from store.scopes import guild_scope

    instructions = tmp_path / "instructions.txt"
    instructions.write_text("Answer with the fact.\n")
    prompts, heldout = tmp_path / "prompts.txt", tmp_path / "heldout.txt"
    prompts.write_text("\n".join(f"Question {i}: what about topic {i}?" for i in range(12)) + "\n")
    heldout.write_text("Tell me about topic 5?\nAnd topic 9?\n")
    plan = simulate.make_plan(
        settings=train_settings, rounds=1, prompts=prompts, heldout=heldout, users=4, channels=1,
        questions=12, judge=f"{__name__}:fact_judge", corrector=f"{__name__}:fact_corrector", seed=3,
        out=tmp_path / "ladder", ladder=True, instructions=instructions,
    )  # fmt: skip
    assert plan.trusted == 1  # a quarter of the members by default
    settings = simulate.simulation_settings(train_settings, plan.out, max_new_tokens=8)

    result = await simulate.run(settings, plan, say=lambda line: None)

    ladder = result["ladder"]
    assert list(ladder) == ["base", "instructions", "knowledge", "finetune"]
    assert all(0.0 <= rate <= 1.0 for rate in ladder.values())
    [row] = result["rounds"]
    assert (ladder["knowledge"], ladder["finetune"]) == (row["book_up_rate"], row["held_out_up_rate"])
    assert ladder["instructions"] == result["base_held_out_up_rate"]
    for name in ("nothing-round-0", "round-0", "book-round-1", "round-1"):
        assert len((plan.out / "exams" / f"{name}.jsonl").read_text().splitlines()) == 2

    database = db.make_engine(settings.database_url)
    with Session(database) as session:
        passages = session.exec(select(Passage)).all()
        corrections = {c.id: c for c in session.exec(select(Correction))}
        generations = session.exec(select(Generation).order_by(Generation.id)).all()
    database.dispose()
    scope = guild_scope(result["guild_id"])
    # the book holds corrections only, all decided: the trusted member's at once (right or wrong: trusted),
    # the others' by the admin's review, which accepted the right ones and dropped the wrong ones
    assert passages and all(p.source == "correction" and p.status == "accepted" for p in passages)
    assert all(p.scope == scope and p.correction_id in corrections for p in passages)
    by_admin = [p for p in passages if p.decided_by == result["admin_id"]]
    at_once = [p for p in passages if p.decided_by == p.author_id]
    assert len(by_admin) + len(at_once) == len(passages) and len({p.author_id for p in at_once}) <= 1
    assert all("FACT-" in p.text for p in by_admin) and row["reviewed"]["accepted"] == len(by_admin)
    wrong = [c for c in corrections.values() if "FACT" not in c.content]
    kept_wrong = [p for p in at_once if "FACT" not in p.text]
    assert row["reviewed"]["dropped"] == len(wrong) - len(kept_wrong)
    # the first exam had nothing in play; from the instructions on every answer records their version, and
    # the exam questions about corrected topics were given the corrections
    first_exam = generations[:2]
    assert all(g.instructions_version is None and g.passage_ids == [] for g in first_exam)
    assert all(g.instructions_version == "s1" for g in generations[2:])
    texts = {p.id: p.text for p in passages}
    book_exam = [g for g in generations if g.prompt[-1]["content"].startswith(("Tell me", "And topic"))][4:6]
    for g in book_exam:
        topic = g.prompt[-1]["content"].rstrip("?").split()[-1]
        shown = [texts[i] for i in g.passage_ids]
        if any(f"topic {topic}?" in text for text in texts.values()):  # corrected: its passage comes first
            assert f"topic {topic}?" in shown[0], (topic, shown)
        else:
            assert not any(f"topic {topic}?" in text for text in shown)


def test_ladder_results_combine_over_seeds_into_means_and_ranges() -> None:
    from sim.report import combine_seeds, ladder_table

    seeds = [
        {"judge": "j", "base_held_out_up_rate": 0.0, "rounds": [{"round": 1, "held_out_up_rate": h,
         "book_up_rate": b}], "ladder": {"base": 0.0, "instructions": i, "knowledge": b, "finetune": h}}
        for i, b, h in ((0.1, 0.8, 0.7), (0.0, 0.6, 0.9))
    ]  # fmt: skip

    combined = combine_seeds(seeds)

    assert combined["ladder"] == pytest.approx(
        {"base": 0.0, "instructions": 0.05, "knowledge": 0.7, "finetune": 0.8}
    )
    assert combined["ladder_range"]["knowledge"] == [0.6, 0.8]
    assert combined["rounds"][0]["book_up_rate"] == pytest.approx(0.7)
    assert "+ open book (after round 1)" in ladder_table(combined) and "(60%-80%)" in ladder_table(combined)
