"""The one thread that runs the model for the server: admits queued jobs, steps the batch, emits tokens."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from engine.batching import DecodeBatch
from engine.engine import Completion, Engine, Sampling, _Request, guided_scores
from engine.loading import EngineError
from engine.memory import malloc_trim
from engine.prompting import ChatMessage
from engine.sampling import RowSampling, next_tokens

logger = logging.getLogger(__name__)

TRIM_EVERY_S = 60.0  # at most this often, when the batch drains, freed memory goes back to the system
PREFILL_TOKENS = 2048  # at most this many (padded) prompt tokens in one prefill pass
PREFILL_PADDING = 1.25  # prompts prefill together while padding adds at most this share of work
CANCELLED = object()  # put in an outbox when its job was cancelled: the stream ends without a completion


class Outbox:
    """Hands a job's pieces from the worker thread to the event loop that asked for them."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.items: asyncio.Queue[Any] = asyncio.Queue()

    def put(self, item: Any) -> None:
        """A text piece, the Completion, an exception, or CANCELLED; safe from any thread."""
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is listening any more
            self.loop.call_soon_threadsafe(self.items.put_nowait, item)


@dataclass(eq=False)
class Job:
    """One request as the caller made it; the adapter is resolved when it starts decoding."""

    messages: list[ChatMessage]
    adapter: Any  # str | None | the ACTIVE sentinel; `resolve_adapter` turns it into str | None
    sampling: Sampling
    outbox: Outbox
    scope: str = "global"  # whose active adapter an ACTIVE request gets (see AdapterPlan)
    created: float = field(default_factory=time.perf_counter)
    cancelled: bool = False
    task: Any = None  # a remote backend's asyncio task answering it
    unguided: list[ChatMessage] | None = None  # the conversation without its notes, for sampling.guidance > 1


@dataclass(eq=False)
class _Row:
    job: Job
    request: _Request
    sampling: RowSampling
    ids: list[int] = field(default_factory=list)
    sent: str = ""  # text already handed to the caller
    shadow: bool = False  # the unguided prompt of the guided row just before it: decoded, never sampled


def prompts_of(request: _Request) -> list[torch.Tensor]:
    """The prompts a request puts in the batch: its own, and the unguided one when its decoding is guided
    (that second row follows the first at every step, fed the same tokens)."""
    return [request.input_ids] if request.unguided_ids is None else [request.input_ids, request.unguided_ids]


def prefill_groups(started: list[tuple[Job, _Request]]) -> list[list[tuple[Job, _Request]]]:
    """Jobs to prefill together: one adapter per pass (so a merged one serves it), lengths close enough that
    padding to the longest adds at most a quarter to the work, and at most PREFILL_TOKENS tokens a pass."""
    groups: list[list[tuple[Job, _Request]]] = []
    ordered = sorted(started, key=lambda one: (str(one[1].adapter), one[1].input_ids.shape[1]))
    for one in ordered:
        group = groups[-1] if groups else []
        candidate = [*group, one]
        lengths = [prompt.shape[1] for _, request in candidate for prompt in prompts_of(request)]
        padded = len(candidate) * max(lengths)
        if (
            group
            and group[0][1].adapter == one[1].adapter
            and padded <= PREFILL_TOKENS
            and padded <= PREFILL_PADDING * sum(lengths)
        ):
            group.append(one)
        else:
            groups.append([one])
    return groups


