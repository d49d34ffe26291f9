"""One training cycle: build the datasets, train and gate in child processes, register, finish the run row.

The service process never imports torch: the job (trainer.job) and the gate (trainer.gate) run as children, so
a crash or an out-of-memory kill takes only the child down, and its GPU memory goes back when it exits. While
a child runs, this process beats the run's heartbeat; if this process dies, its children are told to stop
(Linux parent-death signal) and the heartbeat goes stale, so the next start marks the run failed.
"""

from __future__ import annotations

import ctypes
import functools
import json
import logging
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

from sqlalchemy import Engine as Database
from sqlmodel import Session

from store import registry, runs
from store.datasets import KINDS, FeedbackDatasets, build_datasets, write_jsonl
from store.models import AdapterVersion, TrainingRun
from store.scopes import GLOBAL
from store.settings import Settings, TrainSettings
from trainer.mining import will_mine

logger = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
LIBRARIES = ("torch", "transformers", "trl", "peft", "datasets", "accelerate")
ProgressHook = Callable[[TrainingRun], None]


class ChildFailed(RuntimeError):
    """The job or gate process exited with an error; the message ends with its last output."""


def serving_version(*, session: Session, scope: str) -> AdapterVersion | None:
    """What answers the scope now: its active version; for a server without one, the global active version;
    None means the base model."""
    active = registry.active_version(session=session, scope=scope)
    if active is None and scope != GLOBAL:
        return registry.active_version(session=session, scope=GLOBAL)
    return active


def skip_reason(data: FeedbackDatasets, last: AdapterVersion | None, train: TrainSettings) -> str | None:
    """Why this cycle should not train at all (too little data, or nothing new since the last adapter).

    Few liked answers are not too little where the vote reward model will mine the votes: it writes SFT rows
    of its own (a community that only votes likes a few answers a round, and would otherwise wait rounds)."""
    sft = len(data.train["sft"])
    labels = [bool(row["label"]) for row in data.train["kto"]]
    mined = sft > 0 and will_mine(labels, corrections=data.corrections, train=train)
    if sft < train.min_sft_examples and not mined:
        return f"too little data: {sft} SFT examples, TRAIN_MIN_SFT_EXAMPLES={train.min_sft_examples}"
    if last is not None and last.metrics.get("dataset_hashes") == data.hashes():
        return f"no new feedback since {last.name} was trained on the same data"
    return None


def write_work(work: Path, settings: Settings, data: FeedbackDatasets) -> None:
    """The job's inputs: settings (without the Discord section and its token) and every dataset split."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "settings.json").write_text(settings.model_dump_json(exclude={"discord"}))
    (work / "feedback.json").write_text(json.dumps({"corrections": data.corrections}))
    for kind in KINDS:
        write_jsonl(data.train[kind], work / f"{kind}.jsonl")
        write_jsonl(data.holdout[kind], work / f"{kind}_holdout.jsonl")


def job_command(
    *,
    settings: Settings,
    work: Path,
    output: Path,
    run_id: int | None,
    parent: Path | None,
    served: Path | None = None,
) -> list[str]:
    """`python -m trainer.job ...`, under `accelerate launch` when TRAIN_NUM_PROCESSES > 1."""
    arguments = ["-m", "trainer.job", "--work", str(work), "--output", str(output)]
    if run_id is not None:
        arguments += ["--run-id", str(run_id)]
    if parent is not None:
        arguments += ["--parent", str(parent)]
    if served is not None:
        arguments += ["--served", str(served)]
    processes = settings.train.num_processes
    if processes == 1:
        return [sys.executable, *arguments]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes)]
    launch += ["--num_machines", "1", "--main_process_port", "0"]  # port 0: any free port
    launch += ["--multi_gpu"]
    return [*launch, *arguments]


def run_child(
    command: list[str],
    *,
    log: Path,
    database: Database | None,
    run_id: int | None,
    interval_s: float,
    on_progress: ProgressHook | None = None,
) -> None:
    """Run a child to completion, beating the run's heartbeat meanwhile; raise ChildFailed if it fails."""
    environment = os.environ | {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")])),
        "TOKENIZERS_PARALLELISM": "false",
    }
    with log.open("ab") as output:
        process = subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, env=environment, preexec_fn=_stop_with_parent
        )
        try:
            while True:
                try:
                    process.wait(timeout=interval_s)
                    break
                except subprocess.TimeoutExpired:
                    if database is not None and run_id is not None:
                        with Session(database) as session:
                            run = runs.beat_run(session=session, run_id=run_id)
                        if on_progress is not None:
                            on_progress(run)
        finally:
            if process.poll() is None:  # we are leaving early (an error, or the run was failed meanwhile)
                process.kill()
                process.wait()
    if process.returncode != 0:
        tail = log.read_text(errors="replace")[-2000:]
        how = (
            f"killed by signal {-process.returncode}"
            if process.returncode < 0
            else f"exit {process.returncode}"
        )
        raise ChildFailed(f"{command[command.index('-m') + 1]} failed ({how}):\n{tail}")


