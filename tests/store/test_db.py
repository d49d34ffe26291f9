"""Engines and migrations on real databases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine as Database
from sqlmodel import Session, SQLModel

from store import crud
from store.db import alembic_config, current_revision, head_revision, make_engine, open_store, upgrade
from store.models import Message
from store.settings import load_settings

TABLES = {
    "message",
    "generation",
    "feedback",
    "correction",
    "adapterversion",
    "trainingrun",
    "userprefs",
    "promptside",
    "servicebeat",
    "community",
    "instructions",
    "channelmode",
    "passage",
    "passagevector",
}
# The open book's full-text index, made by the migration and unknown to the models: SQLite's FTS5 table and
# its shadow tables, Postgres's expression index.
FTS_TABLES = {f"passage_fts{part}" for part in ("", "_data", "_idx", "_docsize", "_config")}


def _not_full_text(name: str | None, kind: str, _parents: object) -> bool:
    return name not in FTS_TABLES | {"ix_passage_search"}


def test_upgrade_builds_exactly_the_models(db_url: str) -> None:
    database = make_engine(db_url)
    assert current_revision(database) is None

    upgrade(database)
    upgrade(database)  # already at head: nothing to do

    assert current_revision(database) == head_revision() == "0007"
    with database.connect() as connection:
        fts = FTS_TABLES if connection.dialect.name == "sqlite" else set()
        assert set(sa.inspect(connection).get_table_names()) == TABLES | fts | {"alembic_version"}
        opts = {"compare_type": True, "include_name": _not_full_text}
        context = MigrationContext.configure(connection, opts=opts)
        assert compare_metadata(context, SQLModel.metadata) == []
    database.dispose()


def test_downgrade_to_base_and_back(database: Database) -> None:
    with database.begin() as connection:
        command.downgrade(alembic_config(connection), "base")
        assert set(sa.inspect(connection).get_table_names()) == {"alembic_version"}
    assert current_revision(database) is None
    upgrade(database)
    assert current_revision(database) == head_revision()


def test_upgrade_from_a_url(db_url: str) -> None:
    upgrade(db_url)
    database = make_engine(db_url)
    assert current_revision(database) == head_revision()
    database.dispose()


def test_the_message_generation_key_exists(database: Database) -> None:
    # The one foreign key the migration adds after both tables exist (they point at each other).
    with database.connect() as connection:
        keys = sa.inspect(connection).get_foreign_keys("message")
    assert [(k["constrained_columns"], k["referred_table"]) for k in keys] == [
        (["generation_id"], "generation")
    ]


def test_sqlite_connections_are_set_up(tmp_path: Path) -> None:
    file = tmp_path / "not" / "yet" / "there.db"
    database = make_engine(f"sqlite:///{file}", busy_timeout_ms=1234)
    with database.connect() as connection:
        pragma = lambda name: connection.exec_driver_sql(f"PRAGMA {name}").scalar()  # noqa: E731
        assert (pragma("journal_mode"), pragma("busy_timeout"), pragma("foreign_keys")) == ("wal", 1234, 1)
        assert pragma("synchronous") == 1  # NORMAL
    assert file.exists()
    database.dispose()


def test_foreign_keys_are_enforced(session: Session) -> None:
    # SQLite's are off unless every connection turns them on.
    with pytest.raises(sa.exc.IntegrityError):
        crud.record_correction(session=session, generation_id=404, author_id=1, content="x")


def test_timestamps_are_aware_utc_both_ways(session: Session) -> None:
    paris = timezone(timedelta(hours=1))
    message = crud.record_message(
        session=session, role="user", content="hi", created_at=datetime(2024, 5, 1, 13, 30, tzinfo=paris)
    )
    session.expire_all()  # read it back from the database, not from the identity map
    reread = session.get(Message, message.id)
    assert reread is not None
    assert reread.created_at == datetime(2024, 5, 1, 12, 30, tzinfo=UTC)
    assert reread.created_at.tzinfo == UTC
    with pytest.raises(sa.exc.StatementError, match="timezone"):
        crud.record_message(session=session, role="user", content="naive", created_at=datetime(2024, 5, 1))


def test_open_store_migrates_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DATABASE_URL", "STORE_DATABASE_URL", "STORE_AUTO_UPGRADE"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings(env_file=None, data_dir=tmp_path / "data", store={"auto_upgrade": True})
    database = open_store(settings)
    assert current_revision(database) == head_revision()
    assert Path(settings.database_url.removeprefix("sqlite:///")).exists()
    database.dispose()

    settings = load_settings(env_file=None, data_dir=tmp_path / "other", store={"auto_upgrade": False})
    database = open_store(settings)
    assert current_revision(database) is None
    database.dispose()


def test_an_install_upgraded_to_per_server_scopes_keeps_its_adapters_as_the_global_scope(db_url: str) -> None:
    """A populated database of the last release (0004, one global adapter) upgrades to per-server scopes:
    nothing is lost or retrained, the global adapter keeps serving every server until one has its own, and
    no server shares its data with the global pool until its admin says so."""
    from sqlmodel import select

    from sim.seeding import seed_community
    from store import communities, registry
    from store.datasets import build_datasets
    from store.models import AdapterVersion, Feedback, Generation, TrainingRun
    from store.scopes import GLOBAL, guild_scope
    from store.settings import TrainSettings
    from trainer.runner import serving_version

    database = make_engine(db_url)
    # The models describe the newest schema, so the rows are written there and the schema taken back to 0004
    # (each downgrade drops only what its upgrade added).
    upgrade(database)
    with Session(database) as session:
        seed_community(session, prompts=12)
        session.add(AdapterVersion(name="v1", status="retired", path="/adapters/v1", method="dpo"))
        session.add(
            AdapterVersion(name="v2", parent="v1", status="active", path="/adapters/v2", method="dpo")
        )
        session.add(TrainingRun(reason="schedule", status="succeeded", adapter_version="v2"))
        session.commit()
    with database.begin() as connection:
        command.downgrade(alembic_config(connection), "0004")
    with database.connect() as connection:  # counted in SQL: the models have columns 0004 lacks
        count = "SELECT count(*) FROM {}"
        before = {
            "generations": connection.exec_driver_sql(count.format("generation")).scalar(),
            "votes": connection.exec_driver_sql(count.format("feedback")).scalar(),
        }

    upgrade(database)

    assert current_revision(database) == head_revision()
    with Session(database) as session:
        assert len(session.exec(select(Generation)).all()) == before["generations"]
        assert len(session.exec(select(Feedback)).all()) == before["votes"]
        assert {g.scope for g in session.exec(select(Generation))} == {GLOBAL}
        assert build_datasets(session=session, settings=TrainSettings()).train["dpo"]  # the old rows teach it
        assert [(v.name, v.status) for v in registry.list_versions(session=session)] == [
            ("v2", "active"), ("v1", "retired"),
        ]  # fmt: skip
        assert registry.active_version(session=session).name == "v2"
        assert [r.status for r in session.exec(select(TrainingRun))] == ["succeeded"]  # nothing retrained
        some_server = guild_scope(1234)
        assert serving_version(session=session, scope=some_server).name == "v2"
        assert registry.active_version(session=session, scope=some_server) is None
        assert not communities.shares_data(session=session, scope=some_server)
    database.dispose()
