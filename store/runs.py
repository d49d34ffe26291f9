"""Training runs: the queue the bot writes and the trainer claims, progress, heartbeats and outcomes.

Same convention as `store.crud`: the caller's session first, keyword-only arguments, and every writer
commits before it returns. One run per scope trains at a time, and at most TRAIN_CONCURRENCY across scopes;
a run whose heartbeat went stale is failed, so a crashed trainer cannot hold a slot forever.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import timedelta
from typing import Any

from sqlmodel import Session, col, select

from store.db import get_for_update, loaded, write_transaction
from store.models import RUN_REASONS, RunReason, RunStatus, ServiceBeat, TrainingRun, utcnow

FINISHED: tuple[RunStatus, ...] = ("succeeded", "failed", "rejected", "skipped")
TRAINER_SERVICE = "trainer"  # the ServiceBeat name the trainer service beats under, each check
_CLAIM_LOCK = "gradschool.runs.claim"


def queue_training_run(
    *,
    session: Session,
    reason: RunReason,
    scope: str = "global",
    requested_by: int | None = None,
    notify_channel_id: int | None = None,
    notify_message_id: int | None = None,
) -> TrainingRun:
    """Ask the trainer for a run; while one is already queued for the scope, that one is returned."""
    if reason not in RUN_REASONS:
        raise ValueError(f"reason must be one of {RUN_REASONS}, got {reason!r}")
    with write_transaction(session, lock=f"gradschool.runs.{scope}"):
        run = session.exec(
            select(TrainingRun).where(TrainingRun.scope == scope, TrainingRun.status == "queued")
        ).first()
        if run is None:
            run = TrainingRun(
                scope=scope,
                reason=reason,
                requested_by=requested_by,
                notify_channel_id=notify_channel_id,
                notify_message_id=notify_message_id,
            )
            session.add(run)
    return loaded(session, run)


def claim_next_run(*, session: Session, scope: str = "global") -> TrainingRun | None:
    """Move the oldest queued run to running and return it; two claimers never get the same run."""
    with write_transaction(session):
        run = _oldest_queued(session, scope)
        if run is not None:
            _start(run)
    return None if run is None else loaded(session, run)


def _oldest_queued(session: Session, scope: str) -> TrainingRun | None:
    # SKIP LOCKED: on Postgres a second claimer passes over the row the first holds; on SQLite,
    # BEGIN IMMEDIATE already makes claimers take turns.
    return session.exec(
        select(TrainingRun)
        .where(TrainingRun.scope == scope, TrainingRun.status == "queued")
        .order_by(col(TrainingRun.created_at), col(TrainingRun.id))
        .limit(1)
        .with_for_update(skip_locked=True)
    ).first()


def _start(run: TrainingRun) -> None:
    run.status = "running"
    run.started_at = run.heartbeat_at = utcnow()


def _fail_stale(run: TrainingRun) -> None:
    run.status, run.finished_at = "failed", utcnow()
    run.error = (
        f"no heartbeat since {run.heartbeat_at:%Y-%m-%d %H:%M:%S} UTC: its trainer crashed or was killed"
    )


def update_run_progress(
    *, session: Session, run_id: int, step: int, total_steps: int, loss: float | None
) -> TrainingRun:
    """Record a running run's progress and heartbeat; raises if the run is no longer running."""
    with write_transaction(session):
        run = get_for_update(session, TrainingRun, run_id)
        if run.status != "running":
            raise ValueError(f"training run {run_id} is {run.status}, not running")
        run.step, run.total_steps, run.loss, run.heartbeat_at = step, total_steps, loss, utcnow()
    return loaded(session, run)


def finish_run(
    *,
    session: Session,
    run_id: int,
    status: RunStatus,
    error: str | None = None,
    adapter_version: str | None = None,
) -> TrainingRun:
    """End a queued or running run as succeeded, failed or rejected."""
    if status not in FINISHED:
        raise ValueError(f"a run finishes as one of {FINISHED}, got {status!r}")
    with write_transaction(session):
        run = get_for_update(session, TrainingRun, run_id)
        if run.status in FINISHED:
            raise ValueError(f"training run {run_id} already finished as {run.status}")
        run.status, run.error, run.adapter_version, run.finished_at = status, error, adapter_version, utcnow()
    return loaded(session, run)


def fail_stale_runs(*, session: Session, stale_after: timedelta) -> list[TrainingRun]:
    """Fail running runs whose trainer stopped sending heartbeats (it crashed or was killed)."""
    with write_transaction(session):
        cutoff = utcnow() - stale_after
        stale = list(
            session.exec(
                select(TrainingRun)
                .where(TrainingRun.status == "running", col(TrainingRun.heartbeat_at) < cutoff)
                .with_for_update()  # a run finishing right now must not be failed behind its back
            )
        )
        for run in stale:
            _fail_stale(run)
    return [loaded(session, run) for run in stale]


