"""The gateway refuses what Discord refuses (privileged intents, bad shards) and routes events by shard."""

from __future__ import annotations

from typing import Any

import discord
import pytest

from sim.discord_emulator import (
    DiscordEmulator,
    Guild,
    running,
)
from tests.fixtures.discord import emulator_with
from tests.sim.recording_bot import RecordingBot, until


class ShardedBot(discord.AutoShardedClient):
    """A plain AutoShardedClient that remembers the messages each shard was told about."""

    def __init__(self, **options: Any) -> None:
        intents = discord.Intents.default()
        intents.message_content = True
        super().__init__(intents=intents, **options)
        self.messages: list[discord.Message] = []

    async def on_message(self, message: discord.Message) -> None:
        self.messages.append(message)

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        """No 5 s pause between shards: max_concurrency is not enforced here."""


def shard_of(guild_id: int, num_shards: int) -> int:
    """The formula in Discord's docs (events/gateway#sharding), written out apart from the emulator's."""
    return (guild_id >> 22) % num_shards


async def guilds_on_shards(emulator: DiscordEmulator, shard_ids: list[int], num_shards: int) -> list[Guild]:
    """One guild per entry of `shard_ids`, each routed to that shard of `num_shards`."""
    return [
        await emulator.add_guild_on_shard(f"guild {index}", shard_id, num_shards)
        for index, shard_id in enumerate(shard_ids)
    ]


async def test_a_privileged_intent_not_granted_in_the_portal_is_refused_with_4014() -> None:
    async with emulator_with(privileged_intents={"GUILD_MEMBERS"}) as emulator:
        await emulator.add_guild("Grad School")
        with pytest.raises(discord.PrivilegedIntentsRequired):
            async with running(RecordingBot(message_content=True), emulator):
                pass
        assert emulator.dispatches == []  # no session was started: no READY

        async with running(RecordingBot(message_content=False), emulator) as bot:
            assert [g.name for g in bot.guilds] == ["Grad School"]


async def test_intent_bits_discord_does_not_define_are_refused_with_4013(emulator: DiscordEmulator) -> None:
    intents = discord.Intents.default()
    intents.value |= 1 << 30
    with pytest.raises(discord.ConnectionClosed) as closed:
        async with running(discord.Client(intents=intents), emulator):
            pass
    assert closed.value.code == 4013


async def test_an_invalid_shard_is_refused_with_4010(emulator: DiscordEmulator) -> None:
    client = discord.Client(intents=discord.Intents.default(), shard_id=1, shard_count=1)
    with pytest.raises(discord.ConnectionClosed) as closed:
        async with running(client, emulator):
            pass
    assert closed.value.code == 4010


async def test_an_unsharded_bot_in_more_guilds_than_a_shard_holds_is_refused_with_4011() -> None:
    async with emulator_with(max_guilds_per_shard=3) as emulator:
        for index in range(4):
            await emulator.add_guild(f"guild {index}")
        with pytest.raises(discord.ConnectionClosed) as closed:
            async with running(RecordingBot(), emulator):
                pass
    assert closed.value.code == 4011


async def test_auto_sharding_splits_guilds_and_events_by_discords_formula() -> None:
    async with emulator_with(max_guilds_per_shard=3, guilds_per_recommended_shard=3) as emulator:
        guilds = await guilds_on_shards(emulator, [0, 1, 2, 0, 1, 2, 0], 3)  # 3 + 2 + 2: each fits
        person = await emulator.add_user("alice")
        channels = {}
        for guild in guilds:
            channels[guild.id] = await emulator.add_channel(guild, "general")
            await emulator.add_member(guild, person)
        async with running(ShardedBot(), emulator) as bot:
            target = guilds[4]
            await emulator.send_message(channels[target.id], person, "only shard 1 hears this")
            await emulator.send_message(await emulator.open_dm(person), person, "and this only shard 0")
            await until(lambda: len(bot.messages) == 2)

            assert bot.shard_count == 3
            assert {g.id: g.shard_id for g in bot.guilds} == {g.id: shard_of(g.id, 3) for g in guilds}
        creates = [d for d in emulator.dispatches if d.event == "GUILD_CREATE"]
        assert sorted(int(d.data["id"]) for d in creates) == sorted(g.id for g in guilds)  # each once
        assert all(d.shard == (shard_of(int(d.data["id"]), 3), 3) for d in creates)
        readies = {d.shard: len(d.data["guilds"]) for d in emulator.dispatches if d.event == "READY"}
        assert readies == {(0, 3): 3, (1, 3): 2, (2, 3): 2}
        assert [(d.shard, d.data["content"]) for d in emulator.dispatches if d.event == "MESSAGE_CREATE"] == [
            ((1, 3), "only shard 1 hears this"),
            ((0, 3), "and this only shard 0"),
        ]


async def test_a_process_running_some_shards_receives_exactly_their_guilds() -> None:
    async with emulator_with(max_guilds_per_shard=3) as emulator:
        guilds = await guilds_on_shards(emulator, [0, 1, 2, 3, 0, 1, 2, 3], 4)
        async with running(ShardedBot(shard_ids=[0, 2], shard_count=4), emulator) as bot:
            assert sorted(g.id for g in bot.guilds) == sorted(
                g.id for g in guilds if shard_of(g.id, 4) in (0, 2)
            )
        assert {d.shard for d in emulator.dispatches if d.event == "READY"} == {(0, 4), (2, 4)}


async def test_get_gateway_bot_recommends_a_shard_per_so_many_guilds() -> None:
    async with emulator_with(guilds_per_recommended_shard=3) as emulator:
        http = discord.Client(intents=discord.Intents.default()).http
        await http.static_login(emulator.token)
        try:
            alone = await http.get_bot_gateway()
            for index in range(7):
                await emulator.add_guild(f"guild {index}")
            crowded = await http.get_bot_gateway()
        finally:
            await http.close()

    assert (alone[0], crowded[0]) == (1, 3)  # ceil(7 / 3)
    assert alone[2] == {"total": 1000, "remaining": 1000, "reset_after": 0, "max_concurrency": 1}
