"""A full training cycle on the tiny real model: the adapter learns, the base stays, the registry knows."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import torch
from peft import PeftModel
from safetensors.torch import load_file
from sqlalchemy import Engine as Database
from sqlmodel import Session
from transformers import AutoModelForCausalLM

from sim.seeding import RATERS, prompt, question, seed_community
from store import crud, registry, runs
from store.datasets import build_datasets
from store.models import TrainingRun
from store.scopes import GLOBAL, guild_scope
from store.settings import Settings
from tests.fixtures.communities import register, seed_scope
from trainer.job import choose_method, kto_weights
from trainer.runner import run_cycle, skip_reason


def folder_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def claim(database: Database, reason: str = "admin", scope: str = GLOBAL) -> int:
    with Session(database) as session:
        runs.queue_training_run(session=session, reason=reason, scope=scope)  # type: ignore[arg-type]
        run = runs.claim_run_if_idle(session=session, stale_after=timedelta(minutes=5), scope=scope)
    assert run is not None and run.id is not None
    return run.id


def test_full_job_trains_lora_only_and_registers_a_complete_adapter(
    sqlite_database: Database, train_settings: Settings, tiny_model_dir: Path
) -> None:
    with Session(sqlite_database) as session:
        seed_community(session, prompts=24)
    base_before = folder_digest(tiny_model_dir)
    seen: list[TrainingRun] = []

    run = run_cycle(
        settings=train_settings,
        database=sqlite_database,
        run_id=claim(sqlite_database),
        on_progress=seen.append,
    )

    assert run is not None and run.status == "succeeded", run and run.error
    assert run.step == run.total_steps == 8  # 4 SFT + 4 DPO steps (TRAIN_MAX_STEPS=4)
    assert run.loss is not None and any(r.step for r in seen)  # progress was visible while it ran
    with Session(sqlite_database) as session:
        version = registry.active_version(session=session)
    assert version is not None and version.name == run.adapter_version == "v1"
    assert version.method == "sft+dpo" and version.dataset_counts["dpo"] > 0
    assert version.metrics["gate"]["pref_accuracy"] is not None
    folder = Path(version.path or "")
    assert folder == train_settings.adapters_dir / "v1"
    assert not list((train_settings.adapters_dir / ".staging").iterdir())  # moved, not copied

    # LoRA weights changed from their start (PEFT starts lora_B at zero), base weights are not in the adapter
    weights = load_file(folder / "adapter_model.safetensors")
    assert weights and all("lora_" in name for name in weights)
    assert all(w.abs().sum() > 0 for name, w in weights.items() if "lora_B" in name)
    config = json.loads((folder / "adapter_config.json").read_text())
    targets = {name.rsplit(".", 1)[-1] for name in config["target_modules"]}
    assert targets == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }  # all-linear
    # ... and the base model is untouched: on disk, and through the adapter with the adapter switched off
    assert folder_digest(tiny_model_dir) == base_before
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    ids = torch.tensor([[1, 5, 9, 42, 7]])
    with torch.no_grad():
        expected = base(ids).logits
        tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), folder).eval()
        assert not torch.allclose(tuned(ids).logits, expected)
        with tuned.disable_adapter():
            assert torch.allclose(tuned(ids).logits, expected)

    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["name"] == "v1" and manifest["base_model"] == str(tiny_model_dir)
    assert manifest["method"] == "sft+dpo" and manifest["parent"] is None
    assert manifest["dataset"]["counts"] == version.dataset_counts
    assert set(manifest["dataset"]["hashes"]) >= {"sft", "dpo", "kto", "sft_holdout"}
    assert manifest["settings"]["train"]["lora_r"] == train_settings.train.lora_r
    assert manifest["metrics"]["gate"]["passed"] is True
    assert manifest["metrics"]["training"]["sft"]["train_samples_per_second"] > 0
    assert set(manifest["versions"]) >= {"python", "torch", "transformers", "trl", "peft", "datasets"}


def test_canary_mode_registers_a_candidate_and_the_same_data_again_is_skipped(
    sqlite_database: Database, train_settings: Settings
) -> None:
    with Session(sqlite_database) as session:
        seed_community(session, prompts=24)
    canary = train_settings.train.model_copy(update={"promotion": "canary", "canary_share": 0.2})
    settings = train_settings.model_copy(update={"train": canary})
    first = run_cycle(settings=settings, database=sqlite_database, run_id=claim(sqlite_database))
    assert first is not None and first.status == "succeeded"
    with Session(sqlite_database) as session:
        assert registry.active_version(session=session) is None  # the base still serves everyone else
        candidate = registry.get_version(session=session, name="v1")
    assert (
        candidate is not None and candidate.status == "candidate" and candidate.metrics["canary_share"] == 0.2
    )
    again = run_cycle(settings=settings, database=sqlite_database, run_id=claim(sqlite_database))
    assert (
        again is not None and again.status == "skipped" and "no new feedback since v1" in (again.error or "")
    )
    assert again.step is None  # no training time spent


def test_too_little_data_is_skipped(sqlite_database: Database, train_settings: Settings) -> None:
    with Session(sqlite_database) as session:
        seed_community(session, prompts=2)
    run = run_cycle(settings=train_settings, database=sqlite_database, run_id=claim(sqlite_database))
    assert run is not None and run.status == "skipped" and "too little data" in (run.error or "")
    with Session(sqlite_database) as session:
        assert registry.list_versions(session=session) == []


def test_gate_failure_rejects_and_leaves_service_untouched(
    sqlite_database: Database, train_settings: Settings, make_tiny_adapter
) -> None:
    with Session(sqlite_database) as session:
        seed_community(session, prompts=24)
        name = registry.next_version_name(session=session)
        staged = make_tiny_adapter(registry.staging_dir(train_settings.adapters_dir), 1)
        registry.register_adapter(
            session=session,
            name=name,
            staging=staged,
            adapters_dir=train_settings.adapters_dir,
            base_model="tiny",
            method="sft",
            status="active",
        )
    strict = train_settings.model_copy(
        update={"train": train_settings.train.model_copy(update={"gate_min_reward_margin": 1e9})}
    )
    run = run_cycle(settings=strict, database=sqlite_database, run_id=claim(sqlite_database))
    assert run is not None and run.status == "rejected" and "reward margin" in (run.error or "")
    with Session(sqlite_database) as session:
        assert registry.active_version(session=session).name == "v1"  # type: ignore[union-attr]
        rejected = registry.get_version(session=session, name="v2")
    assert rejected is not None and rejected.status == "rejected"
    assert "reward margin" in rejected.metrics["gate_reason"]
    assert rejected.metrics["gate"]["active_nll"] is not None  # compared with v1, not the base


def test_a_servers_first_adapter_starts_from_the_base_and_is_gated_against_the_global_one(
    sqlite_database: Database, train_settings: Settings, make_tiny_adapter
) -> None:
    server = guild_scope(10**17 + 1)
    with Session(sqlite_database) as session:
        seed_scope(session, server, prompts=24, correct_every=6)
    register(sqlite_database, train_settings, make_tiny_adapter, "v1", "active", seed=1)  # the global one
    # continuing from the active adapter is asked for, but the global one is not the server's to continue
    strict = train_settings.train.model_copy(
        update={"continue_from_active": True, "gate_min_reward_margin": 1e9}
    )
    settings = train_settings.model_copy(update={"train": strict})

    run = run_cycle(
        settings=settings, database=sqlite_database, run_id=claim(sqlite_database, scope=server), scope=server
    )

    assert run is not None and run.status == "rejected" and run.adapter_version == "v2", run and run.error
    manifest = json.loads((settings.adapters_dir / "v2" / "manifest.json").read_text())
    assert (manifest["parent"], manifest["compared_with"]) == (None, "v1")
    config = json.loads((settings.adapters_dir / "v2" / "adapter_config.json").read_text())
    assert "k_proj" in str(config["target_modules"])  # a fresh LoRA of the job's shape, not v1's (q, v, o)
    with Session(sqlite_database) as session:
        version = registry.get_version(session=session, name="v2")
        assert version is not None and version.scope == server and version.parent is None
        assert version.metrics["gate"]["active_nll"] is not None  # judged against v1, which serves the server
        assert registry.active_version(session=session, scope=server) is None
        assert registry.active_version(session=session).name == "v1"  # type: ignore[union-attr]


def test_few_liked_answers_are_enough_where_the_votes_will_be_mined(
    sqlite_database: Database, train_settings: Settings
) -> None:
    """A community that only votes likes a few answers a round: the vote reward model writes SFT rows of its
    own, so the run goes ahead instead of waiting rounds for four liked answers."""
    with Session(sqlite_database) as session:
        seed_community(session, prompts=3, regenerate_every=100, correct_every=0)  # 3 liked answers
        for i in range(12):  # and a dozen disliked ones
            reply = crud.record_generation(session=session, prompt=prompt(question(100 + i)), completion="no")
            assert reply.id
            crud.record_feedback(session=session, generation_id=reply.id, rater_id=RATERS[i % 4], value=-1)
        everything = train_settings.train.model_copy(update={"holdout_fraction": 0.0})
        data = build_datasets(session=session, settings=everything)
    assert 0 < len(data.train["sft"]) < train_settings.train.min_sft_examples
    mining = train_settings.train.model_copy(update={"vote_reward_candidates": 6})
    assert skip_reason(data, None, mining) is None
    assert "too little data" in (skip_reason(data, None, train_settings.train) or "")  # mining off
    corrected = mining.model_copy(update={"vote_reward_max_corrections": 0})  # corrections teach instead
    assert "too little data" in (skip_reason(data, None, corrected) or "")
    few_votes = data.train["kto"][:9]  # under the probe's ten: nothing to mine
    fewer = replace(data, train=data.train | {"kto": few_votes})
    assert "too little data" in (skip_reason(fewer, None, mining) or "")


def test_method_choice_and_kto_weights_follow_the_settings(train_settings: Settings) -> None:
    train = train_settings.train  # dpo_min_pairs=4, kto_min_examples=4
    assert choose_method(dpo_pairs=4, kto_liked=0, kto_disliked=0, settings=train) == "sft+dpo"
    assert choose_method(dpo_pairs=3, kto_liked=3, kto_disliked=1, settings=train) == "sft+kto"
    assert choose_method(dpo_pairs=3, kto_liked=4, kto_disliked=0, settings=train) == "sft"
    for liked, disliked in [(30, 10), (10, 30), (5, 5)]:
        desirable, undesirable = kto_weights(liked=liked, disliked=disliked)
        ratio = desirable * liked / (undesirable * disliked)
        assert 1 <= ratio <= 4 / 3  # TRL's KTO guide


def test_plain_votes_train_kto_and_a_later_run_can_continue_from_the_active_adapter(
    sqlite_database: Database, train_settings: Settings
) -> None:
    with Session(sqlite_database) as session:
        seed_community(session, prompts=12, regenerate_every=100, correct_every=0)  # one 🔁 pair only
        for i in range(6):  # disliked answers to prompts nobody asked again: no pairs, only KTO's labels
            reply = crud.record_generation(session=session, prompt=prompt(question(100 + i)), completion="no")
            assert reply.id
            crud.record_feedback(session=session, generation_id=reply.id, rater_id=RATERS[i], value=-1)
    # a lenient gate: this test is about the KTO path, not about how good 4 steps of KTO are
    lenient = {
        "gate_min_pref_accuracy": 0.0,
        "gate_min_reward_margin": -1e9,
        "gate_nll_regression_bound": 1e9,
    }
    settings = train_settings.model_copy(update={"train": train_settings.train.model_copy(update=lenient)})
    first = run_cycle(settings=settings, database=sqlite_database, run_id=claim(sqlite_database))
    assert first is not None and first.status == "succeeded", first and first.error
    v1 = settings.adapters_dir / "v1"
    manifest = json.loads((v1 / "manifest.json").read_text())
    assert manifest["method"] == "sft+kto"
    weights = manifest["metrics"]["training"]["kto_weights"]
    assert weights["desirable"] == 1.0 and weights["undesirable"] > 1.0  # fewer disliked: weighted up
    with Session(sqlite_database) as session:  # one held-out vote is no proof: live votes would settle v1
        assert registry.get_version(session=session, name="v1").status == "candidate"  # type: ignore[union-attr]
        registry.activate(session=session, name="v1", reason="its canary won")

    with Session(sqlite_database) as session:
        seed_community(session, prompts=4, start=40, regenerate_every=100, correct_every=0)
    # and the votes are mined with answers the adapter in service (v1) writes
    mining = {"vote_reward_candidates": 2, "vote_reward_prompts": 4, "vote_reward_min_auc": 0.5}
    onward = settings.model_copy(
        update={"train": settings.train.model_copy(update={"continue_from_active": True} | mining)}
    )
    second = run_cycle(settings=onward, database=sqlite_database, run_id=claim(sqlite_database))
    assert second is not None and second.status == "succeeded", second and second.error
    with Session(sqlite_database) as session:
        v2 = registry.get_version(session=session, name="v2")
    assert v2 is not None and v2.parent == "v1" and v2.status in ("active", "candidate")
    manifest = json.loads((settings.adapters_dir / "v2" / "manifest.json").read_text())
    assert manifest["parent"] == "v1"
    mined = manifest["metrics"]["training"]["vote_reward"]
    assert mined["used"] and mined["written_by"] == "v1", mined
