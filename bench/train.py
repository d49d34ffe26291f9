"""Training benchmarks: our job's throughput against a plain TRL script, and /retrain-to-live wall time.

    python bench/train.py --json bench-train.json           # SmolLM2 on the CPU (about 10 minutes on 2 cores)
    python bench/train.py --quick --json bench-train.json   # shorter: fewer steps, 1 epoch (under 5 minutes)
    python bench/train.py --gpu --json bench-gpu.json       # a randomly initialised ~1B model on CUDA

Throughput: the same SFT+DPO steps on the same data, run by `trainer.job` (child process, progress written
to the database) and by a plain TRL script (also a child process), alternated, median of the repeats.
Retrain-to-live: with a serving engine already loaded and 200 votes in the store, the time from queueing a
/retrain run to the new adapter's first answer (the service's claim, datasets, job, gate, registry, swap).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlmodel import Session

from sim.seeding import seed_community  # the same community the tests train on
from store import crud, registry, runs
from store.datasets import build_datasets
from store.db import open_store
from store.settings import Settings, load_settings
from trainer import service
from trainer.runner import job_command, run_child, write_work

PLAIN_TRL = """
import json, sys
from datasets import load_dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

model_dir, work, steps, bf16 = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
args = dict(output_dir=work + "/plain", per_device_train_batch_size=4, max_length=1024, report_to="none",
            save_strategy="no", gradient_checkpointing=False, bf16=bf16, use_cpu=not bf16, disable_tqdm=True)
tokenizer = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="bfloat16" if bf16 else "float32")
sft = SFTTrainer(model=model, args=SFTConfig(**args, learning_rate=2e-4, max_steps=steps),
                 train_dataset=load_dataset("json", data_files=work + "/sft.jsonl", split="train"),
                 processing_class=tokenizer,
                 peft_config=LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear",
                                        task_type="CAUSAL_LM"))
metrics = {"sft": sft.train().metrics}
dpo = DPOTrainer(model=sft.model, args=DPOConfig(**args, learning_rate=5e-6, max_steps=steps, beta=0.1),
                 train_dataset=load_dataset("json", data_files=work + "/dpo.jsonl", split="train"),
                 processing_class=tokenizer)
metrics["dpo"] = dpo.train().metrics
print("METRICS " + json.dumps(metrics))
"""


def samples_per_s(metrics: dict[str, Any]) -> float:
    """Samples over training time, both stages together (what the Trainer reports per stage, combined)."""
    stages = [metrics[stage] for stage in ("sft", "dpo")]
    samples = sum(s["train_samples_per_second"] * s["train_runtime"] for s in stages)
    return samples / sum(s["train_runtime"] for s in stages)


def bench_settings(data_dir: Path, **train: Any) -> Settings:
    return load_settings(env_file=None, data_dir=data_dir, model={"device": "auto"}, train=train)


def throughput(settings: Settings, model_dir: Path, *, steps: int, repeats: int) -> dict:
    """Median samples/s of trainer.job and of the plain TRL script, run alternately on the same data."""
    settings = settings.model_copy(update={"train": settings.train.model_copy(update={"max_steps": steps})})
    database = open_store(settings)
    with Session(database) as session:
        seed_community(session, prompts=40)
        data = build_datasets(session=session, settings=settings.train)
    database.dispose()
    work = settings.data_dir / "bench-work"
    write_work(work, settings, data)
    bf16 = "1" if settings.model.device != "cpu" and _cuda() else "0"
    runs: dict[str, list[float]] = {"job": [], "plain": []}
    # The first training process after start pays one-off costs (page cache, allocator): charge no side.
    warm_up = settings.model_copy(update={"train": settings.train.model_copy(update={"max_steps": 1})})
    command = job_command(
        settings=warm_up,
        work=work,
        output=Path(tempfile.mkdtemp(dir=settings.data_dir)),
        run_id=None,
        parent=None,
    )
    run_child(command, log=work / "job.log", database=None, run_id=None, interval_s=5)
    for repeat in range(repeats):
        for which in ("job", "plain") if repeat % 2 == 0 else ("plain", "job"):
            if which == "job":
                output = Path(tempfile.mkdtemp(dir=settings.data_dir))
                command = job_command(settings=settings, work=work, output=output, run_id=None, parent=None)
                run_child(command, log=work / "job.log", database=None, run_id=None, interval_s=5)
                training = json.loads((work / "training.json").read_text())
                runs["job"].append(samples_per_s(training))
            else:
                result = subprocess.run(
                    [sys.executable, "-c", PLAIN_TRL, str(model_dir), str(work), str(steps), bf16],
                    capture_output=True,
                    text=True,
                    check=True,
                    env=os.environ | {"TOKENIZERS_PARALLELISM": "false"},
                )
                line = next(x for x in result.stdout.splitlines() if x.startswith("METRICS "))
                runs["plain"].append(samples_per_s(json.loads(line.removeprefix("METRICS "))))
            print(f"  repeat {repeat + 1}/{repeats} {which}: {runs[which][-1]:.2f} samples/s", flush=True)
    job, plain = statistics.median(runs["job"]), statistics.median(runs["plain"])
    return {
        "job_samples_per_s": job,
        "plain_trl_samples_per_s": plain,
        "ratio_vs_plain_trl": job / plain,
        "job_samples_per_s_runs": runs["job"],
        "plain_trl_samples_per_s_runs": runs["plain"],
        "steps_per_stage": steps,
        "job_peak_gpu_memory_gb": training.get("peak_gpu_memory_gb"),  # None on the CPU
    }


def retrain_to_live(settings: Settings) -> dict:
    """Seconds from queueing /retrain (200 votes in the store) to the new adapter's first answer."""
    from engine import Engine

    database = open_store(settings)
    with Session(database) as session:
        seed_community(session, prompts=50, correct_every=0)  # 50 prompts x 4 votes = 200 votes
        votes = crud.store_counts(session=session)["votes"]
    engine = Engine.from_settings(settings)  # the bot is already serving when /retrain comes
    started = time.perf_counter()
    with Session(database) as session:
        runs.queue_training_run(session=session, reason="admin")
    run = service.check(database=database, settings=settings)  # what the service's next check does
    assert run is not None and run.status == "succeeded", run and run.error
    trained = time.perf_counter()
    with Session(database) as session:
        active = registry.active_version(session=session)
    assert active is not None and active.path
    engine.load_adapter(active.name, Path(active.path))
    answer = engine.generate(
        [{"role": "user", "content": "What is the capital of France?"}],
        adapter=active.name,
        max_new_tokens=24,
        temperature=0,
    )
    live = time.perf_counter()
    database.dispose()
    return {
        "retrain_to_live_s": live - started,
        "retrain_train_and_gate_s": trained - started,
        "retrain_votes": votes,
        "retrain_method": active.method,
        "retrain_gate": {
            k: active.metrics["gate"][k] for k in ("pref_accuracy", "reward_margin", "nll", "active_nll")
        },
        "retrain_answer": answer.text,
    }


