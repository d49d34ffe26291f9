"""A very long answer from the real (tiny) model, streamed under Discord's own rate limits.

The emulator here allows 5 requests per 5 s per route and channel, like a tight Discord bucket, and the
bot edits at most once a second: the answer must arrive whole, split under 2,000 characters, with no 429.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlmodel import select

from bot.splitting import DISCORD_LIMIT, open_fence, split_message
from sim.discord_emulator import DiscordEmulator, point_discord_py_at, restore_discord_py
from store.models import Generation
from store.settings import Settings
from tests.fixtures.bot import rows, until
from tests.fixtures.discord import Community, answered


@pytest.fixture
async def emulator() -> AsyncIterator[DiscordEmulator]:
    """This module's emulator: Discord's rate limits, tight (5 requests per 5 s per bucket)."""
    async with DiscordEmulator(rate_limit=(5, 5.0)) as emu:
        point_discord_py_at(emu.base_url)
        try:
            yield emu
        finally:
            restore_discord_py()


@pytest.fixture
def bot_settings(bot_settings: Settings, long_model_dir: Path) -> Settings:
    """The long-winded tiny model, a fixed system prompt (greedy answers then never change), edits at 1/s.

    No repetition penalty or min-p: this model writes its long answers by repeating itself, on purpose.
    """
    model = bot_settings.model.model_copy(
        update={
            "base_model": str(long_model_dir),
            "max_new_tokens": 320,
            "system_prompt": "Be thorough.",
            "repetition_penalty": 1.0,
            "min_p": 0.0,
        }
    )
    discord = bot_settings.discord.model_copy(update={"edit_interval_s": 1.0})
    return bot_settings.model_copy(update={"model": model, "discord": discord})


async def test_a_5000_character_answer_streams_split_and_paced(
    emulator: DiscordEmulator, community: Community, make_bot, database
) -> None:
    await make_bot()
    await emulator.send_message(community.general, community.alice, "Tell me everything.", mentions_bot=True)

    parts = await answered(emulator, community.general)
    [generation] = await until(lambda: rows(database, lambda s: list(s.exec(select(Generation)))))

    assert len(generation.completion) >= 4500, "the long-winded model should write thousands of characters"
    assert generation.completion.count("```") >= 2
    assert len(parts) >= 3 and all(0 < len(m.content) <= DISCORD_LIMIT for m in parts)
    assert all(open_fence(m.content) is None for m in parts)  # each message closes the fences it opens
    assert [m.content for m in parts] == split_message(generation.completion)
    assert generation.discord_message_ids == [m.id for m in parts]
    assert [c for c in emulator.rest_calls if c.status == 429] == []
    for message in parts:  # each message's streaming edits at least about a second apart
        edits = [
            c.at for c in emulator.rest_calls if c.method == "PATCH" and c.path.endswith(str(message.id))
        ]
        # the last edit of a finished part goes at once (ReplyWriter._put), however soon after a paced one:
        # the channel's bucket (no 429 above) is what holds it, as on Discord
        assert all(later - earlier >= 0.9 for earlier, later in itertools.pairwise(edits[:-1]))
    assert sum(len(m.revisions) for m in parts) < generation.completion_tokens / 5  # batched, not per token
