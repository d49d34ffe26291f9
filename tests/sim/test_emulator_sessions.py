"""The emulator against discord.py: RESUME and re-IDENTIFY, intents, history, files, rate limits, faults."""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.request

import aiohttp
import discord
import pytest

from sim.discord_emulator import DiscordEmulator
from tests.fixtures.discord import Community
from tests.sim.recording_bot import RecordingBot, until


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


async def test_a_replied_to_message_is_blanked_by_the_same_rules_for_each_session(
    emulator: DiscordEmulator, community: Community, connect_bot
) -> None:
    blind = await connect_bot(RecordingBot(message_content=False))
    seeing = await connect_bot(RecordingBot())  # a second session of the same app, with the intent
    question = await emulator.send_message(community.general, community.alice, "what is a gradient?")
    answer = await emulator.send_message(community.general, community.bob, "a slope", reply_to=question)
    own = await blind.get_channel(community.general.id).send("I am the bot")
    # No ping: the reply itself does not mention the bot, so only the replied-to message is exempt.
    await emulator.send_message(community.general, community.bob, "thanks", reply_to=own, ping_reply=False)
    await until(lambda: len(blind.messages) == len(seeing.messages) == 4)

    def replies(bot: RecordingBot) -> list[tuple[str, str]]:
        return [(m.content, m.reference.resolved.content) for m in bot.messages if m.reference]

    assert replies(blind) == [("", ""), ("", "I am the bot")]
    assert replies(seeing) == [("a slope", "what is a gradient?"), ("thanks", "I am the bot")]
    await emulator.edit_message(answer, "a slope, roughly")
    await until(lambda: blind.edits and seeing.edits)
    assert blind.edits[0].data["referenced_message"]["content"] == ""
    assert seeing.edits[0].data["referenced_message"]["content"] == "what is a gradient?"


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
