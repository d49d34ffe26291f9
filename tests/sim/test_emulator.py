"""The emulator against the real discord.py: READY, REST, slash commands, components, modals, DMs, threads."""

from __future__ import annotations

import asyncio

import discord
import pytest
from discord import app_commands

from sim.discord_emulator import DiscordEmulator
from tests.fixtures.discord import Community
from tests.sim.recording_bot import RecordingBot, until


async def test_ready_shows_guild_channels_members_and_permissions(community: Community, connect_bot) -> None:
    bot = await connect_bot(RecordingBot())

    guild = bot.get_guild(community.guild.id)
    assert guild is not None and guild.name == "Grad School"
    assert [c.name for c in guild.text_channels] == ["general"]
    assert guild.me.id == bot.user.id
    assert guild.get_member(community.alice.id).guild_permissions.manage_guild
    assert not guild.get_member(community.bob.id).guild_permissions.manage_guild
    assert guild.me.guild_permissions.add_reactions


async def test_bot_replies_edits_and_reacts_through_rest(
    emulator: DiscordEmulator, community: Community, connect_bot
) -> None:
    bot = await connect_bot(RecordingBot())

    async def answer(message: discord.Message) -> None:
        if bot.user in message.mentions:
            reply = await message.reply("thinking")
            await reply.edit(content="42")
            await reply.add_reaction("👍")

    bot.add_listener(answer, "on_message")
    question = await emulator.send_message(
        community.general, community.alice, "the answer?", mentions_bot=True
    )

    reply = await emulator.wait_for_bot_message(community.general)
    await emulator.wait_for(lambda: reply.reactors("👍"))
    assert bot.messages[0].content == f"<@{bot.user.id}> the answer?"
    assert [r.content for r in reply.revisions] == ["thinking", "42"]
    assert reply.reference_id == question.id and community.alice.id in reply.mention_ids
    assert reply.reactors("👍") == [bot.user.id]
    routes = [(c.method, c.route) for c in emulator.rest_calls if c.route.startswith("/channels")]
    assert routes == [
        ("POST", "/channels/{channel_id}/messages"),
        ("PATCH", "/channels/{channel_id}/messages/{message_id}"),
        ("PUT", "/channels/{channel_id}/messages/{message_id}/reactions/{emoji}/@me"),
    ]
    assert [d.event for d in emulator.dispatches][-3:] == [
        "MESSAGE_CREATE",
        "MESSAGE_UPDATE",
        "MESSAGE_REACTION_ADD",
    ]


async def test_over_long_and_foreign_edits_are_refused_like_discord(
    emulator: DiscordEmulator, community: Community, connect_bot
) -> None:
    bot = await connect_bot(RecordingBot())
    channel = bot.get_channel(community.general.id)
    await emulator.send_message(community.general, community.alice, "mine")
    await until(lambda: bot.messages)

    with pytest.raises(discord.HTTPException) as too_long:
        await channel.send("x" * 2001)
    with pytest.raises(discord.Forbidden):
        await bot.messages[0].edit(content="not yours")

    assert too_long.value.status == 400 and too_long.value.code == 50035
    assert "2000" in str(too_long.value)
    assert emulator.bot_messages(community.general) == []
    assert (await channel.send("x" * 2000)).content == "x" * 2000


async def test_raw_reactions_arrive_even_for_messages_sent_before_the_bot_connected(
    emulator: DiscordEmulator, community: Community, connect_bot
) -> None:
    old = await emulator.send_message(community.general, community.alice, "from before the bot was here")
    bot = await connect_bot(RecordingBot())

    await emulator.add_reaction(community.bob, community.general, old, "👍")
    await emulator.add_reaction(community.bob, community.general, old, "👍")  # a repeat is no new event
    await emulator.remove_reaction(community.bob, community.general, old, "👍")
    await until(lambda: bot.reactions_removed)

    [added], [removed] = bot.reactions_added, bot.reactions_removed
    assert (added.message_id, added.user_id, str(added.emoji)) == (old.id, community.bob.id, "👍")
    assert added.message_author_id == community.alice.id and added.member.id == community.bob.id
    assert added.guild_id == community.guild.id and removed.user_id == community.bob.id
    assert [(e.user_id, e.added) for e in old.reaction_log] == [
        (community.bob.id, True),
        (community.bob.id, False),
    ]