def _stop_with_parent() -> None:
    """In the child, before exec: ask Linux to send SIGTERM when the parent dies (no orphaned training)."""
    if platform.system() == "Linux":
        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def manifest(
    *,
    name: str,
    settings: Settings,
    data: FeedbackDatasets,
    training: dict[str, Any],
    gate: dict[str, Any],
    parent: str | None,
    compared_with: str | None,
    run_id: int | None,
) -> dict[str, Any]:
    """Everything needed to know what an adapter is and how it came to be: written as manifest.json."""
    return {
        "name": name,
        "base_model": training["base_model"],
        "parent": parent,
        "compared_with": compared_with or "base",
        "method": training["method"],
        "run_id": run_id,
        "created_at": datetime.now(UTC).isoformat(),
        "dataset": {"counts": data.counts(), "hashes": data.hashes(), "dropped": data.dropped},
        "settings": {"train": settings.train.model_dump(mode="json"), "model": settings.model.model_dump()},
        "metrics": {"training": training, "gate": gate},
        "versions": {"python": platform.python_version()} | {lib: version(lib) for lib in LIBRARIES},
    }


def run_cycle(
    *,
    settings: Settings,
    database: Database,
    run_id: int | None,
    scope: str = "global",
    on_progress: ProgressHook | None = None,
) -> TrainingRun | None:
    """Build, train, gate and register for the claimed run `run_id`; returns the finished run row.

    With run_id None (benchmarks) nothing is written to the run table; the registry still is.
    """
    work_root = settings.data_dir / "work"
    work_root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"run-{run_id}-", dir=work_root))
    staging: Path | None = None
    try:
        with Session(database) as session:
            data = build_datasets(session=session, settings=settings.train, scope=scope)
            versions = [v for v in registry.list_versions(session=session, scope=scope) if v.path]
            own = registry.active_version(session=session, scope=scope)
            # the gate compares with what users of the scope get now; training continues only the scope's own
            active = serving_version(session=session, scope=scope)
        reason = skip_reason(data, versions[0] if versions else None, settings.train)
        if reason is not None:
            logger.info("run %s skipped: %s", run_id, reason)
            return _finish(database, run_id, "skipped", error=reason)
        write_work(work, settings, data)
        staging = registry.staging_dir(settings.adapters_dir, prefix=f"run-{run_id}-")  # recover() finds it
        parent = Path(own.path) if settings.train.continue_from_active and own and own.path else None
        child = functools.partial(
            run_child,
            log=work / "child.log",
            database=database,
            run_id=run_id,
            interval_s=settings.train.heartbeat_interval_s,
            on_progress=on_progress,
        )
        reference = Path(active.path) if active and active.path else None
        child(
            job_command(
                settings=settings, work=work, output=staging, run_id=run_id, parent=parent, served=reference
            )
        )
        gate = [sys.executable, "-m", "trainer.gate", "--work", str(work), "--adapter", str(staging)]
        child(gate + (["--reference", str(reference)] if reference else []))
        return _register(
            settings=settings,
            database=database,
            run_id=run_id,
            scope=scope,
            data=data,
            work=work,
            staging=staging,
            parent=own.name if parent and own else None,
            compared_with=active.name if active else None,
        )
    except Exception as exc:
        logger.exception("training run %s failed", run_id)
        return _finish(database, run_id, "failed", error=str(exc)[-4000:])
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)  # gone already when it was registered