def gpu(data_dir: Path, *, steps: int) -> dict:
    """A randomly initialised ~1B Llama on CUDA: job samples/s and peak GPU memory."""
    import torch
    from random_llama import random_llama_1b
    from transformers import AutoTokenizer

    if not torch.cuda.is_available():
        raise SystemExit("--gpu needs a CUDA device")
    from engine.loading import embedded_model_dir

    small = bench_settings(data_dir / "small")
    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir(small))  # SmolLM2's tokenizer and template
    model_dir = data_dir / "random-1b"
    model = random_llama_1b(tokenizer).to(torch.bfloat16)  # type: ignore[arg-type]  # `to`: an unbound wrapper
    parameters = sum(p.numel() for p in model.parameters())
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    del model
    settings = load_settings(
        env_file=None,
        data_dir=data_dir / "gpu",
        model={"base_model": str(model_dir)},
        train={"batch_size": 4},
    )
    result = throughput(settings, model_dir, steps=steps, repeats=3)
    return {"gpu_name": torch.cuda.get_device_name(), "gpu_parameters": parameters} | {
        f"gpu_{k}": v for k, v in result.items()
    }


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", type=Path, help="Write the figures to this JSON file.")
    parser.add_argument("--quick", action="store_true", help="Fewer steps and repeats (under 5 minutes).")
    parser.add_argument("--gpu", action="store_true", help="The ~1B random model on CUDA instead.")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="gradschool-bench-") as folder:
        root = Path(folder)
        if args.gpu:
            figures = gpu(root, steps=10 if args.quick else 30)
        else:
            from engine.loading import embedded_model_dir

            cpu = bench_settings(root / "throughput")
            (root / "retrain").mkdir()
            (root / "retrain" / "models").symlink_to(cpu.model_cache_dir)  # convert SmolLM2 once
            model_dir = embedded_model_dir(cpu)
            steps, repeats = (2, 3) if args.quick else (8, 4)
            print(f"throughput: {steps} SFT + {steps} DPO steps, {repeats} repeats each", flush=True)
            figures = throughput(cpu, model_dir, steps=steps, repeats=repeats)
            print("retrain to live: 200 votes, default training settings", flush=True)
            # --quick trains one epoch, not three, to stay under 5 minutes; the full run uses the defaults
            retrain = bench_settings(root / "retrain", **({"epochs": 1.0} if args.quick else {}))
            figures |= retrain_to_live(retrain) | {"retrain_epochs": retrain.train.epochs}
        figures |= {"quick": args.quick, "cpu_count": os.cpu_count()}
    text = json.dumps(figures, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
