"""Streaming an answer into Discord: typing, a queue notice, edits at most once per interval, splitting."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import cast

import discord

from bot.splitting import DISCORD_LIMIT, Splitter
from engine.engine import Completion
from engine.loading import EngineError
from engine.serving import ReplyStream

logger = logging.getLogger(__name__)

NO_MENTIONS = discord.AllowedMentions.none()
# Discord's JSON error codes for a reply it refuses for want of permissions
REPLY_REFUSED = (50013, 160002)  # Missing Permissions; Cannot reply without permission to read history
MAX_PACED_CHANNELS = 10_000  # channels whose edit turns are kept; past it, those with no turn booked go
EMPTY_ANSWER = "…"  # Discord refuses empty messages; shown while nothing printable has arrived


def clip(text: str, limit: int = DISCORD_LIMIT) -> str:
    """`text`, cut to `limit` characters with an ellipsis when longer."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def fit_lines(lines: list[str], limit: int = DISCORD_LIMIT, *, more: str = "…and {count} more.") -> str:
    """Whole lines while they fit in `limit` (a first one too long is clipped), then `more` with the rest."""
    room = limit - len(more.format(count=len(lines))) - 1  # always room for the last line saying "more"
    if len("\n".join(lines)) <= limit:
        return "\n".join(lines)
    kept: list[str] = []
    for line in lines:
        if len("\n".join([*kept, line])) > room:
            if not kept:
                kept.append(clip(line, room))
            break
        kept.append(line)
    return "\n".join([*kept, more.format(count=len(lines) - len(kept))])


def bot_permissions(channel: object) -> discord.Permissions | None:
    """The bot's permissions in a guild channel or thread as discord.py has them cached; None elsewhere."""
    guild = getattr(channel, "guild", None)
    if guild is None or guild.me is None or not hasattr(channel, "permissions_for"):
        return None  # a DM (the bot may do anything there) or a channel it has not cached
    return cast(discord.Permissions, channel.permissions_for(guild.me))


async def send_reply(
    channel: discord.abc.Messageable,
    content: str,
    reference: discord.Message | discord.PartialMessage | discord.MessageReference | None,
    *,
    view: discord.ui.View = discord.utils.MISSING,
) -> discord.Message:
    """`content` as a reply to `reference` where the bot may reply; else as a plain message.

    A reply needs Read Message History as well as Send Messages (Discord answers 50013 without it). Where the
    bot lacks it, the message goes out without the reply rather than not at all.
    """
    if isinstance(reference, discord.Message | discord.PartialMessage):  # it may be gone by now: reply anyway
        reference = reference.to_reference(fail_if_not_exists=False)
    permissions = bot_permissions(channel)
    if reference is not None and (permissions is None or permissions.read_message_history):
        try:
            return await channel.send(
                content, reference=reference, mention_author=False, allowed_mentions=NO_MENTIONS, view=view
            )
        except discord.Forbidden as exc:
            if exc.code not in REPLY_REFUSED:
                raise
            logger.warning("may not reply in %s (%s); sending it unthreaded", channel_id(channel), exc)
    return await channel.send(content, allowed_mentions=NO_MENTIONS, view=view)


def channel_id(channel: object) -> object:
    """A channel's id for a log line ("?" for something without one)."""
    return getattr(channel, "id", "?")


def with_footer(parts: list[str], footer: str) -> list[str]:
    """The answer's messages with `footer` on a line under the last one, or as one more when it won't fit."""
    if parts and parts[-1] and len(parts[-1]) + 1 + len(footer) <= DISCORD_LIMIT:
        return [*parts[:-1], f"{parts[-1]}\n{footer}"]
    return [*parts, footer]


class AnswerAbandoned(Exception):
    """The answer could not be shown (its message was deleted, or Discord refused it); it was cancelled."""


@dataclass
class Answer:
    """A finished answer and the Discord messages it was sent as."""

    completion: Completion
    messages: list[discord.Message]
    contents: list[str]


@dataclass
class _Shown:
    message: discord.Message
    content: str


