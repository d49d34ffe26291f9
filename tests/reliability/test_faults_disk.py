"""Faults: the disk fills up, or the adapters folder cannot be written, during a training run.

The errors are real ones from the kernel, made for the trainer alone: it runs in a mount namespace of its
own (`unshare --mount`) with a 64 KiB tmpfs over the staging folder (ENOSPC when the job saves the adapter)
or with the adapters folder bind-mounted read-only (EROFS, which stops root too, where chmod would not).
A manifest.json planted in the staging folder as a link to /dev/full gives ENOSPC to the trainer's own
write after training. Each time the run fails with the cause in TrainingRun.error and v1 keeps serving.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from sqlalchemy import Engine as Database

from store.models import AdapterVersion
from store.settings import Settings
from tests.fixtures.ci import missing_prerequisite
from tests.reliability.support.training_faults import (
    ROOT,
    RUNNER,
    assert_registry_serves,
    claim,
    in_background,
    leftovers,
    next_run_succeeds,
    run_row,
    versions,
    wait_for,
)
from trainer.runner import run_cycle

FULL = 'mount -t tmpfs -o size=64k tmpfs "$1"'  # the adapter alone is over 128 KiB
READ_ONLY = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1"'


def private_mounts() -> list[str]:
    """The command prefix that gives a process mounts of its own (as root, or in a user namespace)."""
    for prefix in (["unshare", "--mount"], ["unshare", "--user", "--map-root-user", "--mount"]):
        if shutil.which("unshare") and subprocess.run([*prefix, "true"], capture_output=True).returncode == 0:
            return prefix
    missing_prerequisite("no private mount namespace here (unshare --mount needs root or user namespaces)")


def run_with_mount(settings: Settings, run_id: int, mount: str, target: Path, tmp_path: Path) -> None:
    """Run the claimed run in a trainer process that sees `mount` over `target`, and nobody else does."""
    settings_file = tmp_path / "settings.json"
    settings_file.write_text(settings.model_dump_json())
    command = ["sh", "-c", f'{mount} && shift && exec "$@"', "sh", str(target)]
    trainer = subprocess.run(
        [*private_mounts(), *command, *RUNNER, str(settings_file), str(run_id)],
        cwd=ROOT,
        env=os.environ | {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert trainer.returncode == 0, trainer.stdout + trainer.stderr  # the trainer itself survives


def test_a_full_disk_while_the_adapter_is_saved_fails_the_run_with_the_cause(
    sqlite_database: Database, quick_settings: Settings, serving_v1: AdapterVersion, tmp_path: Path
) -> None:
    run_id = claim(sqlite_database)
    run_with_mount(quick_settings, run_id, FULL, quick_settings.adapters_dir / ".staging", tmp_path)

    run = run_row(sqlite_database, run_id)
    assert run.status == "failed" and "trainer.job failed (exit 1)" in (run.error or "")
    assert "No space left on device" in (run.error or "")
    assert list(versions(sqlite_database)) == ["v1"]
    assert_registry_serves(sqlite_database, quick_settings, active="v1")
    assert leftovers(quick_settings) == []
    next_run_succeeds(sqlite_database, quick_settings, "v2")


def test_a_full_disk_while_the_manifest_is_written_rejects_the_reserved_name(
    sqlite_database: Database, quick_settings: Settings, serving_v1: AdapterVersion
) -> None:
    run_id = claim(sqlite_database)
    finished = in_background(
        lambda: run_cycle(settings=quick_settings, database=sqlite_database, run_id=run_id)
    )
    staging = wait_for(
        lambda: next((quick_settings.adapters_dir / ".staging").glob(f"run-{run_id}-*"), None),
        120,
        "the run's staging folder",
    )
    (staging / "manifest.json").symlink_to("/dev/full")  # written by the trainer after the job and gate

    run = finished()

    assert run.status == "failed" and "No space left on device" in (run.error or "")
    v2 = versions(sqlite_database)["v2"]  # its name was reserved just before the manifest
    assert (v2.status, v2.path) == ("rejected", None)
    assert "registering it failed: [Errno 28] No space left on device" in (v2.status_reason or "")
    assert not (quick_settings.adapters_dir / "v2").exists()
    assert_registry_serves(sqlite_database, quick_settings, active="v1")
    assert leftovers(quick_settings) == []
    next_run_succeeds(sqlite_database, quick_settings, "v3")


def test_a_read_only_adapters_folder_fails_the_run_before_any_training(
    sqlite_database: Database, quick_settings: Settings, serving_v1: AdapterVersion, tmp_path: Path
) -> None:
    run_id = claim(sqlite_database)
    run_with_mount(quick_settings, run_id, READ_ONLY, quick_settings.adapters_dir, tmp_path)

    run = run_row(sqlite_database, run_id)
    assert run.status == "failed" and "Read-only file system" in (run.error or "")
    assert str(quick_settings.adapters_dir / ".staging") in (run.error or "")  # where it could not write
    assert run.step is None  # it failed before spending any time training
    assert list(versions(sqlite_database)) == ["v1"]
    assert_registry_serves(sqlite_database, quick_settings, active="v1")
    assert leftovers(quick_settings) == []
