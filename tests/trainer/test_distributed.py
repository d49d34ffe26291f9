"""The training entry point under `accelerate launch` with two CPU processes (DDP over gloo)."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file
from sqlalchemy import Engine as Database
from sqlmodel import Session

from sim.seeding import seed_community
from store.datasets import build_datasets
from store.settings import Settings
from trainer.runner import job_command, run_child, write_work


def test_two_process_accelerate_run_trains_one_adapter(
    sqlite_database: Database, train_settings: Settings, tmp_path: Path
) -> None:
    settings = train_settings.model_copy(
        update={"train": train_settings.train.model_copy(update={"num_processes": 2, "max_steps": 3})}
    )
    with Session(sqlite_database) as session:
        seed_community(session, prompts=16)
        data = build_datasets(session=session, settings=settings.train)
    write_work(tmp_path / "work", settings, data)
    command = job_command(
        settings=settings, work=tmp_path / "work", output=tmp_path / "adapter", run_id=None, parent=None
    )
    assert "accelerate.commands.launch" in command

    run_child(command, log=tmp_path / "job.log", database=None, run_id=None, interval_s=1.0)

    training = json.loads((tmp_path / "work" / "training.json").read_text())
    assert training["world_size"] == 2
    assert training["distributed"] == {"type": "DistributedType.MULTI_CPU", "backend": "gloo"}
    assert training["method"] == "sft+dpo"
    # 3 steps x 4 examples x 2 processes = 24 samples: more than one pass over the 14 SFT examples
    assert training["sft"]["train_samples_per_second"] > 0 and training["sft"]["epoch"] > 1
    weights = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert all(w.abs().sum() > 0 for name, w in weights.items() if "lora_B" in name)
    assert not (tmp_path / "adapter" / "ref").exists()  # only the trained adapter, not DPO's reference copy
