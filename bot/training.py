"""/retrain's progress message: a bar with step, loss and ETA, edited until the run ends, then the result."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Any

import discord
from discord.ext import commands, tasks
from sqlmodel import Session

from bot.replies import NO_MENTIONS
from bot.storage import Store
from store import registry, runs
from store.models import AdapterVersion, TrainingRun, utcnow

logger = logging.getLogger(__name__)

BAR_WIDTH = 20


def progress_text(run: TrainingRun, now: datetime | None = None) -> str:
    """The message while a run is queued or running."""
    if run.status == "queued":
        return f"⏳ Training run #{run.id} is queued; waiting for the trainer to pick it up."
    if not run.step or not run.total_steps:
        return f"🏋️ Training run #{run.id} is running: preparing the data…"
    done = min(run.step / run.total_steps, 1.0)
    filled = round(done * BAR_WIDTH)
    bar = "█" * filled + "░" * (BAR_WIDTH - filled)
    loss = f" · loss {run.loss:.4f}" if run.loss is not None else ""
    return (
        f"🏋️ Training run #{run.id}\n`{bar}` {done:.0%} · step {run.step}/{run.total_steps}{loss}"
        f" · ETA {_eta(run, now or utcnow())}"
    )


def _eta(run: TrainingRun, now: datetime) -> str:
    if run.started_at is None or not run.step or run.total_steps is None:
        return "?"
    per_step = (now - run.started_at).total_seconds() / run.step
    left = max(0.0, per_step * (run.total_steps - run.step))
    minutes, seconds = divmod(round(left), 60)
    return f"{minutes}m {seconds:02d}s" if minutes else f"{seconds}s"


def result_text(run: TrainingRun, version: AdapterVersion | None) -> str:
    """The announcement when a run has ended."""
    if run.status == "succeeded":
        adapter = version.name if version else run.adapter_version or "?"
        state = f" and is now **{version.status}**" if version else ""
        if version is not None and version.status == "candidate" and version.metrics.get("canary_share"):
            share = float(version.metrics["canary_share"])
            state = f" and answers {share:.0%} of questions as a canary until your votes settle it"
        method = f" ({version.method})" if version and version.method else ""
        metrics = metrics_text(version)
        return f"✅ Training run #{run.id} succeeded: adapter **{adapter}**{method}{state}.{metrics}"
    if run.status == "rejected":
        reason = (
            run.error or (version.status_reason if version else None) or "it did not beat the current one"
        )
        made = run.adapter_version or "an adapter"
        metrics = metrics_text(version)
        return f"🚫 Training run #{run.id} made {made}, but the eval gate rejected it: {reason}.{metrics}"
    if run.status == "skipped":
        return f"⏭️ Training run #{run.id} was skipped: {run.error or 'not enough new feedback'}."
    return f"❌ Training run #{run.id} failed: {run.error or 'unknown error'}."


def metrics_text(version: AdapterVersion | None) -> str:
    """An adapter's numeric metrics on one line (nested ones as `gate.nll`), or nothing."""
    if version is None:
        return ""
    shown = [f"{key} {_number(value)}" for key, value in _numbers(version.metrics)]
    return "\nMetrics: " + ", ".join(shown[:12]) if shown else ""


def _numbers(metrics: dict[str, Any], prefix: str = "") -> list[tuple[str, float]]:
    found: list[tuple[str, float]] = []
    for key, value in sorted(metrics.items()):
        if isinstance(value, dict):
            found += _numbers(value, f"{prefix}{key}.")
        elif isinstance(value, int | float) and not isinstance(value, bool):
            found.append((prefix + key, value))
    return found


def _number(value: float) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _run(*, session: Session, run_id: int) -> TrainingRun | None:
    return session.get(TrainingRun, run_id)


class RunWatcher:
    """Follows training runs through their rows and keeps each one's progress message current.

    Each run has its own `tasks.loop` (one task per run), polling every `poll_s` like the hot swap's.
    """

    def __init__(self, bot: commands.Bot, store: Store, poll_s: float) -> None:
        self.bot = bot
        self.store = store
        self.poll_s = poll_s
        self.followers: dict[int, tasks.Loop[Any]] = {}
        self.shown: dict[int, str] = {}  # run id -> the text its progress message has now

    def watch(self, run_id: int) -> None:
        """Start following a run (once, however often asked)."""
        if run_id in self.followers and self.followers[run_id].is_running():
            return
        follower = tasks.loop(seconds=self.poll_s, name=f"training-run-{run_id}")(self._update)
        self.followers[run_id] = follower
        self.shown[run_id] = ""
        follower.start(run_id)

    async def resume(self) -> None:
        """After a restart: follow the runs people are still waiting on."""
        for run in await self.store(runs.runs_awaiting_notice):
            assert run.id is not None
            self.watch(run.id)

    async def close(self) -> None:
        """Stop following (the cog unloads); `resume` picks the runs up again from their rows."""
        followed = [task for follower in self.followers.values() if (task := follower.get_task())]
        for follower in self.followers.values():
            follower.cancel()
        await asyncio.gather(*followed, return_exceptions=True)  # a follower that failed has been logged

    async def _update(self, run_id: int) -> None:
        """One look at a run: edit its progress message if the text changed, post the result once it ended."""
        try:
            run = await self.store(_run, run_id=run_id)
            if run is None:
                self._stop(run_id)
                return
            if run.status in runs.FINISHED:
                await self._finish(run)
                self._stop(run_id)
                return
            text = progress_text(run)
            if text != self.shown[run_id]:
                await self._message(run).edit(content=text, allowed_mentions=NO_MENTIONS)
                self.shown[run_id] = text
        except discord.NotFound:
            logger.info("progress message of training run %s is gone; not following it", run_id)
            self._stop(run_id)
        except discord.HTTPException as exc:
            logger.warning("could not update training run %s's progress: %s", run_id, exc)

    def _stop(self, run_id: int) -> None:
        """End a run's loop once this look is over, and forget the run."""
        self.followers.pop(run_id).stop()
        del self.shown[run_id]

    async def _finish(self, run: TrainingRun) -> None:
        version = None
        if run.adapter_version is not None:
            version = await self.store(registry.get_version, name=run.adapter_version)
        message = self._message(run)
        ended = f"🏁 Training run #{run.id} ended: **{run.status}** (the result is in the reply below)."
        await message.edit(content=ended, allowed_mentions=NO_MENTIONS)
        await message.channel.send(
            result_text(run, version),
            reference=message.to_reference(fail_if_not_exists=False),
            allowed_mentions=NO_MENTIONS,
        )

    def _message(self, run: TrainingRun) -> discord.PartialMessage:
        assert run.notify_channel_id is not None and run.notify_message_id is not None
        channel = self.bot.get_channel(run.notify_channel_id) or self.bot.get_partial_messageable(
            run.notify_channel_id
        )
        return channel.get_partial_message(run.notify_message_id)  # type: ignore[union-attr]
