"""The emulator against the real discord.py: READY, REST, slash commands, components, modals, DMs, threads,
and Discord's limits: rate-limit buckets, permission overwrites, archived threads, sizes, token lifetimes."""

from __future__ import annotations

import asyncio
import io
import time
from typing import Any

import discord
import pytest
from discord import app_commands

from sim.discord_emulator import (
    CommandUnavailable,
    DiscordEmulator,
    DiscordError,
    running,
)
from tests.fixtures.discord import Community, emulator_with, rest
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


# -- Discord's limits, as strict as its docs ------------------------------------------------------------


def refusal(error: pytest.ExceptionInfo[discord.HTTPException]) -> tuple[int, int]:
    return error.value.status, error.value.code


async def test_message_sends_have_a_per_channel_bucket_that_discord_py_waits_on() -> None:
    route = "POST /channels/{channel_id}/messages"
    # 3 per 0.5 s rather than the default 5 per 5 s, so that 12 sends take about 1.5 s, not 10 s.
    async with emulator_with(route_limits={route: (3, 0.5)}) as emulator:
        guild = await emulator.add_guild("Grad School")
        general = await emulator.add_channel(guild, "general")
        raw = [
            await rest(emulator, "POST", f"/channels/{general.id}/messages", {"content": "raw"})
            for _ in range(4)
        ]
        await asyncio.sleep(float(raw[-1][2]["Retry-After"]))
        async with running(RecordingBot(), emulator) as bot:
            channel = bot.get_channel(general.id)
            began = time.monotonic()
            await asyncio.gather(*(channel.send(f"burst {i}") for i in range(12)))
            took = time.monotonic() - began

    statuses = [status for status, _, _ in raw]
    headers = [head for _, _, head in raw]
    over = raw[-1][1]
    assert statuses == [200, 200, 200, 429]
    assert [h["X-RateLimit-Remaining"] for h in headers] == ["2", "1", "0", "0"]
    assert {(h["X-RateLimit-Limit"], h["X-RateLimit-Bucket"]) for h in headers} == {
        ("3", headers[0]["X-RateLimit-Bucket"])
    }
    assert (over["message"], over["global"], over["code"]) == ("You are being rate limited.", False, 0)
    assert headers[-1]["Via"] and 0 < over["retry_after"] <= 0.5
    sends = [c.status for c in emulator.rest_calls if c.method == "POST" and c.route.endswith("/messages")]
    assert sends[4:] == [200] * 12  # discord.py read the headers and waited: no 429
    assert took >= 1.3 and len(emulator.bot_messages(general)) == 3 + 12
    assert DiscordEmulator().rest.limits.route_limits[route] == (5, 5.0)  # the default, per channel


async def test_network_delay_comes_before_every_response(
    emulator: DiscordEmulator, community: Community, connect_bot
) -> None:
    bot = await connect_bot(RecordingBot())
    channel = bot.get_channel(community.general.id)

    emulator.network_delay_s = 0.3
    began = time.monotonic()
    await channel.send("over a slow network")
    slow = time.monotonic() - began
    emulator.network_delay_s = 0.0
    began = time.monotonic()
    await channel.send("over a fast one")
    fast = time.monotonic() - began

    assert slow >= 0.3 and fast < 0.3
    assert DiscordEmulator(network_delay_s=0.25).network_delay_s == 0.25


async def test_edits_of_hour_old_messages_run_out_with_a_30046_rate_limit(
    emulator: DiscordEmulator, community: Community, connect_bot
) -> None:
    bot = await connect_bot(RecordingBot())
    bot.http.max_ratelimit_timeout = 30.0  # raise RateLimited rather than sleep out Discord's retry_after
    old = await bot.get_channel(community.general.id).send("yesterday's answer")
    await emulator.backdate_message(old.id, 2 * 3600)

    for number in range(3):  # old_message_edits: 3 an hour in a channel
        await old.edit(content=f"correction {number}")
    with pytest.raises(discord.RateLimited) as limited:
        await old.edit(content="one too many")
    status, body, headers = await rest(
        emulator, "PATCH", f"/channels/{community.general.id}/messages/{old.id}", {"content": "raw"}
    )
    fresh = await emulator.send_message(community.general, community.alice, "just now")
    await emulator.edit_message(fresh, "just now, edited")  # young messages do not count

    assert limited.value.retry_after > 3000
    assert status == 429 and body["code"] == 30046 and body["retry_after"] > 3000 and headers["Via"]
    assert body["message"].startswith("Maximum number of edits to messages older than 1 hour reached")
    assert emulator.message(old.id).content == "correction 2"
    assert emulator.message(old.id).created_at < emulator.message(fresh).created_at