class Scheduler:
    """Continuous batching: jobs join the decoding batch between steps and leave as soon as they finish."""

    def __init__(
        self,
        engine: Engine,
        *,
        max_batch: int,
        max_pending: int,
        resolve_adapter: Callable[[Job], str | None],
        between_steps: Callable[[set[str | None]], None],
    ) -> None:
        self.engine = engine
        self.max_batch = max_batch
        self.max_pending = max_pending
        self._resolve_adapter = resolve_adapter
        self._between_steps = between_steps  # runs on the worker, told which adapters rows are using
        self._changed = threading.Condition()
        self._queue: deque[Job] = deque()
        self._calls: deque[tuple[Callable[[], Any], Future[Any]]] = deque()  # run on the worker between steps
        self._decoding: set[Job] = set()  # admitted, not yet finished
        self._rows: list[_Row] = []  # owned by the worker thread
        self._batch = DecodeBatch()
        self._seconds_per_job = 5.0  # a running average, for the "try again in N s" estimate
        self._trimmed = time.monotonic()
        self._closing = False
        self._thread = threading.Thread(target=self._work, name="engine-serving", daemon=True)

    @property
    def pending(self) -> int:
        """Jobs queued or decoding."""
        with self._changed:
            return len(self._queue) + len(self._decoding)

    @property
    def running(self) -> bool:
        """The worker thread has started and not yet stopped."""
        return self._thread.is_alive()

    def start(self) -> None:
        """Start the worker thread."""
        self._thread.start()

    def call_between_steps(self, call: Callable[[], Any]) -> Future[Any]:
        """Run `call` on the worker before its next step (a model change such as loading an adapter).

        The worker takes it at its next turn, so it never waits behind a run of decoding steps the way a
        thread contending for the engine's lock can (a lock is not fair: the worker keeps winning it)."""
        future: Future[Any] = Future()
        with self._changed:
            if self._closing:
                raise EngineError("the generation server is closed")
            self._calls.append((call, future))
            self._changed.notify()
        return future

    def close(self) -> None:
        """Stop the worker after its current step and fail everything still pending; blocks until it exits."""
        with self._changed:
            self._closing = True
            self._changed.notify()
        if self._thread.is_alive():
            self._thread.join()

    def submit(self, job: Job) -> float | None:
        """Queue a job; when the queue is full, return the seconds to wait before trying again instead."""
        with self._changed:
            if self._closing:
                raise EngineError("the generation server is closed")
            waiting = len(self._queue) + len(self._decoding)
            if waiting >= self.max_pending:
                rounds = math.ceil((waiting - self.max_batch + 1) / self.max_batch)
                return round(max(1.0, self._seconds_per_job * rounds), 1)
            self._queue.append(job)
            self._changed.notify()
        return None

    def cancel(self, job: Job) -> None:
        """Drop a queued job at once, or a decoding one before the next step."""
        with self._changed:
            job.cancelled = True
            if job in self._queue:
                self._queue.remove(job)
                job.outbox.put(CANCELLED)
            self._changed.notify()

    def queue_position(self, job: Job) -> int:
        """0 while decoding (or done); n while queued with n - 1 jobs ahead of it."""
        with self._changed:
            try:
                return self._queue.index(job) + 1
            except ValueError:
                return 0

    def _work(self) -> None:
        with torch.inference_mode():
            while self._turn():
                pass
        self._fail_all(EngineError("the generation server closed before this request finished"))

    def _turn(self) -> bool:
        """Run queued model changes, admit what fits, then one step for the batch; False once closing."""
        with self._changed:
            while not (self._closing or self._queue or self._rows or self._calls):
                self._changed.wait()
            if self._closing:
                return False
            admitted = [
                self._queue.popleft() for _ in range(min(len(self._queue), self.max_batch - len(self._rows)))
            ]
            self._decoding.update(admitted)
        try:
            self._run_calls()
            self._between_steps({row.request.adapter for row in self._rows})
            self._admit(admitted)
            self._run_calls()
            if self._rows:
                self._step()
            if not self._rows and time.monotonic() - self._trimmed >= TRIM_EVERY_S:
                malloc_trim()  # the batch drained: its caches are free, and nobody is waiting on a step
                self._trimmed = time.monotonic()
        except Exception as exc:  # a bug here must fail the requests it touched, never hang every caller
            logger.exception("the serving loop failed; failing the requests it was decoding")
            self._fail_decoding(EngineError(f"generation failed: {exc}"))
        return True

    def _take_calls(self) -> list[tuple[Callable[[], Any], Future[Any]]]:
        with self._changed:
            calls = list(self._calls)
            self._calls.clear()
        return calls

    def _run_calls(self) -> None:
        for call, future in self._take_calls():
            if future.set_running_or_notify_cancel():  # False: its caller gave up while it waited
                try:
                    future.set_result(call())
                except Exception as exc:  # the caller's to handle (e.g. AdapterLoadError); serving goes on
                    future.set_exception(exc)

    def _admit(self, jobs: list[Job]) -> None:
        """Tokenize and pin each job's adapter, prefill them in groups, and emit their first tokens."""
        started: list[tuple[Job, _Request]] = []
        for job in jobs:
            if job.cancelled:
                self._retire(job, CANCELLED)
                continue
            try:
                adapter = self._resolve_adapter(job)
                with self.engine._lock:
                    request = self.engine._prepare(job.messages, adapter, job.sampling, job.unguided)
                started.append((job, request))
            except Exception as exc:  # a bad request fails alone; the batch keeps decoding
                logger.warning("request could not start: %s", exc)
                self._retire(job, exc)
        for group in prefill_groups(started):
            self._run_calls()  # between prefills too: a turn that admits many long prompts is long
            self._prefill(group)

    def _prefill(self, group: list[tuple[Job, _Request]]) -> None:
        """Prefill a group together and let its rows join the batch; if that fails, each one alone, so a bad
        request fails by itself."""
        engine = self.engine
        try:
            with engine._lock:
                logits = self._batch.prefill(
                    engine.model,
                    engine.router,
                    [prompt for _, request in group for prompt in prompts_of(request)],
                    [request.adapter for _, request in group for _ in prompts_of(request)],
                )
        except Exception as exc:
            if len(group) > 1:
                for one in group:
                    self._prefill([one])
                return
            logger.warning("request could not start: %s", exc)
            self._retire(group[0][0], exc)
            return
        first = len(self._rows)
        for job, request in group:
            sampling = request.sampling
            generator = None
            if sampling.seed is not None:
                generator = torch.Generator(logits.device).manual_seed(sampling.seed)
            row_sampling = RowSampling(
                sampling.temperature,
                sampling.top_p,
                generator,
                repetition_penalty=sampling.repetition_penalty,
                min_p=sampling.min_p,
            )
            started = replace(request, started=job.created)
            self._rows.append(_Row(job, started, row_sampling))
            if request.unguided_ids is not None:
                self._rows.append(_Row(job, started, row_sampling, shadow=True))
        self._accept(logits, first=first)

    def _step(self) -> None:
        """One decoding step for every row."""
        engine = self.engine
        try:
            with engine._lock:
                logits = self._batch.step(
                    engine.model, engine.router, [row.request.adapter for row in self._rows]
                )
        except Exception as exc:
            logger.exception("decoding step failed; failing the %d requests in the batch", len(self._rows))
            self._fail_decoding(EngineError(f"generation failed: {exc}"))
            return
        self._accept(logits, first=0)

    def _accept(self, logits: torch.Tensor, first: int) -> None:
        """Take one token for rows `first`.., stream their text, and let finished or cancelled rows leave.

        A guided row's shadow (the next row) is fed the token sampled for it, and leaves with it."""
        rows = self._rows[first:]
        leads = [offset for offset, row in enumerate(rows) if not row.shadow]
        scores = logits if len(leads) == len(rows) else logits[leads]  # a copy only when some row is guided
        guided = [n for n, offset in enumerate(leads) if rows[offset].request.unguided_ids is not None]
        if guided:
            at = torch.tensor([leads[n] for n in guided], device=logits.device)
            scales = torch.tensor(
                [[rows[leads[n]].request.sampling.guidance] for n in guided], device=logits.device
            )
            scores = scores.float()
            scores[guided] = guided_scores(logits[at].float(), logits[at + 1].float(), scales)
        tokens = next_tokens(scores, [rows[o].sampling for o in leads], [rows[o].ids for o in leads])
        keep = list(range(first))
        for offset, token in zip(leads, tokens, strict=True):
            row, index = rows[offset], first + offset
            indexes = [index] if row.request.unguided_ids is None else [index, index + 1]
            row.ids.append(token)
            for one in indexes:
                self._batch.set_last(one, token)
            if row.job.cancelled:
                self._retire(row.job, CANCELLED)
            elif token in self.engine._stop_ids or len(row.ids) >= row.request.sampling.max_new_tokens:
                self._finish(row)
            else:
                self._emit(row)
                keep.extend(indexes)
        if len(keep) < len(self._rows):
            self._rows = [self._rows[index] for index in keep]
            self._batch.keep(keep)

    def _emit(self, row: _Row) -> None:
        text = self.engine.tokenizer.decode(row.ids, skip_special_tokens=True)
        assert isinstance(text, str)  # one sequence in, one string out
        # a character split across byte tokens decodes as U+FFFD until its last byte arrives
        if len(text) > len(row.sent) and not text.endswith("\ufffd") and text.startswith(row.sent):
            row.job.outbox.put(text[len(row.sent) :])
            row.sent = text

    def _finish(self, row: _Row) -> None:
        completion: Completion = self.engine._finish(row.request, torch.tensor(row.ids))
        if completion.text.startswith(row.sent) and len(completion.text) > len(row.sent):
            row.job.outbox.put(completion.text[len(row.sent) :])
        self._seconds_per_job = 0.8 * self._seconds_per_job + 0.2 * completion.latency_s
        self._retire(row.job, completion)

    def _retire(self, job: Job, last_item: object) -> None:
        with self._changed:
            self._decoding.discard(job)  # first: a caller woken by the last item sees `pending` without it
        job.outbox.put(last_item)

    def _fail_decoding(self, error: EngineError) -> None:
        with self._changed:
            jobs = list(self._decoding)
            self._decoding.clear()
        for job in jobs:
            job.outbox.put(error)
        self._rows = []
        self._batch = DecodeBatch()

    def _fail_all(self, error: EngineError) -> None:
        with self._changed:
            self._decoding.update(self._queue)
            self._queue.clear()
        for _, future in self._take_calls():
            if future.set_running_or_notify_cancel():
                future.set_exception(error)
        self._fail_decoding(error)
