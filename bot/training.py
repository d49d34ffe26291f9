"""/retrain's progress message: a bar with step, loss and ETA, edited until the run ends, then the result."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime
from typing import Any

import discord
from discord.ext import tasks
from sqlmodel import Session

from bot.dependencies import AnyBot
from bot.replies import NO_MENTIONS, clip, send_reply
from bot.storage import Store
from store import registry, runs
from store.models import AdapterVersion, TrainingRun, utcnow

logger = logging.getLogger(__name__)

BAR_WIDTH = 20
OLD_MESSAGE_S = 55 * 60  # Discord rate-limits edits of messages older than an hour (30046)
OLD_MESSAGE_EDIT_EVERY_S = 20 * 60  # how often an older progress message is still edited
RESULT_TRIES = 5  # looks at which posting a finished run's result may fail before the bot gives up


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

    Each run has its own `tasks.loop` (one task per run), polling every `poll_s` like the hot swap's. Discord
    may stop taking edits of a progress message (deleted, in an archived thread, older than an hour and
    rate-limited, code 30046): then the message stays as it is, and the result is still posted when the run
    ends, as a new message. A result Discord refuses for good is logged, never retried forever.
    """

    def __init__(self, bot: AnyBot, store: Store, poll_s: float) -> None:
        self.bot = bot
        self.store = store
        self.poll_s = poll_s
        self.followers: dict[int, tasks.Loop[Any]] = {}
        self.shown: dict[int, str] = {}  # run id -> the text its progress message has now
        self.edited_at: dict[int, float] = {}  # run id -> when its progress message was last edited
        self.frozen: set[int] = set()  # runs whose progress message takes no more edits
        self.result_failures: dict[int, int] = {}  # run id -> times posting its result failed for now

    def watch(self, run_id: int) -> None:
        """Start following a run (once, however often asked)."""
        if run_id in self.followers and self.followers[run_id].is_running():
            return
        follower = tasks.loop(seconds=self.poll_s, name=f"training-run-{run_id}")(self._update)
        self.followers[run_id] = follower
        self.shown[run_id] = ""
        follower.start(run_id)

    async def resume(self) -> None:
        """After a restart, once connected: follow the runs people are still waiting on in this process's
        channels (with several shard processes, each follows the runs of its own guilds)."""
        await self.bot.wait_until_ready()
        for run in await self.store(runs.runs_awaiting_notice):
            assert run.id is not None and run.notify_channel_id is not None
            if self._ours(run.notify_channel_id):
                self.watch(run.id)

    def _ours(self, channel_id: int) -> bool:
        """A channel this process sees; or one it does not know, on shard 0 (which gets the DMs)."""
        if self.bot.get_channel(channel_id) is not None:
            return True
        shard_ids = getattr(self.bot, "shard_ids", None)
        return not shard_ids or 0 in shard_ids

    async def close(self) -> None:
        """Stop following (the cog unloads); `resume` picks the runs up again from their rows."""
        followed = [task for follower in self.followers.values() if (task := follower.get_task())]
        for follower in self.followers.values():
            follower.cancel()
        await asyncio.gather(*followed, return_exceptions=True)  # a follower that failed has been logged

    async def _update(self, run_id: int) -> None:
        """One look at a run: edit its progress message if the text changed, post the result once it ended."""
        run = await self.store(_run, run_id=run_id)
        if run is None:
            self._stop(run_id)
            return
        if run.status in runs.FINISHED:
            if await self._finish(run):
                await self.store(runs.mark_notified, run_id=run_id)
                self._stop(run_id)
            return
        text = progress_text(run)
        if text == self.shown[run_id] or run_id in self.frozen or not self._may_edit(run):
            return
        try:
            await self._message(run).edit(content=text, allowed_mentions=NO_MENTIONS)
        except (discord.HTTPException, discord.RateLimited) as exc:
            if _lasting(exc):
                logger.warning("training run %s's progress message takes no more edits: %s", run_id, exc)
                self.frozen.add(run_id)
            else:
                logger.warning("could not update training run %s's progress: %s", run_id, exc)
            return
        self.shown[run_id], self.edited_at[run_id] = text, time.monotonic()

    def _may_edit(self, run: TrainingRun) -> bool:
        assert run.id is not None and run.notify_message_id is not None
        edited_at = self.edited_at.get(run.id)
        ago = None if edited_at is None else time.monotonic() - edited_at
        return edit_allowed(run.notify_message_id, last_edit_s_ago=ago)

    def _stop(self, run_id: int) -> None:
        """End a run's loop once this look is over, and forget the run."""
        self.followers.pop(run_id).stop()
        del self.shown[run_id]
        self.edited_at.pop(run_id, None)
        self.frozen.discard(run_id)
        self.result_failures.pop(run_id, None)

    async def _finish(self, run: TrainingRun) -> bool:
        """Mark the progress message ended and post the result; False to try again at the next look."""
        assert run.id is not None
        version = None
        if run.adapter_version is not None:
            version = await self.store(registry.get_version, name=run.adapter_version)
        message = self._message(run)
        if run.id not in self.frozen:
            ended = f"🏁 Training run #{run.id} ended: **{run.status}** (the result is in the reply below)."
            try:
                await message.edit(content=ended, allowed_mentions=NO_MENTIONS)
            except (discord.HTTPException, discord.RateLimited) as exc:
                logger.info("training run %s's progress message was not marked ended: %s", run.id, exc)
                self.frozen.add(run.id)
        try:
            await send_reply(message.channel, clip(result_text(run, version)), message)
        except (discord.HTTPException, discord.RateLimited) as exc:
            failures = self.result_failures[run.id] = self.result_failures.get(run.id, 0) + 1
            if _lasting(exc) or failures >= RESULT_TRIES:
                logger.error("could not post training run %s's result (%s); /status shows it", run.id, exc)
                return True
            logger.warning("could not post training run %s's result yet: %s", run.id, exc)
            return False
        return True

    def _message(self, run: TrainingRun) -> discord.PartialMessage:
        assert run.notify_channel_id is not None and run.notify_message_id is not None
        channel = self.bot.get_channel(run.notify_channel_id) or self.bot.get_partial_messageable(
            run.notify_channel_id
        )
        return channel.get_partial_message(run.notify_message_id)  # type: ignore[union-attr]


def edit_allowed(message_id: int, *, last_edit_s_ago: float | None) -> bool:
    """Whether a progress message may be edited now: any time in its first OLD_MESSAGE_S, then once every
    OLD_MESSAGE_EDIT_EVERY_S (Discord rate-limits edits of messages older than an hour, code 30046)."""
    age = utcnow() - discord.utils.snowflake_time(message_id)
    if age.total_seconds() < OLD_MESSAGE_S or last_edit_s_ago is None:
        return True
    return last_edit_s_ago >= OLD_MESSAGE_EDIT_EVERY_S


def _lasting(error: discord.HTTPException | discord.RateLimited) -> bool:
    """Whether Discord will refuse the same call again for a long while: refused outright (4xx, e.g. 50035
    too long, 50083 archived thread, 50013 missing permissions, 10008 deleted), or rate-limited for longer
    than the bot waits (30046 on an old message)."""
    return isinstance(error, discord.RateLimited) or 400 <= error.status < 500
