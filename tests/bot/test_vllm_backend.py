"""The real bot through the Discord emulator with MODEL_BACKEND=openai, answering from a real vLLM.

Marked `vllm` (and `slow`): the server comes from .vllm-venv (scripts/vllm-venv.sh) and serves SmolLM2.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import Engine as Database

from bot.client import GradschoolBot, Services
from engine.remote import RemoteServer, engine_name
from sim.discord_emulator import DiscordEmulator
from store import db, registry
from store.models import AdapterVersion
from store.scopes import guild_scope
from store.settings import Settings, load_settings
from tests.fixtures.bot import discord_settings, generations, rows, until
from tests.fixtures.discord import Community, answered, slash
from tests.fixtures.vllm import VllmServer, save_adapter

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


@pytest.fixture
def remote_settings(tmp_path: Path, community: Community, vllm_server: VllmServer) -> Settings:
    if vllm_server.process is None:  # a test before this one killed it
        vllm_server.start()
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    return load_settings(
        env_file=None,
        data_dir=data_dir,
        model={
            "backend": "openai",
            "engine_url": vllm_server.url,
            "base_model": str(vllm_server.model_dir),
            "temperature": 0.0,
            "max_new_tokens": 24,
        },
    ).model_copy(update={"discord": discord_settings(community, user_rate_limit=100)})


@pytest.fixture
async def remote_bot(remote_settings: Settings, connect_bot) -> AsyncIterator[tuple[GradschoolBot, Database]]:
    database = db.open_store(remote_settings)
    server = RemoteServer(remote_settings)
    await server.start()
    try:
        yield await connect_bot(GradschoolBot(Services(remote_settings, database, server))), database
    finally:
        await server.close()
        database.dispose()


def register(
    database: Database, settings: Settings, vllm_server: VllmServer, seed: int, scope: str
) -> AdapterVersion:
    """Play the trainer: save an adapter for SmolLM2 and register it as the scope's active version."""
    name = rows(database, lambda s: registry.next_version_name(session=s, scope=scope))
    staging = registry.staging_dir(settings.adapters_dir)
    save_adapter(vllm_server.model_dir, Path(staging), seed=seed)
    return rows(
        database,
        lambda s: registry.register_adapter(
            session=s,
            name=name,
            staging=Path(staging),
            adapters_dir=settings.adapters_dir,
            base_model=str(vllm_server.model_dir),
            method="sft",
            metrics={"preference_accuracy": 0.75},
            status="active",
        ),
    )


async def test_answers_stream_from_vllm_and_are_recorded(
    emulator: DiscordEmulator, community: Community, remote_bot: tuple[GradschoolBot, Database]
) -> None:
    _, database = remote_bot
    question = await emulator.send_message(
        community.general, community.alice, "What is the capital of France?", mentions_bot=True
    )
    [reply] = await answered(emulator, community.general)
    [generation] = await until(lambda: generations(database))
    assert reply.reference_id == question.id and "Paris" in reply.content
    assert reply.content.strip() == generation.completion.strip()
    assert all(reply.content.startswith(r.content.rstrip("…")) for r in reply.revisions)  # it only grew
    assert generation.adapter_version is None and 0 < generation.completion_tokens <= 24
    assert generation.prompt[1:] == [{"role": "user", "content": "What is the capital of France?"}]


async def test_a_new_version_goes_live_while_eight_conversations_stream_then_rolls_back(
    emulator: DiscordEmulator,
    community: Community,
    remote_bot: tuple[GradschoolBot, Database],
    remote_settings: Settings,
    vllm_server: VllmServer,
) -> None:
    bot, database = remote_bot
    scope = guild_scope(community.guild.id)  # the server's own adapters (TRAIN_SCOPE=guild, the default)
    plan = bot.services.server.plan
    first = register(database, remote_settings, vllm_server, seed=1, scope=scope)
    await until(lambda: plan.active_of(scope) == first.name, timeout=30)
    channels = [community.general] + [await emulator.add_channel(community.guild, f"c{i}") for i in range(7)]
    for i, channel in enumerate(channels):
        await emulator.send_message(
            channel, community.alice, f"Question {i}: name a colour.", mentions_bot=True
        )
    second = register(database, remote_settings, vllm_server, seed=2, scope=scope)  # while the eight run
    await until(lambda: plan.active_of(scope) == second.name, timeout=30)
    await until(lambda: len(generations(database)) == 8, timeout=180)  # a CPU engine: minutes, not seconds
    for i, channel in enumerate(channels):  # a second turn each, all after the swap
        await emulator.send_message(channel, community.alice, f"And {i} more?", mentions_bot=True)
    await until(lambda: len(generations(database)) == 16, timeout=180)
    served = [g.adapter_version for g in generations(database)]
    assert set(served[:8]) <= {first.name, second.name} and served[8:] == [second.name] * 8  # none failed
    assert engine_name(second.name) in {m["id"] for m in await bot.services.server._models()}

    [rolled] = await slash(emulator, community, community.alice, "rollback")
    assert f"now answering with {first.name}" in rolled.content
    assert plan.active_of(scope) == first.name
    assert {g.scope for g in generations(database)} == {scope}


async def test_the_engine_killed_mid_conversation_gets_a_notice_and_serving_recovers(
    emulator: DiscordEmulator,
    community: Community,
    remote_bot: tuple[GradschoolBot, Database],
    vllm_server: VllmServer,
) -> None:
    _, database = remote_bot
    await emulator.send_message(community.general, community.alice, "Hello!", mentions_bot=True)
    [first] = await answered(emulator, community.general)
    vllm_server.kill()
    await emulator.send_message(community.general, community.bob, "Are you there?", mentions_bot=True)
    notice = await emulator.wait_for_bot_message(
        community.general, lambda m: "isn't answering right now" in m.content, timeout=30
    )
    assert notice.id > first.id
    # the question and the failed reply are recorded (the reply with its error, for no dataset)
    _, failed = await until(lambda: generations(database)[1:] and generations(database))
    assert failed.error and "EngineUnavailable" in failed.error and failed.discord_message_ids == []
    assert failed.prompt[-1] == {"role": "user", "content": "Are you there?"}
    await asyncio.to_thread(vllm_server.start)
    await emulator.send_message(community.general, community.bob, "And now?", mentions_bot=True)
    await answered(emulator, community.general, after=notice)
    assert [g.error is None for g in generations(database)] == [True, False, True]
