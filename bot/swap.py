"""Hot swap: watch the registry and switch the generation server to whichever adapter became active."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import discord
from discord.ext import commands, tasks

from bot.dependencies import AnyBot, CogDependencies
from bot.replies import NO_MENTIONS
from bot.training import metrics_text
from engine.engine import AdapterLoadError
from store import registry
from store.models import AdapterVersion

logger = logging.getLogger(__name__)


class AdapterSwap(commands.Cog):
    """Polls the registry's active row (one cheap query) and makes the server serve that version."""

    def __init__(self, bot: AnyBot, deps: CogDependencies) -> None:
        self.bot = bot
        self.server = deps.server
        self.store = deps.store
        self.settings = deps.settings.discord
        # a version that would not load, and why; not retried until the registry moves on
        self.failed: tuple[str, str] | None = None
        self.canary: str | None = None  # the candidate serving a share of answers
        self._lock = asyncio.Lock()
        self.poll.change_interval(seconds=self.settings.registry_poll_s)

    async def cog_load(self) -> None:
        await self.check_now(announce=False)  # serve the active version before the first answer
        self.poll.start()

    async def cog_unload(self) -> None:
        self.poll.cancel()

    @tasks.loop(name="gradschool-adapter-swap")  # every registry_poll_s, set in __init__
    async def poll(self) -> None:
        try:
            await self.check_now()
        except Exception:  # the watcher must outlive a database hiccup
            logger.exception("checking the adapter registry failed")

    @poll.before_loop
    async def _wait_one_interval(self) -> None:
        await asyncio.sleep(self.settings.registry_poll_s)  # cog_load has just checked

    async def check_now(self, *, announce: bool = True) -> str | None:
        """Switch to the registry's active version if the server is not on it; returns an error, if any."""
        async with self._lock:
            await self._follow_canary()
            version = await self.store(registry.active_version)
            name = version.name if version else None
            if name == self.server.active_adapter:
                self.failed = None
                return None
            if self.failed is not None and self.failed[0] == name:
                return self.failed[1]
            try:
                await self.server.activate(name, Path(version.path) if version and version.path else None)
            except AdapterLoadError as exc:
                self.failed = (str(name), str(exc))
                logger.error("could not switch to adapter %s: %s", name, exc)
                return str(exc)
            self.failed = None
            logger.info("now serving %s", name or "the base model")
        if announce:
            await self._announce(version)
        return None

    async def _follow_canary(self) -> None:
        """Serve the newest candidate marked as a canary (`canary_share` in its metrics) to that share."""
        versions = await self.store(registry.list_versions)
        canary = next(
            (v for v in versions if v.status == "candidate" and v.metrics.get("canary_share")), None
        )
        name = canary.name if canary else None
        if name == self.canary or (self.failed is not None and self.failed[0] == name):
            return
        if canary is None or canary.path is None:
            self.server.set_canary(None, 0.0)
        else:
            try:
                await self.server.load_adapter(canary.name, Path(canary.path))
            except AdapterLoadError as exc:
                self.failed = (canary.name, str(exc))
                logger.error("could not load canary %s: %s", canary.name, exc)
                return
            self.server.set_canary(canary.name, float(canary.metrics["canary_share"]))
        logger.info("canary is now %s", name)
        self.canary = name

    async def _announce(self, version: AdapterVersion | None) -> None:
        channel_id = self.settings.announce_channel_id
        if channel_id is None:
            return
        if version is None:
            text = "↩️ I'm answering with the base model again."
        else:
            method = f" ({version.method})" if version.method else ""
            text = f"🎓 I'm now answering with adapter **{version.name}**{method}.{metrics_text(version)}"
        channel = self.bot.get_channel(channel_id) or self.bot.get_partial_messageable(channel_id)
        try:
            await channel.send(text, allowed_mentions=NO_MENTIONS)  # type: ignore[union-attr]
        except discord.HTTPException as exc:
            logger.warning("could not announce the adapter switch in channel %s: %s", channel_id, exc)
