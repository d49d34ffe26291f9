"""`GenerationServer`: the asyncio face of the engine; one worker owns the model, callers stream or await."""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import threading
from collections.abc import AsyncIterator, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final, Literal, Protocol

from engine.engine import AdapterLoadError, Completion, Engine, Sampling, unguided_for
from engine.loading import EngineError
from engine.prompting import ChatMessage
from engine.scheduler import CANCELLED, Job, Outbox, Scheduler
from store.scopes import GLOBAL

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


@dataclass
class _Serving:
    """What one scope serves: its active version, the one before it, and a canary with its share."""

    active: str | None = None
    previous: str | None = None
    canary: tuple[str, float] | None = None


class AdapterPlan:
    """Which adapter versions serve, for any backend, per scope (the global adapter, or one community's).

    Each scope has an active version (ACTIVE requests of that scope), the previous one (for a rollback)
    and a canary with its share of ACTIVE requests; a scope with neither active nor canary of its own is
    served as the global scope is. Versions are loaded on demand from the folders the plan remembers: past
    `keep` loaded versions the least recently used are unloaded, sparing those still decoding, the newest
    loaded (about to be activated or canaried) and the global active and previous versions; a scope whose
    version was unloaded gets it loaded again when it next asks. Safe from any thread.
    """

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self._state = threading.Lock()
        self._scopes: dict[str, _Serving] = {GLOBAL: _Serving()}
        self.newest: str | None = None
        self._paths: dict[str, Path] = {}  # every version ever loaded -> its folder, to load it again
        self._last_used: dict[str, int] = {}  # adapter -> when it was last loaded, activated or served
        self._clock = 0

    @property
    def active(self) -> str | None:
        """The global scope's active version."""
        return self.active_of(GLOBAL)

    @property
    def previous(self) -> str | None:
        return self._scopes[GLOBAL].previous

    @property
    def canary(self) -> str | None:
        return self.canary_of(GLOBAL)

    def active_of(self, scope: str) -> str | None:
        """The scope's own active version (None: it has none, or the global scope serves the base model)."""
        with self._state:
            serving = self._scopes.get(scope)
            return serving.active if serving else None

    def canary_of(self, scope: str) -> str | None:
        with self._state:
            serving = self._scopes.get(scope)
            return serving.canary[0] if serving and serving.canary else None

    def scopes(self) -> list[str]:
        """Scopes with a version of their own (the global scope always)."""
        with self._state:
            return list(self._scopes)

    def path_of(self, name: str) -> Path | None:
        """The folder `name` was loaded from, to load it again after an eviction."""
        with self._state:
            return self._paths.get(name)

    def loaded(self, name: str, path: Path | None = None) -> None:
        """`name` was just loaded (from `path`): spared from eviction until the next one is."""
        with self._state:
            self.newest = name
            if path is not None:
                self._paths[name] = path
            self._touch(name)

    def activate(self, name: str | None, scope: str = GLOBAL) -> None:
        with self._state:
            serving = self._scopes.setdefault(scope, _Serving())
            if name != serving.active:
                serving.previous, serving.active = serving.active, name
            if name is not None:
                self._touch(name)
            self._forget_if_empty(scope)
        logger.info("%s: active adapter is now %s", scope, name)

    def set_canary(self, name: str | None, share: float, scope: str = GLOBAL) -> None:
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"canary share must be between 0 and 1, got {share}")
        with self._state:
            serving = self._scopes.setdefault(scope, _Serving())
            serving.canary = (name, share) if name is not None and share > 0 else None
            if name is not None:
                self._touch(name)
            self._forget_if_empty(scope)

    def resolve(self, adapter: str | ActiveT | None, scope: str = GLOBAL) -> str | None:
        """The adapter a request decodes with, chosen once when it starts: it never changes mid-answer."""
        with self._state:
            if adapter is not ACTIVE:
                chosen = adapter
            else:
                serving = self._scopes.get(scope)
                if serving is None or (serving.active is None and serving.canary is None):
                    serving = self._scopes[GLOBAL]  # no version of its own yet: the global one serves it
                if serving.canary is not None and random.random() < serving.canary[1]:
                    chosen = serving.canary[0]
                else:
                    chosen = serving.active
            if chosen is not None:
                self._touch(chosen)
            return chosen

    def fallback(self, scope: str = GLOBAL) -> str | None:
        """What serves a scope whose own version cannot be loaded: the global active (or the base model)."""
        return None if scope == GLOBAL else self.active

    def to_evict(self, loaded: Collection[str], in_use: set[str | None]) -> list[str]:
        """The least recently used versions past `keep`, sparing the global active and previous, the newest
        and those still decoding; forgotten here (but their folders kept), so the caller must unload them."""
        if len(loaded) <= self.keep:
            return []
        with self._state:
            overall = self._scopes[GLOBAL]
            protected = {overall.active, overall.previous, self.newest, *in_use}
            spare = sorted(
                (name for name in loaded if name not in protected), key=lambda n: self._last_used.get(n, 0)
            )
            evict = spare[: len(loaded) - self.keep]
            for name in evict:
                self._last_used.pop(name, None)
        return evict

    def _forget_if_empty(self, scope: str) -> None:
        serving = self._scopes[scope]
        if scope != GLOBAL and serving.active is None and serving.canary is None:
            del self._scopes[scope]  # served as the global scope is

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
            resolve_adapter=self._resolve,
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
        scope: str = GLOBAL,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        guidance: float = 1.0,
        unguided: Sequence[ChatMessage] | None = None,
    ) -> ReplyStream:
        """Queue a request and return its token stream at once; raises Busy when the queue is full. An
        ACTIVE request gets its scope's active adapter (or canary), loaded again first if it was evicted."""
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
            guidance=guidance,
        )  # validated here, once: a bad value fails the caller, not the batch
        job = Job(
            list(messages),
            adapter,
            sampling,
            Outbox(asyncio.get_running_loop()),
            scope,
            unguided=unguided_for(sampling, unguided),  # refused here, not in the batch, when missing
        )
        retry_after_s = self._scheduler.submit(job)
        if retry_after_s is not None:
            raise Busy(retry_after_s)
        return ReplyStream(job, self._scheduler)

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
    ) -> Completion:
        """Like `stream`, but wait for the whole answer."""
        stream = self.stream(
            messages,
            adapter=adapter,
            scope=scope,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            guidance=guidance,
            unguided=unguided,
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
            self.plan.loaded(name, path)

        if self._scheduler.running:
            await asyncio.wrap_future(self._scheduler.call_between_steps(load))
        else:
            await asyncio.to_thread(load)

    async def activate(self, name: str | None, path: Path | None = None, *, scope: str = GLOBAL) -> None:
        """Serve `name` to the scope's ACTIVE requests from the next step (None: the base model for the global
        scope; for a community, the global scope's version again)."""
        if name is not None:
            if path is not None:
                await self.load_adapter(name, path)
            elif name not in self.engine.loaded_adapters:
                raise AdapterLoadError(
                    f"adapter {name!r} is not loaded and no path was given to load it from"
                )
        self.plan.activate(name, scope)

    def set_canary(self, name: str | None, share: float, *, scope: str = GLOBAL) -> None:
        """Serve `share` of the scope's ACTIVE requests with `name` (already loaded); None or share 0 stops
        the canary."""
        if name is not None and name not in self.engine.loaded_adapters:
            raise ValueError(f"canary adapter {name!r} is not loaded; load it first")
        self.plan.set_canary(name, share, scope)

    def _resolve(self, job: Job) -> str | None:
        """On the worker, between steps: the job's adapter, loaded again if it was evicted (one load, no
        longer than a step for the small adapters LoRA makes; the batch waits for it); if it cannot be, the
        scope's fallback serves and the failure is logged."""
        name = self.plan.resolve(job.adapter, job.scope)
        if name is None or name in self.engine.loaded_adapters or job.adapter is not ACTIVE:
            return name
        path = self.plan.path_of(name)
        try:
            if path is None:
                raise AdapterLoadError(f"no folder is known for adapter {name!r}")
            self.engine.load_adapter(name, path)
            self.plan.loaded(name, path)
            logger.info("loaded %s again for %s", name, job.scope)
            return name
        except AdapterLoadError as exc:
            fallback = self.plan.fallback(job.scope)
            logger.error("could not load %s again (%s); %s gets %s", name, exc, job.scope, fallback)
            return fallback if fallback in self.engine.loaded_adapters else None

    def _evict_extra_adapters(self, in_use: set[str | None]) -> None:
        """Unload the least recently used versions past `keep_adapters`, sparing those still needed."""
        for name in self.plan.to_evict(list(self.engine.loaded_adapters), in_use):
            self.engine.unload_adapter(name)
