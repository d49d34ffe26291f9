"""Backups of the store, taken while the bot keeps writing; restores that refuse what this code can't read.

SQLite: the online backup API copies a consistent snapshot in one step (under WAL the writer never waits for
it) into one self-contained file; a restore copies the backup back the same way, so connections that stay
open see the restored data. Postgres: `pg_dump` in its custom format; a restore pipes
`pg_restore --clean --if-exists` into `psql` inside one transaction, so a restore that fails changes nothing.
A backup is restored only when this code knows its migration, and one from an older migration is upgraded
to head afterwards. Adapter folders are not in the database: copy the data dir's `adapters/` beside it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy as sa
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Engine as Database
from sqlmodel import SQLModel

import store.models  # noqa: F401  (registers the tables a Postgres restore drops first)
from store import db

_SQLITE_MAGIC = b"SQLite format 3\x00"
_PG_DUMP_MAGIC = b"PGDMP"
_PG_INSTALLS = Path("/usr/lib/postgresql")  # Debian and Ubuntu: one folder of client tools per version


class BackupError(RuntimeError):
    """A backup or restore cannot be done; the message says why and what to do."""


def backup_database(*, database: Database, target: Path) -> Path:
    """Copy the whole database to `target` (written aside, then renamed into place); returns `target`."""
    target = target.expanduser().resolve()
    if _backend(database) == "sqlite" and target == _sqlite_file(database):
        raise BackupError(f"{target} is the database itself; back it up to another file")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    partial.unlink(missing_ok=True)
    try:
        if _backend(database) == "sqlite":
            _backup_sqlite(database, partial)
        else:
            _backup_postgres(database, partial)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def backup_revision(*, database: Database, source: Path) -> str | None:
    """The migration a backup is at (None: before the first); raise BackupError if it can't be restored."""
    backend = _backend(database)
    source = source.expanduser().resolve()
    if not source.is_file():
        raise BackupError(f"no backup file at {source}")
    with source.open("rb") as file:
        magic = file.read(len(_SQLITE_MAGIC))
    if backend == "sqlite" and not magic.startswith(_SQLITE_MAGIC):
        raise BackupError(f"{source} is not a SQLite database; a SQLite store restores only SQLite backups")
    if backend == "postgresql" and not magic.startswith(_PG_DUMP_MAGIC):
        raise BackupError(f"{source} is not a pg_dump custom-format file, all a Postgres store restores")
    revision = _sqlite_revision(source) if backend == "sqlite" else _postgres_revision(database, source)
    if revision is not None:
        try:
            ScriptDirectory.from_config(db.alembic_config()).get_revision(revision)
        except CommandError:
            raise BackupError(
                f"{source} is at migration {revision!r}, which this code does not know (head is "
                f"{db.head_revision()!r}): it was made by a newer gradschool; restore it with that version"
            ) from None
    return revision


def restore_database(*, database: Database, source: Path) -> str | None:
    """Replace everything in the database with the backup, then migrate it to head; returns its revision."""
    source = source.expanduser().resolve()
    revision = backup_revision(database=database, source=source)
    if _backend(database) == "sqlite":
        _restore_sqlite(database, source)
    else:
        _restore_postgres(database, source)
    if revision != db.head_revision():
        db.upgrade(database)
    return db.current_revision(database)


def _backend(database: Database) -> str:
    backend = database.url.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise BackupError(f"cannot back up a {backend} database: only SQLite and PostgreSQL are supported")
    return backend


# --- SQLite ---


def _sqlite_file(database: Database) -> Path:
    name = database.url.database
    if not name or name == ":memory:" or name.startswith("file:"):
        raise BackupError(f"cannot back up SQLite database {name!r}: only a plain database file can be")
    return Path(name).expanduser().resolve()


@contextlib.contextmanager
def _driver_connection(database: Database) -> Iterator[sqlite3.Connection]:
    """The database's own pysqlite connection (with its busy timeout), returned to the pool afterwards."""
    connection = database.raw_connection()
    try:
        yield connection.driver_connection  # type: ignore[misc]
    finally:
        connection.close()


def _backup_sqlite(database: Database, partial: Path) -> None:
    live = _sqlite_file(database)
    if not live.is_file():
        raise BackupError(f"no database at {live}: nothing to back up")
    with _driver_connection(database) as source, contextlib.closing(sqlite3.connect(partial)) as copy:
        source.backup(copy)  # all pages in one step: one read transaction, so one consistent snapshot
        copy.execute("PRAGMA journal_mode = DELETE")  # one self-contained file, no -wal beside it
        (check,) = copy.execute("PRAGMA quick_check").fetchone()
    if check != "ok":
        raise BackupError(f"the backup of {live} failed its integrity check: {check}")


def _sqlite_revision(source: Path) -> str | None:
    # Restoring a damaged file would copy the damage into the store: a file cut short reads as zeroes.
    with source.open("rb") as file:
        header = file.read(100)
    page_size = int.from_bytes(header[16:18], "big")
    expected = (65536 if page_size == 1 else page_size) * int.from_bytes(header[28:32], "big")
    if (size := source.stat().st_size) != expected:
        raise BackupError(f"{source} holds {size} bytes, not the {expected} of its header: it is cut short")
    try:
        with contextlib.closing(sqlite3.connect(f"{source.as_uri()}?mode=ro", uri=True)) as backup:
            (check,) = backup.execute("PRAGMA integrity_check(1)").fetchone()
            if check != "ok":
                raise BackupError(f"{source} is damaged ({check}); restore another backup")
            return _version_num(backup.execute("SELECT version_num FROM alembic_version").fetchall(), source)
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"{source} is not a gradschool backup ({exc})") from None


