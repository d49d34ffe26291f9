"""`GenerationServer`: the asyncio face of the engine; one worker owns the model, callers stream or await."""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import threading
from collections.abc import AsyncIterator, Collection, Sequence
from pathlib import Path
from types import TracebackType
from typing import Final, Literal, Protocol

from engine.engine import AdapterLoadError, Completion, Engine, Sampling
from engine.loading import EngineError
from engine.prompting import ChatMessage
from engine.scheduler import CANCELLED, Job, Outbox, Scheduler

logger = logging.getLogger(__name__)


class _Active(enum.Enum):
    ACTIVE = "ACTIVE"


ACTIVE: Final = _Active.ACTIVE  # "whatever adapter is active (or the canary, by its share)"
ActiveT = Literal[_Active.ACTIVE]


class Busy(EngineError):
    """The queue is full; nothing was queued. Try again after `retry_after_s` seconds."""

    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"busy, try again in {retry_after_s:g} s")
        self.retry_after_s = retry_after_s


class Queue(Protocol):
    """Where a request waits and decodes: the embedded engine's scheduler, or a remote engine."""

    def queue_position(self, job: Job) -> int: ...

    def cancel(self, job: Job) -> None: ...


class ReplyStream(AsyncIterator[str]):
    """Text pieces as decoded; `.completion` once iteration ends. `async with` cancels it if unfinished."""

    def __init__(self, job: Job, scheduler: Queue) -> None:
        self._job = job
        self._scheduler = scheduler
        self._completion: Completion | None = None
        self._done = False

    def __aiter__(self) -> ReplyStream:
        return self

    async def __anext__(self) -> str:
        if self._done:
            raise StopAsyncIteration
        item = await self._job.outbox.items.get()
        if isinstance(item, str):
            return item
        self._done = True
        if isinstance(item, Completion):
            self._completion = item
        elif item is not CANCELLED:
            raise item
        raise StopAsyncIteration

    @property
    def completion(self) -> Completion:
        """The finished answer; raises until the stream has ended normally."""
        if self._completion is None:
            state = "was cancelled" if self._job.cancelled else "is not finished; iterate it to the end"
            raise RuntimeError(f"the stream {state}, so it has no completion")
        return self._completion

    def queue_position(self) -> int:
        """0 = decoding now (or done); n = queued with n - 1 requests ahead of it."""
        return self._scheduler.queue_position(self._job)

    def cancel(self) -> None:
        """Give up: frees its place in the queue or its slot in the batch."""
        if not self._done:
            self._scheduler.cancel(self._job)

    async def __aenter__(self) -> ReplyStream:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.cancel()