async def test_slash_commands_sync_reply_defer_and_follow_up(
    emulator: DiscordEmulator, community: Community, connect_bot
) -> None:
    bot = RecordingBot()
    admin = app_commands.Group(name="admin", description="Admin tools")

    @bot.tree.command(description="Answer right away")
    async def ping(interaction: discord.Interaction, times: int = 1) -> None:
        await interaction.response.send_message("pong" * times)

    @bot.tree.command(description="Answer after thinking")
    async def slow(interaction: discord.Interaction) -> None:
        await interaction.response.defer(thinking=True)
        await asyncio.sleep(0.05)
        await interaction.followup.send("done thinking")

    @admin.command(description="Queue a training run")
    async def retrain(interaction: discord.Interaction, reason: str) -> None:
        allowed = interaction.user.guild_permissions.manage_guild
        await interaction.response.send_message(f"{allowed}:{reason}", ephemeral=True)

    bot.tree.add_command(admin)
    await connect_bot(bot)
    bot.tree.copy_global_to(guild=discord.Object(community.guild.id))
    await bot.tree.sync(guild=discord.Object(community.guild.id))
    assert sorted(c["name"] for c in emulator.commands(community.guild)) == ["admin", "ping", "slow"]

    pinged = await emulator.invoke_slash(
        community.bob, community.guild, community.general, "ping", {"times": 2}
    )
    slowed = await emulator.invoke_slash(community.bob, community.guild, community.general, "slow")
    retrained = await emulator.invoke_slash(
        community.alice, community.guild, community.general, "admin", {"reason": "fresh votes"}, "retrain"
    )

    assert [m.content for m in await emulator.wait_for_interaction_response(pinged)] == ["pongpong"]
    [answer] = await emulator.wait_for_interaction_response(slowed)
    assert answer.content == "done thinking" and len(answer.revisions) == 2  # "thinking..." then the answer
    [secret] = await emulator.wait_for_interaction_response(retrained)
    assert secret.content == "True:fresh votes" and secret.ephemeral
    assert secret.id not in {
        int(d.data.get("id", 0)) for d in emulator.dispatches if d.event == "MESSAGE_CREATE"
    }


