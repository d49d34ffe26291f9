"""Which channels are in listen mode (the bot answers every message there), cached for the message handler.

Every message in every channel the bot can see passes `on_message`, so the set is read from the store at most
once per LADDER_LISTEN_REFRESH_S, not per message; /listen in this process updates it at once, and a change
made by another process (another shard) is seen within the refresh interval.
"""

from __future__ import annotations

import asyncio
import logging
import time

import discord

from bot.conversation import channel_chain
from bot.storage import Store
from store import instructions

logger = logging.getLogger(__name__)


class ListeningChannels:
    """The channels in listen mode, re-read from the store when older than `refresh_s`."""

    def __init__(self, store: Store, refresh_s: float) -> None:
        self.store = store
        self.refresh_s = refresh_s
        self._channels: set[int] = set()
        self._read_at = -float("inf")
        self._lock = asyncio.Lock()

    async def channels(self) -> set[int]:
        """The channel ids in listen mode (a stale set when the store cannot be read: logged, not raised)."""
        if time.monotonic() - self._read_at < self.refresh_s:
            return self._channels
        async with self._lock:
            if time.monotonic() - self._read_at >= self.refresh_s:
                try:
                    self._channels = await self.store(instructions.listening_channels)
                except Exception:  # a locked or unreachable store must not stop mentions being answered
                    logger.exception("could not read which channels are in listen mode")
                self._read_at = time.monotonic()
        return self._channels

    async def is_listening(self, channel: discord.abc.Messageable) -> bool:
        """Whether the bot answers every message in `channel` (a thread follows its parent channel)."""
        return bool(await self.channels() & set(channel_chain(channel)))

    async def set(self, *, scope: str, channel_id: int, listen: bool, by: int | None) -> None:
        """Switch listen mode for a channel, in the store and in this cache at once."""
        await self.store(instructions.set_listen, scope=scope, channel_id=channel_id, listen=listen, by=by)
        if listen:
            self._channels.add(channel_id)
        else:
            self._channels.discard(channel_id)
