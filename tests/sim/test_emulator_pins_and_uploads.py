"""The emulator's pins and command options that carry files or channels, against the real discord.py and
held to what Discord allows: Pin Messages to pin, 250 pins a channel, pages of 50, no pins without Read
Message History; a file picked for an ATTACHMENT option arrives in `resolved.attachments`; the pickers offer
only the server's own channels of the option's types, and files of its `file_types`."""

from __future__ import annotations

import discord
import pytest

from sim.discord_emulator import DiscordEmulator, DiscordError
from sim.discord_emulator.state import GUILD_CATEGORY
from tests.fixtures.discord import Community, rest
from tests.sim.recording_bot import RecordingBot


async def test_pins_are_read_newest_first_a_page_at_a_time_and_only_with_history(
    emulator: DiscordEmulator, community: Community, connect_bot
) -> None:
    bot = await connect_bot(RecordingBot())
    owner, general = emulator.world.owner, community.general
    messages = [await emulator.send_message(general, community.bob, f"rule {n}") for n in range(60)]
    for message in messages:
        await emulator.pin_message(owner, message)
    await emulator.unpin_message(owner, messages[0])
    with pytest.raises(DiscordError) as refused:
        await emulator.pin_message(community.bob, messages[0])  # Pin Messages is not @everyone's
    await emulator.wait_for_dispatch("CHANNEL_PINS_UPDATE")

    channel = bot.get_channel(general.id)
    pinned = [m async for m in channel.pins(limit=None)]  # two pages: 50, then 9
    await emulator.set_permission_overwrite(general, emulator.bot_user, deny=["read_message_history"])
    hidden = [m async for m in channel.pins(limit=None)]

    assert [m.content for m in pinned] == [f"rule {n}" for n in range(59, 0, -1)]
    assert all(m.pinned and m.pinned_at is not None for m in pinned)
    assert len([c for c in emulator.rest_calls if c.route == "/channels/{channel_id}/messages/pins"]) == 3
    assert (refused.value.status, refused.value.code) == (403, 50013)
    assert hidden == []


async def test_a_channel_holds_at_most_250_pins(emulator: DiscordEmulator, community: Community) -> None:
    owner = emulator.world.owner
    for n in range(250):
        await emulator.pin_message(owner, await emulator.send_message(community.general, owner, f"pin {n}"))
    extra = await emulator.send_message(community.general, owner, "one more")

    with pytest.raises(DiscordError) as refused:
        await emulator.pin_message(owner, extra)

    assert (refused.value.status, refused.value.code) == (400, 30003)


async def test_attachment_and_channel_options_arrive_resolved(
    emulator: DiscordEmulator, community: Community, connect_bot
) -> None:
    bot = RecordingBot()

    @bot.tree.command(description="Read a file into a channel")
    async def upload(
        interaction: discord.Interaction, file: discord.Attachment, into: discord.TextChannel | None = None
    ) -> None:
        text = (await file.read()).decode()
        where = into.name if into else "-"
        await interaction.response.send_message(
            f"{file.filename}|{file.size}|{file.ephemeral}|{text}|{where}"
        )

    await connect_bot(bot)
    bot.tree.copy_global_to(guild=discord.Object(community.guild.id))
    await bot.tree.sync(guild=discord.Object(community.guild.id))
    other = await emulator.add_guild("Elsewhere")
    lobby = await emulator.add_channel(other, "lobby")
    category = await emulator.add_channel(community.guild, "Study", channel_type=GUILD_CATEGORY)
    commands_route = f"/applications/{emulator.application_id}/commands"
    images_only = [
        {"name": "image", "type": 11, "description": "An image", "required": True, "file_types": ["image"]}
    ]
    await rest(
        emulator, "PUT", commands_route, [{"name": "avatar", "description": "x", "options": images_only}]
    )

    invoked = await emulator.invoke_slash(
        community.alice,
        community.guild,
        community.general,
        "upload",
        {"file": ("notes.md", b"# hi"), "into": community.general},
    )
    [answer] = await emulator.wait_for_interaction_response(invoked)
    refusals = []
    for options in ({"file": ("a.md", b"x"), "into": lobby}, {"file": ("a.md", b"x"), "into": category}):
        with pytest.raises(ValueError) as error:
            await emulator.invoke_slash(
                community.alice, community.guild, community.general, "upload", options
            )
        refusals.append(str(error.value))
    with pytest.raises(ValueError, match="takes only files of types"):
        await emulator.invoke_slash(
            community.alice, community.guild, community.general, "avatar", {"image": ("a.md", b"x")}
        )
    await emulator.invoke_slash(
        community.alice, community.guild, community.general, "avatar", {"image": ("me.JPG", b"x")}
    )

    assert answer.content == "notes.md|4|True|# hi|general"
    [attachment] = invoked.data["resolved"]["attachments"].values()
    assert attachment["ephemeral"] is True and attachment["url"].endswith("/notes.md")
    assert "the server's channels only" in refusals[0] and "takes channels of types" in refusals[1]
