"""Pointing discord.py at the emulator, and running a real bot against it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TypeVar

import discord
import yarl

from .server import DiscordEmulator

ClientT = TypeVar("ClientT", bound=discord.Client)

_ORIGINAL_API = discord.http.Route.BASE
_ORIGINAL_GATEWAY = discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY


def point_discord_py_at(base_url: str) -> None:
    """Send discord.py's REST calls and gateway connections to `base_url` (e.g. http://127.0.0.1:8123)."""
    discord.http.Route.BASE = f"{base_url}/api/v10"
    # discord.py falls back to DEFAULT_GATEWAY on a first connect and after INVALID_SESSION;
    # RESUMEs go to READY's resume_gateway_url, which the emulator points back at itself.
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(base_url.replace("http://", "ws://") + "/")


def restore_discord_py() -> None:
    """Point discord.py back at the real Discord."""
    discord.http.Route.BASE = _ORIGINAL_API
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = _ORIGINAL_GATEWAY


@contextlib.asynccontextmanager
async def logged_in(
    bot: ClientT, base_url: str, token: str, *, timeout: float = 10.0
) -> AsyncIterator[ClientT]:
    """Log `bot` in to the emulator at `base_url`, connect it in this loop, wait for READY; close it on exit.

    The emulator may run anywhere: this loop, a thread of its own, or another process (bench/soak.py).
    """
    point_discord_py_at(base_url)
    # READY waits this long after the last GUILD_CREATE for more; the emulator sends them all at once.
    bot._connection.guild_ready_timeout = min(bot._connection.guild_ready_timeout, 0.05)
    await bot.login(token)
    task = asyncio.create_task(bot.connect(), name="bot-gateway")
    try:
        ready = asyncio.create_task(bot.wait_until_ready())
        await asyncio.wait([ready, task], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            ready.cancel()
            task.result()  # raises the reason the connection ended
        if not ready.done():
            ready.cancel()
            raise TimeoutError(f"the bot was not READY within {timeout}s")
        yield bot
    finally:
        await bot.close()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(task, timeout=5)


@contextlib.asynccontextmanager
async def running(
    bot: ClientT, emulator: DiscordEmulator, *, timeout: float = 10.0, threaded: bool = False
) -> AsyncIterator[ClientT]:
    """`logged_in`, and until the emulator has seen the bot connect.

    `threaded`: the emulator runs on its own loop in a thread (`DiscordEmulator.start_in_thread`).
    """
    async with logged_in(bot, emulator.base_url, emulator.token, timeout=timeout):
        if threaded:
            await asyncio.to_thread(emulator.call, emulator.wait_until_connected(timeout), timeout + 1)
        else:
            await emulator.wait_until_connected(timeout)
        yield bot
