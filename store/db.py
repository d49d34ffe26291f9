"""Databases (SQLAlchemy engines), migrations, and the write transaction every writing function runs in.

SQLite gets WAL (readers never wait for the writer), a busy timeout (a writer waits for the lock instead of
failing), foreign keys and synchronous=NORMAL on every connection. pysqlite's own transaction handling is
switched off and SQLAlchemy emits BEGIN itself, because pysqlite skips BEGIN before SELECT and mishandles
SAVEPOINT (see SQLAlchemy's "Enabling Non-Legacy SQLite Transactional Modes"). Any other SQLAlchemy URL is
used as given.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine as Database
from sqlalchemy.engine import Connection
from sqlmodel import Session, SQLModel

from store.settings import Settings

MIGRATIONS_DIR = Path(__file__).resolve().with_name("migrations")
_IMMEDIATE = "gradschool_begin_immediate"  # execution option read by the SQLite "begin" listener
_MIGRATIONS_LOCK = "gradschool.migrations"
# Past the busy timeout, a writer tries again this long before its caller sees "database is locked": a lock
# held longer than the timeout (a backup, a long migration, a stuck tool) delays writes, never loses them.
LOCKED_RETRY_S = 60.0

logger = logging.getLogger(__name__)


def make_engine(url: str, *, busy_timeout_ms: int = 10_000) -> Database:
    """An engine for `url`; SQLite files get their folder created and WAL, busy timeout and foreign keys."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return sa.create_engine(url, pool_pre_ping=True)
    if parsed.database and parsed.database != ":memory:" and not parsed.database.startswith("file:"):
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    database = sa.create_engine(url)

    @sa.event.listens_for(database, "connect")
    def _configure(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # pysqlite emits no BEGIN of its own; _begin does
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        _switch_to_wal(cursor, busy_timeout_ms)
        cursor.execute("PRAGMA foreign_keys = ON")
        # NORMAL is safe with WAL: a power cut may lose the last commits but never corrupts the file.
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.close()

    @sa.event.listens_for(database, "begin")
    def _begin(connection: Connection) -> None:
        immediate = connection.get_execution_options().get(_IMMEDIATE, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return database


def _switch_to_wal(cursor: Any, busy_timeout_ms: int) -> None:
    # Switching a new file to WAL needs an exclusive lock, and SQLite answers "locked" at once, without the
    # busy handler, when waiting could deadlock (two processes opening a new database together).
    deadline = time.monotonic() + busy_timeout_ms / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


@contextmanager
def write_transaction(session: Session, *, lock: str | None = None) -> Iterator[Session]:
    """Run the block as one transaction that owns the write lock from its first statement; commit at the end.

    Anything the caller left pending is committed first. On SQLite the block runs under BEGIN IMMEDIATE, so
    writers queue on the busy timeout instead of failing when a read snapshot cannot be upgraded, and a BEGIN
    still locked out after the timeout is tried again for up to LOCKED_RETRY_S. On
    Postgres, `lock` names an advisory lock held until commit, for blocks that read rows and then update
    them (the registry); other writes rely on row locks and unique constraints. An exception rolls back.
    """
    session.commit()
    _advisory_lock(_begin_write(session), lock)
    try:
        yield session
    except BaseException:
        session.rollback()
        raise
    session.commit()


def _begin_write(session: Session) -> Connection:
    """BEGIN (IMMEDIATE on SQLite), tried again with backoff while another writer keeps the file locked.

    Only the BEGIN is retried, never part of a block: nothing was read or written when it failed.
    """
    deadline, pause = time.monotonic() + LOCKED_RETRY_S, 0.05
    while True:
        try:
            return session.connection(execution_options={_IMMEDIATE: True})
        except sa.exc.OperationalError as exc:
            busy = getattr(exc.orig, "sqlite_errorcode", None) == sqlite3.SQLITE_BUSY
            if not busy or time.monotonic() + pause > deadline:
                raise
            session.rollback()
            logger.warning(
                "the database is still locked after the busy timeout; trying again in %.2f s", pause
            )
            time.sleep(pause)
            pause = min(pause * 2, 1.0)


Row = TypeVar("Row", bound=SQLModel)


def get_for_update(session: Session, model: type[Row], row_id: int) -> Row:
    """The row to update, locked on Postgres until commit (SQLite's BEGIN IMMEDIATE already is a lock)."""
    row = session.get(model, row_id, with_for_update=True)
    if row is None:
        raise LookupError(f"no {model.__name__} with id {row_id}")
    return row


def loaded(session: Session, row: Row) -> Row:
    """Refresh a row its commit expired, so it can be read after the session closes."""
    session.refresh(row)
    return row


def _advisory_lock(connection: Connection, lock: str | None) -> None:
    if lock is not None and connection.dialect.name == "postgresql":
        connection.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:lock))"), {"lock": lock})


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's config, built in code: the package's migrations folder and the connection env.py uses."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


def upgrade(database_or_url: Database | str, revision: str = "head") -> None:
    """Migrate the database to `revision`; concurrent callers (bot and trainer starting) take turns."""
    database = make_engine(database_or_url) if isinstance(database_or_url, str) else database_or_url
    try:
        with database.connect() as connection:
            connection.execution_options(**{_IMMEDIATE: True})
            with connection.begin():
                _advisory_lock(connection, _MIGRATIONS_LOCK)
                command.upgrade(alembic_config(connection), revision)
    finally:
        if isinstance(database_or_url, str):
            database.dispose()


def current_revision(database: Database) -> str | None:
    """The migration the database is at (None for an empty database)."""
    with database.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str | None:
    """The newest migration this code ships."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def open_store(settings: Settings) -> Database:
    """The database for `settings.database_url`, migrated to head unless STORE_AUTO_UPGRADE is off."""
    database = make_engine(settings.database_url, busy_timeout_ms=settings.store.busy_timeout_ms)
    if settings.store.auto_upgrade:
        upgrade(database)
    return database