async def test_archived_and_locked_threads_refuse_like_discord(
    emulator: DiscordEmulator, community: Community, connect_bot
) -> None:
    bot = await connect_bot(RecordingBot())
    thread = await emulator.create_thread(community.general, community.bob, "a thread")
    await until(lambda: bot.threads)
    said = await bot.threads[0].send("in the thread")

    await emulator.archive_thread(thread)
    update = await emulator.wait_for_dispatch("THREAD_UPDATE")
    with pytest.raises(discord.HTTPException) as edit:
        await said.edit(content="edited")
    with pytest.raises(discord.HTTPException) as react:
        await said.add_reaction("👍")
    await emulator.send_message(thread, community.bob, "bump")  # unarchives, as Discord does for a sender
    await emulator.archive_thread(thread, locked=True)
    with pytest.raises(DiscordError) as person_in_locked:
        await emulator.send_message(thread, community.bob, "let me in")
    with pytest.raises(discord.HTTPException) as moderator_in_archived:
        await bot.threads[0].send("a moderator, but the thread is archived")
    await emulator.unarchive_thread(thread, locked=True)
    await bot.threads[0].send("a moderator in a locked, active thread")
    await emulator.add_reaction(community.bob, thread, said, "👀")  # reactions need the thread active only

    created = next(d for d in emulator.dispatches if d.event == "THREAD_CREATE")
    assert created.data["thread_metadata"]["archived"] is False
    assert update.data["thread_metadata"] | {"archive_timestamp": None} == {
        "archived": True,
        "locked": False,
        "auto_archive_duration": 1440,
        "archive_timestamp": None,
        "create_timestamp": created.data["thread_metadata"]["create_timestamp"],
    }
    assert refusal(edit) == (400, 50083) and refusal(react) == (400, 50083)
    assert (person_in_locked.value.status, person_in_locked.value.code) == (403, 160005)
    assert refusal(moderator_in_archived) == (400, 50083)
    metadata = [d.data["thread_metadata"] for d in emulator.dispatches if d.event == "THREAD_UPDATE"]
    assert [(m["archived"], m["locked"]) for m in metadata] == [
        (True, False),
        (False, False),
        (True, True),
        (False, True),
    ]
    cached = bot.get_guild(community.guild.id).get_thread  # discord.py re-caches a thread once unarchived
    await until(lambda: (found := cached(thread.id)) is not None and found.locked and not found.archived)
    assert [m.content for m in emulator.messages(thread)][-2:] == [
        "bump",
        "a moderator in a locked, active thread",
    ]


