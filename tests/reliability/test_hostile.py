"""Hostile and bad input: a corpus of hundreds of cases, one real bot per category, through the emulator.

Each case must get its expected outcome (support/hostile_inputs.py, hostile_files.py, hostile_actions.py).
After each category the bot must still be connected and answer a plain question, and: every message that
reached it is recorded exactly once with its content, nothing was trained or activated, the database passes
its integrity check, nothing was logged at ERROR, the bot never pinged anyone, and the configured token
appears nowhere it sent (support/hostile_checks.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest
from sqlalchemy import Engine as Database
from sqlmodel import Session

from bot.client import GradschoolBot, Services
from engine.engine import Engine
from engine.serving import GenerationServer
from sim.discord_emulator import DiscordEmulator
from store import db, registry
from store.scopes import guild_scope
from store.settings import Settings
from tests.fixtures.bot import discord_settings
from tests.fixtures.discord import Community
from tests.fixtures.fake_server import FakeServer
from tests.reliability.support.hostile_actions import action_categories
from tests.reliability.support.hostile_checks import SEEDED, case_problem, invariant_problems
from tests.reliability.support.hostile_driver import EchoServer, Harness
from tests.reliability.support.hostile_files import file_categories
from tests.reliability.support.hostile_inputs import Case, Category, text_categories

CATEGORIES = text_categories() + file_categories() + action_categories()
# the corpus asks fast and several at once, on purpose
PEOPLE_LIMITS = {"user_rate_limit": 10_000, "user_rate_window_s": 600.0, "channel_concurrency": 8}


def test_the_corpus_is_large_and_every_case_is_named_once() -> None:
    names = [(c.name, case.name) for c in CATEGORIES for case in c.cases]
    assert len(names) >= 200 and len(set(names)) == len(names)


@pytest.fixture
def hostile_settings(tiny_settings: Settings, community: Community, emulator: DiscordEmulator) -> Settings:
    """The tiny model answering in a few tokens, and the emulator's real token as the configured one."""
    prompt = "You are the assistant of {server}, in #{channel}."
    model = tiny_settings.model.model_copy(
        update={"temperature": 0.0, "max_new_tokens": 8, "system_prompt": prompt}
    )
    discord = discord_settings(community, token=emulator.token)
    return tiny_settings.model_copy(update={"model": model, "discord": discord})


@pytest.fixture
def database(hostile_settings: Settings, community: Community) -> Iterator[Database]:
    database = db.open_store(hostile_settings)
    with Session(database) as session:
        for _ in SEEDED:  # the server's own versions: its admins' commands act on its scope
            registry.next_version_name(session=session, scope=guild_scope(community.guild.id))
        registry.set_status(session=session, name="v1", status="candidate")
        registry.set_status(session=session, name="v2", status="rejected", reason="seeded")
    yield database
    database.dispose()


@pytest.fixture
async def tiny_server(hostile_settings: Settings) -> AsyncIterator[GenerationServer]:
    async with GenerationServer(Engine.from_settings(hostile_settings)) as started:
        yield started


@pytest.mark.parametrize("category", CATEGORIES, ids=lambda c: c.name)
async def test_hostile_inputs(
    category: Category,
    emulator: DiscordEmulator,
    community: Community,
    hostile_settings: Settings,
    database: Database,
    tiny_server: GenerationServer,
    connect_bot,
    caplog: pytest.LogCaptureFixture,
) -> None:
    harness = Harness(emulator, community, database, tiny_server, cases=category.cases)
    await harness.add_people()
    if category.model == "echo":  # the mentions' answers also try pings of their own
        pings = " <@⟨alice⟩> <@&⟨admin_role⟩> @everyone @here" if category.name == "mentions" else ""
        harness.server = EchoServer(harness.fill(pings))
    elif category.model == "scripted":
        harness.server = FakeServer([f"word{i} " for i in range(20)], delay_s=0.02)
    discord = hostile_settings.discord.model_copy(update=PEOPLE_LIMITS | category.overrides)
    settings = hostile_settings.model_copy(update={"discord": discord})
    bot = await connect_bot(GradschoolBot(Services(settings, database, harness.server)))
    if category.name == "slash":
        # Discord lists admin commands to Manage Server only; this server's admins opened them to everyone,
        # so the hostile calls reach the bot and its own check is what refuses them
        for command in ("retrain", "rollback", "activate", "doctor", "share-data"):
            await emulator.set_command_permission(community.guild, command, community.guild, allowed=True)
    await harness.add_targets()

    failures: list[str] = []

    async def run(case: Case) -> None:
        try:
            await harness.run(case)
        except Exception as exc:  # report every case that went wrong, not only the first
            failures.append(f"{case.name}: raised {exc!r}"[:500])

    for start in range(0, len(category.cases), category.parallel):
        await asyncio.gather(*(run(case) for case in category.cases[start : start + category.parallel]))
    await harness.settle()
    await harness.run_sentinel()
    failures += [
        f"{case.name}: {p}"
        for case in category.cases
        if case.name in harness.sent and (p := case_problem(harness, case))
    ]
    failures += invariant_problems(harness, bot, caplog, category)
    assert not failures, f"{len(failures)} problems in category {category.name}:\n" + "\n".join(failures)
