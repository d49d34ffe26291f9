"""What real Discord refuses, through the emulator held as strict as Discord: long results, the 3 s deadline,
old and archived progress messages, long /status, missing permissions, cleared reactions, command scopes."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import Any

import discord
from sqlalchemy import event
from sqlmodel import select

from bot.replies import EditPace
from bot.training import edit_allowed
from sim.discord_emulator import DiscordEmulator, Interaction
from store import crud, runs
from store.datasets import build_datasets
from store.models import Correction, Feedback, TrainingRun, UserPrefs
from tests.fixtures.bot import add_adapter, generations, rows, until, user_messages
from tests.fixtures.db import write_lock_held
from tests.fixtures.discord import Community, answer_to, slash

ADMIN_COMMANDS = {
    "activate",
    "doctor",
    "instructions",
    "knowledge",
    "ladder",
    "listen",
    "retrain",
    "rollback",
    "share-data",
}
MANAGE_GUILD = str(discord.Permissions(manage_guild=True).value)


def queue_run(emulator: DiscordEmulator, database: Any, channel: Any) -> tuple[TrainingRun, Any]:
    """A run queued by /retrain earlier (its progress message posted in `channel`), claimed by the trainer."""
    progress = emulator.service.post_message(
        channel.id, emulator.bot_user.id, {"content": "⏳ Queuing a training run…"}, []
    )
    run = rows(
        database,
        lambda s: runs.queue_training_run(
            session=s, reason="admin", notify_channel_id=channel.id, notify_message_id=progress.id
        ),
    )
    rows(database, lambda s: runs.claim_next_run(session=s))
    return run, progress


def progress_to(database: Any, run: TrainingRun, step: int) -> None:
    rows(
        database,
        lambda s: runs.update_run_progress(session=s, run_id=run.id, step=step, total_steps=10, loss=1.0),
    )


def calls_to(emulator: DiscordEmulator, method: str, path_part: str) -> int:
    return sum(1 for c in emulator.rest_calls if c.method == method and path_part in c.path)


async def test_a_failed_run_with_a_long_error_is_reported_in_one_message_once(
    emulator: DiscordEmulator, community: Community, make_bot, database
) -> None:
    run, progress = queue_run(emulator, database, community.general)
    await make_bot()
    log = "Traceback (most recent call last):\n" + "  File 'trainer/job.py', line 1, in main\n" * 60
    error = log[-2000:]  # what the runner keeps of a failed job's log
    rows(database, lambda s: runs.finish_run(session=s, run_id=run.id, status="failed", error=error))

    result = await emulator.wait_for_bot_message(
        community.general, lambda m: m.reference_id == progress.id, timeout=10
    )
    assert result.content.startswith(f"❌ Training run #{run.id} failed: rainer/job.py', line 1")
    assert len(result.content) == 2000 and result.content.endswith("…")
    await asyncio.sleep(0.5)  # ten looks of the watcher
    assert len([m for m in emulator.bot_messages(community.general) if m.reference_id == progress.id]) == 1


async def test_a_progress_message_in_an_archived_thread_still_gets_its_result(
    emulator: DiscordEmulator, community: Community, make_bot, database
) -> None:
    thread = await emulator.create_thread(community.general, community.alice, "training")
    run, progress = queue_run(emulator, database, thread)
    await make_bot()
    progress_to(database, run, 1)
    await emulator.wait_for(lambda: "step 1/10" in progress.content)

    await emulator.archive_thread(thread)
    for step in (2, 3, 4):
        progress_to(database, run, step)
        await asyncio.sleep(0.15)
    edits_while_archived = calls_to(emulator, "PATCH", f"/messages/{progress.id}")
    rows(database, lambda s: runs.finish_run(session=s, run_id=run.id, status="skipped", error="no votes"))

    result = await emulator.wait_for_bot_message(thread, lambda m: "skipped" in m.content)
    assert "no votes" in result.content and "step 1/10" in progress.content
    # the first refused edit stopped the edits (Discord answers 50083 to each one)
    assert calls_to(emulator, "PATCH", f"/messages/{progress.id}") == edits_while_archived <= 2


async def test_a_locked_thread_refuses_the_result_and_the_bot_gives_up_with_a_log_line(
    emulator: DiscordEmulator, community: Community, make_bot, database, caplog
) -> None:
    thread = await emulator.create_thread(community.general, community.alice, "training")
    run, progress = queue_run(emulator, database, thread)
    await make_bot()
    await emulator.archive_thread(thread, locked=True)
    rows(
        database, lambda s: runs.finish_run(session=s, run_id=run.id, status="failed", error="out of memory")
    )

    await until(lambda: any("could not post training run" in r.getMessage() for r in caplog.records))
    sent = calls_to(emulator, "POST", f"/channels/{thread.id}/messages")
    await asyncio.sleep(0.5)  # ten looks of the watcher: no retry
    assert calls_to(emulator, "POST", f"/channels/{thread.id}/messages") == sent
    assert "failed" not in progress.content


async def test_a_progress_message_older_than_an_hour_is_edited_rarely_and_the_result_comes_at_once(
    emulator: DiscordEmulator, community: Community, make_bot, database
) -> None:
    """Discord allows few edits of an hour-old message (the emulator: 3 an hour per channel), then answers
    30046 with an hour to wait: the bot stops editing and posts the result at once all the same."""
    run, progress = queue_run(emulator, database, community.general)
    await emulator.backdate_message(progress, 2 * 3600)
    await make_bot()
    for step in range(1, 7):
        progress_to(database, run, step)
        await asyncio.sleep(0.15)
    edits = calls_to(emulator, "PATCH", f"/messages/{progress.id}")
    assert 3 <= edits <= 4  # three taken, then one refused with 30046
    refused = [c for c in emulator.rest_calls if c.status == 429 and f"/messages/{progress.id}" in c.path]
    assert len(refused) == 1
    rows(database, lambda s: runs.finish_run(session=s, run_id=run.id, status="skipped", error="no votes"))

    result = await emulator.wait_for_bot_message(
        community.general, lambda m: m.reference_id == progress.id, timeout=5
    )
    assert "skipped" in result.content
    assert calls_to(emulator, "PATCH", f"/messages/{progress.id}") == edits  # no edit after the refusal


def test_progress_messages_older_than_an_hour_are_edited_only_now_and_then() -> None:
    now = discord.utils.utcnow()
    fresh = discord.utils.time_snowflake(now - timedelta(minutes=5))
    old = discord.utils.time_snowflake(now - timedelta(minutes=70))
    assert edit_allowed(fresh, last_edit_s_ago=1.0)
    assert not edit_allowed(old, last_edit_s_ago=60.0)
    assert edit_allowed(old, last_edit_s_ago=21 * 60.0)
    assert edit_allowed(old, last_edit_s_ago=None)


async def test_status_with_a_hundred_voted_versions_fits_in_one_message(
    emulator: DiscordEmulator, community: Community, make_bot, database
) -> None:
    await make_bot()
    for number in range(1, 101):
        generation = rows(
            database,
            lambda s, n=number: crud.record_generation(
                session=s,
                prompt=[{"role": "user", "content": "hi"}],
                completion="hello",
                adapter_version=f"v{n}",
            ),
        )
        rows(
            database,
            lambda s, g=generation: crud.record_feedback(
                session=s, generation_id=g.id, rater_id=community.bob.id, value=1
            ),
        )

    [status] = await slash(emulator, community, community.bob, "status")
    assert len(status.content) <= 2000 and "• v100: 100% 👍" in status.content
    assert "older versions (see /adapters)" in status.content
    [adapters] = await slash(emulator, community, community.bob, "adapters")
    assert len(adapters.content) <= 2000


async def test_commands_answer_within_three_seconds_while_the_store_is_locked(
    emulator: DiscordEmulator,
    community: Community,
    make_bot,
    database,
    bot_settings,
    make_tiny_adapter,
    caplog,
) -> None:
    """Another writer holds SQLite's write lock for 5 s and the network is slow: every command is
    acknowledged within Discord's 3 s (the emulator forgets later ones, as Discord does) and finishes once
    the lock is gone."""
    caplog.set_level(logging.WARNING)
    await make_bot()
    add_adapter(database, bot_settings, make_tiny_adapter, seed=1, activate=False)
    question = await emulator.send_message(
        community.general, community.alice, "what is 2+2?", mentions_bot=True
    )
    answer = await answer_to(emulator, community, question)
    forget = await emulator.invoke_slash(community.bob, community.guild, community.general, "forget-me")
    [confirm] = await emulator.wait_for_interaction_response(forget)
    opened = await emulator.invoke_message_command(
        community.alice, community.general, answer, "Suggest a better answer"
    )
    await emulator.wait_for_modal(opened)

    def invoke(user: Any, name: str, options: Any = None) -> Any:
        return emulator.invoke_slash(user, community.guild, community.general, name, options)

    started: list[Interaction] = []
    emulator.network_delay_s = 0.3  # and every call to Discord takes a while too
    with write_lock_held(database):
        started.append(await invoke(community.alice, "optout"))
        started.append(await invoke(community.alice, "retrain"))
        started.append(await invoke(community.alice, "activate", {"version": "v1"}))
        started.append(await emulator.submit_modal(opened, {"better": "4."}))
        started.append(await emulator.click_component(community.bob, confirm, "forget:confirm"))
        await asyncio.sleep(5.0)
        assert all(interaction.acknowledged for interaction in started)

    for interaction in started[:4]:
        await emulator.wait_for_interaction_response(interaction, timeout=15)
    await emulator.wait_for(lambda: "Deleted" in confirm.content, timeout=15)
    texts = [m.content for i in started[:4] for m in emulator.interaction_messages(i)]
    assert "won't be used for training" in texts[0] and "Queued training run" in texts[1]
    assert "Now answering with v1" in texts[2] and "Thanks!" in texts[3]
    assert rows(database, lambda s: s.get(UserPrefs, community.alice.id)).opted_out
    assert rows(database, lambda s: list(s.exec(select(Correction))))[0].content == "4."
    assert [r.getMessage() for r in caplog.records if "Unknown interaction" in r.getMessage()] == []


async def test_without_read_message_history_answers_are_sent_unthreaded(
    emulator: DiscordEmulator, community: Community, make_bot, database
) -> None:
    """Discord refuses a reply without Read Message History (160002): the answer goes out all the same."""
    await make_bot()
    await emulator.set_permission_overwrite(
        community.general, emulator.bot_user, deny=["read_message_history"]
    )
    question = await emulator.send_message(community.general, community.bob, "hello?", mentions_bot=True)

    answer = await emulator.wait_for_bot_message(community.general, timeout=20)
    generation = await until(
        lambda: rows(database, lambda s: crud.generation_for_discord_message(session=s, discord_id=answer.id))
    )
    assert answer.reference_id is None and generation.completion
    assert user_messages(database) == [question.id]
    assert not any(c.status == 403 for c in emulator.rest_calls)  # it knew not to try


async def test_admin_commands_are_published_for_managers_in_servers_only(
    emulator: DiscordEmulator, community: Community, make_bot
) -> None:
    await make_bot()
    published = {c["name"]: c for c in emulator.commands(community.guild)}
    for name, command in published.items():
        assert command.get("integration_types") == [0], name  # never user-installed
        if name in ADMIN_COMMANDS:
            assert (command["default_member_permissions"], command["contexts"]) == (MANAGE_GUILD, [0])
        else:
            assert command["default_member_permissions"] is None and command["contexts"] == [0, 1], name


async def test_admin_roles_see_the_admin_commands_and_others_are_refused(
    emulator: DiscordEmulator, community: Community, make_bot, database
) -> None:
    moderators = await emulator.add_role(community.guild, "moderators")
    await make_bot(admin_role_ids=[moderators.id])
    published = {c["name"]: c for c in emulator.commands(community.guild)}
    assert all(published[name]["default_member_permissions"] is None for name in ADMIN_COMMANDS)
    [refusal] = await slash(emulator, community, community.bob, "retrain")
    assert refusal.ephemeral and "only admins can use /retrain" in refusal.content
    assert rows(database, lambda s: list(s.exec(select(TrainingRun)))) == []


async def test_reactions_on_other_messages_cost_no_store_lookup(
    emulator: DiscordEmulator, community: Community, make_bot, database
) -> None:
    await make_bot()
    chatter = await emulator.send_message(community.general, community.bob, "nice weather")
    lookups: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "FROM generation" in statement:
            lookups.append(statement)

    event.listen(database, "before_cursor_execute", count)
    try:
        for emoji in ("👍", "👎", "🔁"):
            await emulator.add_reaction(community.alice, community.general, chatter, emoji)
        await emulator.wait_for_dispatch("MESSAGE_REACTION_ADD", lambda d: d.data["emoji"]["name"] == "🔁")
        await asyncio.sleep(0.3)
    finally:
        event.remove(database, "before_cursor_execute", count)
    assert lookups == []


async def test_a_moderator_clearing_reactions_takes_the_votes_with_them(
    emulator: DiscordEmulator, community: Community, make_bot, database
) -> None:
    await make_bot()
    carol = await emulator.add_user("carol")
    await emulator.add_member(community.guild, carol)
    moderator = await emulator.add_user("mod")
    await emulator.add_member(community.guild, moderator, permissions=["manage_messages"])

    def live_votes() -> list[tuple[int, int]]:
        found = rows(database, lambda s: list(s.exec(select(Feedback))))
        return sorted((f.rater_id, f.value) for f in found if f.removed_at is None)

    question = await emulator.send_message(community.general, community.bob, "hi", mentions_bot=True)
    answer = await answer_to(emulator, community, question)
    await emulator.add_reaction(community.bob, community.general, answer, "👍")
    await emulator.add_reaction(carol, community.general, answer, "👎")
    await until(lambda: len(live_votes()) == 2)

    await emulator.clear_reactions(answer, by=moderator, emoji="👎")
    await until(lambda: live_votes() == [(community.bob.id, 1)])
    await emulator.clear_reactions(answer, by=moderator)
    await until(lambda: live_votes() == [])
    await emulator.add_reaction(carol, community.general, answer, "👍")  # voting again still counts
    await until(lambda: live_votes() == [(carol.id, 1)])


async def test_a_downvote_offers_reasons_that_only_the_voter_may_give(
    emulator: DiscordEmulator, community: Community, make_bot, database, bot_settings
) -> None:
    await make_bot()
    question = await emulator.send_message(community.general, community.alice, "hi", mentions_bot=True)
    answer = await answer_to(emulator, community, question)
    await emulator.add_reaction(community.bob, community.general, answer, "👎")
    offer = await emulator.wait_for_bot_message(community.general, lambda m: bool(m.components))
    buttons = [c["custom_id"] for row in offer.components for c in row["components"]]
    assert offer.reference_id == answer.id and f"<@{community.bob.id}>" in offer.content
    assert buttons == ["reason:wrong", "reason:too_long", "reason:off_topic", "reason:tone", "reason:other"]
    assert community.bob.id not in offer.mention_ids  # addressed, not pinged

    stranger = await emulator.click_component(community.alice, offer, "reason:wrong")
    [refusal] = await emulator.wait_for_interaction_response(stranger)
    chosen = await emulator.click_component(community.bob, offer, "reason:too_long")
    [thanks] = await emulator.wait_for_interaction_response(chosen)
    await emulator.wait_for(lambda: offer.deleted_at is not None)

    [vote] = rows(database, lambda s: list(s.exec(select(Feedback))))
    assert (vote.value, vote.reason) == (-1, "too_long")
    assert refusal.ephemeral and "for whoever voted" in refusal.content and thanks.ephemeral
    [stats] = await slash(emulator, community, community.alice, "stats")
    assert "👎 because: too long 1." in stats.content
    one_rater = bot_settings.train.model_copy(update={"max_rater_share": 1.0})  # bob alone voted
    data = rows(database, lambda s: build_datasets(session=s, settings=one_rater))
    kto = data.train["kto"] + data.holdout["kto"]
    assert [row["reasons"] for row in kto] == [["too_long"]]


async def test_other_asks_for_words_and_an_ignored_offer_goes_away(
    emulator: DiscordEmulator, community: Community, make_bot, database
) -> None:
    await make_bot(downvote_reason_s=1.0)
    question = await emulator.send_message(community.general, community.alice, "hi", mentions_bot=True)
    answer = await answer_to(emulator, community, question)
    await emulator.add_reaction(community.bob, community.general, answer, "👎")
    offer = await emulator.wait_for_bot_message(community.general, lambda m: bool(m.components))
    opened = await emulator.click_component(community.bob, offer, "reason:other")
    await emulator.wait_for_modal(opened)
    submitted = await emulator.submit_modal(opened, {"reason-text": "it made up a date"})
    await emulator.wait_for_interaction_response(submitted)
    vote = await until(
        lambda: [v for v in rows(database, lambda s: list(s.exec(select(Feedback)))) if v.reason]
    )
    assert (vote[0].reason, vote[0].reason_text) == ("other", "it made up a date")

    await emulator.add_reaction(community.alice, community.general, answer, "👎")
    ignored = await emulator.wait_for_bot_message(
        community.general, lambda m: bool(m.components) and str(community.alice.id) in m.content
    )
    await emulator.wait_for(lambda: ignored.deleted_at is not None, timeout=5)  # after downvote_reason_s

    await emulator.remove_reaction(community.alice, community.general, answer, "👎")
    await emulator.add_reaction(community.alice, community.general, answer, "👎")
    again = await emulator.wait_for_bot_message(
        community.general, lambda m: bool(m.components) and m.id > ignored.id
    )
    await emulator.remove_reaction(community.alice, community.general, answer, "👎")  # taken back: offer goes
    await emulator.wait_for(lambda: again.deleted_at is not None, timeout=5)


async def test_doctor_says_what_is_missing_in_plain_words(
    emulator: DiscordEmulator, community: Community, make_bot, database
) -> None:
    await make_bot()
    [report] = await slash(emulator, community, community.alice, "doctor")
    assert report.ephemeral
    for line in (
        "✅ View Channel",
        "✅ Read Message History",
        "✅ Message Content intent",
        "✅ Store writable",
        "✅ The open book is searched by meaning and words (all-MiniLM-L6-v2)",
    ):
        assert line in report.content
    assert "commands synced" in report.content and "Model " in report.content
    assert "❌ No trainer service has ever run" in report.content and "permissions=" in report.content

    rows(database, lambda s: runs.beat_service(session=s, name=runs.TRAINER_SERVICE, detail={}))
    await emulator.set_permission_overwrite(community.general, emulator.bot_user, deny=["add_reactions"])
    [report] = await slash(emulator, community, community.alice, "doctor")
    assert "❌ Add Reactions is missing: I can't put 👍 👎 🔁 under my answers" in report.content
    assert "✅ Trainer service seen" in report.content


async def test_two_processes_running_a_shard_each_answer_their_own_servers_into_one_store(
    emulator: DiscordEmulator, community: Community, make_bot, database
) -> None:
    """DISCORD_SHARD_COUNT=2 with DISCORD_SHARD_IDS=0 in one process and 1 in the other (here, two bots)."""
    guilds = [await emulator.add_guild_on_shard(f"server {shard}", shard, 2) for shard in (0, 1)]
    channels = [await emulator.add_channel(guild, "general") for guild in guilds]
    for guild in guilds:
        await emulator.add_member(guild, community.bob)
    ids = [guild.id for guild in guilds]
    shards = [await make_bot(guild_ids=ids, shard_count=2, shard_ids=[shard]) for shard in (0, 1)]

    assert [bot.get_guild(ids[0]) is not None for bot in shards] == [True, False]
    assert [bot.get_guild(ids[1]) is not None for bot in shards] == [False, True]
    questions = [
        await emulator.send_message(channel, community.bob, "hello?", mentions_bot=True)
        for channel in channels
    ]
    for channel, question in zip(channels, questions, strict=True):
        await emulator.wait_for_bot_message(channel, lambda m, q=question: m.reference_id == q.id, timeout=30)
    await until(lambda: len(generations(database)) == 2, timeout=30)
    await asyncio.sleep(0.3)
    assert [len(emulator.bot_messages(channel)) for channel in channels] == [1, 1]  # once, by its shard
    assert sorted(user_messages(database)) == sorted(q.id for q in questions)


def test_answers_in_one_channel_share_its_edit_budget() -> None:
    pace = EditPace(10.0)
    assert pace.try_take(1) and pace.try_take(2)  # channels are paced apart
    assert not pace.try_take(1)  # another answer in channel 1 waits for the next tick


async def test_in_dms_a_bots_reaction_is_no_vote_and_a_persons_is(
    emulator: DiscordEmulator, community: Community, make_bot, database
) -> None:
    """No member comes with a DM reaction, so the bot looks the reacting user up."""
    await make_bot()
    other_bot = await emulator.add_user("helper-bot", bot=True)
    answers = {}
    for person in (other_bot, community.bob):  # an earlier answer of the bot in each DM, as it recorded it
        dm = await emulator.open_dm(person)
        answer = emulator.service.post_message(dm.id, emulator.bot_user.id, {"content": "Paris."}, [])
        generation = rows(
            database,
            lambda s: crud.record_generation(
                session=s, prompt=[{"role": "user", "content": "capital?"}], completion="Paris."
            ),
        )
        rows(
            database,
            lambda s, g=generation, a=answer: crud.attach_discord_messages(
                session=s, generation_id=g.id, discord_ids=[a.id], contents=["Paris."]
            ),
        )
        answers[person.id] = (dm, answer)
    for person in (other_bot, community.bob):
        dm, answer = answers[person.id]
        await emulator.add_reaction(person, dm, answer, "👍")

    votes = await until(lambda: rows(database, lambda s: list(s.exec(select(Feedback)))))
    await asyncio.sleep(0.3)  # the bot's reaction, handled first, left nothing behind
    assert [(v.rater_id, v.value) for v in rows(database, lambda s: list(s.exec(select(Feedback))))] == [
        (community.bob.id, 1)
    ]
    assert len(votes) == 1