async def test_a_channel_hidden_from_the_bot_is_missing_access_and_sends_it_nothing(
    emulator: DiscordEmulator, community: Community, connect_bot
) -> None:
    bot = await connect_bot(RecordingBot())
    owner = emulator.world.owner
    secret = await emulator.add_channel(community.guild, "secret")
    await emulator.set_permission_overwrite(secret, community.guild, deny=["view_channel"])  # @everyone
    await emulator.set_permission_overwrite(secret, community.alice, allow=["view_channel"])
    await until(lambda: bot.get_channel(secret.id))
    channel = bot.get_channel(secret.id)
    await until(lambda: not channel.permissions_for(channel.guild.me).view_channel)

    whisper = await emulator.send_message(secret, owner, "only for some eyes")
    await emulator.send_message(secret, community.alice, "I may see it too")
    await emulator.add_reaction(owner, secret, whisper, "🤫")
    with pytest.raises(DiscordError) as bob_posts:
        await emulator.send_message(secret, community.bob, "can I?")
    failures = []
    for attempt in (
        lambda: channel.send("hello?"),
        lambda: channel.fetch_message(whisper.id),
        lambda: anext(channel.history(limit=5)),
    ):
        with pytest.raises(discord.Forbidden) as error:
            await attempt()
        failures.append(refusal(error))
    await emulator.send_message(community.general, owner, "in the open")
    await until(lambda: bot.messages)

    assert [m.content for m in bot.messages] == ["in the open"]
    assert not [d for d in emulator.dispatches if d.event == "MESSAGE_REACTION_ADD"]
    assert failures == [(403, 50001)] * 3 and bob_posts.value.code == 50001
    overwrites = next(d for d in reversed(emulator.dispatches) if d.event == "CHANNEL_UPDATE")
    assert overwrites.data["permission_overwrites"] == [
        {"id": str(community.guild.id), "type": 0, "allow": "0", "deny": str(1 << 10)},
        {"id": str(community.alice.id), "type": 1, "allow": str(1 << 10), "deny": "0"},
    ]
    assert channel.permissions_for(channel.guild.get_member(community.alice.id)).view_channel


async def test_overwrites_combine_as_discord_computes_them(
    emulator: DiscordEmulator, community: Community, connect_bot
) -> None:
    bot = await connect_bot(RecordingBot())
    muted = await emulator.add_role(community.guild, "muted")
    helpers = await emulator.add_role(community.guild, "helpers")
    carol = await emulator.add_user("carol")
    dave = await emulator.add_user("dave")
    admin = await emulator.add_user("erin")
    await emulator.add_member(community.guild, carol, roles=[muted, helpers])
    await emulator.add_member(community.guild, dave, roles=[muted])
    await emulator.add_member(community.guild, admin, roles=[muted], permissions=["administrator"])
    general = community.general
    await emulator.set_permission_overwrite(general, muted, deny=["send_messages", "add_reactions"])
    await emulator.set_permission_overwrite(general, helpers, allow=["send_messages"])  # roles: allow wins
    await emulator.set_permission_overwrite(general, dave, allow=["add_reactions"])  # the member's own last
    await until(lambda: len(bot.get_channel(general.id).overwrites) == 3)

    await emulator.send_message(general, carol, "helpers may talk")
    await emulator.send_message(general, admin, "administrators ignore overwrites")
    with pytest.raises(DiscordError) as dave_posts:
        await emulator.send_message(general, dave, "muted")
    target = await emulator.send_message(general, community.bob, "react to me")
    await emulator.add_reaction(dave, general, target, "👍")
    with pytest.raises(DiscordError) as carol_reacts:
        await emulator.add_reaction(carol, general, target, "🎉")
    await emulator.add_reaction(carol, general, target, "👍")  # one already there needs no Add Reactions

    assert (dave_posts.value.status, dave_posts.value.code) == (403, 50013)
    assert carol_reacts.value.code == 50013 and target.reactors("👍") == [dave.id, carol.id]
    channel = bot.get_channel(general.id)
    text_only = ~discord.Permissions.voice().value  # discord.py drops voice permissions in text channels
    for user in (carol, dave, admin, community.bob):
        computed = emulator.world.channel_permissions(general, user.id)
        assert channel.permissions_for(channel.guild.get_member(user.id)).value == computed & text_only


