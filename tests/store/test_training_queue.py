"""One training queue for every scope: the longest wait first, one run per scope, TRAIN_CONCURRENCY in all."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlmodel import Session

from store import runs
from store.models import TrainingRun

BUSY, QUIET, THIRD = "guild:1", "guild:2", "guild:3"  # BUSY sorts first: name order would starve QUIET
LIVE = timedelta(minutes=5)


def claim(session: Session, concurrency: int = 1) -> str | None:
    """The scope of the run claimed, or None."""
    run = runs.claim_longest_waiting(session=session, stale_after=LIVE, concurrency=concurrency)
    return None if run is None else run.scope


def finish(session: Session, scope: str) -> None:
    run = runs.latest_run(session=session, scope=scope, status="running")
    assert run is not None and run.id is not None, f"no run of {scope} is training"
    runs.finish_run(session=session, run_id=run.id, status="succeeded")


def test_a_busy_scope_cannot_starve_a_quiet_one(session: Session) -> None:
    runs.queue_training_run(session=session, reason="threshold", scope=BUSY)
    runs.queue_training_run(session=session, reason="admin", scope=QUIET)
    claimed = []
    for _ in range(4):
        scope = claim(session)
        assert scope is not None
        claimed.append(scope)
        # the busy server's votes queue its next run while one trains; the queue keeps its place in line
        runs.queue_training_run(session=session, reason="threshold", scope=BUSY)
        finish(session, scope)
    assert claimed == [BUSY, QUIET, BUSY, BUSY]


def test_concurrency_one_trains_one_run_across_all_scopes(session: Session) -> None:
    for scope in (BUSY, QUIET):
        runs.queue_training_run(session=session, reason="admin", scope=scope)
    assert claim(session) == BUSY
    assert claim(session) is None  # QUIET waits although nothing of its own trains
    finish(session, BUSY)
    assert claim(session) == QUIET


def test_concurrency_two_trains_two_scopes_but_never_two_runs_of_one(session: Session) -> None:
    for scope in (BUSY, QUIET):
        runs.queue_training_run(session=session, reason="admin", scope=scope)
    assert claim(session, 2) == BUSY
    runs.queue_training_run(session=session, reason="admin", scope=BUSY)  # waits behind QUIET's
    assert claim(session, 2) == QUIET
    runs.queue_training_run(session=session, reason="admin", scope=THIRD)
    assert claim(session, 2) is None  # two train: no third slot
    finish(session, QUIET)
    assert claim(session, 2) == THIRD  # BUSY waited longer, but its own run still trains
    finish(session, THIRD)
    assert claim(session, 2) is None
    finish(session, BUSY)
    assert claim(session, 2) == BUSY


def test_a_stale_run_frees_its_slot(session: Session) -> None:
    for scope in (BUSY, QUIET):
        runs.queue_training_run(session=session, reason="admin", scope=scope)
    assert claim(session) == BUSY
    runs.queue_training_run(session=session, reason="admin", scope=BUSY)
    # its trainer died: no heartbeat within the timeout
    claimed = runs.claim_longest_waiting(session=session, stale_after=timedelta(0), concurrency=1)
    assert claimed is not None and claimed.scope == QUIET
    dead = runs.latest_run(session=session, scope=BUSY, status="failed")
    assert dead is not None and "no heartbeat" in (dead.error or "")


def test_a_claim_can_be_kept_to_some_scopes(session: Session) -> None:
    for scope in (BUSY, QUIET):
        runs.queue_training_run(session=session, reason="admin", scope=scope)
    claimed = runs.claim_longest_waiting(session=session, stale_after=LIVE, concurrency=2, scopes=[QUIET])
    assert claimed is not None and claimed.scope == QUIET
    assert (
        runs.claim_longest_waiting(session=session, stale_after=LIVE, concurrency=2, scopes=[QUIET]) is None
    )
    with pytest.raises(ValueError, match="concurrency"):
        runs.claim_longest_waiting(session=session, stale_after=LIVE, concurrency=0)


def test_claiming_one_scope_when_idle_ignores_the_others(session: Session) -> None:
    for scope in (BUSY, QUIET):
        runs.queue_training_run(session=session, reason="admin", scope=scope)
    assert claim(session) == BUSY
    # `gradschool train --now` claims its own scope's run whatever else trains
    mine = runs.claim_run_if_idle(session=session, stale_after=LIVE, scope=QUIET)
    assert isinstance(mine, TrainingRun) and mine.scope == QUIET
    runs.queue_training_run(session=session, reason="admin", scope=QUIET)
    assert runs.claim_run_if_idle(session=session, stale_after=LIVE, scope=QUIET) is None
