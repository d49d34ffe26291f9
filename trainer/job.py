"""One training job: SFT with LoRA, then DPO or KTO, on the datasets in a work folder; saves the adapter.

Reads top to bottom like TRL's `scripts/sft.py`. trainer.runner writes the work folder (settings.json and
{sft,dpo,kto}.jsonl) and runs this in a child process:

    python -m trainer.job --work WORK --output STAGING [--run-id N] [--parent ADAPTER] [--served ADAPTER]
    accelerate launch --num_processes 2 -m trainer.job --work WORK --output STAGING   # several GPUs (or CPUs)

It writes the adapter (only the trained LoRA weights) to --output and what happened to WORK/training.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path
from typing import Any, cast

import torch
from datasets import Dataset, concatenate_datasets, load_dataset
from peft import LoraConfig, PeftModel
from transformers import PreTrainedModel
from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer, SFTConfig, SFTTrainer

from engine.loading import base_model_id, load_base_model
from store.db import make_engine
from store.models import Method
from store.settings import Settings, TrainSettings, load_settings
from trainer import mining, reward
from trainer.anchored import AnchoredSFTTrainer
from trainer.progress import RunProgress


def read_settings(work: Path) -> Settings:
    """The settings the service wrote for this job (the Discord section, with its token, is never written)."""
    return load_settings(env_file=None, **json.loads((work / "settings.json").read_text()))


def choose_method(*, dpo_pairs: int, kto_liked: int, kto_disliked: int, settings: TrainSettings) -> Method:
    """DPO with enough pairs, else KTO with enough votes of both kinds, else SFT only."""
    if dpo_pairs >= settings.dpo_min_pairs:
        return "sft+dpo"
    if kto_liked + kto_disliked >= settings.kto_min_examples and kto_liked and kto_disliked:
        return "sft+kto"
    return "sft"


def kto_weights(*, liked: int, disliked: int) -> tuple[float, float]:
    """(desirable_weight, undesirable_weight) putting liked*w_d / (disliked*w_u) at 7/6, inside [1, 4/3].

    TRL's KTO guide asks for that ratio to lie in [1, 4/3]; the minority side is the one weighted up.
    """
    target = 7 / 6
    if liked < disliked:
        return target * disliked / liked, 1.0
    return 1.0, liked / (disliked * target)


def planned_steps(examples: int, epochs: float, settings: TrainSettings, world_size: int) -> int:
    """Optimizer steps a stage will take (for the progress bar before it starts)."""
    if settings.max_steps is not None:
        return settings.max_steps
    batches = math.ceil(examples / (settings.batch_size * world_size))
    return max(1, math.ceil(math.ceil(batches / settings.gradient_accumulation_steps) * epochs))


def training_arguments(settings: Settings, work: Path) -> dict[str, Any]:
    """What SFTConfig, DPOConfig and KTOConfig share: batch, precision, logging, no checkpoints."""
    train = settings.train
    on_cuda = torch.cuda.is_available() and settings.model.device in ("auto", "cuda")
    return {
        "output_dir": str(work / "checkpoints"),
        "per_device_train_batch_size": train.batch_size,
        "gradient_accumulation_steps": train.gradient_accumulation_steps,
        "gradient_checkpointing": train.gradient_checkpointing,
        "max_steps": train.max_steps or -1,
        "max_length": train.max_length,
        "logging_steps": train.logging_steps,
        "save_strategy": "no",  # the job saves the adapter once, at the end; a dead job leaves nothing
        "report_to": "none",
        "seed": train.seed,
        "bf16": on_cuda and torch.cuda.is_bf16_supported(),
        "use_cpu": not on_cuda,
        "disable_tqdm": True,  # progress goes to the run row; the parent draws the bar
        "ddp_find_unused_parameters": False,  # LoRA trains every adapter it adds; no search needed
    }


def read_corrections(work: Path) -> int:
    """How many written corrections the datasets drew on (the runner's feedback.json; 0 without one)."""
    path = work / "feedback.json"
    return int(json.loads(path.read_text())["corrections"]) if path.is_file() else 0


def add_ranked_answers(
    datasets: dict[str, Dataset],
    model: PreTrainedModel,
    tokenizer: Any,
    settings: Settings,
    served: Path | None = None,
) -> dict[str, Any]:
    """Extend SFT and DPO with fresh answers the vote reward model ranks (trainer.reward); its report.
    `served`: the adapter in service, which writes the candidates when TRAIN_VOTE_REWARD_FROM_SERVED is on."""
    train = settings.train
    prompts = reward.train_prompts(datasets, limit=train.vote_reward_prompts, seed=train.seed)
    sft, dpo, report = reward.augment(
        model,
        tokenizer,
        voted=list(datasets["kto"]),
        prompts=prompts,
        train=train,
        max_new_tokens=settings.model.max_new_tokens,
        served=served if train.vote_reward_from_served else None,
    )
    if sft:
        datasets["sft"] = concatenate_datasets([datasets["sft"], Dataset.from_list(sft)])
    if dpo:
        extra = Dataset.from_list(dpo)
        datasets["dpo"] = concatenate_datasets([datasets["dpo"], extra]) if "dpo" in datasets else extra
    return report


def main(
    work: Path,
    output: Path,
    run_id: int | None = None,
    parent: Path | None = None,
    served: Path | None = None,
) -> dict[str, Any]:
    """Train and save one adapter; returns (and writes to WORK/training.json) the method and metrics.
    `parent`: the adapter to continue from; `served`: the adapter answering the scope now (None: the base)."""
    settings = read_settings(work)
    train = settings.train
    common = training_arguments(settings, work)
    datasets: dict[str, Dataset] = {
        kind: load_dataset("json", data_files=str(work / f"{kind}.jsonl"), split="train")
        for kind in ("sft", "dpo", "kto")
        if (work / f"{kind}.jsonl").stat().st_size > 0
    }
    # The loss goes on the answers only (TRL's prompt-completion form: completion_only_loss): fitting the
    # questions and the system prompt would move the model's general text for nothing the community voted on.
    datasets["sft"] = datasets["sft"].map(
        lambda row: {"prompt": row["messages"][:-1], "completion": row["messages"][-1:]},
        remove_columns=["messages"],
    )
    # The base model on the CPU in the training dtype; the Trainer moves it to this process's device.
    dtype = "bfloat16" if common["bf16"] else "float32"
    cpu_model = settings.model.model_copy(update={"device": "cpu", "dtype": dtype})
    base, tokenizer = load_base_model(settings.model_copy(update={"model": cpu_model}))
    metrics: dict[str, Any] = {"base_model": base_model_id(settings)}
    if train.vote_reward_candidates and "kto" in datasets:
        corrections = read_corrections(work)
        if mining.corrections_teach(corrections, train):
            metrics["vote_reward"] = {
                "used": False,
                "why": f"{corrections} written corrections to learn from",
            }
        else:
            metrics["vote_reward"] = add_ranked_answers(datasets, base, tokenizer, settings, served)
    # The rows of a style the votes preferred are the model's own answers (the base's or the served
    # adapter's): no anchor to hold them back.
    kl_coef = train.vote_reward_kl_coef if metrics.get("vote_reward", {}).get("style") else train.kl_coef

    kto_liked = sum(datasets["kto"]["label"]) if "kto" in datasets else 0
    kto_disliked = len(datasets["kto"]) - kto_liked if "kto" in datasets else 0
    method = choose_method(
        dpo_pairs=len(datasets.get("dpo", [])), kto_liked=kto_liked, kto_disliked=kto_disliked, settings=train
    )
    metrics["method"] = method
    model: PreTrainedModel | PeftModel = base
    peft_config: LoraConfig | None = LoraConfig(
        r=train.lora_r,
        lora_alpha=train.lora_alpha,
        lora_dropout=train.lora_dropout,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )
    if parent is not None:  # continue from the active adapter: train its weights further, same shape
        model = PeftModel.from_pretrained(model, parent, is_trainable=True)
        peft_config = None

    world = int(os.environ.get("WORLD_SIZE", "1"))  # set by accelerate launch / torchrun
    preference = {"sft+dpo": "dpo", "sft+kto": "kto"}.get(method)
    sft_steps = planned_steps(len(datasets["sft"]), train.epochs, train, world)
    pref_steps = (
        planned_steps(len(datasets[preference]), train.preference_epochs, train, world) if preference else 0
    )
    progress = RunProgress(
        database=make_engine(settings.database_url) if run_id is not None else None,
        run_id=run_id,
        every=train.logging_steps,
        planned_total=sft_steps + pref_steps,
    )

    # Stage 1: SFT on liked replies and corrections.
    sft_trainer = AnchoredSFTTrainer(
        kl_coef=kl_coef,
        model=model,
        args=SFTConfig(**common, learning_rate=train.learning_rate, num_train_epochs=train.epochs),
        train_dataset=datasets["sft"],
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[progress],
    )
    metrics["sft"] = sft_trainer.train().metrics
    model = cast(PeftModel, sft_trainer.model)  # LoRA SFT leaves the PEFT-wrapped model
    trainer: SFTTrainer | DPOTrainer | KTOTrainer = sft_trainer

    # Stage 2: preferences. With a PEFT model and no ref_model, TRL copies the SFT adapter as the reference.
    if preference is not None:
        progress.next_stage(sft_trainer.state.global_step, pref_steps)
        if preference == "dpo":
            trainer = DPOTrainer(
                model=model,
                args=DPOConfig(
                    **common,
                    learning_rate=train.preference_learning_rate,
                    num_train_epochs=train.preference_epochs,
                    beta=train.beta,
                ),
                train_dataset=datasets["dpo"],
                processing_class=tokenizer,
                callbacks=[progress],
            )
        else:
            desirable, undesirable = kto_weights(liked=kto_liked, disliked=kto_disliked)
            trainer = KTOTrainer(
                model=model,
                args=KTOConfig(
                    **common,
                    learning_rate=train.preference_learning_rate,
                    num_train_epochs=train.preference_epochs,
                    beta=train.beta,
                    desirable_weight=desirable,
                    undesirable_weight=undesirable,
                ),
                train_dataset=datasets["kto"],
                processing_class=tokenizer,
                callbacks=[progress],
            )
            metrics["kto_weights"] = {"desirable": desirable, "undesirable": undesirable}
        metrics[preference] = trainer.train().metrics

    # Save only the trained adapter ("default"), not the frozen reference copy TRL added beside it.
    if trainer.accelerator.is_main_process:
        adapter = trainer.accelerator.unwrap_model(trainer.model)
        adapter.save_pretrained(str(output), selected_adapters=["default"])
        metrics["world_size"] = world
        if torch.cuda.is_available():
            metrics["peak_gpu_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
        metrics["distributed"] = {
            "type": str(trainer.accelerator.distributed_type),
            "backend": torch.distributed.get_backend() if torch.distributed.is_initialized() else None,
        }
        (work / "training.json").write_text(json.dumps(metrics, indent=2))
    trainer.accelerator.wait_for_everyone()
    return metrics


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--work", type=Path, required=True, help="Folder with settings.json and the datasets."
    )
    parser.add_argument("--output", type=Path, required=True, help="Empty folder the adapter is saved into.")
    parser.add_argument("--run-id", type=int, default=None, help="TrainingRun row to report progress to.")
    parser.add_argument("--parent", type=Path, default=None, help="Adapter folder to continue training from.")
    parser.add_argument(
        "--served", type=Path, default=None, help="Adapter folder answering the scope now (default: base)."
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = parse_args()
    started = time.perf_counter()
    main(args.work, args.output, run_id=args.run_id, parent=args.parent, served=args.served)
    print(f"trained in {time.perf_counter() - started:.1f} s -> {args.output}", flush=True)