async def test_sending_replying_reacting_and_reading_need_their_permissions(
    emulator: DiscordEmulator, community: Community, connect_bot
) -> None:
    bot = await connect_bot(RecordingBot())
    general = community.general
    channel = bot.get_channel(general.id)
    question = await emulator.send_message(general, community.alice, "a question")
    thread = await emulator.create_thread(general, community.bob, "side talk")
    me = emulator.bot_user
    await emulator.set_permission_overwrite(general, me, deny=["send_messages", "read_message_history"])
    await until(lambda: not channel.permissions_for(channel.guild.me).send_messages)
    refused = {}
    for name, attempt in {
        "send": lambda: channel.send("hi"),
        "fetch": lambda: channel.fetch_message(question.id),
        "react": lambda: channel.get_partial_message(question.id).add_reaction("👍"),
    }.items():
        with pytest.raises(discord.Forbidden) as error:
            await attempt()
        refused[name] = refusal(error)
    history = [m async for m in channel.history(limit=10)]
    await bot.get_channel(thread.id).send("threads need Send Messages in Threads, not Send Messages")

    await emulator.set_permission_overwrite(
        general, me, deny=["read_message_history", "attach_files", "embed_links"]
    )
    await until(lambda: channel.permissions_for(channel.guild.me).send_messages)
    with pytest.raises(discord.Forbidden) as reply:
        await channel.send("an answer", reference=channel.get_partial_message(question.id))
    side = bot.get_channel(thread.id)  # the thread takes its parent's overwrites (and has its own bucket)
    with pytest.raises(discord.Forbidden) as upload:
        await side.send("a file", file=discord.File(io.BytesIO(b"abc"), "notes.txt"))
    with pytest.raises(discord.Forbidden) as embed_only:
        await side.send(embed=discord.Embed(title="only an embed"))
    plain = await channel.send("text stays, the embed goes", embed=discord.Embed(title="dropped"))

    assert refused == {"send": (403, 50013), "fetch": (403, 50013), "react": (403, 50013)}
    assert history == []  # without Read Message History the list is empty, not refused
    assert refusal(reply) == (403, 160002) and refusal(upload) == (403, 50013)
    assert refusal(embed_only) == (403, 50013) and plain.embeds == []
    assert [m.content for m in emulator.bot_messages(thread)] == [
        "threads need Send Messages in Threads, not Send Messages"
    ]


async def test_interaction_tokens_expire_after_fifteen_minutes(
    emulator: DiscordEmulator, community: Community, connect_bot
) -> None:
    bot = RecordingBot()
    answered: list[discord.Interaction] = []

    @bot.tree.command(description="Answer, then keep talking")
    async def later(interaction: discord.Interaction) -> None:
        await interaction.response.send_message("on it")
        answered.append(interaction)

    await connect_bot(bot)
    await bot.tree.sync()
    invoked = await emulator.invoke_slash(community.bob, community.guild, community.general, "later")
    await until(lambda: answered)
    interaction = answered[0]
    in_time = await interaction.followup.send("still in time", wait=True)

    emulator.expire_interaction_token(invoked)
    refused = []
    for attempt in (
        lambda: interaction.followup.send("a quarter of an hour later"),
        lambda: interaction.edit_original_response(content="too late"),
        lambda: interaction.delete_original_response(),
        lambda: in_time.edit(content="too late"),
    ):
        with pytest.raises(discord.HTTPException) as error:
            await attempt()
        refused.append((error.value.status, error.value.code, error.value.text))

    assert refused == [(401, 50027, "Invalid Webhook Token")] * 4
    assert [m.content for m in emulator.interaction_messages(invoked)] == ["on it", "still in time"]


def embed(**parts: Any) -> discord.Embed:
    made = discord.Embed(title=parts.get("title"), description=parts.get("description"))
    for name, value in parts.get("fields", []):
        made.add_field(name=name, value=value)
    if "footer" in parts:
        made.set_footer(text=parts["footer"])
    if "author" in parts:
        made.set_author(name=parts["author"])
    return made


def action_row(*children: dict[str, Any]) -> dict[str, Any]:
    return {"type": 1, "components": list(children)}


def button(number: int, **changes: Any) -> dict[str, Any]:
    return {"type": 2, "style": 1, "label": "b", "custom_id": f"b{number}"} | changes


