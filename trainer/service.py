"""The trainer service: APScheduler decides when to train; the database decides who trains, and what next.

One service serves every scope (each server's own adapter, and the global one):
- a cron job (TRAIN_SCHEDULE_CRON, UTC) queues a `schedule` run for every scope with new votes since its last
  run; it lives in APScheduler's SQLAlchemy job store in the same database, so a run missed while the service
  was down still happens once at start;
- every TRAIN_CHECK_INTERVAL_S a check settles every scope's canary, queues a `threshold` run for each scope
  where enough new votes arrived, fails runs whose holder died (stale heartbeat), and claims and runs the
  queued run (`/retrain`, schedule or threshold) that has waited longest across scopes;
- claiming takes one lock in the database, passes over scopes with a run in training and refuses while
  TRAIN_CONCURRENCY runs have a live heartbeat, so any number of services (on any number of machines) share
  the work: one run per scope at a time, and the scope that has waited longest goes next.
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

from store import communities, crud, registry, runs
from store.db import write_transaction
from store.models import AdapterVersion, TrainingRun
from store.scopes import GLOBAL
from store.settings import Settings
from trainer.runner import ProgressHook, abandon_version, run_cycle, serving_version

logger = logging.getLogger(__name__)

JOBS_TABLE = "apscheduler_jobs"
SCHEDULE_JOB = "gradschool-scheduled-training"  # the cron job's id ("-<scope>" for a one-scope service)
# APScheduler's persistent store keeps a job as a reference to a module-level function plus pickled
# arguments, so the scheduled job takes no settings or database (no secrets in the job table); it queues
# through the database and settings of the service running in this process.
_service: tuple[Database, Settings] | None = None


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
    *, database: Database, settings: Settings, scope: str = GLOBAL
) -> TrainingRun | None:
    """Queue a `threshold` run for the scope when TRAIN_MIN_NEW_VOTES votes arrived on what teaches it since
    its last run (0 = never)."""
    if settings.train.min_new_votes == 0:
        return None
    with Session(database) as session:
        new_votes = _votes_since_last_run(session, scope)
        if new_votes < settings.train.min_new_votes:
            return None
        logger.info("%s: %s new votes since the last run: queueing a training run", scope, new_votes)
        return runs.queue_training_run(session=session, reason="threshold", scope=scope)


def queue_on_schedule(
    *, database: Database, settings: Settings, scope: str | None = None
) -> list[TrainingRun]:
    """Queue a `schedule` run for every scope (only `scope`, when given) with new votes since its last run."""
    with Session(database) as session:
        scopes = _scopes(session, settings, scope)
    queued = []
    for each in scopes:
        with Session(database) as session:  # one each: a commit expires the rows the session returned before
            if _votes_since_last_run(session, each) > 0:
                queued.append(runs.queue_training_run(session=session, reason="schedule", scope=each))
    return queued


def _votes_since_last_run(session: Session, scope: str) -> int:
    last = runs.latest_run(session=session, scope=scope)
    return crud.count_votes_since(session=session, since=last.created_at if last else None, scope=scope)


def _scopes(session: Session, settings: Settings, scope: str | None) -> list[str]:
    """The scopes the service queues runs for: `scope` alone when given; else every known one, or only the
    global one under TRAIN_SCOPE=global. (The global scope's pool has votes only from global rows and sharing
    servers: with neither, nothing queues it.)"""
    if scope is not None:
        return [scope]
    if settings.train.scope == GLOBAL:
        return [GLOBAL]
    return communities.known_scopes(session=session)


def settle_canary(*, database: Database, settings: Settings, scope: str = GLOBAL) -> AdapterVersion | None:
    """Promote or roll back the scope's newest candidate once it and what serves the scope beside it (its
    active version; for a server without one, the global one) each have enough live votes on its replies."""
    train = settings.train
    with Session(database) as session:
        candidates = [
            v for v in registry.list_versions(session=session, scope=scope) if v.status == "candidate"
        ]
        if not candidates:
            return None
        candidate, serving = candidates[0], serving_version(session=session, scope=scope)
        serving_name = serving.name if serving else None
        votes = _votes_by_adapter(session, scope, since=candidate.created_at)
        (cand_up, cand_down), (serving_up, serving_down) = (
            votes.get(candidate.name, (0, 0)),
            votes.get(serving_name, (0, 0)),
        )
        cand_total, serving_total = cand_up + cand_down, serving_up + serving_down
        if cand_total < train.canary_min_votes or serving_total < train.canary_min_votes:
            return None
        cand_rate, serving_rate = cand_up / cand_total, serving_up / serving_total
        summary = f"canary 👍 rate {cand_rate:.2f} vs {serving_name or 'base'} {serving_rate:.2f}"
        if cand_rate >= serving_rate - train.canary_margin:
            logger.info("promoting %s: %s", candidate.name, summary)
            return registry.activate(session=session, name=candidate.name, reason=summary)
        logger.info("rolling back canary %s: %s", candidate.name, summary)
        return registry.set_status(session=session, name=candidate.name, status="rejected", reason=summary)


def _votes_by_adapter(session: Session, scope: str, *, since: datetime) -> dict[str | None, tuple[int, int]]:
    """Live (👍, 👎) per adapter on the replies that judge the scope's adapter (for the global one, the
    pool's)."""
    pooled: dict[str | None, tuple[int, int]] = {}
    for member in communities.training_scopes(session=session, scope=scope):
        for adapter, (up, down) in crud.votes_by_adapter(session=session, scope=member, since=since).items():
            pooled_up, pooled_down = pooled.get(adapter, (0, 0))
            pooled[adapter] = (pooled_up + up, pooled_down + down)
    return pooled


