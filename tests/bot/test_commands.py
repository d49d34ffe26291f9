"""Slash commands through the emulator: admin checks, training progress, adapters, data choices, stats."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlmodel import select

from sim.discord_emulator import CommandUnavailable, DiscordEmulator
from store import crud, registry, runs
from store.models import Feedback, Generation, Message, TrainingRun
from tests.fixtures.bot import add_adapter, rows, until
from tests.fixtures.discord import Community, answered, slash

COMMANDS = [
    "activate",
    "adapters",
    "doctor",
    "forget-me",
    "instructions",
    "knowledge",
    "ladder",
    "listen",
    "optin",
    "optout",
    "retrain",
    "rollback",
    "share-data",
    "stats",
    "status",
]


async def test_commands_are_synced_to_the_configured_guild(
    emulator: DiscordEmulator, community: Community, make_bot
) -> None:
    await make_bot()
    names = sorted(c["name"] for c in emulator.commands(community.guild) if c.get("type", 1) == 1)
    menus = [c["name"] for c in emulator.commands(community.guild) if c.get("type") == 3]
    assert names == COMMANDS and menus == ["Suggest a better answer"]


async def test_non_admins_are_not_offered_the_admin_commands_and_are_refused_them(
    emulator: DiscordEmulator, community: Community, make_bot, database
) -> None:
    await make_bot()
    admin = (("retrain", None), ("rollback", None), ("activate", {"version": "v1"}), ("doctor", None))
    for name, options in admin:
        with pytest.raises(CommandUnavailable):  # Discord lists them to Manage Server only
            await emulator.invoke_slash(community.bob, community.guild, community.general, name, options)
        # a server admin opens the command to everyone (Server Settings > Integrations): the bot still refuses
        await emulator.set_command_permission(community.guild, name, community.guild, allowed=True)
        [answer] = await slash(emulator, community, community.bob, name, options)
        assert answer.ephemeral and f"only admins can use /{name}" in answer.content
    assert rows(database, lambda s: list(s.exec(select(TrainingRun)))) == []


async def test_retrain_posts_progress_until_the_run_ends_then_the_result_and_the_swap(
    emulator: DiscordEmulator, community: Community, make_bot, database, bot_settings, make_tiny_adapter
) -> None:
    announcements = await emulator.add_channel(community.guild, "announcements")
    bot = await make_bot(announce_channel_id=announcements.id)

    [ack] = await slash(emulator, community, community.alice, "retrain")
    run = await until(lambda: rows(database, lambda s: runs.latest_run(session=s)))
    progress = emulator.message(run.notify_message_id)
    assert ack.ephemeral and f"#{run.id}" in ack.content
    assert (run.reason, run.requested_by, run.notify_channel_id) == (
        "admin",
        community.alice.id,
        community.general.id,
    )
    await emulator.wait_for(lambda: "queued" in progress.content)

    # the trainer's part, through the store only
    rows(database, lambda s: runs.claim_next_run(session=s))
    rows(
        database,
        lambda s: runs.update_run_progress(session=s, run_id=run.id, step=3, total_steps=10, loss=1.25),
    )
    await emulator.wait_for(lambda: "step 3/10" in progress.content, timeout=10)
    assert "30%" in progress.content and "loss 1.2500" in progress.content and "ETA" in progress.content
    version = add_adapter(database, bot_settings, make_tiny_adapter, seed=1)
    rows(
        database,
        lambda s: runs.finish_run(session=s, run_id=run.id, status="succeeded", adapter_version=version.name),
    )

    result = await emulator.wait_for_bot_message(
        community.general, lambda m: m.reference_id == progress.id, timeout=10
    )
    assert "succeeded" in result.content and version.name in result.content
    assert "preference_accuracy 0.75" in result.content
    assert "ended" in progress.content
    await until(lambda: bot.services.server.active_adapter == version.name)
    announced = await emulator.wait_for_bot_message(announcements)
    assert version.name in announced.content


async def test_status_adapters_activate_and_rollback(
    emulator: DiscordEmulator, community: Community, make_bot, database, bot_settings, make_tiny_adapter
) -> None:
    bot = await make_bot()
    first = add_adapter(database, bot_settings, make_tiny_adapter, seed=1)
    second = add_adapter(database, bot_settings, make_tiny_adapter, seed=2, metrics={"nll": 1.5})
    await until(lambda: bot.services.server.active_adapter == second.name)
    await emulator.send_message(community.general, community.alice, "hi", mentions_bot=True)
    [reply] = await answered(emulator, community.general)
    await emulator.add_reaction(community.bob, community.general, reply, "👍")
    await until(lambda: rows(database, lambda s: list(s.exec(select(Feedback)))))

    [status] = await slash(emulator, community, community.bob, "status")
    [adapters] = await slash(emulator, community, community.bob, "adapters")
    [rolled] = await slash(emulator, community, community.alice, "rollback")
    assert bot.services.server.active_adapter == first.name
    [activated] = await slash(emulator, community, community.alice, "activate", {"version": second.name})
    assert bot.services.server.active_adapter == second.name
    [unknown] = await slash(emulator, community, community.alice, "activate", {"version": "v99"})

    assert f"Active adapter:** {second.name} (sft)" in status.content and "nll 1.5" in status.content
    assert f"{second.name}: 100% 👍 (1 👍, 0 👎)" in status.content
    assert adapters.content.index(second.name) < adapters.content.index(first.name)
    assert "active" in adapters.content and "retired" in adapters.content
    assert f"now answering with {first.name}" in rolled.content
    assert f"Now answering with {second.name}" in activated.content
    assert "no adapter 'v99'" in unknown.content and unknown.ephemeral


async def test_optout_and_optin_change_whether_my_data_is_used(
    emulator: DiscordEmulator, community: Community, make_bot, database
) -> None:
    await make_bot()
    excluded = lambda: rows(database, lambda s: crud.excluded_user_ids(session=s))  # noqa: E731

    [out] = await slash(emulator, community, community.bob, "optout")
    assert excluded() == {community.bob.id} and out.ephemeral
    [back] = await slash(emulator, community, community.bob, "optin")
    assert excluded() == set() and back.ephemeral


async def test_forget_me_asks_first_then_removes_my_rows(
    emulator: DiscordEmulator, community: Community, make_bot, database
) -> None:
    await make_bot()
    await emulator.send_message(community.general, community.bob, "remember me", mentions_bot=True)
    [reply] = await answered(emulator, community.general)
    await emulator.add_reaction(community.alice, community.general, reply, "👍")
    await until(lambda: rows(database, lambda s: list(s.exec(select(Feedback)))))

    interaction = await emulator.invoke_slash(community.bob, community.guild, community.general, "forget-me")
    [question] = await emulator.wait_for_interaction_response(interaction)
    assert question.ephemeral and rows(database, lambda s: len(list(s.exec(select(Generation))))) == 1
    clicked = await emulator.click_component(community.bob, question, "forget:confirm")
    await emulator.wait_for(lambda: clicked.acknowledged and "Deleted" in question.content)

    assert rows(database, lambda s: list(s.exec(select(Generation)))) == []
    assert rows(database, lambda s: list(s.exec(select(Feedback)))) == []
    assert (
        rows(database, lambda s: list(s.exec(select(Message).where(Message.author_id == community.bob.id))))
        == []
    )
    assert rows(database, lambda s: crud.is_excluded(session=s, user_id=community.bob.id))


async def test_stats_posts_a_png_chart(
    emulator: DiscordEmulator, community: Community, make_bot, database
) -> None:
    await make_bot()
    [empty] = await slash(emulator, community, community.bob, "stats")
    assert "No votes yet" in empty.content
    await emulator.send_message(community.general, community.alice, "hi", mentions_bot=True)
    [reply] = await answered(emulator, community.general, after=empty)
    await emulator.add_reaction(community.bob, community.general, reply, "👍")
    await emulator.add_reaction(community.alice, community.general, reply, "👎")
    await until(lambda: len(rows(database, lambda s: list(s.exec(select(Feedback))))) == 2)

    [chart] = await slash(emulator, community, community.bob, "stats")

    [png] = chart.attachments
    assert png.filename.endswith(".png") and png.data.startswith(b"\x89PNG")
    assert "2 votes, 50% 👍" in chart.content


async def test_an_adapter_that_will_not_load_keeps_the_old_one_serving(
    emulator: DiscordEmulator, community: Community, make_bot, database, bot_settings, make_tiny_adapter
) -> None:
    bot = await make_bot()
    good = add_adapter(database, bot_settings, make_tiny_adapter, seed=1)
    await until(lambda: bot.services.server.active_adapter == good.name)
    broken = add_adapter(database, bot_settings, make_tiny_adapter, seed=2, activate=False)
    (Path(broken.path) / "adapter_config.json").unlink()  # the folder was damaged after registration

    [answer] = await slash(emulator, community, community.alice, "activate", {"version": broken.name})

    assert (
        "no adapter_config.json" in answer.content and f"Still answering with {good.name}" in answer.content
    )
    assert bot.services.server.active_adapter == good.name
    assert rows(database, lambda s: registry.active_version(session=s)).name == good.name
    await emulator.send_message(community.general, community.alice, "still there?", mentions_bot=True)
    await answered(emulator, community.general, after=answer)
    generation = await until(lambda: rows(database, lambda s: s.exec(select(Generation)).first()))
    assert generation.adapter_version == good.name


async def test_progress_messages_resume_after_a_restart(
    emulator: DiscordEmulator, community: Community, make_bot, database
) -> None:
    # queued by an earlier run of the bot, which then stopped
    progress = emulator.service.post_message(
        community.general.id, emulator.bot_user.id, {"content": "⏳ Queuing a training run…"}, []
    )
    run = rows(
        database,
        lambda s: runs.queue_training_run(
            session=s, reason="admin", notify_channel_id=community.general.id, notify_message_id=progress.id
        ),
    )
    await make_bot()

    await emulator.wait_for(lambda: "queued" in progress.content)
    rows(database, lambda s: runs.claim_next_run(session=s))
    rows(
        database, lambda s: runs.finish_run(session=s, run_id=run.id, status="failed", error="out of memory")
    )
    result = await emulator.wait_for_bot_message(community.general, lambda m: m.reference_id == progress.id)
    assert "failed: out of memory" in result.content


async def test_a_canary_candidate_answers_its_share_until_it_is_settled(
    emulator: DiscordEmulator, community: Community, make_bot, database, bot_settings, make_tiny_adapter
) -> None:
    bot = await make_bot()
    canary = add_adapter(
        database, bot_settings, make_tiny_adapter, seed=3, metrics={"canary_share": 1.0}, activate=False
    )
    await until(lambda: canary.name in bot.services.server.engine.loaded_adapters)
    await emulator.send_message(community.general, community.alice, "who answers?", mentions_bot=True)
    [first] = await answered(emulator, community.general)
    rows(database, lambda s: registry.set_status(session=s, name=canary.name, status="rejected"))
    await until(lambda: bot.get_cog("AdapterSwap").canary() is None)
    await emulator.send_message(community.general, community.alice, "and now?", mentions_bot=True)
    await answered(emulator, community.general, after=first)

    answered_by = rows(database, lambda s: [g.adapter_version for g in s.exec(select(Generation))])
    assert answered_by == [canary.name, None]