async def test_embeds_files_and_components_over_discords_limits_are_refused() -> None:
    # Sizes are under test here, not the 5-per-5-s send bucket: a roomy one keeps the test fast.
    async with emulator_with(route_limits={"POST /channels/{channel_id}/messages": (100, 1.0)}) as emulator:
        guild = await emulator.add_guild("Grad School")
        general = await emulator.add_channel(guild, "general")
        async with running(RecordingBot(), emulator) as bot:
            channel = bot.get_channel(general.id)
            refused = {}
            for expected, embeds in {
                "embeds.0.fields": [embed(fields=[("n", "v")] * 26)],
                "embeds.0.fields.0.name": [embed(fields=[("n" * 257, "v")])],
                "embeds.0.fields.0.value": [embed(fields=[("n", "v" * 1025)])],
                "embeds.0.footer.text": [embed(footer="f" * 2049)],
                "embeds.0.author.name": [embed(author="a" * 257)],
                "embeds.1.title": [embed(title="fine"), embed(title="t" * 257)],
                "Embed size exceeds maximum size of 6000": [embed(description="d" * 3001)] * 2,
            }.items():
                with pytest.raises(discord.HTTPException) as error:
                    await channel.send(embeds=embeds)
                refused[expected] = (*refusal(error), str(error.value))
            with pytest.raises(discord.HTTPException) as eleven_files:
                await channel.send(files=[discord.File(io.BytesIO(b"x"), f"{i}.txt") for i in range(11)])
            with pytest.raises(discord.HTTPException) as huge_file:
                await channel.send(file=discord.File(io.BytesIO(b"x" * (10 * 1024 * 1024 + 1)), "big.bin"))
            await channel.send(embeds=[embed(fields=[("n", "v")] * 25)])
            await channel.send(embeds=[embed(description="d" * 2000, fields=[("n" * 10, "v" * 990)])] * 2)
        select = {
            "type": 3,
            "custom_id": "s",
            "options": [{"label": f"{i}", "value": f"{i}"} for i in range(26)],
        }
        components = {}
        for path, rows in {
            "components": [action_row(button(0))] * 6,
            "components.0.components": [action_row(*(button(i) for i in range(6)))],
            "components.0.components.0.custom_id": [action_row(button(0, custom_id="c" * 101))],
            "components.0.components.0.label": [action_row(button(0, label="l" * 81))],
            "components.0.components.0.options": [action_row(select)],
            "components.1.components": [
                action_row(button(0)),
                action_row(select | {"options": []}, button(1)),
            ],
            "components.0.type": [button(0)],  # legacy messages hold buttons in action rows only
        }.items():
            body = {"content": "c", "components": rows}
            status, error, _ = await rest(emulator, "POST", f"/channels/{general.id}/messages", body)
            components[path] = (status, error["code"], _error_at(error, path))

    for expected, (status, code, text) in refused.items():
        assert (status, code) == (400, 50035) and expected in text
    assert refusal(eleven_files) == (400, 50035) and "attachments" in str(eleven_files.value)
    assert refusal(huge_file) == (413, 40005)
    assert all(result == (400, 50035, True) for result in components.values()), components
    assert len(emulator.bot_messages(general)) == 2


def _error_at(body: dict[str, Any], path: str) -> bool:
    """Whether an Invalid Form Body names `path` (like `components.0.label`) among its errors."""
    node = body.get("errors", {})
    for part in path.split("."):
        node = node.get(part, {})
    return bool(node.get("_errors"))


