"""What the training fault tests share: quick settings, a trainer process to run, and checks of the registry.

The fixtures built on these (`quick_settings`, `serving_v1`) are in tests/reliability/conftest.py.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import psutil
from sqlalchemy import Engine as Database
from sqlmodel import Session

from engine.engine import Engine
from store import registry, runs
from store.models import AdapterVersion, TrainingRun
from store.registry import REQUIRED_FILES
from store.settings import Settings
from trainer.runner import run_cycle

ROOT = Path(__file__).resolve().parents[3]
RUNNER = [sys.executable, "-m", "tests.reliability.support.runner_process"]  # run with cwd=ROOT
QUICK = {
    "max_steps": 2,
    "dpo_min_pairs": 10_000,  # SFT only: these tests are about the plumbing around training, not its quality
    "kto_min_examples": 10_000,
    "gate_min_pref_accuracy": 0.0,  # a gate any real adapter passes: "the next run succeeds" is certain
    "gate_min_reward_margin": -1e9,
    "gate_nll_regression_bound": 1e9,
    "gate_general_nll_bound": 1e9,
    "gate_max_degenerate_share": 1.0,
    "heartbeat_interval_s": 0.2,
    "heartbeat_timeout_s": 2,
}


def with_train(settings: Settings, **train: Any) -> Settings:
    return settings.model_copy(update={"train": settings.train.model_copy(update=train)})


def claim(database: Database) -> int:
    """Queue an admin run and claim it, as the trainer service does; returns its id."""
    with Session(database) as session:
        runs.queue_training_run(session=session, reason="admin")
        run = runs.claim_run_if_idle(session=session, stale_after=timedelta(minutes=5))
    assert run is not None and run.id is not None
    return run.id


def run_row(database: Database, run_id: int) -> TrainingRun:
    with Session(database) as session:  # a fresh session per look: one SQLite session keeps one snapshot
        run = session.get(TrainingRun, run_id)
    assert run is not None
    return run


def versions(database: Database) -> dict[str, AdapterVersion]:
    with Session(database) as session:
        return {v.name: v for v in registry.list_versions(session=session)}


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def child_running(module: str) -> psutil.Process | None:
    """This test process's descendant running `python -m <module>`, if there is one."""
    for child in psutil.Process().children(recursive=True):
        try:
            if module in child.cmdline():
                return child
        except psutil.NoSuchProcess:
            continue
    return None


def in_background(function: Callable[[], Any]) -> Callable[[], Any]:
    """Start `function` in a thread; the returned callable waits for it and gives back its result."""
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(function()), daemon=True)
    thread.start()

    def finish() -> Any:
        thread.join(timeout=600)
        assert result, "the cycle raised instead of finishing its run"
        return result[0]

    return finish


def assert_registry_serves(database: Database, settings: Settings, active: str) -> None:
    """`active` is still the active version, and every version with a folder is complete and serves."""
    with Session(database) as session:
        current = registry.active_version(session=session)
        registered = [v for v in registry.list_versions(session=session) if v.path]
    assert current is not None and current.name == active
    engine = Engine.from_settings(settings)
    for version in registered:
        folder = Path(version.path or "")
        assert all((folder / name).stat().st_size > 0 for name in REQUIRED_FILES), version.name
        engine.load_adapter(version.name, folder)  # raises AdapterLoadError for anything partial
        hello = [{"role": "user", "content": "hello"}]
        assert engine.generate(hello, adapter=version.name, max_new_tokens=2).completion_tokens > 0


def leftovers(settings: Settings) -> list[str]:
    """Staging and work folders still on disk (a finished or recovered run leaves none)."""
    found = [*(settings.adapters_dir / ".staging").glob("*"), *(settings.data_dir / "work").glob("*")]
    return sorted(str(path.relative_to(settings.data_dir)) for path in found)


def next_run_succeeds(database: Database, settings: Settings, name: str) -> None:
    """A new run, claimed and run here, succeeds as `name`, serves, and leaves nothing behind."""
    run = run_cycle(settings=settings, database=database, run_id=claim(database))
    assert run is not None and run.status == "succeeded", run and run.error
    assert run.adapter_version == name
    assert_registry_serves(database, settings, active=name)
    assert leftovers(settings) == []
