"""A plain discord.py bot that records what the emulator sends it, for the emulator's own tests."""

from __future__ import annotations

import asyncio

import discord
from discord.ext import commands


class RecordingBot(commands.Bot):
    """A plain discord.py bot that remembers what it was told."""

    def __init__(self, *, message_content: bool = True) -> None:
        intents = discord.Intents.default()
        intents.members = True
        intents.message_content = message_content
        super().__init__(command_prefix="!", intents=intents)
        self.messages: list[discord.Message] = []
        self.reactions_added: list[discord.RawReactionActionEvent] = []
        self.reactions_removed: list[discord.RawReactionActionEvent] = []
        self.threads: list[discord.Thread] = []
        self.edits: list[discord.RawMessageUpdateEvent] = []
        self.deletes: list[discord.RawMessageDeleteEvent] = []
        self.resumes = 0

    async def on_message(self, message: discord.Message) -> None:
        self.messages.append(message)

    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        self.reactions_added.append(payload)

    async def on_raw_reaction_remove(self, payload: discord.RawReactionActionEvent) -> None:
        self.reactions_removed.append(payload)

    async def on_raw_message_edit(self, payload: discord.RawMessageUpdateEvent) -> None:
        self.edits.append(payload)

    async def on_raw_message_delete(self, payload: discord.RawMessageDeleteEvent) -> None:
        self.deletes.append(payload)

    async def on_thread_create(self, thread: discord.Thread) -> None:
        self.threads.append(thread)

    async def on_resumed(self) -> None:
        self.resumes += 1

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        """No 5 s pause before a re-IDENTIFY: that only spares the real Discord's identify budget."""


async def until(condition, timeout: float = 5.0) -> None:
    """Poll the bot's side (which the emulator cannot see) until `condition()` holds."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)
