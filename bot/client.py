"""`GradschoolBot`, and what both it and the `bot` extension install into a discord.py bot."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import discord
from discord.ext import commands
from sqlalchemy import Engine as Database

from bot.access import UserRateLimit
from bot.answering import Answerer, Chat
from bot.commands import Commands
from bot.dependencies import AnyBot, CogDependencies
from bot.doctor import Doctor, invite_url
from bot.feedback import Feedback
from bot.ladder import Ladder
from bot.listening import ListeningChannels
from bot.storage import Store
from bot.swap import AdapterSwap
from engine.backend import Server, start_server
from engine.embedding import load_embedder
from store import db
from store.settings import Settings

logger = logging.getLogger(__name__)


@dataclass
class Services:
    """What the bot needs from the rest of gradschool: settings, the store and the generation server."""

    settings: Settings
    database: Database
    server: Server

    @classmethod
    async def start(cls, settings: Settings, database: Database | None = None) -> Services:
        """Open the store (migrated) unless given, and load the model behind a started generation server."""
        database = database or db.open_store(settings)
        server = await start_server(settings)
        return cls(settings, database, server)

    async def close(self) -> None:
        await self.server.close()
        self.database.dispose()


def intents() -> discord.Intents:
    """Guilds, guild and DM messages with their content, and reactions; no privileged member list."""
    wanted = discord.Intents.default()
    wanted.message_content = True
    return wanted


async def install(bot: AnyBot, services: Services) -> None:
    """Add gradschool's cogs (hot swap, chat, feedback, commands) to `bot`, each one `Cog(bot, deps)`."""
    settings = services.settings
    store = Store(services.database)
    deps = CogDependencies(
        settings=settings,
        store=store,
        server=services.server,
        answerer=Answerer(bot, services.server, store, settings),
        rate_limit=UserRateLimit(settings.discord.user_rate_limit, settings.discord.user_rate_window_s),
        listening=ListeningChannels(store, settings.ladder.listen_refresh_s),
        embedder=await asyncio.to_thread(load_embedder, settings.ladder),
    )
    await bot.add_cog(AdapterSwap(bot, deps))  # first: it loads the active adapter before anyone is answered
    await bot.add_cog(Chat(bot, deps))
    await bot.add_cog(Feedback(bot, deps))
    await bot.add_cog(Commands(bot, deps))
    await bot.add_cog(Ladder(bot, deps))
    await bot.add_cog(Doctor(bot, deps))


async def sync_commands(bot: AnyBot, guild_ids: list[int]) -> None:
    """Publish the slash commands: to each configured guild (instant), or globally when none are set."""
    if not guild_ids:
        synced = await bot.tree.sync()
        logger.info("synced %d global commands", len(synced))
        return
    for guild_id in guild_ids:
        guild = discord.Object(guild_id)
        bot.tree.copy_global_to(guild=guild)
        try:
            synced = await bot.tree.sync(guild=guild)
        except discord.Forbidden:  # not in that guild, or invited without the applications.commands scope
            logger.error(
                "cannot sync commands to guild %s: is the bot in it, with applications.commands?", guild_id
            )
            continue
        logger.info("synced %d commands to guild %s", len(synced), guild_id)


class GradschoolBot(commands.AutoShardedBot):
    """The standalone bot: slash commands and conversation, nothing typed as a prefix command.

    Sharded as Discord asks (one shard per 1,000 guilds; unsharded bots are refused from 2,500), all shards
    in this process unless DISCORD_SHARD_IDS names a range of DISCORD_SHARD_COUNT: several processes, each
    with its own range, then share one store.
    """

    def __init__(self, services: Services, **options: Any) -> None:
        settings = services.settings.discord
        shards: dict[str, Any] = {}
        if settings.shard_count is not None:
            shards["shard_count"] = settings.shard_count
        if settings.shard_ids:
            shards["shard_ids"] = settings.shard_ids
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=intents(),
            allowed_mentions=discord.AllowedMentions.none(),
            max_ratelimit_timeout=settings.max_rate_limit_wait_s,
            **shards | options,
        )
        self.services = services

    async def setup_hook(self) -> None:
        await install(self, self.services)
        await sync_commands(self, self.services.settings.discord.guild_ids)
        if self.application_id is not None:
            logger.info("invite me to a server with %s", invite_url(self.application_id))

    async def on_message(self, message: discord.Message, /) -> None:
        """Mentions are questions for the Chat cog, not prefix commands, so none are processed here."""
