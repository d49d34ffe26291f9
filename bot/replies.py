"""Streaming an answer into Discord: typing, a queue notice, edits at most once per interval, splitting."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import discord

from bot.splitting import Splitter
from engine.engine import Completion
from engine.serving import ReplyStream

logger = logging.getLogger(__name__)

NO_MENTIONS = discord.AllowedMentions.none()
EMPTY_ANSWER = "…"  # Discord refuses empty messages; shown while nothing printable has arrived


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
    edited_at: float = field(default_factory=time.monotonic)


class ReplyWriter:
    """Writes one streamed answer as a reply to `reference`, in as many messages as it needs."""

    def __init__(
        self,
        channel: discord.abc.Messageable,
        reference: discord.Message | discord.MessageReference | None,
        *,
        edit_interval_s: float,
        queue_notice_s: float,
    ) -> None:
        self.channel = channel
        self.reference = reference
        self.edit_interval_s = edit_interval_s
        self.queue_notice_s = queue_notice_s
        self.splitter = Splitter()
        self.shown: list[_Shown] = []
        self.started = False

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
        except discord.HTTPException as exc:
            logger.warning(
                "could not show the answer in channel %s: %s", getattr(self.channel, "id", "?"), exc
            )
            raise AnswerAbandoned(str(exc)) from exc
        except RuntimeError as exc:
            raise AnswerAbandoned(str(exc)) from exc
        finally:
            stream.cancel()  # no-op once finished; frees the slot when the answer was abandoned
            pump.cancel()
        return Answer(completion, [s.message for s in self.shown], [s.content for s in self.shown])

    async def _pump(self, stream: ReplyStream) -> None:
        async for piece in stream:
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
        wait = shown.edited_at + self.edit_interval_s - time.monotonic()
        if wait > 0:
            if not final:
                return  # edited too recently; the next tick shows it
            await asyncio.sleep(wait)
        await shown.message.edit(content=content, allowed_mentions=NO_MENTIONS)
        shown.content, shown.edited_at = content, time.monotonic()

    async def _send(self, index: int, content: str) -> discord.Message:
        if index == 0 and self.reference is not None:
            reference = self.reference
            if isinstance(reference, discord.Message):  # the question may be deleted meanwhile: answer anyway
                reference = reference.to_reference(fail_if_not_exists=False)
            return await self.channel.send(
                content, reference=reference, mention_author=False, allowed_mentions=NO_MENTIONS
            )
        return await self.channel.send(content, allowed_mentions=NO_MENTIONS)
