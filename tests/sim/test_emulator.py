"""The emulator against the real discord.py: REST, gateway, interactions, RESUME, faults."""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.request

import aiohttp
import discord
import pytest
from discord import app_commands
from discord.ext import commands

from sim.discord_emulator import DiscordEmulator
from tests.fixtures.discord import Community


class RecordingBot(commands.Bot):
    """A plain discord.py bot that remembers what it was told."""

    def __init__(self, *, message_content: bool = True) -> None:
        intents = discord.Intents.default()
        intents.members = True
        intents.message_content = message_content
        super().__init__(command_prefix="!", intents=intents)
        self.messages: list[discord.Message] = []
        self.reactions_added: list[discord.RawReactionActionEvent] = []
        self.reactions_removed: list[discord.RawReactionActionEvent] = []
        self.threads: list[discord.Thread] = []
        self.edits: list[discord.RawMessageUpdateEvent] = []
        self.deletes: list[discord.RawMessageDeleteEvent] = []
        self.resumes = 0

    async def on_message(self, message: discord.Message) -> None:
        self.messages.append(message)

    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        self.reactions_added.append(payload)

    async def on_raw_reaction_remove(self, payload: discord.RawReactionActionEvent) -> None:
        self.reactions_removed.append(payload)

    async def on_raw_message_edit(self, payload: discord.RawMessageUpdateEvent) -> None:
        self.edits.append(payload)

    async def on_raw_message_delete(self, payload: discord.RawMessageDeleteEvent) -> None:
        self.deletes.append(payload)

    async def on_thread_create(self, thread: discord.Thread) -> None:
        self.threads.append(thread)

    async def on_resumed(self) -> None:
        self.resumes += 1

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        """No 5 s pause before a re-IDENTIFY: that only spares the real Discord's identify budget."""


async def until(condition, timeout: float = 5.0) -> None:
    """Poll the bot's side (which the emulator cannot see) until `condition()` holds."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


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


async def test_events_missed_while_disconnected_are_replayed_once_on_resume(
    emulator: DiscordEmulator, community: Community, connect_bot
) -> None:
    bot = await connect_bot(RecordingBot())
    message = await emulator.send_message(community.general, community.alice, "vote on me")

    async with emulator.disconnected():
        await emulator.add_reaction(community.bob, community.general, message, "👍")
        await asyncio.sleep(0.05)
        assert bot.reactions_added == []
    await until(lambda: bot.resumes and bot.reactions_added)
    await asyncio.sleep(0.05)  # room for a duplicate to show up

    assert [(r.message_id, r.user_id) for r in bot.reactions_added] == [(message.id, community.bob.id)]
    assert [d.event for d in emulator.dispatches].count("READY") == 1  # resumed, not re-identified
    seqs = [d.seq for d in emulator.dispatches]
    assert seqs == sorted(set(seqs)) and all(d.delivered == 1 for d in emulator.dispatches)


async def test_a_drop_during_a_burst_of_activity_loses_nothing(
    emulator: DiscordEmulator, community: Community, connect_bot
) -> None:
    bot = await connect_bot(RecordingBot())
    sent = []
    for index in range(30):
        sent.append(await emulator.send_message(community.general, community.alice, f"msg {index}"))
        if index == 10:
            await emulator.drop_connection()
        await asyncio.sleep(0)

    await until(lambda: bot.resumes and len(bot.messages) == 30)
    await asyncio.sleep(0.05)
    assert [m.id for m in bot.messages] == [m.id for m in sent]


async def test_an_invalidated_session_identifies_again(
    emulator: DiscordEmulator, community: Community, connect_bot
) -> None:
    bot = await connect_bot(RecordingBot())
    await emulator.invalidate_session()
    await emulator.wait_for(lambda: [d.event for d in emulator.dispatches].count("READY") == 2)
    await emulator.wait_until_connected()

    await emulator.send_message(community.general, community.alice, "still there?")
    await until(lambda: bot.messages)
    assert bot.resumes == 0


async def test_without_the_message_content_intent_only_mentions_carry_content(
    emulator: DiscordEmulator, community: Community, connect_bot
) -> None:
    bot = await connect_bot(RecordingBot(message_content=False))
    await emulator.send_message(community.general, community.alice, "chatter")
    await emulator.send_message(community.general, community.alice, "hey you", mentions_bot=True)
    await until(lambda: len(bot.messages) == 2)
    assert [m.content for m in bot.messages] == ["", f"<@{bot.user.id}> hey you"]


async def test_history_pages_newest_first_and_fetches_uncached_messages(
    emulator: DiscordEmulator, community: Community, connect_bot
) -> None:
    sent = [await emulator.send_message(community.general, community.bob, f"n{i}") for i in range(5)]
    bot = await connect_bot(RecordingBot())
    channel = bot.get_channel(community.general.id)

    newest = [m.content async for m in channel.history(limit=3)]
    oldest = [m.content async for m in channel.history(limit=2, oldest_first=True)]
    between = [m.content async for m in channel.history(after=sent[1], before=sent[4])]  # oldest first
    fetched = await channel.fetch_message(sent[2].id)

    assert (newest, oldest, between) == (["n4", "n3", "n2"], ["n0", "n1"], ["n2", "n3"])
    assert fetched.author.id == community.bob.id
    with pytest.raises(discord.NotFound):
        await channel.fetch_message(123)


async def test_attachments_upload_and_download(
    emulator: DiscordEmulator, community: Community, connect_bot
) -> None:
    bot = await connect_bot(RecordingBot())
    await emulator.send_message(
        community.general, community.alice, "see file", attachments=[("notes.txt", b"abc")]
    )
    await until(lambda: bot.messages)
    channel = bot.get_channel(community.general.id)
    sent = await channel.send("here", file=discord.File(__file__, filename="test.py"))

    assert await bot.messages[0].attachments[0].read() == b"abc"
    stored = emulator.message(sent.id).attachments[0]
    assert stored.filename == "test.py" and stored.data.startswith(b'"""The emulator')