class EditPace:
    """At most one edit every `interval_s` in each channel, whichever answers make them: Discord limits
    edits per channel (its figures are unpublished; about 5 in 5 s is safe), and answers streaming side by
    side in one channel share that budget."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._next: dict[int, float] = {}  # channel -> when its next edit may go

    def try_take(self, channel_id: int) -> bool:
        """Take the channel's turn if it is free now (an edit that may as well wait for the next tick)."""
        now = time.monotonic()
        if self._next.get(channel_id, 0.0) > now:
            return False
        self._next[channel_id] = now + self.interval_s
        if len(self._next) > MAX_PACED_CHANNELS:
            self._next = {c: t for c, t in self._next.items() if t > now}
        return True


class ReplyWriter:
    """Writes one streamed answer as a reply to `reference`, in as many messages as it needs."""

    def __init__(
        self,
        channel: discord.abc.Messageable,
        reference: discord.Message | discord.MessageReference | None,
        *,
        pace: EditPace,
        queue_notice_s: float,
        footer: str | None = None,
    ) -> None:
        self.channel = channel
        self.footer = footer  # shown under the finished answer (its sources), never while it streams
        self.reference = reference
        self.pace = pace
        self.edit_interval_s = pace.interval_s
        self.queue_notice_s = queue_notice_s
        self.splitter = Splitter()
        self.shown: list[_Shown] = []
        self.started = False
        self.streamed: list[str] = []  # every piece so far, what a failed answer had said

    async def write(self, stream: ReplyStream) -> Answer:
        """Show the answer as it streams; raises AnswerAbandoned when it could not be shown."""
        pump = asyncio.create_task(self._pump(stream))
        began = time.monotonic()
        try:
            async with self.channel.typing():
                while not pump.done():
                    await asyncio.wait([pump], timeout=self.edit_interval_s)
                    if not self.started and time.monotonic() - began >= self.queue_notice_s:
                        await self._show_queue_position(stream.queue_position())
                    await self._show(final=False)
            pump.result()
            completion = stream.completion  # raises when the stream was cancelled
            await self._show(final=True)
        except (discord.HTTPException, discord.RateLimited) as exc:  # refused, or a rate limit too long
            logger.warning("could not show the answer in channel %s: %s", channel_id(self.channel), exc)
            raise AnswerAbandoned(str(exc)) from exc
        except EngineError:
            raise  # the model failed, not Discord: the caller tells the person
        except RuntimeError as exc:  # the stream was cancelled
            raise AnswerAbandoned(str(exc)) from exc
        finally:
            stream.cancel()  # no-op once finished; frees the slot when the answer was abandoned
            pump.cancel()
        return Answer(completion, [s.message for s in self.shown], [s.content for s in self.shown])

    async def _pump(self, stream: ReplyStream) -> None:
        async for piece in stream:
            self.streamed.append(piece)
            self.splitter.feed(piece)
            self.started = self.started or bool(self.splitter.tail.strip() or self.splitter.finished)

    async def _show_queue_position(self, position: int) -> None:
        if position <= 0:
            return
        notice = f"⏳ You're #{position} in the queue; I'll answer here as soon as it's your turn."
        await self._put(0, notice, final=False)

    async def _show(self, *, final: bool) -> None:
        """Bring the Discord messages up to the text so far; finished parts get their last edit now."""
        if not self.started and not final:
            return
        parts = self.splitter.messages()
        if final and self.footer:
            parts = with_footer(parts, self.footer)
        for index, content in enumerate(parts):
            last = index == len(parts) - 1
            await self._put(index, content or EMPTY_ANSWER, final=final or not last)

    async def _put(self, index: int, content: str, *, final: bool) -> None:
        if index >= len(self.shown):
            self.shown.append(_Shown(await self._send(index, content), content))
            return
        shown = self.shown[index]
        if shown.content == content:
            return
        # Edits while streaming share the channel's pace; a final edit goes at once (it must happen, and
        # discord.py holds it to the bucket's headers): answers finishing together need not queue a second
        # each behind one another.
        if not final and not self.pace.try_take(shown.message.channel.id):
            return  # the channel was edited too recently; the next tick shows it
        await shown.message.edit(content=content, allowed_mentions=NO_MENTIONS)
        shown.content = content

    async def _send(self, index: int, content: str) -> discord.Message:
        return await send_reply(self.channel, content, self.reference if index == 0 else None)
