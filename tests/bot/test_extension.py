"""gradschool as an extension of someone else's discord.py bot, and the `gradschool bot` command."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import discord
import pytest
from discord.ext import commands
from pydantic import SecretStr
from sqlmodel import Session, select
from typer.testing import CliRunner

import bot as gradschool_extension
from gradschool.bot_command import serve
from gradschool.cli import app
from sim.discord_emulator import DiscordEmulator
from store.models import Generation
from store.settings import Settings
from tests.fixtures.discord import Community, answered


class HostBot(commands.Bot):
    """Somebody's existing bot with a command of its own; it loads gradschool in its setup_hook."""

    def __init__(self) -> None:
        super().__init__(command_prefix="!", intents=gradschool_extension.intents())

        @self.tree.command(description="The host's own command")
        async def ping(interaction: discord.Interaction) -> None:
            await interaction.response.send_message("pong")

    async def setup_hook(self) -> None:
        await self.load_extension("bot")


async def test_the_extension_loads_into_a_separate_bot_and_shares_its_client(
    emulator: DiscordEmulator,
    community: Community,
    connect_bot,
    tiny_model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)  # settings come from the environment only
    for name, value in {
        "GRADSCHOOL_DATA_DIR": str(tmp_path / "data"),
        "BASE_MODEL": str(tiny_model_dir),
        "MODEL_DEVICE": "cpu",
        "MODEL_MAX_NEW_TOKENS": "8",
        "DISCORD_GUILD_IDS": str(community.guild.id),
        "DISCORD_EDIT_INTERVAL_S": "0.05",
    }.items():
        monkeypatch.setenv(name, value)
    host = await connect_bot(HostBot())

    names = sorted(c["name"] for c in emulator.commands(community.guild))
    assert "ping" in names and "retrain" in names and "Suggest a better answer" in names
    await emulator.send_message(community.general, community.alice, "hello", mentions_bot=True)
    [reply] = await answered(emulator, community.general)
    services = host.gradschool_services
    with Session(services.database) as session:
        [generation] = session.exec(select(Generation)).all()
    assert generation.discord_message_ids == [reply.id]
    assert host.get_cog("Chat") is not None

    await host.unload_extension("bot")
    assert host.get_cog("Chat") is None and not hasattr(host, "gradschool_services")
    assert host.tree.get_command("retrain") is None and host.tree.get_command("ping") is not None


def test_the_bot_command_explains_a_missing_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GRADSCHOOL_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("DISCORD_TOKEN", raising=False)
    result = CliRunner().invoke(app, ["bot"])
    assert result.exit_code == 2 and "DISCORD_TOKEN is not set" in result.output


async def test_the_bot_command_serves_discord_with_the_configured_model(
    emulator: DiscordEmulator, community: Community, bot_settings: Settings
) -> None:
    discord_settings = bot_settings.discord.model_copy(update={"token": SecretStr(emulator.token)})
    settings = bot_settings.model_copy(update={"discord": discord_settings})
    serving_task = asyncio.create_task(serve(settings))
    try:
        await emulator.wait_until_connected()
        await emulator.send_message(community.general, community.alice, "hi", mentions_bot=True)
        [reply] = await answered(emulator, community.general)
        assert sorted(c["name"] for c in emulator.commands(community.guild))[:2] == [
            "Suggest a better answer",
            "activate",
        ]
    finally:
        serving_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving_task
    assert reply.reactors("👍")
