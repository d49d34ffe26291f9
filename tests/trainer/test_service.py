"""The trainer service: crash recovery, one run at a time across processes, the vote threshold, canaries."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
import sqlalchemy as sa
from sqlalchemy import Engine as Database
from sqlmodel import Session

from sim.seeding import RATERS, prompt, seed_community
from store import communities, crud, registry, runs
from store.datasets import build_datasets
from store.models import TrainingRun
from store.scopes import GLOBAL, guild_scope
from store.settings import Settings
from tests.fixtures.communities import register, seed_scope
from trainer import service

ROOT = Path(__file__).resolve().parents[2]
A, B = guild_scope(10**17 + 1), guild_scope(10**17 + 2)


def environment(settings: Settings, **train: object) -> dict[str, str]:
    """The environment of a `gradschool` process with these settings (TRAIN_* overrides as keywords)."""
    env = os.environ | {
        "GRADSCHOOL_DATA_DIR": str(settings.data_dir),
        "BASE_MODEL": str(settings.model.base_model),
        "MODEL_DEVICE": "cpu",
        "MODEL_DTYPE": settings.model.dtype,
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(ROOT),
    }
    values = settings.train.model_dump() | train
    env |= {f"TRAIN_{name.upper()}": str(value) for name, value in values.items() if value is not None}
    return env


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen]]:
    """Start `python -m gradschool ARGS` in tmp_path; whatever is still running at the end is killed."""
    started: list[subprocess.Popen] = []

    def start(*args: str, env: dict[str, str]) -> subprocess.Popen:
        log = (tmp_path / f"process-{len(started)}.log").open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "gradschool", *args],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        started.append(process)
        return process

    yield start
    for process in started:
        for child in psutil.Process(process.pid).children(recursive=True) if process.poll() is None else []:
            child.kill()
        process.kill()
        process.wait()


def wait_for(condition: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def run_row(database: Database, run_id: int) -> TrainingRun:
    with Session(database) as session:
        run = session.get(TrainingRun, run_id)
        assert run is not None
        return run


def latest_run_id(database: Database) -> int | None:
    with Session(database) as session:  # a fresh session per look: one SQLite session keeps one snapshot
        run = runs.latest_run(session=session)
    return run.id if run else None


def test_a_killed_job_changes_nothing_and_is_failed_at_the_next_start(
    sqlite_database: Database, train_settings: Settings, spawn: Callable[..., subprocess.Popen]
) -> None:
    with Session(sqlite_database) as session:
        seed_community(session, prompts=24)
    # many steps, so the job is surely mid-run when it is killed
    env = environment(train_settings, max_steps=100_000, heartbeat_interval_s=0.5, heartbeat_timeout_s=3)
    trainer = spawn("train", "--now", env=env)
    run_id = wait_for(lambda: latest_run_id(sqlite_database), 120, "the run row")
    wait_for(lambda: (run_row(sqlite_database, run_id).step or 0) >= 2, 300, "training steps")
    children = psutil.Process(trainer.pid).children(recursive=True)
    assert children, "the job runs in a child process"

    trainer.send_signal(signal.SIGKILL)
    trainer.wait()
    # the job child notices its parent died (parent-death signal) and stops: no orphaned training
    _, alive = psutil.wait_procs(children, timeout=30)
    assert not alive

    assert run_row(sqlite_database, run_id).status == "running"  # nobody was left to say otherwise
    with Session(sqlite_database) as session:
        assert registry.list_versions(session=session) == []
    assert not list(train_settings.adapters_dir.glob("v*"))
    assert list((train_settings.data_dir / "work").glob(f"run-{run_id}-*"))  # its inputs, until recovery
    settings = train_settings.model_copy(
        update={
            "train": train_settings.train.model_copy(
                update={"heartbeat_timeout_s": 3, "heartbeat_interval_s": 1}
            )
        }
    )
    time.sleep(3.5)  # the heartbeat goes stale
    recovered = service.recover(database=sqlite_database, settings=settings)
    assert [run.id for run in recovered] == [run_id]
    failed = run_row(sqlite_database, run_id)
    assert failed.status == "failed" and "heartbeat" in (failed.error or "")
    assert not list((train_settings.data_dir / "work").glob(f"run-{run_id}-*"))


def test_two_services_never_train_at_once(
    sqlite_database: Database, train_settings: Settings, spawn: Callable[..., subprocess.Popen]
) -> None:
    with Session(sqlite_database) as session:
        seed_community(session, prompts=24)
        first = runs.queue_training_run(session=session, reason="admin").id
    assert first is not None
    env = environment(train_settings, max_steps=10, check_interval_s=0.3, min_new_votes=0)
    services = [spawn("trainer", env=env), spawn("trainer", env=env)]
    wait_for(lambda: run_row(sqlite_database, first).status == "running", 120, "the first run to start")
    with Session(sqlite_database) as session:  # new feedback and a second /retrain while the first trains
        seed_community(session, prompts=8, start=24)
        second = runs.queue_training_run(session=session, reason="admin").id
    assert second is not None and second != first
    assert run_row(sqlite_database, first).status == "running"  # the second request comes mid-run

    def finished() -> bool:
        return all(run_row(sqlite_database, run).finished_at for run in (first, second))

    wait_for(finished, 600, "both runs to finish")  # generous: CI machines are shared
    one, two = run_row(sqlite_database, first), run_row(sqlite_database, second)
    assert (one.status, two.status) == ("succeeded", "succeeded"), (one.error, two.error)
    assert one.finished_at and two.started_at and two.started_at >= one.finished_at
    assert all(process.poll() is None for process in services)  # both were serving all along
    with sqlite_database.connect() as connection:
        jobs = connection.execute(sa.text(f"SELECT id FROM {service.JOBS_TABLE}")).scalars().all()
    assert jobs == [service.SCHEDULE_JOB]  # the cron job lives in the database
    for process in services:
        process.send_signal(signal.SIGTERM)
    for process in services:
        assert process.wait(timeout=30) == 0


def test_enough_new_votes_queue_a_threshold_run(sqlite_database: Database, train_settings: Settings) -> None:
    settings = train_settings.model_copy(
        update={"train": train_settings.train.model_copy(update={"min_new_votes": 6})}
    )
    with Session(sqlite_database) as session:
        seed_community(session, prompts=1, correct_every=0)  # 4 votes
    assert service.queue_if_enough_feedback(database=sqlite_database, settings=settings) is None
    with Session(sqlite_database) as session:
        seed_community(session, prompts=1, start=1, correct_every=0)  # 8 votes
    run = service.queue_if_enough_feedback(database=sqlite_database, settings=settings)
    assert run is not None and run.reason == "threshold" and run.status == "queued"
    # the next check counts from this run on: no second run for the same votes
    assert service.queue_if_enough_feedback(database=sqlite_database, settings=settings) is None
    with Session(sqlite_database) as session:
        assert crud.store_counts(session=session)["runs"] == 1


def served(database: Database, version: str | None, *, up: int, down: int, scope: str = GLOBAL) -> None:
    """Replies the version answered in the scope, with `up` 👍 and `down` 👎 votes."""
    with Session(database) as session:
        for i in range(up + down):
            reply = crud.record_generation(
                session=session, prompt=prompt(f"q{i}"), completion="a", adapter_version=version, scope=scope
            )
            assert reply.id
            crud.record_feedback(
                session=session, generation_id=reply.id, rater_id=RATERS[i % 10], value=1 if i < up else -1
            )


@pytest.mark.parametrize(("candidate", "outcome"), [((8, 2), "active"), ((3, 7), "rejected")])
def test_canary_is_promoted_or_rolled_back_on_live_votes(
    sqlite_database: Database,
    train_settings: Settings,
    make_tiny_adapter,
    candidate: tuple[int, int],
    outcome: str,
) -> None:
    train = train_settings.train.model_copy(update={"canary_min_votes": 10, "promotion": "canary"})
    settings = train_settings.model_copy(update={"train": train})
    register(sqlite_database, settings, make_tiny_adapter, "v1", "active")
    register(sqlite_database, settings, make_tiny_adapter, "v2", "candidate")
    served(sqlite_database, "v1", up=6, down=4)  # active: 60% 👍
    served(sqlite_database, "v2", up=candidate[0], down=0)
    # too few votes on v2 yet
    assert service.settle_canary(database=sqlite_database, settings=settings) is None
    served(sqlite_database, "v2", up=0, down=candidate[1])

    settled = service.settle_canary(database=sqlite_database, settings=settings)

    assert settled is not None and settled.name == "v2" and settled.status == outcome
    assert "canary 👍 rate" in (settled.status_reason or "")
    with Session(sqlite_database) as session:
        active = registry.active_version(session=session)
    assert active is not None and active.name == ("v2" if outcome == "active" else "v1")


def test_the_cron_job_is_kept_in_the_database_unless_the_schedule_is_off(
    sqlite_database: Database, train_settings: Settings
) -> None:
    scheduled = service.build_scheduler(database=sqlite_database, settings=train_settings)
    unscheduled = service.build_scheduler(database=sqlite_database, settings=train_settings, schedule=False)
    assert {job.id for job in scheduled.get_jobs()} == {service.SCHEDULE_JOB, "gradschool-check"}
    assert [job.id for job in unscheduled.get_jobs()] == [
        "gradschool-check"
    ]  # simulations: the admin decides


def with_train(settings: Settings, **train: object) -> Settings:
    return settings.model_copy(update={"train": settings.train.model_copy(update=train)})


def test_a_check_serves_every_scope_and_runs_the_longest_waiting_first(
    sqlite_database: Database, train_settings: Settings
) -> None:
    settings = with_train(train_settings, min_new_votes=6)
    with Session(sqlite_database) as session:
        seed_scope(session, B, prompts=2, start=40)  # 8 votes, then an admin's /retrain
        waited = runs.queue_training_run(session=session, reason="admin", scope=B).id
        seed_scope(session, A, prompts=2, start=0)  # 8 new votes: a threshold run, queued later
        sft = {
            s: len(build_datasets(session=session, settings=settings.train, scope=s).train["sft"])
            for s in (A, B)
        }
    assert sft[A] > 0 and sft[B] > 0  # below TRAIN_MIN_SFT_EXAMPLES: each run is skipped, not trained

    first = service.check(database=sqlite_database, settings=settings)
    second = service.check(database=sqlite_database, settings=settings)

    assert first is not None and (first.id, first.scope, first.status) == (waited, B, "skipped")
    assert f"{sft[B]} SFT examples" in (first.error or "")  # built from B's rows: it ran in B's scope
    assert second is not None and (second.scope, second.reason, second.status) == (A, "threshold", "skipped")
    assert service.check(database=sqlite_database, settings=settings) is None  # nothing new anywhere
    with Session(sqlite_database) as session:  # nobody shares and nothing is global: no global run
        assert runs.latest_run(session=session, scope=GLOBAL) is None
        communities.set_share_data(session=session, scope=A, share=True, by=None)

    pooled = service.check(database=sqlite_database, settings=settings)

    assert pooled is not None and (pooled.scope, pooled.reason) == (GLOBAL, "threshold")
    assert f"{sft[A]} SFT examples" in (pooled.error or "")


def test_the_schedule_queues_a_run_for_each_scope_with_new_votes(
    sqlite_database: Database, train_settings: Settings
) -> None:
    with Session(sqlite_database) as session:
        seed_scope(session, A, prompts=1, start=0)
        seed_scope(session, B, prompts=1, start=40)
    queued = service.queue_on_schedule(database=sqlite_database, settings=train_settings)
    assert sorted((run.scope, run.reason) for run in queued) == [(A, "schedule"), (B, "schedule")]
    assert service.queue_on_schedule(database=sqlite_database, settings=train_settings) == []

    with Session(sqlite_database) as session:
        seed_scope(session, B, prompts=1, start=41)
    assert [
        run.scope for run in service.queue_on_schedule(database=sqlite_database, settings=train_settings)
    ] == [B]
    one_pool = with_train(
        train_settings, scope="global"
    )  # TRAIN_SCOPE=global: only the global adapter learns
    assert service.queue_on_schedule(database=sqlite_database, settings=one_pool) == []


def test_a_servers_first_canary_is_judged_against_the_global_adapter_that_serves_it(
    sqlite_database: Database, train_settings: Settings, make_tiny_adapter
) -> None:
    settings = with_train(train_settings, canary_min_votes=10, promotion="canary", min_new_votes=0)
    register(sqlite_database, settings, make_tiny_adapter, "v1", "active")
    register(sqlite_database, settings, make_tiny_adapter, "v2", "candidate", scope=A)
    served(sqlite_database, "v1", up=10, down=0)  # elsewhere the global adapter does well: not A's evidence
    served(sqlite_database, "v1", up=3, down=7, scope=A)
    served(sqlite_database, "v2", up=6, down=4, scope=A)

    assert service.check(database=sqlite_database, settings=settings) is None  # settles, claims nothing

    with Session(sqlite_database) as session:
        promoted = registry.get_version(session=session, name="v2")
        assert promoted is not None and promoted.status == "active" and promoted.scope == A
        assert "vs v1 0.30" in (promoted.status_reason or "")
        shared = registry.active_version(session=session, scope=GLOBAL)
        assert shared is not None and shared.name == "v1"  # the global adapter is untouched


def test_an_earlier_global_only_schedule_is_replaced(
    sqlite_database: Database, train_settings: Settings
) -> None:
    earlier = service.build_scheduler(database=sqlite_database, settings=train_settings, scope=GLOBAL)
    thread = threading.Thread(target=earlier.start)
    thread.start()

    def stored_jobs() -> list[str]:
        with sqlite_database.connect() as connection:
            return connection.execute(sa.text(f"SELECT id FROM {service.JOBS_TABLE}")).scalars().all()

    try:
        wait_for(stored_jobs, 30, "the earlier cron job to be stored")
    finally:
        earlier.shutdown()
        thread.join()
    assert stored_jobs() == [f"{service.SCHEDULE_JOB}-{GLOBAL}"]

    service.build_scheduler(database=sqlite_database, settings=train_settings)

    assert stored_jobs() == []  # this service's own job is stored when it starts
