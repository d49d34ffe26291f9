"""`gradschool bot`: run the Discord bot on the model and store this invocation's settings describe."""

from __future__ import annotations

import asyncio
import logging

import typer

from gradschool.context import invocation, open_database
from store.settings import Settings

logger = logging.getLogger("gradschool")


def register(app: typer.Typer) -> None:
    """Add the `bot` command to the CLI."""
    app.command("bot")(run_bot)


def run_bot() -> None:
    """Run the Discord bot (needs DISCORD_TOKEN); Ctrl-C stops it."""
    settings = invocation.settings
    if settings.discord.token is None:
        typer.secho(
            "DISCORD_TOKEN is not set; create a bot in the Discord Developer Portal (Bot tab), copy its "
            "token and set DISCORD_TOKEN in the environment or .env",
            fg=typer.colors.RED,
            err=True,
        )
        raise typer.Exit(2)
    from engine.memory import tune_malloc

    logger.info("malloc: %s", tune_malloc() or "left as the environment set it")  # before threads allocate
    try:
        asyncio.run(serve(settings))
    except KeyboardInterrupt:
        logger.info("stopped")


async def serve(settings: Settings) -> None:
    """Load the model, open the store and run the bot on Discord until cancelled."""
    import discord  # the bot's libraries load only for this command

    from bot import GradschoolBot, Services

    assert settings.discord.token is not None
    services = await Services.start(settings, open_database(settings))
    try:
        async with GradschoolBot(services) as bot:
            await bot.start(settings.discord.token.get_secret_value())
    except discord.LoginFailure:
        typer.secho("Discord refused DISCORD_TOKEN; copy a fresh token from the Bot tab", err=True)
        raise typer.Exit(2) from None
    except discord.PrivilegedIntentsRequired:
        typer.secho(
            "Discord refused the Message Content intent; enable it in the Developer Portal under "
            "Bot > Privileged Gateway Intents",
            err=True,
        )
        raise typer.Exit(2) from None
    finally:
        await services.close()
