"""The vote reward model: a probe that learns what votes separate, refuses what it cannot, feeds the job."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from sqlalchemy import Engine as Database
from sqlmodel import Session

from sim.seeding import RATERS, prompt, question, seed_community
from store import crud
from store.datasets import build_datasets
from store.settings import Settings
from trainer import job, reward
from trainer.runner import write_work


def test_the_probe_learns_a_separable_taste_and_finds_nothing_in_noise() -> None:
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(60, 16, generator=generator)
    labels = (features[:, 3] > 0).float()  # the taste lives in one direction of the features
    assert reward.cross_validated_auc(features, labels, seed=0) > 0.9
    probe = reward.fit(features, labels)
    fresh = torch.randn(40, 16, generator=generator)
    scores = probe.liked_probability(fresh)
    assert reward.auc(scores.tolist(), (fresh[:, 3] > 0).float().tolist()) > 0.85
    noise = (torch.rand(60, generator=generator) > 0.5).float()  # votes unrelated to the features
    assert reward.cross_validated_auc(features, noise, seed=0) < 0.7


def test_auc_counts_ties_as_half() -> None:
    assert reward.auc([0.9, 0.8, 0.1], [1, 1, 0]) == 1.0
    assert reward.auc([0.1, 0.9], [1, 0]) == 0.0
    assert reward.auc([0.5, 0.5], [1, 0]) == 0.5
    assert reward.auc([0.3, 0.4], [1, 1]) == 0.5  # no disliked answer: no evidence either way


def voted(liked: int, disliked: int) -> list[dict]:
    def row(i: int, good: bool) -> dict:
        answer = "Short and sweet." if good else "a long rambling answer that never ends and " * 3
        prompt = [{"role": "user", "content": f"Question {i}?"}]
        return {"prompt": prompt, "completion": [{"role": "assistant", "content": answer}], "label": good}

    return [row(i, True) for i in range(liked)] + [row(100 + i, False) for i in range(disliked)]


def test_augment_ranks_sampled_answers_only_when_the_probe_learned_the_votes(
    train_settings: Settings,
) -> None:
    from engine.loading import load_base_model

    model, tokenizer = load_base_model(train_settings)
    train = train_settings.train.model_copy(
        update={"vote_reward_candidates": 3, "vote_reward_min_auc": 0.7, "vote_reward_temperature": 1.0}
    )
    prompts = [[{"role": "user", "content": f"New question {i}?"}] for i in range(3)]
    sft, dpo, report = reward.augment(
        model, tokenizer, voted=voted(8, 8), prompts=prompts, train=train, max_new_tokens=8
    )
    assert report["used"] and report["cv_auc"] >= 0.7 and report["votes"] == 16
    assert report["sft"] == len(sft) <= 3 and report["dpo"] == len(dpo) <= 3
    for row in sft:
        assert row["prompt"] in prompts and row["completion"][0]["role"] == "assistant"
    for pair in dpo:
        assert pair["chosen"] != pair["rejected"]

    # the same answer liked by some and disliked by others: nothing to learn, so nothing is added
    same = [
        row
        | {"prompt": [{"role": "user", "content": f"Question {i % 4}?"}]}
        | {"completion": [{"role": "assistant", "content": "Same."}]}
        for i, row in enumerate(voted(8, 8))
    ]
    none = reward.augment(model, tokenizer, voted=same, prompts=prompts, train=train, max_new_tokens=8)
    assert none[:2] == ([], []) and not none[2]["used"] and none[2]["cv_auc"] < 0.7
    few = reward.augment(model, tokenizer, voted=voted(1, 10), prompts=prompts, train=train, max_new_tokens=8)
    assert few[2] == {"votes": 11, "liked": 1, "used": False, "why": "too few votes of each kind"}


def test_the_adapter_in_service_writes_the_candidates_and_the_base_model_is_left_as_it_was(
    train_settings: Settings, make_tiny_adapter: Callable[[Path, int], Path], tmp_path: Path
) -> None:
    from engine.loading import load_base_model

    model, tokenizer = load_base_model(train_settings)
    train = train_settings.train.model_copy(
        update={"vote_reward_candidates": 6, "vote_reward_min_auc": 0.7, "vote_reward_temperature": 1.0}
    )
    prompts = [[{"role": "user", "content": f"New question {i}?"}] for i in range(4)]
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    before = model(input_ids=ids).logits

    def written(served: Path | None) -> tuple[set[str], dict]:
        sft, dpo, report = reward.augment(
            model, tokenizer, voted=voted(8, 8), prompts=prompts, train=train, max_new_tokens=8, served=served
        )
        answers = {row["completion"][0]["content"] for row in sft}
        answers |= {pair[side][0]["content"] for pair in dpo for side in ("chosen", "rejected")}
        return answers, report

    served = make_tiny_adapter(tmp_path / "gs-v3", 1)
    by_base, base_report = written(None)
    by_served, served_report = written(served)
    assert base_report["written_by"] == "base model" and served_report["written_by"] == "gs-v3"
    assert by_base and by_served and by_base != by_served  # same seed, another writer: other answers
    assert torch.equal(model(input_ids=ids).logits, before)  # the adapter went out of the layers again
    assert not any("lora" in name for name, _ in model.named_modules())
    assert written(None)[0] == by_base


def test_the_job_reports_what_the_vote_reward_model_added(
    sqlite_database: Database, train_settings: Settings, tmp_path: Path
) -> None:
    with Session(sqlite_database) as session:
        seed_community(session, prompts=24, correct_every=0, regenerate_every=100)
        for i in range(8):  # disliked answers to prompts nobody asked again
            reply = crud.record_generation(session=session, prompt=prompt(question(100 + i)), completion="no")
            assert reply.id
            crud.record_feedback(session=session, generation_id=reply.id, rater_id=RATERS[i % 4], value=-1)
        data = build_datasets(session=session, settings=train_settings.train)
    settings = train_settings.model_copy(
        update={
            "train": train_settings.train.model_copy(
                update={"vote_reward_candidates": 2, "vote_reward_prompts": 4, "vote_reward_min_auc": 0.5}
            )
        }
    )
    work = tmp_path / "work"
    write_work(work, settings, data)
    metrics = job.main(work, tmp_path / "adapter")
    report = json.loads((work / "training.json").read_text())["vote_reward"]
    assert report == metrics["vote_reward"] and report["votes"] == len(data.train["kto"])
    assert report["used"], report  # "no" against the seeded answers: plain to see
    assert report["cv_auc"] >= 0.5 and report["prompts"] == 4 and report["sft"] <= 4 and report["dpo"] <= 4
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()


def test_where_people_write_corrections_the_votes_are_not_mined(
    sqlite_database: Database, train_settings: Settings, tmp_path: Path
) -> None:
    with Session(sqlite_database) as session:
        seed_community(session, prompts=24, correct_every=2, regenerate_every=100)
        data = build_datasets(session=session, settings=train_settings.train)
    assert data.corrections >= train_settings.train.vote_reward_max_corrections
    settings = train_settings.model_copy(
        update={"train": train_settings.train.model_copy(update={"vote_reward_candidates": 2})}
    )
    work = tmp_path / "work"
    write_work(work, settings, data)
    assert job.read_corrections(work) == data.corrections
    report = job.main(work, tmp_path / "adapter")["vote_reward"]
    assert report == {"used": False, "why": f"{data.corrections} written corrections to learn from"}


def test_the_preferred_style_is_chosen_within_each_prompt_and_taught_on_every_prompt() -> None:
    brief, detail = reward.STYLE_HINTS[1], reward.STYLE_HINTS[2]

    def asked(i: int) -> list[dict[str, str]]:
        return [{"role": "user", "content": f"Question {i}?"}]

    # Prompts 0-2 are ones the votes liked answers to (high scores); 3-5 ones they never did (low scores),
    # but within every prompt the brief answer scores above the plain one, and the detailed one below.
    scored: list[reward.Scored] = [
        (
            asked(i),
            sorted(
                [
                    (base + 1.5, f"brief {i}", brief),
                    (base, f"plain {i}", None),
                    (base - 1.0, f"long {i}", detail),
                ],
                reverse=True,
            ),
        )
        for i, base in enumerate([3.0, 3.0, 3.0, -4.0, -4.0, -4.0])
    ]
    sft, dpo, report = reward.rows_from_preferred_style(scored, liked_share=0.25)
    assert report["style"] == brief and report["style_advantage"][brief] == 1.5
    assert [row["completion"][0]["content"] for row in sft] == [f"brief {i}" for i in range(6)]
    assert [(p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in dpo] == [
        (f"brief {i}", f"plain {i}") for i in range(6)
    ]
    assert all(row["prompt"] == asked(i) for i, row in enumerate(sft))  # the hint is never in a row
    # an absolute cut (the ranking without styles) keeps only the prompts already liked
    ranked_sft, _ = reward.rows_from_ranking(scored, liked_share=0.25)
    assert {row["completion"][0]["content"] for row in ranked_sft} <= {"brief 0", "brief 1", "brief 2"}

    # a hint far ahead on one prompt but behind on most (mean advantage > 0) is no style: the plain answers
    # are ranked instead
    mixed: list[reward.Scored] = [
        (
            asked(i),
            sorted([(5.0 if i == 0 else -0.5, f"brief {i}", brief), (0.0, f"plain {i}", None)], reverse=True),
        )
        for i in range(6)
    ]
    sft, dpo, report = reward.rows_from_preferred_style(mixed, liked_share=0.5)
    assert report["style"] is None and not dpo
    assert {row["completion"][0]["content"] for row in sft} <= {f"plain {i}" for i in range(6)}