async def test_streamed_edits_buttons_and_the_three_second_rule(
    emulator: DiscordEmulator, community: Community, connect_bot
) -> None:
    bot = RecordingBot()
    too_late: list[int] = []

    class Again(discord.ui.View):
        @discord.ui.button(label="Again", custom_id="again")
        async def again(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
            await interaction.response.edit_message(content="second try", view=None)

    @bot.tree.command(description="Stream an answer")
    async def stream(interaction: discord.Interaction) -> None:
        await interaction.response.defer(thinking=True)
        for text in ("a", "ab", "abc"):
            await interaction.edit_original_response(content=text)
        await interaction.followup.send("want another?", view=Again())

    @bot.tree.command(description="Answer too slowly")
    async def late(interaction: discord.Interaction) -> None:
        await asyncio.sleep(0.2)
        try:
            await interaction.response.send_message("sorry")
        except discord.NotFound as error:
            too_late.append(error.code)

    await connect_bot(bot)
    await bot.tree.sync()
    emulator.interactions.response_deadline = 0.1  # Discord's 3 s, shortened
    streamed = await emulator.invoke_slash(community.bob, community.guild, community.general, "stream")
    await emulator.invoke_slash(community.bob, community.guild, community.general, "late")

    answer, offer = await emulator.wait_for_interaction_response(streamed, quiet=0.1)
    clicked = await emulator.click_component(community.bob, offer, "again")
    await emulator.wait_for(lambda: clicked.acknowledged and offer.content == "second try")
    await until(lambda: too_late)

    assert [r.content for r in answer.revisions] == ["", "a", "ab", "abc"]
    assert offer.components == [] and too_late == [10062]


async def test_people_edit_and_delete_and_the_bot_deletes_its_own(
    emulator: DiscordEmulator, community: Community, connect_bot
) -> None:
    bot = await connect_bot(RecordingBot())
    typo = await emulator.send_message(community.general, community.alice, "teh answer")
    await emulator.edit_message(typo, "the answer")
    await emulator.delete_message(typo)
    own = await bot.get_channel(community.general.id).send("oops")
    await own.delete()
    await until(lambda: len(bot.deletes) == 2)

    assert bot.edits[0].data["content"] == "the answer"
    assert [d.message_id for d in bot.deletes] == [typo.id, own.id]
    assert emulator.messages(community.general) == []
    assert [m.content for m in emulator.messages(community.general, include_deleted=True)] == [
        "the answer",
        "oops",
    ]


async def test_message_context_menu_opens_a_modal_and_receives_its_submission(
    emulator: DiscordEmulator, community: Community, connect_bot
) -> None:
    bot = RecordingBot()
    corrections: list[tuple[int, str]] = []

    class Correction(discord.ui.Modal, title="A better answer"):
        better = discord.ui.TextInput(label="Better answer", custom_id="better", style=discord.TextStyle.long)

        def __init__(self, target: discord.Message) -> None:
            super().__init__()
            self.target = target

        async def on_submit(self, interaction: discord.Interaction) -> None:
            corrections.append((self.target.id, self.better.value))
            await interaction.response.send_message("thanks", ephemeral=True)

    @bot.tree.context_menu(name="Suggest a better answer")
    async def suggest(interaction: discord.Interaction, message: discord.Message) -> None:
        await interaction.response.send_modal(Correction(message))

    await connect_bot(bot)
    await bot.tree.sync()
    target = await emulator.send_message(community.general, community.alice, "2 + 2 = 5")

    opened = await emulator.invoke_message_command(
        community.bob, community.general, target, "Suggest a better answer"
    )
    modal = await emulator.wait_for_modal(opened)
    submitted = await emulator.submit_modal(opened, {"better": "2 + 2 = 4"})

    assert modal["title"] == "A better answer"
    assert [m.content for m in await emulator.wait_for_interaction_response(submitted)] == ["thanks"]
    assert corrections == [(target.id, "2 + 2 = 4")]
    with pytest.raises(ValueError, match="required"):
        await emulator.submit_modal(opened, {})


async def test_direct_messages_both_ways(
    emulator: DiscordEmulator, community: Community, connect_bot
) -> None:
    bot = await connect_bot(RecordingBot())

    async def echo(message: discord.Message) -> None:
        if message.guild is None and message.author != bot.user:
            await message.channel.send(f"you said {message.content}")

    bot.add_listener(echo, "on_message")
    dm = await emulator.open_dm(community.bob)
    await emulator.send_message(dm, community.bob, "hello bot")
    echoed = await emulator.wait_for_bot_message(dm)
    await (await bot.fetch_user(community.alice.id)).send("a note for alice")

    assert echoed.content == "you said hello bot"
    assert isinstance(bot.messages[0].channel, discord.DMChannel)
    alice_dm = emulator.world.dm_channel(community.alice.id)
    assert [m.content for m in emulator.messages(alice_dm)] == ["a note for alice"]


async def test_threads_started_by_the_bot_and_by_people(
    emulator: DiscordEmulator, community: Community, connect_bot
) -> None:
    bot = await connect_bot(RecordingBot())

    async def open_thread(message: discord.Message) -> None:
        if message.content == "long question":
            thread = await message.create_thread(name="Long question")
            await thread.send("let's talk here")

    bot.add_listener(open_thread, "on_message")
    question = await emulator.send_message(community.general, community.alice, "long question")
    first = await emulator.wait_for(lambda: emulator.world.channels.get(question.id))
    said = await emulator.wait_for_bot_message(first)
    second = await emulator.create_thread(community.general, community.bob, "bob's thread")
    await emulator.send_message(second, community.bob, "in my thread")
    await until(lambda: len(bot.messages) == 3)

    assert first.parent_id == community.general.id and first.name == "Long question"
    assert said.content == "let's talk here"
    assert [t.id for t in bot.threads] == [first.id, second.id]
    assert isinstance(bot.messages[-1].channel, discord.Thread)
