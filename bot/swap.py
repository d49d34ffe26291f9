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
from store.scopes import GLOBAL

logger = logging.getLogger(__name__)


class AdapterSwap(commands.Cog):
    """Polls the registry (one cheap query) and makes the server serve, in every scope, that scope's active
    version and canary; a community with none of its own is served the global scope's."""

    def __init__(self, bot: AnyBot, deps: CogDependencies) -> None:
        self.bot = bot
        self.server = deps.server
        self.store = deps.store
        self.settings = deps.settings.discord
        # per scope: a version that would not load, and why; not retried until the registry moves on
        self.failures: dict[str, tuple[str, str]] = {}
        self.canaries: dict[str, str] = {}  # scope -> the candidate serving a share of its answers
        self._lock = asyncio.Lock()
        self.poll.change_interval(seconds=self.settings.registry_poll_s)

    def failed(self, scope: str = GLOBAL) -> tuple[str, str] | None:
        """The version of `scope` that could not be served, and why."""
        return self.failures.get(scope)

    def canary(self, scope: str = GLOBAL) -> str | None:
        return self.canaries.get(scope)

    async def cog_load(self) -> None:
        await self.check_now(announce=False)  # serve the active versions before the first answer
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

    async def check_now(self, *, announce: bool = True, scope: str | None = None) -> str | None:
        """Serve each scope's active version and canary; returns the error of `scope` (every scope: the
        first error), if any."""
        async with self._lock:
            versions = await self.store(registry.serving_versions)
            active = {v.scope: v for v in versions if v.status == "active"}
            canaries: dict[str, AdapterVersion] = {}
            for version in versions:  # newest first: the newest canary of a scope wins
                if version.status == "candidate" and version.metrics.get("canary_share"):
                    canaries.setdefault(version.scope, version)
            scopes = {GLOBAL, *active, *canaries, *self.server.plan.scopes()}
            errors: dict[str, str] = {}
            switched: list[tuple[str, AdapterVersion | None]] = []
            for each in sorted(scopes):
                await self._follow_canary(each, canaries.get(each))
                error, moved = await self._follow_active(each, active.get(each))
                if error is not None:
                    errors[each] = error
                elif moved:
                    switched.append((each, active.get(each)))
        if announce:
            for each, now in switched:
                if each == GLOBAL:  # a community's own versions are announced by its /retrain message
                    await self._announce(now)
        if scope is not None:
            return errors.get(scope)
        return next(iter(errors.values()), None)

    async def _follow_active(self, scope: str, version: AdapterVersion | None) -> tuple[str | None, bool]:
        """Make the server serve `version` to the scope; (error, whether it switched)."""
        name = version.name if version else None
        if name == self.server.plan.active_of(scope):
            self.failures.pop(scope, None)
            return None, False
        failed = self.failures.get(scope)
        if failed is not None and failed[0] == name:
            return failed[1], False
        try:
            await self.server.activate(
                name, Path(version.path) if version and version.path else None, scope=scope
            )
        except AdapterLoadError as exc:
            self.failures[scope] = (str(name), str(exc))
            logger.error("%s: could not switch to adapter %s: %s", scope, name, exc)
            await self._mark(name, str(exc))
            return str(exc), False
        self.failures.pop(scope, None)
        if version is not None and version.metrics.get("serve_error"):
            await self._mark(version.name, None)  # it loads now (the engine was fixed): the mark goes
        logger.info("%s: now serving %s", scope, name or "the base model")
        return None, True

    async def _follow_canary(self, scope: str, canary: AdapterVersion | None) -> None:
        """Serve the scope's newest candidate marked as a canary (`canary_share` in its metrics)."""
        name = canary.name if canary else None
        failed = self.failures.get(scope)
        if name == self.canaries.get(scope) or (failed is not None and failed[0] == name):
            return
        if canary is None or canary.path is None:
            self.server.set_canary(None, 0.0, scope=scope)
        else:
            try:
                await self.server.load_adapter(canary.name, Path(canary.path))
            except AdapterLoadError as exc:
                self.failures[scope] = (canary.name, str(exc))
                logger.error("%s: could not load canary %s: %s", scope, canary.name, exc)
                await self._mark(canary.name, str(exc))
                return
            self.server.set_canary(canary.name, float(canary.metrics["canary_share"]), scope=scope)
        logger.info("%s: canary is now %s", scope, name)
        if name is None:
            self.canaries.pop(scope, None)
        else:
            self.canaries[scope] = name

    async def _mark(self, name: str | None, cause: str | None) -> None:
        """Write on the registry row why a version would not load (or that it loads now), for /adapters."""
        if name is None:
            return
        try:
            await self.store(registry.mark_unservable, name=name, cause=cause)
        except Exception:  # the swap goes on whatever the store says
            logger.exception("could not record on %s why it did not load", name)

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