async def test_modals_over_discords_limits_are_refused(
    emulator: DiscordEmulator, community: Community
) -> None:
    commands = [{"name": "ask", "description": "Ask something"}]
    await rest(emulator, "PUT", f"/applications/{emulator.application_id}/commands", commands)
    invoked = await emulator.invoke_slash(community.bob, community.guild, community.general, "ask")

    def modal(**changes: Any) -> dict[str, Any]:
        text = {"type": 4, "custom_id": "q", "style": 1, "label": "Question"} | changes.pop("text", {})
        data = {"custom_id": "m", "title": "Ask", "components": [action_row(text)]}
        return {"type": 9, "data": data | changes}

    labelled = {"type": 18, "label": "l" * 46, "component": {"type": 4, "custom_id": "q", "style": 1}}
    callback = f"/interactions/{invoked.id}/{invoked.token}/callback"
    refused = {}
    for path, body in {
        "data.title": modal(title="t" * 46),
        "data.custom_id": modal(custom_id="c" * 101),
        "data.components": modal(components=[]),
        "data.components.0.components.0.label": modal(text={"label": "l" * 46}),
        "data.components.0.components.0.max_length": modal(text={"max_length": 4001}),
        "data.components.0.components.0.placeholder": modal(text={"placeholder": "p" * 101}),
        "data.components.0.components.0.value": modal(text={"value": "v" * 4001}),
        "data.components.0.label": modal(components=[labelled]),
    }.items():
        status, error, _ = await rest(emulator, "POST", callback, body)
        refused[path] = (status, error["code"], _error_at(error, path))
    six = modal(components=[action_row({"type": 4, "custom_id": f"q{i}", "style": 1}) for i in range(6)])
    too_many, _, _ = await rest(emulator, "POST", callback, six)
    accepted, _, _ = await rest(emulator, "POST", callback, modal(text={"max_length": 4000}))

    assert all(result == (400, 50035, True) for result in refused.values()), refused
    assert too_many == 400 and accepted == 204 and invoked.modal is not None


async def test_moderators_clear_reactions_and_reaction_events_carry_members_only_in_guilds(
    emulator: DiscordEmulator, community: Community, connect_bot
) -> None:
    bot = await connect_bot(RecordingBot())
    cleared: list[Any] = []

    async def clear(payload: Any) -> None:
        cleared.append(payload)

    bot.add_listener(clear, "on_raw_reaction_clear")
    bot.add_listener(clear, "on_raw_reaction_clear_emoji")
    owner = emulator.world.owner
    post = await emulator.send_message(community.general, community.alice, "vote")
    for user, emoji in ((community.bob, "👍"), (community.alice, "👍"), (community.bob, "👎")):
        await emulator.add_reaction(user, community.general, post, emoji)

    with pytest.raises(DiscordError) as not_a_moderator:
        await emulator.clear_reactions(post, by=community.alice)
    await emulator.clear_reactions(post, by=owner, emoji="👍")
    await emulator.clear_reactions(post, by=owner)
    await until(lambda: len(cleared) == 2)
    own = await bot.get_channel(community.general.id).send("the bot's own")
    await own.add_reaction("🔁")
    await emulator.add_reaction(community.bob, community.general, own, "🔁")
    await own.clear_reaction("🔁")
    await own.add_reaction("🔁")
    await own.clear_reactions()
    dm = await emulator.open_dm(community.bob)
    in_dm = await emulator.send_message(dm, community.bob, "psst")
    await emulator.add_reaction(community.bob, dm, in_dm, "👋")
    with pytest.raises(DiscordError) as in_a_dm:
        await emulator.clear_reactions(in_dm, by=community.bob)

    assert (not_a_moderator.value.status, not_a_moderator.value.code) == (403, 50013)
    assert in_a_dm.value.code == 50003 and post.reactions == emulator.message(own.id).reactions == {}
    events = [(d.event, d.data) for d in emulator.dispatches if "REMOVE_" in d.event]
    base = {"channel_id": str(community.general.id), "guild_id": str(community.guild.id)}
    assert events == [
        (
            "MESSAGE_REACTION_REMOVE_EMOJI",
            base | {"message_id": str(post.id), "emoji": {"id": None, "name": "👍"}},
        ),
        ("MESSAGE_REACTION_REMOVE_ALL", base | {"message_id": str(post.id)}),
        (
            "MESSAGE_REACTION_REMOVE_EMOJI",
            base | {"message_id": str(own.id), "emoji": {"id": None, "name": "🔁"}},
        ),
        ("MESSAGE_REACTION_REMOVE_ALL", base | {"message_id": str(own.id)}),
    ]
    assert isinstance(cleared[0], discord.RawReactionClearEmojiEvent) and str(cleared[0].emoji) == "👍"
    assert isinstance(cleared[1], discord.RawReactionClearEvent)
    added = [d.data for d in emulator.dispatches if d.event == "MESSAGE_REACTION_ADD"]
    assert all("member" in a and "guild_id" in a for a in added[:-1])
    assert "member" not in added[-1] and "guild_id" not in added[-1]
    assert added[-1]["message_author_id"] == str(community.bob.id)