async def test_injected_rate_limit_is_waited_out_by_discord_py(
    emulator: DiscordEmulator, community: Community, connect_bot
) -> None:
    bot = await connect_bot(RecordingBot())
    emulator.inject_rate_limit("POST /channels/{channel_id}/messages", times=2, retry_after=0.05)

    await bot.get_channel(community.general.id).send("eventually")

    statuses = [c.status for c in emulator.rest_calls if c.method == "POST"]
    assert statuses == [429, 429, 200]
    assert [m.content for m in emulator.bot_messages(community.general)] == ["eventually"]


async def test_unknown_routes_are_a_loud_404(emulator: DiscordEmulator, caplog) -> None:
    caplog.set_level(logging.WARNING)
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{emulator.base_url}/api/v10/guilds/1/audit-logs") as response,
    ):
        body = await response.json()

    assert response.status == 404 and "no route for GET /api/v10/guilds/1/audit-logs" in body["message"]
    assert [c.path for c in emulator.unknown_routes] == ["/api/v10/guilds/1/audit-logs"]
    assert "audit-logs" in caplog.text


def test_runs_standalone_in_a_thread_for_synchronous_callers() -> None:
    emulator = DiscordEmulator()
    emulator.start_in_thread()
    try:
        guild = emulator.call(emulator.add_guild("Sync Guild"))
        channel = emulator.call(emulator.add_channel(guild, "general"))
        user = emulator.call(emulator.add_user("carol"))
        emulator.call(emulator.add_member(guild, user))
        emulator.call(emulator.send_message(channel, user, "hi"))
        request = urllib.request.Request(f"{emulator.base_url}/api/v10/gateway/bot")
        request.add_header("Authorization", f"Bot {emulator.token}")
        with urllib.request.urlopen(request, timeout=5) as response:
            gateway = json.load(response)
    finally:
        emulator.stop_thread()

    assert gateway["url"] == emulator.base_url.replace("http", "ws")
    assert [m.content for m in emulator.messages(channel)] == ["hi"]
