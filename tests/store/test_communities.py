"""Per-server data sharing, and which scopes' rows teach which adapter, on real SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy import Engine as Database
from sqlmodel import Session

from sim.seeding import RATERS, prompt
from store import communities, crud, registry, runs
from store.datasets import build_datasets
from store.db import alembic_config, current_revision, make_engine, upgrade
from store.scopes import GLOBAL, guild_scope
from store.settings import TrainSettings
from tests.fixtures.communities import asked, seed_scope

A, B = guild_scope(10**17 + 1), guild_scope(10**17 + 2)  # real snowflakes exceed 2**31
ADMIN = 10**17 + 9
EVERYTHING = TrainSettings(holdout_fraction=0.0, max_rater_share=1.0)  # type: ignore[call-arg]


def tables(database: Database) -> set[str]:
    with database.connect() as connection:
        return set(sa.inspect(connection).get_table_names())


def test_the_migration_adds_the_community_table_and_takes_it_away(db_url: str) -> None:
    database = make_engine(db_url)
    upgrade(database, "0004")
    assert "community" not in tables(database)

    upgrade(database, "0005")
    assert current_revision(database) == "0005" and "community" in tables(database)
    with Session(database) as session:
        communities.set_share_data(session=session, scope=A, share=True, by=ADMIN)

    with database.begin() as connection:
        command.downgrade(alembic_config(connection), "0004")
    assert current_revision(database) == "0004" and "community" not in tables(database)
    upgrade(database)
    with Session(database) as session:  # a fresh table: nobody shares until they say so again
        assert communities.sharing_scopes(session=session) == []
    database.dispose()


def test_sharing_is_off_until_an_admin_turns_it_on(session: Session) -> None:
    assert not communities.shares_data(session=session, scope=A)

    on = communities.set_share_data(session=session, scope=A, share=True, by=ADMIN)
    assert (on.scope, on.share_data, on.updated_by) == (A, True, ADMIN)
    assert communities.shares_data(session=session, scope=A)
    assert not communities.shares_data(session=session, scope=B)
    communities.set_share_data(session=session, scope=B, share=True, by=None)
    assert communities.sharing_scopes(session=session) == [A, B]

    off = communities.set_share_data(session=session, scope=A, share=False, by=ADMIN + 1)
    assert (off.share_data, off.updated_by) == (False, ADMIN + 1) and off.updated_at >= on.updated_at
    assert not communities.shares_data(session=session, scope=A)
    assert communities.sharing_scopes(session=session) == [B]


@pytest.mark.parametrize("scope", [GLOBAL, "guild:", "guild:x", "42"])
def test_only_a_servers_scope_shares(session: Session, scope: str) -> None:
    with pytest.raises(ValueError):
        communities.set_share_data(session=session, scope=scope, share=True, by=ADMIN)
    assert communities.sharing_scopes(session=session) == []


def test_known_scopes_start_with_the_global_one(session: Session) -> None:
    assert communities.known_scopes(session=session) == [GLOBAL]

    crud.record_generation(session=session, prompt=prompt("hi"), completion="hello", scope=B)
    registry.next_version_name(session=session, scope="guild:3")
    runs.queue_training_run(session=session, reason="admin", scope=A)
    communities.set_share_data(session=session, scope="guild:4", share=True, by=ADMIN)  # no rows: not known

    assert communities.known_scopes(session=session) == [GLOBAL, A, B, "guild:3"]


def test_a_servers_rows_teach_only_its_own_adapter_and_the_global_one_only_when_it_shares(
    session: Session,
) -> None:
    seed_scope(session, A, prompts=4, start=0)
    seed_scope(session, B, prompts=4, start=40)
    seed_scope(session, GLOBAL, prompts=4, start=80)  # from before per-server learning

    def sources(scope: str) -> set[int]:
        return asked(build_datasets(session=session, settings=EVERYTHING, scope=scope))

    a, b, legacy = set(range(0, 4)), set(range(40, 44)), set(range(80, 84))
    assert (sources(A), sources(B), sources(GLOBAL)) == (a, b, legacy)

    communities.set_share_data(session=session, scope=A, share=True, by=ADMIN)
    assert (sources(A), sources(B), sources(GLOBAL)) == (a, b, legacy | a)

    communities.set_share_data(session=session, scope=A, share=False, by=ADMIN)
    assert sources(GLOBAL) == legacy


def test_new_votes_count_where_the_rows_teach(session: Session) -> None:
    seed_scope(session, A, prompts=1, start=0)  # 4 votes
    seed_scope(session, B, prompts=2, start=40)  # 8 votes

    def votes(scope: str) -> int:
        return crud.count_votes_since(session=session, since=None, scope=scope)

    assert (votes(A), votes(B), votes(GLOBAL)) == (4, 8, 0)
    communities.set_share_data(session=session, scope=B, share=True, by=ADMIN)
    assert (votes(A), votes(B), votes(GLOBAL)) == (4, 8, 8)
    reply = crud.record_generation(session=session, prompt=prompt("old"), completion="yes")
    assert reply.id
    crud.record_feedback(session=session, generation_id=reply.id, rater_id=RATERS[0], value=1)
    assert (votes(A), votes(GLOBAL)) == (4, 9)
