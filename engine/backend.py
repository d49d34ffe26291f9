"""The one serving interface the bot and the CLI use, and `start_server`, which picks its backend.

MODEL_BACKEND=local is the embedded engine in this process (`GenerationServer`); openai is an
OpenAI-compatible engine already running elsewhere (`RemoteServer`: vLLM). Both stream with cancellation,
count tokens, serve a per-request adapter, and swap versions live through the same `AdapterPlan`.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from engine.engine import Completion
from engine.prompting import ChatMessage
from engine.serving import ACTIVE, ActiveT, AdapterPlan, GenerationServer, ReplyStream
from store.scopes import GLOBAL
from store.settings import Settings


class Server(Protocol):
    """What serving answers needs, whichever engine does the decoding."""

    plan: AdapterPlan

    @property
    def pending(self) -> int: ...

    @property
    def active_adapter(self) -> str | None: ...

    @property
    def canary_adapter(self) -> str | None: ...

    @property
    def runtime_adapters(self) -> bool: ...

    @property
    def loaded_adapters(self) -> dict[str, Path]: ...

    def describe(self) -> str: ...

    def stream(
        self,
        messages: Sequence[ChatMessage],
        *,
        adapter: str | ActiveT | None = ACTIVE,
        scope: str = GLOBAL,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        guidance: float = 1.0,
        unguided: Sequence[ChatMessage] | None = None,
    ) -> ReplyStream: ...

    async def generate(
        self,
        messages: Sequence[ChatMessage],
        *,
        adapter: str | ActiveT | None = ACTIVE,
        scope: str = GLOBAL,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        guidance: float = 1.0,
        unguided: Sequence[ChatMessage] | None = None,
    ) -> Completion: ...

    async def load_adapter(self, name: str, path: Path) -> None: ...

    async def activate(self, name: str | None, path: Path | None = None, *, scope: str = GLOBAL) -> None: ...

    def set_canary(self, name: str | None, share: float, *, scope: str = GLOBAL) -> None: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


async def start_server(settings: Settings) -> Server:
    """The configured backend, started: the embedded model loaded here, or a connection to the engine."""
    server: Server
    if settings.model.backend == "openai":
        from engine.remote import RemoteServer

        server = RemoteServer(settings)
    else:
        from engine.engine import Engine

        engine = await asyncio.to_thread(Engine.from_settings, settings)  # seconds of disk and CPU
        server = GenerationServer(
            engine,
            max_batch=settings.model.max_batch,
            max_pending=settings.model.max_pending,
            keep_adapters=settings.model.keep_adapters,
        )
    # The libraries (and the model) are about half a million objects that live as long as the process.
    # Frozen, the collector's full passes skip them; otherwise each pass holds every thread (the event
    # loop included) for about 0.3 s of CPU, over a second on a busy machine.
    gc.freeze()
    await server.start()
    return server
