"""One bot in two servers under TRAIN_SCOPE=guild: each server's answers come from, and are recorded for, its
own adapter (the shared one until it has one), and the adapter commands act on the server they are used in."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from sim.discord_emulator import Channel, DiscordEmulator, Guild, Message, User
from store import communities, registry
from store.scopes import GLOBAL, guild_scope
from store.settings import Settings
from tests.fixtures.bot import add_adapter, generations, rows, until
from tests.fixtures.discord import Community, answered, slash


@pytest.fixture
def bot_settings(bot_settings: Settings) -> Settings:
    """The tests' settings, each server learning its own adapter, DMs following the person's last server."""
    train = bot_settings.train.model_copy(update={"scope": "guild", "dm_scope": "recent_guild"})
    return bot_settings.model_copy(update={"train": train})


@dataclass
class Other:
    """A second server with its own admin."""

    guild: Guild
    channel: Channel
    admin: User


@pytest.fixture
async def other(emulator: DiscordEmulator, community: Community) -> Other:
    guild = await emulator.add_guild("Game Night")
    channel = await emulator.add_channel(guild, "lobby")
    carol = await emulator.add_user("carol")
    await emulator.add_member(guild, carol, permissions=["manage_guild"])
    await emulator.add_member(guild, community.bob)
    return Other(guild, channel, carol)


async def ask(emulator: DiscordEmulator, channel: Channel, user: User, text: str) -> Message:
    before = emulator.bot_messages(channel)
    await emulator.send_message(channel, user, text, mentions_bot=True)
    [reply] = await answered(emulator, channel, after=before[-1] if before else None)
    return reply


async def slash_in(
    emulator: DiscordEmulator, other: Other, name: str, options: dict | None = None
) -> Message:
    interaction = await emulator.invoke_slash(other.admin, other.guild, other.channel, name, options)
    [response] = await emulator.wait_for_interaction_response(interaction, timeout=10)
    return response


async def test_each_server_is_answered_and_recorded_in_its_own_scope(
    emulator: DiscordEmulator, community: Community, other: Other, make_bot, database, bot_settings,
    make_tiny_adapter,
) -> None:  # fmt: skip
    bot = await make_bot(guild_ids=[community.guild.id, other.guild.id])
    here, there = guild_scope(community.guild.id), guild_scope(other.guild.id)
    shared = add_adapter(database, bot_settings, make_tiny_adapter, seed=1)
    own = add_adapter(database, bot_settings, make_tiny_adapter, seed=2, scope=here)
    plan = bot.services.server.plan
    await until(lambda: plan.active_of(here) == own.name and plan.active == shared.name)

    await ask(emulator, community.general, community.alice, "What is the capital of France?")
    await ask(emulator, other.channel, other.admin, "What is the capital of France?")
    dm = await emulator.open_dm(community.alice)
    await ask(emulator, dm, community.alice, "What is the capital of France?")  # she last talked in here

    answers = [(g.scope, g.guild_id, g.adapter_version) for g in generations(database)]
    assert answers == [
        (here, community.guild.id, own.name),
        (there, other.guild.id, shared.name),  # no adapter of its own yet: the shared one answers
        (here, None, own.name),
    ]


async def test_adapter_commands_act_on_the_server_they_are_used_in(
    emulator: DiscordEmulator, community: Community, other: Other, make_bot, database, bot_settings,
    make_tiny_adapter,
) -> None:  # fmt: skip
    bot = await make_bot(guild_ids=[community.guild.id, other.guild.id])
    here, there = guild_scope(community.guild.id), guild_scope(other.guild.id)
    shared = add_adapter(database, bot_settings, make_tiny_adapter, seed=1)
    first = add_adapter(database, bot_settings, make_tiny_adapter, seed=2, scope=here)
    second = add_adapter(database, bot_settings, make_tiny_adapter, seed=3, scope=here)
    plan = bot.services.server.plan
    await until(lambda: plan.active_of(here) == second.name and plan.active == shared.name)

    [listed_here] = await slash(emulator, community, community.alice, "adapters")
    listed_there = await slash_in(emulator, other, "adapters")
    status_there = await slash_in(emulator, other, "status")
    stolen = await slash_in(emulator, other, "activate", {"version": second.name})
    nothing = await slash_in(emulator, other, "rollback")
    [rolled] = await slash(emulator, community, community.alice, "rollback")

    assert second.name in listed_here.content and first.name in listed_here.content
    assert shared.name not in listed_here.content
    assert "No adapters of this server's own yet" in listed_there.content
    assert f"answering with the shared {shared.name}" in status_there.content
    assert f"no adapter '{second.name}'" in stolen.content  # another server's version is not this one's
    assert "Nothing to roll back" in nothing.content
    assert f"now answering with {first.name}" in rolled.content
    assert plan.active_of(here) == first.name and plan.active_of(there) is None
    active = rows(database, lambda s: registry.active_version(session=s, scope=here))
    assert active.name == first.name
    assert rows(database, lambda s: registry.active_version(session=s, scope=there)) is None
    assert rows(database, lambda s: registry.active_version(session=s, scope=GLOBAL)).name == shared.name

    [rolled_again] = await slash(emulator, community, community.alice, "rollback")
    assert f"now answering with the shared {shared.name}" in rolled_again.content
    await until(lambda: plan.active_of(here) is None)


async def test_share_data_is_off_until_the_servers_admin_turns_it_on(
    emulator: DiscordEmulator, community: Community, other: Other, make_bot, database
) -> None:
    await make_bot(guild_ids=[community.guild.id, other.guild.id])
    here, there = guild_scope(community.guild.id), guild_scope(other.guild.id)
    sharing = lambda: rows(database, lambda s: communities.sharing_scopes(session=s))  # noqa: E731
    assert sharing() == []

    [on] = await slash(emulator, community, community.alice, "share-data", {"share": "on"})
    assert on.ephemeral and "also teach the shared adapter" in on.content
    assert sharing() == [here]
    off = await slash_in(emulator, other, "share-data", {"share": "off"})
    assert "only its own adapter" in off.content
    assert sharing() == [here] and there not in sharing()
    [off_here] = await slash(emulator, community, community.alice, "share-data", {"share": "off"})
    assert "only its own adapter" in off_here.content and sharing() == []