class AdapterPlan:
    """Which adapter versions serve, for any backend: the active one (ACTIVE requests), the previous one
    (kept for a rollback), a canary with its share of ACTIVE requests, and the newest loaded (about to be
    activated or canaried). Past `keep` loaded versions, the least recently used of the rest are unloaded.
    Safe from any thread."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self._state = threading.Lock()
        self.active: str | None = None
        self.previous: str | None = None
        self.newest: str | None = None
        self._canary: tuple[str, float] | None = None
        self._last_used: dict[str, int] = {}  # adapter -> when it was last made active or loaded
        self._clock = 0

    @property
    def canary(self) -> str | None:
        canary = self._canary
        return canary[0] if canary is not None else None

    def loaded(self, name: str) -> None:
        """`name` was just loaded: spared from eviction until the next one is."""
        with self._state:
            self.newest = name
            self._touch(name)

    def activate(self, name: str | None) -> None:
        with self._state:
            if name != self.active:
                self.previous, self.active = self.active, name
            if name is not None:
                self._touch(name)
        logger.info("active adapter is now %s (previous %s)", name, self.previous)

    def set_canary(self, name: str | None, share: float) -> None:
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"canary share must be between 0 and 1, got {share}")
        with self._state:
            self._canary = (name, share) if name is not None and share > 0 else None
            if name is not None:
                self._touch(name)

    def resolve(self, adapter: str | ActiveT | None) -> str | None:
        """The adapter a request decodes with, chosen once when it starts: it never changes mid-answer."""
        if adapter is not ACTIVE:
            return adapter
        with self._state:
            if self._canary is not None and random.random() < self._canary[1]:
                return self._canary[0]
            return self.active

    def to_evict(self, loaded: Collection[str], in_use: set[str | None]) -> list[str]:
        """The least recently used versions past `keep`, sparing the active, previous, canary, newest and
        those still decoding; forgotten here, so the caller must unload them."""
        if len(loaded) <= self.keep:
            return []
        with self._state:
            protected = {self.active, self.previous, self.canary, self.newest, *in_use}
            spare = sorted(
                (name for name in loaded if name not in protected), key=lambda n: self._last_used.get(n, 0)
            )
            evict = spare[: len(loaded) - self.keep]
            for name in evict:
                self._last_used.pop(name, None)
        return evict

    def _touch(self, name: str) -> None:
        self._clock += 1
        self._last_used[name] = self._clock


class GenerationServer:
    """Batches concurrent requests on one engine; serves the active adapter and a canary; swaps live."""

    def __init__(
        self,
        engine: Engine,
        *,
        max_batch: int | None = None,
        max_pending: int | None = None,
        keep_adapters: int | None = None,
    ) -> None:
        # unset: MODEL_MAX_BATCH, MODEL_MAX_PENDING and MODEL_KEEP_ADAPTERS (defaults 8, 64, 3)
        max_batch = engine.settings.max_batch if max_batch is None else max_batch
        max_pending = engine.settings.max_pending if max_pending is None else max_pending
        keep_adapters = engine.settings.keep_adapters if keep_adapters is None else keep_adapters
        if max_batch < 1 or max_pending < max_batch or keep_adapters < 2:
            raise ValueError(
                "need max_batch >= 1, max_pending >= max_batch and keep_adapters >= 2 (active and previous), "
                f"got {max_batch}, {max_pending}, {keep_adapters}"
            )
        self.engine = engine
        self.keep_adapters = keep_adapters
        self.plan = AdapterPlan(keep_adapters)
        self._scheduler = Scheduler(
            engine,
            max_batch=max_batch,
            max_pending=max_pending,
            resolve_adapter=lambda job: self.plan.resolve(job.adapter),
            between_steps=self._evict_extra_adapters,
        )

    async def start(self) -> None:
        """Start the worker thread."""
        self._scheduler.start()

    async def close(self) -> None:
        """Stop the worker; requests still pending end with an EngineError."""
        await asyncio.to_thread(self._scheduler.close)

    async def __aenter__(self) -> GenerationServer:
        await self.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def pending(self) -> int:
        """Requests queued or decoding."""
        return self._scheduler.pending

    runtime_adapters = True  # the embedded engine loads any version while serving

    @property
    def loaded_adapters(self) -> dict[str, Path]:
        """Loaded adapter names and the folders they came from."""
        return self.engine.loaded_adapters

    def describe(self) -> str:
        """One line for /status and the logs: where answers come from."""
        return f"embedded engine ({self.engine.base_model_id} on {self.engine.model.device})"

    @property
    def active_adapter(self) -> str | None:
        """The adapter ACTIVE requests get (None: the base model)."""
        return self.plan.active

    @property
    def canary_adapter(self) -> str | None:
        """The adapter answering a share of ACTIVE requests as a canary, if any."""
        return self.plan.canary

    def stream(
        self,
        messages: Sequence[ChatMessage],
        *,
        adapter: str | ActiveT | None = ACTIVE,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        seed: int | None = None,
    ) -> ReplyStream:
        """Queue a request and return its token stream at once; raises Busy when the queue is full."""
        if isinstance(adapter, str) and adapter not in self.engine.loaded_adapters:
            raise ValueError(
                f"adapter {adapter!r} is not loaded; loaded: {sorted(self.engine.loaded_adapters)}"
            )
        sampling = Sampling.resolve(
            self.engine.settings,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
        )  # validated here, once: a bad value fails the caller, not the batch
        job = Job(list(messages), adapter, sampling, Outbox(asyncio.get_running_loop()))
        retry_after_s = self._scheduler.submit(job)
        if retry_after_s is not None:
            raise Busy(retry_after_s)
        return ReplyStream(job, self._scheduler)

    async def generate(
        self,
        messages: Sequence[ChatMessage],
        *,
        adapter: str | ActiveT | None = ACTIVE,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        seed: int | None = None,
    ) -> Completion:
        """Like `stream`, but wait for the whole answer."""
        stream = self.stream(
            messages,
            adapter=adapter,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
        )
        async with stream:  # a cancelled caller frees its slot
            async for _ in stream:
                pass
        return stream.completion

    async def load_adapter(self, name: str, path: Path) -> None:
        """Load a version beside the others, between two decoding steps; AdapterLoadError leaves serving as
        it was."""

        def load() -> None:
            self.engine.load_adapter(name, path)
            # before the worker's next eviction: it is about to be activated or canaried
            self.plan.loaded(name)

        if self._scheduler.running:
            await asyncio.wrap_future(self._scheduler.call_between_steps(load))
        else:
            await asyncio.to_thread(load)

    async def activate(self, name: str | None, path: Path | None = None) -> None:
        """Serve `name` (None: base model) to ACTIVE requests from the next step; keep the previous loaded."""
        if name is not None:
            if path is not None:
                await self.load_adapter(name, path)
            elif name not in self.engine.loaded_adapters:
                raise AdapterLoadError(
                    f"adapter {name!r} is not loaded and no path was given to load it from"
                )
        self.plan.activate(name)

    def set_canary(self, name: str | None, share: float) -> None:
        """Serve `share` of ACTIVE requests with `name` (already loaded); None or share 0 stops the canary."""
        if name is not None and name not in self.engine.loaded_adapters:
            raise ValueError(f"canary adapter {name!r} is not loaded; load it first")
        self.plan.set_canary(name, share)

    def _evict_extra_adapters(self, in_use: set[str | None]) -> None:
        """Unload the least recently used versions past `keep_adapters`, sparing those still needed."""
        for name in self.plan.to_evict(list(self.engine.loaded_adapters), in_use):
            self.engine.unload_adapter(name)
