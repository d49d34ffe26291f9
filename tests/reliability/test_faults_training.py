"""Faults: the trainer is SIGKILLed mid-training, mid-evaluation, and while moving its adapter into place.

After each: no partial adapter is visible in the registry (every version with a folder is complete and
loads), v1 stays active, the run is failed with its cause, no staging or work folder is left, and the next
run succeeds.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import Engine as Database

from store.models import AdapterVersion
from store.settings import Settings
from tests.reliability.support.training_faults import (
    ROOT,
    RUNNER,
    assert_registry_serves,
    child_running,
    claim,
    in_background,
    leftovers,
    next_run_succeeds,
    run_row,
    versions,
    wait_for,
    with_train,
)
from trainer import service
from trainer.runner import run_cycle


@pytest.mark.parametrize("child", ["trainer.job", "trainer.gate"])
def test_a_killed_child_fails_the_run_with_its_cause_and_v1_keeps_serving(
    sqlite_database: Database, quick_settings: Settings, serving_v1: AdapterVersion, child: str
) -> None:
    # the job gets many steps to take, so it is surely mid-training when it is killed
    settings = with_train(quick_settings, max_steps=100_000) if child == "trainer.job" else quick_settings
    run_id = claim(sqlite_database)
    finished = in_background(lambda: run_cycle(settings=settings, database=sqlite_database, run_id=run_id))
    if child == "trainer.job":
        wait_for(lambda: (run_row(sqlite_database, run_id).step or 0) >= 1, 300, "training steps")
    process = wait_for(lambda: child_running(child), 300, f"{child} to start")
    process.kill()  # SIGKILL: an out-of-memory kill, a segfault in a kernel, a machine-level kill

    run = finished()

    assert run.status == "failed" and f"{child} failed (killed by signal 9)" in (run.error or "")
    assert list(versions(sqlite_database)) == ["v1"]  # nothing was registered, not even a name
    assert_registry_serves(sqlite_database, quick_settings, active="v1")
    assert leftovers(quick_settings) == []
    next_run_succeeds(sqlite_database, quick_settings, "v2")


@pytest.mark.parametrize("when", ["before-rename", "after-rename"])
def test_a_trainer_killed_while_moving_its_adapter_leaves_no_partial_version(
    sqlite_database: Database,
    quick_settings: Settings,
    serving_v1: AdapterVersion,
    tmp_path: Path,
    when: str,
) -> None:
    run_id = claim(sqlite_database)
    settings_file = tmp_path / "settings.json"
    settings_file.write_text(quick_settings.model_dump_json())
    trainer = subprocess.run(
        [*RUNNER, str(settings_file), str(run_id), "--die-at", when],
        cwd=ROOT,
        env=os.environ | {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert trainer.returncode == -9, trainer.stdout + trainer.stderr  # it died at the rename, by SIGKILL

    # what the crash left: the run still "running" (nobody was left to say otherwise), v2 named, not served
    assert run_row(sqlite_database, run_id).status == "running"
    v2 = versions(sqlite_database)["v2"]
    assert (v2.status, v2.path) == ("training", None)  # the rename's transaction never committed
    assert (quick_settings.adapters_dir / "v2").exists() == (when == "after-rename")
    assert_registry_serves(sqlite_database, quick_settings, active="v1")

    # the next start of the trainer service, once the dead run's heartbeat is stale
    recovered = wait_for(
        lambda: service.recover(database=sqlite_database, settings=quick_settings), 60, "the stale run"
    )

    assert [run.id for run in recovered] == [run_id]
    failed = run_row(sqlite_database, run_id)
    assert failed.status == "failed" and "crashed or was killed" in (failed.error or "")
    v2 = versions(sqlite_database)["v2"]
    assert v2.status == "rejected" and "died" in (v2.status_reason or "")
    assert not (quick_settings.adapters_dir / "v2").exists()  # the orphaned folder went with it
    assert leftovers(quick_settings) == []
    assert_registry_serves(sqlite_database, quick_settings, active="v1")
    next_run_succeeds(sqlite_database, quick_settings, "v3")
