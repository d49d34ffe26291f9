"""Faults: another writer holds the SQLite write lock for seconds while people chat and vote."""

from __future__ import annotations

import asyncio
import logging

import pytest
from sqlalchemy import Engine as Database
from sqlmodel import select

from bot.client import GradschoolBot, Services
from engine.serving import GenerationServer
from sim.discord_emulator import DiscordEmulator
from store import db
from store.models import Feedback
from store.settings import Settings
from tests.fixtures.bot import generations, rows, until, user_messages
from tests.fixtures.db import write_lock_held
from tests.fixtures.discord import Community, answer_to


def votes(database: Database) -> list[tuple[int, int]]:
    found = rows(database, lambda s: list(s.exec(select(Feedback))))
    return sorted((f.rater_id, f.value) for f in found if f.removed_at is None)


@pytest.mark.parametrize(
    ("busy_timeout_ms", "held_s"),
    [
        (10_000, 4.0),  # within the store's default busy timeout: SQLite's own wait covers it
        (500, 4.0),  # far past it: the store retries the write instead of dropping it
    ],
)
async def test_writes_wait_out_a_locked_database_and_nothing_is_lost(
    emulator: DiscordEmulator,
    community: Community,
    connect_bot,
    bot_settings: Settings,
    server: GenerationServer,
    caplog,
    busy_timeout_ms: int,
    held_s: float,
) -> None:
    caplog.set_level(logging.WARNING)
    settings = bot_settings.model_copy(
        update={"store": bot_settings.store.model_copy(update={"busy_timeout_ms": busy_timeout_ms})}
    )
    database = db.open_store(settings)
    try:
        await connect_bot(GradschoolBot(Services(settings, database, server)))
        general = community.general
        first = await emulator.send_message(general, community.alice, "before the lock", mentions_bot=True)
        answer = await answer_to(emulator, community, first)

        with write_lock_held(database):
            question = await emulator.send_message(
                general, community.bob, "during the lock", mentions_bot=True
            )
            await emulator.add_reaction(community.alice, general, answer, "👍")
            await emulator.add_reaction(community.bob, general, answer, "👎")
            await asyncio.sleep(held_s)  # the writes above are waiting on the lock meanwhile
            assert votes(database) == []  # nothing could be written past the lock

        second = await answer_to(emulator, community, question)
        await until(lambda: len(generations(database)) == 2, timeout=30)
        await until(lambda: votes(database) == sorted([(community.alice.id, 1), (community.bob.id, -1)]))
        assert [g.discord_message_ids for g in generations(database)] == [[answer.id], [second.id]]
        assert user_messages(database) == sorted([first.id, question.id])
        # the people saw answers only: no apology, no error
        assert all(m.reactors("🔁") for m in emulator.bot_messages(general) if not m.components)  # 👎 offers
        assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    finally:
        database.dispose()