def check(
    *,
    database: Database,
    settings: Settings,
    scope: str | None = None,
    on_progress: ProgressHook | None = None,
) -> TrainingRun | None:
    """One pass of the service over every scope (only `scope`, when given): say it is alive, settle the
    canaries, queue runs on new feedback, then claim and run the queued run that has waited longest."""
    with Session(database) as session:
        detail = {
            "scope": scope or "all",
            "concurrency": settings.train.concurrency,
            "check_interval_s": settings.train.check_interval_s,
            "pid": os.getpid(),
        }
        runs.beat_service(session=session, name=runs.TRAINER_SERVICE, detail=detail)
        canaries = {v.scope for v in registry.serving_versions(session=session) if v.status == "candidate"}
        scopes = _scopes(session, settings, scope)
    for each in sorted(canaries if scope is None else canaries & {scope}):
        settle_canary(database=database, settings=settings, scope=each)
    for each in scopes:
        queue_if_enough_feedback(database=database, settings=settings, scope=each)
    with Session(database) as session:
        run = runs.claim_longest_waiting(
            session=session,
            stale_after=timedelta(seconds=settings.train.heartbeat_timeout_s),
            concurrency=settings.train.concurrency,
            scopes=None if scope is None else [scope],
        )
    if run is None:
        return None
    logger.info("training run %s (%s, %s) started", run.id, run.reason, run.scope)
    return run_cycle(
        settings=settings, database=database, run_id=run.id, scope=run.scope, on_progress=on_progress
    )


def queue_scheduled_runs(scope: str | None = None) -> None:
    """The cron job: `queue_on_schedule` in the database of the service running in this process."""
    if _service is None:
        raise RuntimeError("queue_scheduled_runs runs inside `serve`, which opens the database first")
    database, settings = _service
    for run in queue_on_schedule(database=database, settings=settings, scope=scope):
        logger.info("scheduled training: run %s queued for %s", run.id, run.scope)


def _add_schedule(scheduler: BlockingScheduler, settings: Settings, scope: str | None) -> None:
    """The cron job that queues `schedule` runs, kept in the database so a missed firing still happens."""
    scheduler.add_job(
        "trainer.service:queue_scheduled_runs",
        CronTrigger.from_crontab(settings.train.schedule_cron, timezone=UTC),
        kwargs={"scope": scope},
        id=_schedule_job_id(scope),
        replace_existing=True,  # every service start writes the current schedule
        coalesce=True,  # many missed firings while down: queue once
        misfire_grace_time=24 * 3600,
    )


def _schedule_job_id(scope: str | None) -> str:
    return SCHEDULE_JOB if scope is None else f"{SCHEDULE_JOB}-{scope}"


def build_scheduler(
    *, database: Database, settings: Settings, scope: str | None = None, schedule: bool = True
) -> BlockingScheduler:
    """The scheduler with the persistent cron job (unless `schedule` is off) and the check, not started;
    both serve every scope, or only `scope` when given."""
    jobs = SQLAlchemyJobStore(engine=database, tablename=JOBS_TABLE)
    with Session(database) as session, write_transaction(session, lock="gradschool.apscheduler"):
        # Create the job table under the write lock: two services starting together on SQLite would both
        # see it missing and one CREATE would fail with "database is locked" instead of waiting.
        jobs.jobs_t.create(session.connection(), checkfirst=True)
        if scope is None:  # earlier services served the global scope alone, under its job: this one covers it
            legacy = jobs.jobs_t.c.id == _schedule_job_id(GLOBAL)
            session.connection().execute(jobs.jobs_t.delete().where(legacy))
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
    *, database: Database, settings: Settings, scope: str | None, schedule: bool = True
) -> BlockingScheduler:
    """Fail what a dead process left running, and build the scheduler the cron job queues through."""
    global _service
    _service = database, settings
    recover(database=database, settings=settings)
    return build_scheduler(database=database, settings=settings, scope=scope, schedule=schedule)


def serve_in_background(
    *, database: Database, settings: Settings, scope: str | None = None, schedule: bool = True
) -> Callable[[], None]:
    """Run the service (every scope, or only `scope`) in a thread of this process (simulations); returns the
    function that stops it."""
    scheduler = _prepare(database=database, settings=settings, scope=scope, schedule=schedule)
    thread = threading.Thread(target=scheduler.start, name="gradschool-trainer", daemon=True)
    thread.start()

    def stop() -> None:
        scheduler.shutdown(wait=True)  # a cycle in progress finishes first
        thread.join()

    return stop


def serve(*, database: Database, settings: Settings, scope: str | None = None) -> None:
    """Run the trainer service for every scope (only `scope`, when given) until SIGINT or SIGTERM."""
    scheduler = _prepare(database=database, settings=settings, scope=scope)

    def stop(signum: int, _frame: FrameType | None) -> None:
        logger.info("signal %s: stopping the trainer service", signum)
        scheduler.shutdown(wait=False)

    signal.signal(signal.SIGTERM, stop)
    logger.info(
        "trainer service for %s: schedule %r (UTC), checks every %.0f s, %s run(s) at once",
        scope or "every scope",
        settings.train.schedule_cron,
        settings.train.check_interval_s,
        settings.train.concurrency,
    )
    try:
        scheduler.start()
    except KeyboardInterrupt:
        scheduler.shutdown(wait=False)
