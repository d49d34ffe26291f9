"""The trainer service: APScheduler decides when to train; the database decides who trains.

- a cron job (TRAIN_SCHEDULE_CRON, UTC) queues a `schedule` run; it lives in APScheduler's SQLAlchemy job
  store in the same database, so a run missed while the service was down still happens once at start;
- every TRAIN_CHECK_INTERVAL_S a check fails runs whose holder died (stale heartbeat), queues a `threshold`
  run when enough new votes arrived, settles a canary, and claims and runs the oldest queued run (`/retrain`);
- claiming takes a per-scope lock in the database and refuses while another run has a live heartbeat, so any
  number of services (on any number of machines) train one at a time.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from types import FrameType

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import Engine as Database
from sqlmodel import Session

from store import crud, registry, runs
from store.db import write_transaction
from store.models import AdapterVersion, TrainingRun
from store.settings import Settings
from trainer.runner import ProgressHook, abandon_version, run_cycle

logger = logging.getLogger(__name__)

JOBS_TABLE = "apscheduler_jobs"
# APScheduler's persistent store keeps a job as a reference to a module-level function plus pickled
# arguments, so the scheduled job takes no settings or database (no secrets in the job table); it queues
# through the database of the service running in this process.
_database: Database | None = None


def recover(*, database: Database, settings: Settings) -> list[TrainingRun]:
    """At start-up: fail the runs left `running` by a process that died (no heartbeat within the timeout).

    What they left is cleaned: their work and staging folders, and a version name reserved but never
    registered (its process died while moving the adapter into place).
    """
    with Session(database) as session:
        stale = runs.fail_stale_runs(
            session=session, stale_after=timedelta(seconds=settings.train.heartbeat_timeout_s)
        )
    for run in stale:
        logger.warning("training run %s was left running by a dead process; marked failed", run.id)
        for work in (settings.data_dir / "work").glob(f"run-{run.id}-*"):  # its inputs, on this machine
            shutil.rmtree(work, ignore_errors=True)
        # and the adapter it was saving, never registered
        for staging in (settings.adapters_dir / ".staging").glob(f"run-{run.id}-*"):
            shutil.rmtree(staging, ignore_errors=True)
    for scope in sorted({run.scope for run in stale}):
        with Session(database) as session:
            if runs.latest_run(session=session, scope=scope, status="running") is not None:
                continue  # a live trainer works in this scope: a version in training may be its own
            reserved = [
                v.name for v in registry.list_versions(session=session, scope=scope) if v.status == "training"
            ]
        for name in reserved:  # named by a trainer that died before the version was registered
            # its folder is in place only if the rename was done, in the transaction that never committed
            abandon_version(
                database, settings, name, reason="its trainer died before registering it", moved=True
            )
    return stale


def queue_if_enough_feedback(
    *, database: Database, settings: Settings, scope: str = "global"
) -> TrainingRun | None:
    """Queue a `threshold` run when TRAIN_MIN_NEW_VOTES votes arrived since the last run (0 = never)."""
    if settings.train.min_new_votes == 0:
        return None
    with Session(database) as session:
        last = runs.latest_run(session=session, scope=scope)
        new_votes = crud.count_votes_since(
            session=session, since=last.created_at if last else None, scope=scope
        )
        if new_votes < settings.train.min_new_votes:
            return None
        logger.info("%s new votes since the last run: queueing a training run", new_votes)
        return runs.queue_training_run(session=session, reason="threshold", scope=scope)


def settle_canary(*, database: Database, settings: Settings, scope: str = "global") -> AdapterVersion | None:
    """Promote or roll back the newest candidate once it and the active one each have enough live votes."""
    train = settings.train
    with Session(database) as session:
        candidates = [
            v for v in registry.list_versions(session=session, scope=scope) if v.status == "candidate"
        ]
        if not candidates:
            return None
        candidate, active = candidates[0], registry.active_version(session=session, scope=scope)
        active_name = active.name if active else None
        votes = crud.votes_by_adapter(session=session, scope=scope, since=candidate.created_at)
        (cand_up, cand_down), (active_up, active_down) = (
            votes.get(candidate.name, (0, 0)),
            votes.get(active_name, (0, 0)),
        )
        cand_total, active_total = cand_up + cand_down, active_up + active_down
        if cand_total < train.canary_min_votes or active_total < train.canary_min_votes:
            return None
        cand_rate, active_rate = cand_up / cand_total, active_up / active_total
        summary = f"canary 👍 rate {cand_rate:.2f} vs {active_name or 'base'} {active_rate:.2f}"
        if cand_rate >= active_rate - train.canary_margin:
            logger.info("promoting %s: %s", candidate.name, summary)
            return registry.activate(session=session, name=candidate.name, reason=summary)
        logger.info("rolling back canary %s: %s", candidate.name, summary)
        return registry.set_status(session=session, name=candidate.name, status="rejected", reason=summary)


def check(
    *, database: Database, settings: Settings, scope: str = "global", on_progress: ProgressHook | None = None
) -> TrainingRun | None:
    """One pass of the service: say it is alive, settle a canary, queue on new feedback, claim and run a
    queued run."""
    with Session(database) as session:
        detail = {"scope": scope, "check_interval_s": settings.train.check_interval_s, "pid": os.getpid()}
        runs.beat_service(session=session, name=runs.TRAINER_SERVICE, detail=detail)
    settle_canary(database=database, settings=settings, scope=scope)
    queue_if_enough_feedback(database=database, settings=settings, scope=scope)
    with Session(database) as session:
        run = runs.claim_run_if_idle(
            session=session, stale_after=timedelta(seconds=settings.train.heartbeat_timeout_s), scope=scope
        )
    if run is None:
        return None
    logger.info("training run %s (%s) started", run.id, run.reason)
    return run_cycle(
        settings=settings, database=database, run_id=run.id, scope=scope, on_progress=on_progress
    )


def queue_scheduled_run(scope: str = "global") -> None:
    """The cron job: queue a `schedule` run (the next check claims it)."""
    if _database is None:
        raise RuntimeError("queue_scheduled_run runs inside `serve`, which opens the database first")
    with Session(_database) as session:
        run = runs.queue_training_run(session=session, reason="schedule", scope=scope)
    logger.info("scheduled training: run %s queued", run.id)


def _add_schedule(scheduler: BlockingScheduler, settings: Settings, scope: str) -> None:
    """The cron job that queues a `schedule` run, kept in the database so a missed firing still happens."""
    scheduler.add_job(
        "trainer.service:queue_scheduled_run",
        CronTrigger.from_crontab(settings.train.schedule_cron, timezone=UTC),
        kwargs={"scope": scope},
        id=f"gradschool-scheduled-training-{scope}",
        replace_existing=True,  # every service start writes the current schedule
        coalesce=True,  # many missed firings while down: queue once
        misfire_grace_time=24 * 3600,
    )


def build_scheduler(
    *, database: Database, settings: Settings, scope: str = "global", schedule: bool = True
) -> BlockingScheduler:
    """The scheduler with the persistent cron job (unless `schedule` is off) and the check, not started."""
    jobs = SQLAlchemyJobStore(engine=database, tablename=JOBS_TABLE)
    with Session(database) as session, write_transaction(session, lock="gradschool.apscheduler"):
        # Create the job table under the write lock: two services starting together on SQLite would both
        # see it missing and one CREATE would fail with "database is locked" instead of waiting.
        jobs.jobs_t.create(session.connection(), checkfirst=True)
    scheduler = BlockingScheduler(
        jobstores={"default": jobs, "memory": MemoryJobStore()},
        executors={"default": ThreadPoolExecutor(max_workers=2)},
        timezone=UTC,
    )
    if schedule:
        _add_schedule(scheduler, settings, scope)
    scheduler.add_job(
        check,
        IntervalTrigger(seconds=settings.train.check_interval_s, timezone=UTC),
        kwargs={"database": database, "settings": settings, "scope": scope},
        id="gradschool-check",
        jobstore="memory",
        max_instances=1,  # a check that is training blocks the next one in this process
        coalesce=True,
        next_run_time=datetime.now(UTC),
    )
    return scheduler


def _prepare(
    *, database: Database, settings: Settings, scope: str, schedule: bool = True
) -> BlockingScheduler:
    """Fail what a dead process left running, and build the scheduler the cron job queues through."""
    global _database
    _database = database
    recover(database=database, settings=settings)
    return build_scheduler(database=database, settings=settings, scope=scope, schedule=schedule)


def serve_in_background(
    *, database: Database, settings: Settings, scope: str = "global", schedule: bool = True
) -> Callable[[], None]:
    """Run the service in a thread of this process (simulations); returns the function that stops it."""
    scheduler = _prepare(database=database, settings=settings, scope=scope, schedule=schedule)
    thread = threading.Thread(target=scheduler.start, name="gradschool-trainer", daemon=True)
    thread.start()

    def stop() -> None:
        scheduler.shutdown(wait=True)  # a cycle in progress finishes first
        thread.join()

    return stop


def serve(*, database: Database, settings: Settings, scope: str = "global") -> None:
    """Run the trainer service until SIGINT or SIGTERM."""
    scheduler = _prepare(database=database, settings=settings, scope=scope)

    def stop(signum: int, _frame: FrameType | None) -> None:
        logger.info("signal %s: stopping the trainer service", signum)
        scheduler.shutdown(wait=False)

    signal.signal(signal.SIGTERM, stop)
    logger.info(
        "trainer service: schedule %r (UTC), checks every %.0f s",
        settings.train.schedule_cron,
        settings.train.check_interval_s,
    )
    try:
        scheduler.start()
    except KeyboardInterrupt:
        scheduler.shutdown(wait=False)
