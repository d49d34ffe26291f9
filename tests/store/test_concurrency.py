"""Two processes, each with its own engine, doing the same write at the same moment, many times over.

A barrier releases both contenders together each round; the test checks the database between rounds. Any
exception in a contender (a lock error, a unique-index violation) fails the test.
"""

from __future__ import annotations

import multiprocessing
import queue
import traceback
from collections.abc import Callable
from datetime import timedelta
from multiprocessing.synchronize import Barrier
from typing import Any

from sqlalchemy import Engine as Database
from sqlmodel import Session, func, select

from store import crud, registry, runs
from store.db import current_revision, head_revision, make_engine, upgrade
from store.models import AdapterVersion, Message, TrainingRun

ROUNDS = 20


def _activate(session: Session, name: str, round_: int) -> Any:
    return registry.activate(session=session, name=name).name


def _activate_in_turn(session: Session, scope: str, round_: int) -> Any:
    """Activate the scope's "a" version in even rounds and its "b" version in odd ones."""
    return registry.activate(session=session, name=f"{scope}-{'ab'[round_ % 2]}").name


def _claim(session: Session, _: str, round_: int) -> Any:
    run = runs.claim_next_run(session=session)
    return run.id if run else None


def _claim_any_scope(session: Session, _: str, round_: int) -> Any:
    run = runs.claim_longest_waiting(session=session, stale_after=timedelta(minutes=5), concurrency=1)
    return run.scope if run else None


def _record(session: Session, content: str, round_: int) -> Any:
    return crud.record_message(session=session, discord_id=10**18 + round_, role="user", content=content).id


def _upgrade(session: Session, _: str, round_: int) -> Any:
    database = session.get_bind().engine
    upgrade(database)
    return current_revision(database)


ACTIONS: dict[str, Callable[[Session, str, int], Any]] = {
    "activate": _activate,
    "activate_in_turn": _activate_in_turn,
    "claim": _claim,
    "claim_any_scope": _claim_any_scope,
    "record": _record,
    "upgrade": _upgrade,
}


def _contend(url: str, action: str, arg: str, barrier: Barrier, outcomes: Any) -> None:
    """One contender: every round, wait for the others, act, then wait while the test checks."""
    database = make_engine(url)
    try:
        for round_ in range(ROUNDS):
            barrier.wait()
            with Session(database) as session:
                outcomes.put((round_, arg, ACTIONS[action](session, arg, round_)))
            barrier.wait()
    except BaseException:
        outcomes.put((-1, arg, traceback.format_exc()))
        barrier.abort()  # release the others instead of leaving them waiting for the timeout
        raise
    finally:
        database.dispose()


def race(
    url: str, action: str, args: list[str], *, before: Callable[[int], None], after: Callable[[int], None]
) -> list[tuple[int, str, Any]]:
    """Run one contender per arg in its own process; call `before`/`after` around each round."""
    context = multiprocessing.get_context("spawn")  # fresh interpreters: nothing inherited from this one
    barrier = context.Barrier(len(args) + 1, timeout=60)
    outcomes = context.Queue()
    contenders = [
        context.Process(target=_contend, args=(url, action, arg, barrier, outcomes)) for arg in args
    ]
    for process in contenders:
        process.start()
    try:
        for round_ in range(ROUNDS):
            before(round_)
            barrier.wait()  # go
            barrier.wait()  # all done
            after(round_)
    except BaseException:
        barrier.abort()  # only on failure: aborting just after a release breaks contenders still waking up
        raise
    finally:
        for process in contenders:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
        results = []
        while True:
            try:
                results.append(outcomes.get(timeout=0.5))
            except queue.Empty:
                break
    errors = [outcome for round_, _, outcome in results if round_ == -1]
    assert not errors, "\n".join(errors)
    assert [p.exitcode for p in contenders] == [0] * len(contenders)
    return results


def test_two_processes_activating_at_once_leave_exactly_one_active(db_url: str, database: Database) -> None:
    with Session(database) as session:
        session.add_all([AdapterVersion(name=name, status="candidate") for name in ("v1", "v2")])
        session.commit()

    def exactly_one_active(round_: int) -> None:
        with Session(database) as session:
            active = session.exec(select(AdapterVersion.name).where(AdapterVersion.status == "active")).all()
        assert len(active) == 1, f"round {round_}: active versions {active}"

    results = race(db_url, "activate", ["v1", "v2"], before=lambda _: None, after=exactly_one_active)
    assert sorted(arg for _, arg, _ in results) == ["v1"] * ROUNDS + ["v2"] * ROUNDS


