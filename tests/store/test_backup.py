"""`gradschool db backup` and `db restore` on real databases: round trips, writers, migrations, refusals."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy import Engine as Database
from sqlmodel import Session, SQLModel, func, select
from typer.testing import CliRunner

from gradschool.cli import app
from sim.seeding import seed_community
from store import communities, crud, db, instructions, knowledge, registry, runs
from store.backup import BackupError, backup_database, backup_revision, restore_database
from store.datasets import build_datasets
from store.models import Feedback, Generation, Message
from store.settings import TrainSettings

FUTURE = "ffffffffffff"  # a migration id no version of this code has shipped


def populate(database: Database, *, prompts: int = 12) -> None:
    """Rows in every table: a seeded community, Discord messages of an answer, prefs, a run, a version,
    the trainer's sign of life, a server's data-sharing choice, its instructions, a channel in listen mode
    and a passage of its open book (with SQLite's full-text index of it, and its vector)."""
    with Session(database) as session:
        community = seed_community(session, prompts=prompts)
        question = crud.record_message(
            session=session, role="user", content="hello?", discord_id=10, author_id=2001, author_name="ann"
        )
        crud.attach_discord_messages(
            session=session, generation_id=community.liked[0], discord_ids=[11, 12], contents=["a", "b"]
        )
        assert question.id is not None
        crud.set_opt_out(session=session, user_id=1001, opted_out=True)
        runs.queue_training_run(session=session, reason="admin", requested_by=2001)
        registry.next_version_name(session=session)
        runs.beat_service(session=session, name=runs.TRAINER_SERVICE, detail={"check_interval_s": 30})
        communities.set_share_data(session=session, scope="guild:1", share=True, by=2001)
        instructions.set_instructions(
            session=session, scope="guild:1", text="Be brief.", by=2001, max_chars=99
        )
        instructions.set_listen(session=session, scope="guild:1", channel_id=7, listen=True, by=2001)
        [passage] = knowledge.add_passages(
            session=session, scope="guild:1", source="admin", title="rules.md",
            text="Study night is Thursday.", max_chars=600, added_by=2001,
        )  # fmt: skip
        assert passage.id is not None
        knowledge.save_vectors(session=session, model="m", vectors={passage.id: knowledge.pack([0.6, 0.8])})
        build_datasets(session=session, settings=TrainSettings(_env_file=None))  # records prompt sides


def snapshot(database: Database) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, in a stable order."""
    with database.connect() as connection:
        tables = sa.inspect(connection).get_table_names()
        return {
            table: sorted(map(tuple, connection.execute(sa.text(f'SELECT * FROM "{table}"'))), key=repr)
            for table in tables
        }


def stamp(database: Database, revision: str) -> None:
    with database.begin() as connection:
        connection.execute(sa.text("UPDATE alembic_version SET version_num = :rev"), {"rev": revision})


def test_a_backup_restores_over_a_changed_database_row_for_row(database: Database, tmp_path: Path) -> None:
    populate(database)
    before = snapshot(database)
    assert all(before[table] for table in before), "every table has rows to compare"

    backup_database(database=database, target=tmp_path / "backup")
    with Session(database) as session:  # after the backup: new rows, changed rows, deleted rows
        crud.forget_user(session=session, user_id=2001)
        crud.set_opt_out(session=session, user_id=1002, opted_out=True)
        seed_community(session, prompts=3, start=50)
    assert snapshot(database) != before
    assert restore_database(database=database, source=tmp_path / "backup") == db.head_revision()

    assert snapshot(database) == before
    with Session(database) as session:  # ids continue after the restored rows (Postgres: sequences restored)
        newest = max(row[0] for row in before["generation"])
        added = crud.record_generation(
            session=session, prompt=[{"role": "user", "content": "x"}], completion="y"
        )
    assert added.id is not None and added.id > newest


def test_a_sqlite_backup_restores_into_a_fresh_file(tmp_path: Path) -> None:
    source = db.make_engine(f"sqlite:///{tmp_path / 'live' / 'gradschool.db'}")
    db.upgrade(source)
    populate(source)
    written = backup_database(database=source, target=tmp_path / "backups" / "monday.db")
    assert [p.name for p in written.parent.iterdir()] == ["monday.db"]  # one self-contained file, no -wal

    fresh = db.make_engine(f"sqlite:///{tmp_path / 'elsewhere' / 'gradschool.db'}")
    restore_database(database=fresh, source=written)

    assert snapshot(fresh) == snapshot(source)
    with fresh.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def write_pairs(
    database: Database, stop: threading.Event, written: list[int], errors: list[Exception]
) -> None:
    """Keep committing a generation and its vote together, in one transaction each, until told to stop."""
    with Session(database) as session:
        while not stop.is_set():
            try:
                with db.write_transaction(session):
                    generation = Generation(prompt=[{"role": "user", "content": "q"}], completion="a")
                    session.add(generation)
                    session.flush()
                    assert generation.id is not None
                    session.add(Feedback(generation_id=generation.id, rater_id=7, value=1))
            except Exception as exc:  # the test asserts there were none
                errors.append(exc)
                return
            written.append(1)


def wait_until(condition: Any, what: str) -> None:
    deadline = time.monotonic() + 60
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.01)


def test_a_backup_taken_while_the_bot_writes_is_one_consistent_moment(
    database: Database, tmp_path: Path
) -> None:
    stop, written, errors = threading.Event(), list[int](), list[Exception]()
    writer = threading.Thread(target=write_pairs, args=(database, stop, written, errors))
    writer.start()
    try:
        wait_until(lambda: len(written) >= 20 or errors, "the writer to get going")
        committed_before = len(written)
        backup_database(database=database, target=tmp_path / "backup")
        committed_after = len(written)
        wait_until(lambda: len(written) >= committed_after + 20 or errors, "writes after the backup")
    finally:
        stop.set()
        writer.join()
    assert errors == []  # the backup never made the writer fail (no "database is locked")

    restore_database(database=database, source=tmp_path / "backup")
    with Session(database) as session:
        generations = session.exec(select(func.count()).select_from(Generation)).one()
        votes = session.exec(select(func.count()).select_from(Feedback)).one()
    assert votes == generations  # no transaction was caught halfway
    # everything committed before it started, nothing committed after it returned (+1: counted after commit)
    assert committed_before <= generations <= committed_after + 1 < len(written)


def test_a_backup_from_a_newer_migration_is_refused_and_nothing_changes(
    database: Database, tmp_path: Path
) -> None:
    populate(database)
    stamp(database, FUTURE)  # as if a newer gradschool had migrated the store before this backup
    backup_database(database=database, target=tmp_path / "backup")
    stamp(database, "0001")
    with Session(database) as session:
        crud.record_message(session=session, role="user", content="after the backup")
    before = snapshot(database)

    with pytest.raises(BackupError, match=f"migration '{FUTURE}', which this code does not know"):
        restore_database(database=database, source=tmp_path / "backup")

    assert snapshot(database) == before


def test_a_backup_from_an_older_migration_is_upgraded_after_restore(
    database: Database, tmp_path: Path
) -> None:
    with database.begin() as connection:  # the oldest store there is: before the first migration
        command.downgrade(db.alembic_config(connection), "base")
    backup_database(database=database, target=tmp_path / "backup")
    db.upgrade(database)
    populate(database)
    assert backup_revision(database=database, source=tmp_path / "backup") is None

    assert restore_database(database=database, source=tmp_path / "backup") == db.head_revision()

    tables = snapshot(database)
    assert tables.pop("alembic_version") == [(db.head_revision(),)]
    assert {table: tables[table] for table in SQLModel.metadata.tables} == {
        table: [] for table in SQLModel.metadata.tables
    }
    with Session(database) as session:  # the upgraded store works, its full-text index too
        crud.record_message(session=session, role="user", content="we are back")
        knowledge.add_passages(
            session=session, scope="global", source="admin", title="t", text="Chess club meets Monday.",
            max_chars=600, added_by=1,
        )  # fmt: skip
        [hit] = knowledge.search(
            session=session, scope="global", question="When does chess club meet?", limit=3
        )
        assert hit.passage.text == "Chess club meets Monday."


def test_a_damaged_or_foreign_file_is_refused_and_nothing_changes(database: Database, tmp_path: Path) -> None:
    populate(database)
    good = backup_database(database=database, target=tmp_path / "backup")
    truncated = tmp_path / "truncated"
    truncated.write_bytes(good.read_bytes()[:-100])  # cut short: disk full while copying it
    other = tmp_path / "other.db"
    other_engine = db.make_engine(f"sqlite:///{other}")
    with other_engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE notes (text TEXT)")
    (tmp_path / "notes.txt").write_text("not a backup")
    with Session(database) as session:
        crud.record_message(session=session, role="user", content="after the backup")
    before = snapshot(database)

    for bad in (truncated, other, tmp_path / "notes.txt", tmp_path / "missing"):
        with pytest.raises(BackupError):
            restore_database(database=database, source=bad)

    assert snapshot(database) == before


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_a_postgres_restore_that_fails_partway_changes_nothing(database: Database, tmp_path: Path) -> None:
    populate(database)
    backup_database(database=database, target=tmp_path / "backup")
    with database.begin() as connection:  # an object in the way: its name is one the dump creates last
        connection.exec_driver_sql("ALTER TABLE message DROP CONSTRAINT uq_message_discord_id")
        connection.exec_driver_sql("CREATE TABLE notes (text TEXT CONSTRAINT uq_message_discord_id UNIQUE)")
    with Session(database) as session:
        crud.forget_user(session=session, user_id=2001)
    before = snapshot(database)

    with pytest.raises(BackupError, match='"uq_message_discord_id" already exists'):
        restore_database(database=database, source=tmp_path / "backup")

    assert snapshot(database) == before


def test_backing_up_onto_the_database_itself_is_refused(tmp_path: Path) -> None:
    live = tmp_path / "gradschool.db"
    database = db.make_engine(f"sqlite:///{live}")
    db.upgrade(database)
    with pytest.raises(BackupError, match="is the database itself"):
        backup_database(database=database, target=live)
    with pytest.raises(BackupError, match="is the database itself"):
        restore_database(database=database, source=live)


# --- the CLI ---

runner = CliRunner()


@pytest.fixture
def cli_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Database:
    """A populated SQLite store where `gradschool` run in tmp_path finds it."""
    monkeypatch.setenv("GRADSCHOOL_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)  # no stray .env from the repo
    database = db.make_engine(f"sqlite:///{tmp_path / 'data' / 'gradschool.db'}")
    db.upgrade(database)
    populate(database)
    return database


def test_the_cli_backs_up_and_restores_only_when_told_to(cli_store: Database, tmp_path: Path) -> None:
    backed_up = runner.invoke(app, ["db", "backup", "nightly.db"])
    assert backed_up.exit_code == 0, backed_up.output
    assert f"to {tmp_path / 'nightly.db'}" in backed_up.output
    before = snapshot(cli_store)
    with Session(cli_store) as session:
        crud.record_message(session=session, role="user", content="after the backup")
    changed = snapshot(cli_store)

    declined = runner.invoke(app, ["db", "restore", "nightly.db"], input="n\n")
    assert declined.exit_code == 1 and "Replace everything in sqlite:///" in declined.output
    assert snapshot(cli_store) == changed

    confirmed = runner.invoke(app, ["db", "restore", "nightly.db"], input="y\n")
    assert confirmed.exit_code == 0, confirmed.output
    assert f"database at revision {db.head_revision()}" in confirmed.output
    assert snapshot(cli_store) == before

    with Session(cli_store) as session:
        crud.record_message(session=session, role="user", content="after the restore")
    unasked = runner.invoke(app, ["db", "restore", "nightly.db", "--yes"])
    assert unasked.exit_code == 0 and "Replace everything" not in unasked.output
    assert snapshot(cli_store) == before


def test_the_cli_refuses_a_newer_backup_before_asking(cli_store: Database, tmp_path: Path) -> None:
    stamp(cli_store, FUTURE)
    assert runner.invoke(app, ["db", "backup", "future.db"]).exit_code == 0
    stamp(cli_store, "0001")

    refused = runner.invoke(app, ["db", "restore", "future.db"], input="y\n")

    assert refused.exit_code == 1 and "Replace everything" not in refused.output
    assert "which this code does not know" in refused.output
    with Session(cli_store) as session:
        assert db.current_revision(cli_store) == "0001"
        assert session.exec(select(func.count()).select_from(Message)).one() == 3