async def test_command_permissions_contexts_and_installs_decide_who_may_invoke(
    emulator: DiscordEmulator, community: Community
) -> None:
    commands_route = f"/applications/{emulator.application_id}/commands"
    commands = [
        {"name": "admin", "description": "Manage Server only", "default_member_permissions": str(1 << 5)},
        {"name": "nobody", "description": "Administrators only", "default_member_permissions": 0},
        {"name": "dms", "description": "Only in DMs with the bot", "contexts": [1]},
        {"name": "mine", "description": "User installs only", "integration_types": [1]},
        {"name": "open", "description": "Everyone, everywhere"},
    ]
    invalid = {
        "0.contexts.0": [{"name": "x", "description": "x", "contexts": [3]}],
        "0.integration_types": [{"name": "x", "description": "x", "integration_types": 0}],
        "0.default_member_permissions": [
            {"name": "x", "description": "x", "default_member_permissions": "all"}
        ],
        "0.dm_permission": [{"name": "x", "description": "x", "dm_permission": "yes"}],
    }
    for path, payload in invalid.items():
        status, body, _ = await rest(emulator, "PUT", commands_route, payload)
        assert (status, body["code"], _error_at(body, path)) == (400, 50035, True), path
    status, stored, _ = await rest(emulator, "PUT", commands_route, commands)
    owner, guild, general = emulator.world.owner, community.guild, community.general
    dm = await emulator.open_dm(community.bob)
    thread = await emulator.create_thread(general, community.bob, "archived talk")
    await emulator.archive_thread(thread)

    refused = {
        "bob /admin": (community.bob, guild, general, "admin"),
        "alice /nobody": (community.alice, guild, general, "nobody"),
        "bob /dms in the guild": (community.bob, guild, general, "dms"),
        "bob /mine": (community.bob, guild, general, "mine"),
        "bob /open in an archived thread": (community.bob, guild, thread, "open"),
    }
    reasons = {}
    for what, (user, where, channel, name) in refused.items():
        with pytest.raises(CommandUnavailable) as error:
            await emulator.invoke_slash(user, where, channel, name)
        reasons[what] = str(error.value)
    allowed = [
        await emulator.invoke_slash(community.alice, guild, general, "admin"),
        await emulator.invoke_slash(owner, guild, general, "nobody"),
        await emulator.invoke_slash(community.bob, None, dm, "dms"),
        await emulator.invoke_slash(community.bob, None, dm, "open"),
    ]
    # A server admin's choices in Server Settings > Integrations override default_member_permissions.
    await emulator.set_command_permission(guild, "admin", community.bob, allowed=True)
    await emulator.set_command_permission(guild, "open", guild, allowed=False)  # @everyone
    allowed.append(await emulator.invoke_slash(community.bob, guild, general, "admin"))
    allowed.append(await emulator.invoke_slash(owner, guild, general, "open"))  # owners keep every command
    with pytest.raises(CommandUnavailable, match="turned it off"):
        await emulator.invoke_slash(community.alice, guild, general, "open")

    assert status == 200
    assert [c["default_member_permissions"] for c in stored] == ["32", "0", None, None, None]
    assert [c["integration_types"] for c in stored] == [[0], [0], [0], [1], [0]]
    assert "default_member_permissions 32" in reasons["bob /admin"]
    assert "contexts are [1]" in reasons["bob /dms in the guild"]
    assert (
        "user installs" in reasons["bob /mine"] and "archived" in reasons["bob /open in an archived thread"]
    )
    assert [i.data["name"] for i in allowed] == ["admin", "nobody", "dms", "open", "admin", "open"]
