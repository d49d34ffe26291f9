"""What every gradschool cog is built with: `Cog(bot, deps)`, one `CogDependencies` per bot."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from discord.ext import commands

from bot.access import UserRateLimit
from bot.listening import ListeningChannels
from bot.storage import Store
from engine.backend import Server
from engine.embedding import Embedder
from store.settings import Settings

if TYPE_CHECKING:  # bot.answering's Chat cog imports this module
    from bot.answering import Answerer


AnyBot = commands.Bot | commands.AutoShardedBot  # what gradschool installs into (discord.py keeps them apart)


@dataclass(frozen=True)
class CogDependencies:
    """Settings, the store and the generation server, and what the conversation cogs share."""

    settings: Settings
    store: Store
    server: Server
    answerer: Answerer  # Chat answers questions with it, Feedback 🔁s
    rate_limit: UserRateLimit  # one budget per person for questions and 🔁s alike
    listening: ListeningChannels  # the channels in listen mode: Chat reads it, /listen sets it
    embedder: Embedder | None  # the open book's hybrid ranking (None: by words alone)
