"""A real GradschoolBot on the tiny model, a real SQLite store, connected to the Discord emulator."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy import Engine as Database
from sqlmodel import Session

from bot.client import GradschoolBot, Services
from engine.engine import Engine
from engine.serving import GenerationServer
from store import db
from store.settings import DiscordSettings, Settings
from tests.fixtures.discord import Community
from tests.fixtures.tiny_model import build_tiny_model, build_tiny_tokenizer

T = TypeVar("T")

FAST = {  # test pacing: edits, polls and notices in tens of milliseconds instead of seconds
    "edit_interval_s": 0.05,
    "queue_notice_s": 0.2,
    "registry_poll_s": 0.1,
    "progress_poll_s": 0.05,
}


async def until(condition: Callable[[], T], timeout: float = 10.0, what: Any = "") -> T:
    """Poll what the emulator cannot see (the database, the bot's state) until `condition()` is truthy."""
    try:
        async with asyncio.timeout(timeout):
            while not (result := condition()):
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise TimeoutError(
            f"waited {timeout}s for {what() if callable(what) else what or condition}"
        ) from None
    return result


def rows(database: Database, query: Callable[[Session], T]) -> T:
    """Run one read in a fresh session (a long-lived one would keep an old snapshot)."""
    with Session(database) as session:
        return query(session)


def discord_settings(community: Community, **overrides: Any) -> DiscordSettings:
    values: dict[str, Any] = {"guild_ids": [community.guild.id], **FAST, **overrides}
    return DiscordSettings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture
def bot_settings(tiny_settings: Settings, community: Community) -> Settings:
    """The tiny model, greedy, and Discord settings for this community with fast pacing."""
    prompt = "You are the assistant of {server}, in #{channel}, on {date}."  # the placeholders are filled in
    model = tiny_settings.model.model_copy(update={"temperature": 0.0, "system_prompt": prompt})
    return tiny_settings.model_copy(update={"model": model, "discord": discord_settings(community)})


@pytest.fixture
def database(bot_settings: Settings) -> Iterator[Database]:
    engine = db.open_store(bot_settings)
    yield engine
    engine.dispose()


@pytest.fixture
async def server(bot_settings: Settings) -> AsyncIterator[GenerationServer]:
    """A started generation server on a freshly loaded tiny model (adapters loaded in one test stay there)."""
    async with GenerationServer(Engine.from_settings(bot_settings)) as started:
        yield started


@pytest.fixture
def make_bot(
    bot_settings: Settings, database: Database, server: GenerationServer, connect_bot
) -> Callable[..., Awaitable[GradschoolBot]]:
    """`await make_bot(**discord_overrides)`: a GradschoolBot connected to the emulator.

    `serve=FakeServer(...)` swaps the tiny model for scripted text (formatting tests only).
    """

    async def make(serve: Any = None, **overrides: Any) -> GradschoolBot:
        settings = bot_settings
        if overrides:
            discord = bot_settings.discord.model_copy(update=overrides)
            settings = bot_settings.model_copy(update={"discord": discord})
        return await connect_bot(GradschoolBot(Services(settings, database, serve or server)))

    return make


WORDS = (
    "alpha",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliet",
    "kilo",
    "lima",
)
LONG_TOKENS = [f" the {a} {b} answer explains {a} and {b} carefully." for a in WORDS for b in WORDS] + [
    "\n\n",
    "\n```python\n",
    "\n```\n",
]


@pytest.fixture(scope="session")
def long_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model whose vocabulary holds whole sentences, paragraph breaks and code fences.

    Random weights pick them often, so a few hundred tokens make thousands of characters of prose with
    fenced blocks: a long answer from a real model at the cost of a short one. The 4,096-token window is
    safe because RoPE has no learned positions.
    """
    folder = tmp_path_factory.mktemp("long-model")
    tokenizer = build_tiny_tokenizer()
    tokenizer.add_tokens(LONG_TOKENS)
    tokenizer.model_max_length = 4096
    model = build_tiny_model(tokenizer, seed=2)  # a seed whose greedy answers ramble, fences included
    model.config.max_position_embeddings = 4096
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
