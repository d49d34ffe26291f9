"""Conversation end to end: Discord emulator -> real discord.py -> GradschoolBot -> tiny model -> store."""

from __future__ import annotations

import discord
from sqlmodel import select

from sim.discord_emulator import DiscordEmulator
from store.models import Feedback, Message
from tests.fixtures.bot import generations, rows, until
from tests.fixtures.discord import Community, answered


async def test_a_mention_gets_a_streamed_answer_recorded_with_its_exact_prompt(
    emulator: DiscordEmulator, community: Community, make_bot, database
) -> None:
    bot = await make_bot()
    question = await emulator.send_message(
        community.general, community.alice, "What is the capital of France?", mentions_bot=True
    )

    [reply] = await answered(emulator, community.general)
    [generation] = await until(lambda: generations(database))

    assert reply.reference_id == question.id
    assert reply.content.strip() == generation.completion.strip()
    assert all(reply.content.startswith(r.content.rstrip("…")) for r in reply.revisions)  # it only grew
    assert any(c.route.endswith("/typing") for c in emulator.rest_calls)
    assert generation.prompt[1:] == [{"role": "user", "content": "What is the capital of France?"}]
    assert generation.prompt[0]["role"] == "system" and "Grad School" in generation.prompt[0]["content"]
    assert "general" in generation.prompt[0]["content"]
    assert generation.user_id == community.alice.id and generation.discord_message_ids == [reply.id]
    assert generation.adapter_version is None and generation.completion_tokens > 0
    assert [reply.reactors(e) for e in ("👍", "👎", "🔁")] == [[bot.user.id]] * 3
    asked = rows(database, lambda s: s.exec(select(Message).where(Message.discord_id == question.id)).one())
    assert (asked.role, asked.author_id, asked.content) == (
        "user",
        community.alice.id,
        "What is the capital of France?",
    )
    assert generation.request_message_id == asked.id
    sent = rows(database, lambda s: s.exec(select(Message).where(Message.discord_id == reply.id)).one())
    assert sent.role == "assistant" and sent.generation_id == generation.id
    posts = [c for c in emulator.rest_calls if c.method == "POST" and c.route.endswith("/messages")]
    assert all(c.body["allowed_mentions"]["parse"] == [] for c in posts)


async def test_a_reply_to_an_answer_sees_the_whole_chain_with_other_speakers_named(
    emulator: DiscordEmulator, community: Community, make_bot, database
) -> None:
    await make_bot()
    first = await emulator.send_message(community.general, community.alice, "Name a city.", mentions_bot=True)
    [answer] = await answered(emulator, community.general)
    [generation] = await until(lambda: generations(database))

    # bob replies to the bot's answer without mentioning it: the reply alone is the trigger
    await emulator.send_message(
        community.general, community.bob, "Why that one?", reply_to=answer, ping_reply=False
    )
    await answered(emulator, community.general, after=answer)
    _, follow_up = await until(lambda: len(generations(database)) == 2 and generations(database))

    assert follow_up.prompt[1:] == [
        {"role": "user", "content": "alice: Name a city."},
        {"role": "assistant", "content": generation.completion},
        {"role": "user", "content": "Why that one?"},
    ]
    assert follow_up.user_id == community.bob.id and first.id != answer.id


async def test_the_bot_answers_in_its_threads_and_dms_and_ignores_bots_and_chatter(
    emulator: DiscordEmulator, community: Community, make_bot, database
) -> None:
    bot = await make_bot()
    other_bot = await emulator.add_user("otherbot", bot=True)
    await emulator.add_member(community.guild, other_bot)
    await emulator.send_message(community.general, community.alice, "just chatting")
    await emulator.send_message(community.general, other_bot, "hey bot", mentions_bot=True)
    thread = await bot.get_channel(community.general.id).create_thread(
        name="gradschool thread", type=discord.ChannelType.public_thread
    )
    dm = await emulator.open_dm(community.bob)
    theirs = await emulator.create_thread(community.general, community.bob, "bob's thread")
    await emulator.send_message(theirs, community.alice, "not the bot's thread")

    await emulator.send_message(thread.id, community.alice, "in your thread")
    await answered(emulator, thread.id)
    await emulator.send_message(dm, community.bob, "in a DM")
    await answered(emulator, dm)

    asked = [
        g.prompt[-1]["content"]
        for g in await until(lambda: len(generations(database)) == 2 and generations(database))
    ]
    assert asked == ["in your thread", "in a DM"]
    assert emulator.bot_messages(community.general) == [] and emulator.bot_messages(theirs) == []

    # DM history is the context; votes in DMs count, the bot's own reactions there do not
    [dm_answer] = emulator.bot_messages(dm)
    await emulator.add_reaction(community.bob, dm, dm_answer, "👍")
    await emulator.send_message(dm, community.bob, "and again")
    await answered(emulator, dm, after=dm_answer)
    *_, first_dm, second_dm = await until(lambda: len(generations(database)) == 3 and generations(database))
    assert second_dm.prompt[1:] == [
        {"role": "user", "content": "in a DM"},
        {"role": "assistant", "content": first_dm.completion},
        {"role": "user", "content": "and again"},
    ]
    found = rows(database, lambda s: [(f.rater_id, f.value) for f in s.exec(select(Feedback))])
    assert found == [(community.bob.id, 1)]