def _restore_sqlite(database: Database, source: Path) -> None:
    if source == _sqlite_file(database):
        raise BackupError(f"{source} is the database itself; restore from a backup file")
    uri = f"{source.as_uri()}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as backup, _driver_connection(database) as live:
        backup.backup(live)  # waits out the bot's writes, then replaces every page at once


def _version_num(rows: list[tuple[str]], source: Path) -> str | None:
    if len(rows) > 1:
        raise BackupError(f"{source} is at several migrations at once ({rows}); gradschool has one line")
    return rows[0][0] if rows else None


# --- PostgreSQL ---


def _pg_tool(name: str) -> str:
    """A PostgreSQL client program: on PATH, else the newest under /usr/lib/postgresql/<version>/bin."""
    found = shutil.which(name)
    if found:
        return found
    installed = [path for path in _PG_INSTALLS.glob(f"*/bin/{name}") if path.parent.parent.name.isdigit()]
    if installed:
        return str(max(installed, key=lambda path: int(path.parent.parent.name)))
    raise BackupError(
        f"{name} is not on PATH nor under {_PG_INSTALLS}/*/bin; install the PostgreSQL client tools "
        f"(e.g. apt-get install postgresql-client) at least as new as the server, or add them to PATH"
    )


def _pg_connection(database: Database) -> tuple[str, dict[str, str]]:
    """A libpq URI without the password (command lines show in `ps`), and the environment that carries it."""
    url = database.url
    uri = sa.URL.create(
        "postgresql",
        username=url.username,
        host=url.host,
        port=url.port,
        database=url.database,
        query=url.query,
    )
    env = dict(os.environ, PGOPTIONS="-c client_min_messages=warning")  # no NOTICE per DROP ... IF EXISTS
    if url.password is not None:
        env["PGPASSWORD"] = str(url.password)
    return uri.render_as_string(hide_password=False), env


def _run(command: list[str], env: dict[str, str], what: str) -> bytes:
    result = subprocess.run(command, env=env, capture_output=True, check=False)
    if result.returncode != 0:
        message = result.stderr.decode(errors="replace").strip()
        raise BackupError(f"{what} failed (exit {result.returncode}): {message}")
    return result.stdout


def _backup_postgres(database: Database, partial: Path) -> None:
    uri, env = _pg_connection(database)
    command = [_pg_tool("pg_dump"), "--format=custom", f"--file={partial}", f"--dbname={uri}"]
    _run(command, env, "pg_dump")


def _postgres_revision(database: Database, source: Path) -> str | None:
    _, env = _pg_connection(database)
    command = [_pg_tool("pg_restore"), "--data-only", "--table=alembic_version", "--file=-", str(source)]
    lines = iter(_run(command, env, "reading the backup with pg_restore").decode().splitlines())
    for line in lines:
        if line.startswith("COPY ") and "alembic_version" in line:
            rows: list[tuple[str]] = []
            for row in lines:
                if row == "\\.":
                    return _version_num(rows, source)
                rows.append((row,))
    raise BackupError(f"{source} is not a gradschool backup: it holds no alembic_version table")


def _restore_postgres(database: Database, source: Path) -> None:
    """Drop gradschool's tables and load the dump in one psql transaction, committed only if all of it ran."""
    uri, env = _pg_connection(database)
    # --clean drops what the dump holds; tables of a newer migration than the backup's must go too.
    tables = [*SQLModel.metadata.tables, "alembic_version"]
    drops = "".join(f'DROP TABLE IF EXISTS "{table}" CASCADE;\n' for table in tables)
    psql_command = [_pg_tool("psql"), "--no-psqlrc", "--quiet", "--set=ON_ERROR_STOP=1", f"--dbname={uri}"]
    restore_command = [_pg_tool("pg_restore"), "--clean", "--if-exists", "--no-owner", "--no-privileges"]
    restore_code: int | None = None
    # Errors go to files, not pipes: a full pipe would stall the other program mid-stream.
    with tempfile.TemporaryFile() as psql_errors, tempfile.TemporaryFile() as restore_errors:
        psql = subprocess.Popen(
            psql_command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=psql_errors, env=env
        )
        assert psql.stdin is not None
        try:
            psql.stdin.write(f"BEGIN;\n{drops}".encode())
            psql.stdin.flush()
            restore_code = subprocess.run(
                [*restore_command, "--file=-", str(source)], stdout=psql.stdin, stderr=restore_errors, env=env
            ).returncode
            if restore_code == 0:
                psql.stdin.write(b"COMMIT;\n")  # without it psql's session ends and the server rolls back
        except BrokenPipeError:
            pass  # psql stopped at an error (ON_ERROR_STOP); its own message says which
        finally:
            with contextlib.suppress(BrokenPipeError):
                psql.stdin.close()
            psql.wait()
        for program, code, errors in (
            ("psql", psql.returncode, psql_errors),
            ("pg_restore", restore_code, restore_errors),
        ):
            if code != 0:
                errors.seek(0)
                message = errors.read().decode(errors="replace").strip()
                raise BackupError(f"restore: {program} failed (exit {code}); nothing changed: {message}")