def _register(
    *,
    settings: Settings,
    database: Database,
    run_id: int | None,
    scope: str,
    data: FeedbackDatasets,
    work: Path,
    staging: Path,
    parent: str | None,
    compared_with: str | None,
) -> TrainingRun | None:
    """Name the adapter, write its manifest, move it into the registry with the gate's verdict."""
    training = json.loads((work / "training.json").read_text())
    gate = json.loads((work / "gate.json").read_text())
    decision = gate["decision"]
    passed = decision != "reject"
    # Too little held-out evidence: never activated on the gate's word; live votes settle it as a canary.
    canary = decision == "canary" or (passed and settings.train.promotion == "canary")
    metrics = {"gate": gate["metrics"], "gate_reason": gate["reason"], "dataset_hashes": data.hashes()}
    metrics["gate_decision"] = decision
    if canary:
        metrics["canary_share"] = settings.train.canary_share
    with Session(database) as session:
        name = registry.next_version_name(session=session, scope=scope)
        body = manifest(
            name=name,
            settings=settings,
            data=data,
            training=training,
            gate=gate,
            parent=parent,
            compared_with=compared_with,
            run_id=run_id,
        )
        try:
            (staging / "manifest.json").write_text(json.dumps(body, indent=2))
            registry.register_adapter(
                session=session,
                name=name,
                staging=staging,
                adapters_dir=settings.adapters_dir,
                base_model=training["base_model"],
                method=training["method"],
                parent=parent,
                dataset_counts=data.counts(),
                metrics=metrics,
                status="candidate" if passed else "rejected",
                reason=gate["reason"],
            )
        except Exception as exc:  # disk full, a lost lock: the reserved name must not stay "training"
            moved = not staging.exists()  # renamed into place, but the row's commit failed
            abandon_version(database, settings, name, reason=f"registering it failed: {exc}", moved=moved)
            raise
        if canary:
            retire_older_candidates(session, name=name, scope=scope)
        elif passed:
            registry.activate(session=session, name=name, reason=f"passed the eval gate (run {run_id})")
    logger.info("run %s: %s %s (%s)", run_id, name, "passed" if passed else "rejected", gate["reason"])
    if passed:
        return _finish(database, run_id, "succeeded", adapter_version=name)
    return _finish(database, run_id, "rejected", adapter_version=name, error=gate["reason"])


def retire_older_candidates(session: Session, *, name: str, scope: str) -> None:
    """A newer candidate replaces any canary still waiting for votes: one canary at a time per scope."""
    for older in registry.list_versions(session=session, scope=scope):
        if older.status == "candidate" and older.name != name:
            registry.set_status(
                session=session,
                name=older.name,
                status="retired",
                reason=f"superseded by {name} before live votes settled it",
            )


def abandon_version(database: Database, settings: Settings, name: str, *, reason: str, moved: bool) -> None:
    """Reject a reserved version that was never registered; `moved`: remove the folder renamed in for it."""
    with Session(database) as session:
        abandoned = registry.abandon(session=session, name=name, reason=reason)
    if abandoned is None:
        return
    logger.warning("adapter version %s was never registered: %s", name, reason)
    if moved:  # renamed into place by a transaction that never committed: no row points at the folder
        shutil.rmtree(settings.adapters_dir / name, ignore_errors=True)


def _finish(
    database: Database,
    run_id: int | None,
    status: Any,
    *,
    error: str | None = None,
    adapter_version: str | None = None,
) -> TrainingRun | None:
    if run_id is None:
        return None
    with Session(database) as session:
        try:
            return runs.finish_run(
                session=session, run_id=run_id, status=status, error=error, adapter_version=adapter_version
            )
        except ValueError:  # already finished: failed as stale by another process while this one worked
            logger.warning("run %s was finished elsewhere; not marking it %s", run_id, status)
            return session.get(TrainingRun, run_id)
