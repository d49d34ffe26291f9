"""A scripted stand-in for GenerationServer, ONLY for tests of Discord-side formatting.

Use it where the model's words do not matter (splitting, fences, the queue notice, edit pacing); every test
of what the model is given or what gets recorded runs on the real engine with the tiny model.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from engine.chat import ChatMessage
from engine.engine import Completion
from engine.serving import ACTIVE


class FakeStream:
    """Yields scripted pieces, each after `delay_s`, optionally after waiting in a pretend queue."""

    def __init__(self, messages: list[ChatMessage], pieces: list[str], delay_s: float, queued: int) -> None:
        self.messages = messages
        self.pieces = pieces
        self.delay_s = delay_s
        self.queued = queued  # how many delays it waits as #queued before decoding
        self.cancelled = False
        self._sent: list[str] = []
        self._completion: Completion | None = None

    def __aiter__(self) -> FakeStream:
        return self

    async def __anext__(self) -> str:
        while self.queued and not self.cancelled:
            await asyncio.sleep(self.delay_s)
            self.queued -= 1
        if self.cancelled:
            raise StopAsyncIteration
        if not self.pieces:
            text = "".join(self._sent)
            self._completion = Completion(
                text, self.messages, 10, len(self._sent), 0.1, None,
                {"max_new_tokens": 9999, "temperature": 0.0, "top_p": 1.0, "seed": None}, "stop",
            )  # fmt: skip
            raise StopAsyncIteration
        await asyncio.sleep(self.delay_s)
        piece = self.pieces.pop(0)
        self._sent.append(piece)
        return piece

    @property
    def completion(self) -> Completion:
        if self._completion is None:
            raise RuntimeError("the stream was cancelled")
        return self._completion

    def queue_position(self) -> int:
        return self.queued

    def cancel(self) -> None:
        self.cancelled = True


class FakeServer:
    """Answers every request with the same scripted pieces."""

    def __init__(self, pieces: Sequence[str], *, delay_s: float = 0.0, queued: int = 0) -> None:
        self.pieces = list(pieces)
        self.delay_s = delay_s
        self.queued = queued
        self.active_adapter: str | None = None
        self.streams: list[FakeStream] = []

    def stream(
        self, messages: Sequence[ChatMessage], *, adapter: Any = ACTIVE, **sampling: Any
    ) -> FakeStream:
        stream = FakeStream(list(messages), list(self.pieces), self.delay_s, self.queued)
        self.streams.append(stream)
        return stream

    async def activate(self, name: str | None, path: Path | None = None) -> None:
        self.active_adapter = name

    async def load_adapter(self, name: str, path: Path) -> None:
        pass