async def test_allow_lists_and_dms_off_keep_the_bot_quiet(
    emulator: DiscordEmulator, community: Community, make_bot, database
) -> None:
    elsewhere = await emulator.add_channel(community.guild, "elsewhere")
    await make_bot(allowed_channel_ids=[elsewhere.id], allow_dms=False)
    dm = await emulator.open_dm(community.bob)
    await emulator.send_message(community.general, community.alice, "here?", mentions_bot=True)
    await emulator.send_message(dm, community.bob, "dm?")
    await emulator.send_message(elsewhere, community.alice, "there?", mentions_bot=True)

    await answered(emulator, elsewhere)
    assert emulator.bot_messages(community.general) == [] and emulator.bot_messages(dm) == []
    assert [g.prompt[-1]["content"] for g in generations(database)] == ["there?"]


async def test_role_and_user_allow_lists(
    emulator: DiscordEmulator, community: Community, make_bot, database
) -> None:
    students = await emulator.add_role(community.guild, "students")
    carol = await emulator.add_user("carol")
    await emulator.add_member(community.guild, carol, roles=[students])
    await make_bot(allowed_role_ids=[students.id], allowed_user_ids=[carol.id, community.bob.id])
    await emulator.send_message(community.general, community.bob, "no role", mentions_bot=True)
    await emulator.send_message(community.general, community.alice, "not listed", mentions_bot=True)
    await emulator.send_message(community.general, carol, "role and listed", mentions_bot=True)

    await answered(emulator, community.general)
    assert [g.prompt[-1]["content"] for g in generations(database)] == ["role and listed"]


async def test_text_files_are_read_and_images_declined_politely(
    emulator: DiscordEmulator, community: Community, make_bot, database
) -> None:
    await make_bot(attachment_max_bytes=10)
    await emulator.send_message(
        community.general, community.alice, "see notes", mentions_bot=True,
        attachments=[("notes.txt", b"0123456789abcdef"), ("cat.png", b"\x89PNG....")],
    )  # fmt: skip

    await answered(emulator, community.general)
    [generation] = generations(database)
    notice = emulator.bot_messages(community.general)[0]
    assert "can't look at cat.png" in notice.content
    assert generation.prompt[-1]["content"] == (
        "see notes\n\n[attached file notes.txt (cut at 10 bytes of 16)]\n0123456789"
    )


async def test_too_many_questions_get_a_friendly_rate_limit_message(
    emulator: DiscordEmulator, community: Community, make_bot, database
) -> None:
    await make_bot(user_rate_limit=1, user_rate_window_s=600)
    await emulator.send_message(community.general, community.alice, "one", mentions_bot=True)
    [answer] = await answered(emulator, community.general)
    second = await emulator.send_message(community.general, community.alice, "two", mentions_bot=True)
    await emulator.send_message(community.general, community.alice, "three", mentions_bot=True)

    notice = await emulator.wait_for_bot_message(community.general, after=answer)
    bobs = await emulator.send_message(community.general, community.bob, "my turn", mentions_bot=True)
    await answered(emulator, community.general, after=notice)  # bob has his own allowance

    assert notice.reference_id == second.id and "Try again in 10 min" in notice.content
    replied_to = [m.reference_id for m in emulator.bot_messages(community.general)]
    assert replied_to[1:] == [second.id, bobs.id]  # one warning for alice's two extra questions
    assert len(generations(database)) == 2 and notice.reactions == {}


async def test_a_429_from_discord_is_waited_out_and_nothing_is_lost(
    emulator: DiscordEmulator, community: Community, make_bot, database
) -> None:
    await make_bot()
    emulator.inject_rate_limit("POST /channels/{channel_id}/messages", times=1, retry_after=0.1)
    emulator.inject_rate_limit("PUT /channels/{channel_id}/messages/{message_id}/reactions", times=1)
    await emulator.send_message(community.general, community.alice, "hello", mentions_bot=True)

    [reply] = await answered(emulator, community.general)
    [generation] = await until(lambda: generations(database))
    assert [
        c.status for c in emulator.rest_calls if c.method == "POST" and c.route.endswith("/messages")
    ] == [429, 200]
    assert generation.discord_message_ids == [reply.id]
    assert reply.content.strip() == generation.completion.strip()