def test_processes_activating_in_two_scopes_at_once_leave_one_active_in_each(
    db_url: str, database: Database
) -> None:
    """Two servers' admins activate at the same moment (with a third process contending in one of them):
    each scope ends every round with exactly one active version, the one its own activation chose."""
    with Session(database) as session:
        session.add_all(
            AdapterVersion(name=f"{scope}-{suffix}", scope=scope, status="candidate")
            for scope in ("guild:1", "guild:2")
            for suffix in "ab"
        )
        session.commit()
    args = ["guild:1", "guild:2", "guild:2"]

    def one_active_each(round_: int) -> None:
        with Session(database) as session:
            active = session.exec(select(AdapterVersion).where(AdapterVersion.status == "active")).all()
        chosen = f"-{'ab'[round_ % 2]}"
        assert sorted((v.scope, v.name) for v in active) == [
            ("guild:1", "guild:1" + chosen), ("guild:2", "guild:2" + chosen),
        ], f"round {round_}"  # fmt: skip

    results = race(db_url, "activate_in_turn", args, before=lambda _: None, after=one_active_each)
    assert len(results) == ROUNDS * len(args)
    assert all(name.startswith(scope) for _, scope, name in results)


def test_two_trainers_never_claim_the_same_run(db_url: str, database: Database) -> None:
    def queue_one(round_: int) -> None:
        with Session(database) as session:
            runs.queue_training_run(session=session, reason="schedule")

    def finish_it(round_: int) -> None:
        with Session(database) as session:
            run = runs.latest_run(session=session)
            assert run is not None and run.status == "running", f"round {round_}: {run}"
            assert run.id is not None
            runs.finish_run(session=session, run_id=run.id, status="succeeded")

    results = race(db_url, "claim", ["trainer-a", "trainer-b"], before=queue_one, after=finish_it)
    for round_ in range(ROUNDS):
        claims = [outcome for r, _, outcome in results if r == round_]
        assert len(claims) == 2 and claims.count(None) == 1, f"round {round_}: claims {claims}"


def test_two_trainers_of_different_scopes_never_train_at_once_under_concurrency_one(
    db_url: str, database: Database
) -> None:
    def queue_both(round_: int) -> None:  # a scope's run still queued from the last round keeps its place
        with Session(database) as session:
            for scope in ("guild:1", "guild:2"):
                runs.queue_training_run(session=session, reason="schedule", scope=scope)

    def finish_the_one(round_: int) -> None:
        with Session(database) as session:
            running = session.exec(select(TrainingRun).where(TrainingRun.status == "running")).all()
            assert len(running) == 1, f"round {round_}: {len(running)} runs training"
            assert running[0].id is not None
            runs.finish_run(session=session, run_id=running[0].id, status="succeeded")

    results = race(
        db_url, "claim_any_scope", ["trainer-a", "trainer-b"], before=queue_both, after=finish_the_one
    )
    for round_ in range(ROUNDS):
        claims = [outcome for r, _, outcome in results if r == round_]
        assert len(claims) == 2 and claims.count(None) == 1, f"round {round_}: claims {claims}"
    # the scopes took turns: each round's winner is the scope that waited since the round before
    winners = [next(c for r, _, c in results if r == round_ and c) for round_ in range(ROUNDS)]
    assert winners == ["guild:1", "guild:2"] * (ROUNDS // 2)


def test_the_same_discord_message_recorded_twice_at_once_is_one_row(db_url: str, database: Database) -> None:
    results = race(db_url, "record", ["from-a", "from-b"], before=lambda _: None, after=lambda _: None)
    for round_ in range(ROUNDS):
        ids = {outcome for r, _, outcome in results if r == round_}
        assert len(ids) == 1, f"round {round_}: two rows {ids}"
    with Session(database) as session:
        assert session.exec(select(func.count()).select_from(Message)).one() == ROUNDS


def test_bot_and_trainer_migrating_an_empty_database_at_once_both_succeed(db_url: str) -> None:
    results = race(db_url, "upgrade", ["bot", "trainer"], before=lambda _: None, after=lambda _: None)
    assert {outcome for _, _, outcome in results} == {head_revision()}