def latest_run(
    *, session: Session, scope: str = "global", status: RunStatus | None = None
) -> TrainingRun | None:
    """The newest training run of the scope (of that status, when given)."""
    statement = select(TrainingRun).where(TrainingRun.scope == scope)
    if status is not None:
        statement = statement.where(TrainingRun.status == status)
    return session.exec(
        statement.order_by(col(TrainingRun.created_at).desc(), col(TrainingRun.id).desc())
    ).first()


def beat_run(*, session: Session, run_id: int) -> TrainingRun:
    """Refresh a running run's heartbeat (its holder is alive) without touching its progress."""
    with write_transaction(session):
        run = get_for_update(session, TrainingRun, run_id)
        if run.status != "running":
            raise ValueError(f"training run {run_id} is {run.status}, not running")
        run.heartbeat_at = utcnow()
    return loaded(session, run)


def claim_run_if_idle(
    *, session: Session, stale_after: timedelta, scope: str = "global"
) -> TrainingRun | None:
    """Claim the scope's oldest queued run unless another of the scope is running with a live heartbeat.

    Runs whose heartbeat is older than `stale_after` are failed first, so a crashed holder cannot keep the
    scope's training slot forever. Runs of other scopes do not count (`claim_longest_waiting` limits them).
    """
    return _claim(session, stale_after=stale_after, scopes=[scope], concurrency=None)


def claim_longest_waiting(
    *, session: Session, stale_after: timedelta, concurrency: int, scopes: Collection[str] | None = None
) -> TrainingRun | None:
    """Claim the queued run that has waited longest in any scope (of `scopes`, when given) with no run of its
    own training, while fewer than `concurrency` runs of any scope are training; else None.

    A scope has at most one queued run, so oldest-first serves the scopes in turn by how long they waited: a
    busy server never starves a quiet one. Stale runs (no heartbeat within `stale_after`) are failed first.
    """
    if concurrency < 1:
        raise ValueError(f"concurrency is at least 1, got {concurrency}")
    return _claim(session, stale_after=stale_after, scopes=scopes, concurrency=concurrency)


def _claim(
    session: Session, *, stale_after: timedelta, scopes: Collection[str] | None, concurrency: int | None
) -> TrainingRun | None:
    # One lock for every claimer of every scope: two never both see a slot free, whatever scope they claim.
    with write_transaction(session, lock=_CLAIM_LOCK):
        cutoff = utcnow() - stale_after
        live: list[TrainingRun] = []
        for run in session.exec(select(TrainingRun).where(TrainingRun.status == "running")):
            if run.heartbeat_at is not None and run.heartbeat_at >= cutoff:
                live.append(run)
            else:
                _fail_stale(run)
        if concurrency is not None and len(live) >= concurrency:
            return None
        waiting = select(TrainingRun).where(
            TrainingRun.status == "queued", col(TrainingRun.scope).not_in({run.scope for run in live})
        )
        if scopes is not None:
            waiting = waiting.where(col(TrainingRun.scope).in_(scopes))
        oldest = waiting.order_by(col(TrainingRun.created_at), col(TrainingRun.id)).limit(1)
        claimed = session.exec(oldest.with_for_update(skip_locked=True)).first()  # as in _oldest_queued
        if claimed is not None:
            _start(claimed)
    return None if claimed is None else loaded(session, claimed)


def runs_awaiting_notice(*, session: Session) -> list[TrainingRun]:
    """Runs whose progress message someone is waiting on and whose result is not posted yet: unfinished
    ones, and ones that ended while no bot was following them (the bot resumes following both)."""
    statement = (
        select(TrainingRun)
        .where(col(TrainingRun.notify_message_id).is_not(None), col(TrainingRun.notified_at).is_(None))
        .order_by(col(TrainingRun.id))
    )
    return list(session.exec(statement))


def mark_notified(*, session: Session, run_id: int) -> TrainingRun:
    """The bot posted the run's result (or gave up on it for good): nobody follows it again."""
    with write_transaction(session):
        run = get_for_update(session, TrainingRun, run_id)
        run.notified_at = utcnow()
    return loaded(session, run)


def beat_service(*, session: Session, name: str, detail: dict[str, Any]) -> ServiceBeat:
    """Record that service `name` is alive now, with what it is configured to do."""
    with write_transaction(session):
        beat = session.get(ServiceBeat, name) or ServiceBeat(name=name)
        beat.beat_at, beat.detail = utcnow(), detail
        session.add(beat)
    return loaded(session, beat)


def service_beat(*, session: Session, name: str) -> ServiceBeat | None:
    """Service `name`'s last sign of life, if it ever gave one."""
    return session.get(ServiceBeat, name)
