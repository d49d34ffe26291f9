"""`RemoteServer`: the serving interface over an OpenAI-compatible engine that is already running (vLLM).

The bot streams answers and hot-swaps adapters through it exactly as through the embedded
`GenerationServer`: the same `stream` / `generate` / `load_adapter` / `activate` / `set_canary`, the same
`ReplyStream`, the same `AdapterPlan` choosing active, previous and canary versions.

- Prompts go as token ids to `/v1/completions`, encoded here with the model's own chat template and the
  same sanitizing of control tokens a user may type (`engine.prompting`), so both backends see exactly the
  same tokens and a remote engine cannot be steered by a typed `<|im_end|>`.
- Each adapter version is loaded under an immutable engine name (`gs-v18`, never re-used: reloading a name
  can hit stale prefix caches, vllm#42125) with `POST /v1/load_lora_adapter`, checked in `GET /v1/models`,
  and requests pick it by `model` name, so a swap or a canary is per request and costs nothing.
- An engine without runtime LoRA loading (no such endpoint) serves the base model only; `runtime_adapters`
  says so and loading a version raises `AdapterLoadError` naming the cause.
- Guided decoding on the open book's notes (`guidance` > 1, the embedded engine's context-aware decoding) has
  no counterpart in the API: answers decode plainly and are recorded so (`sampling.guidance` 1).
- Everything is asyncio over one aiohttp session: a slow engine never blocks the event loop. An engine that
  stops answering ends the affected streams with `EngineUnavailable`; the next requests try again, so
  serving recovers by itself when the engine returns.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp
from transformers import AutoConfig, AutoTokenizer, PreTrainedTokenizerBase

from engine.engine import AdapterLoadError, Completion, Sampling
from engine.loading import EngineError, EngineUnavailable, model_source
from engine.prompting import ChatMessage, encode_prompt, trim_to_fit
from engine.scheduler import CANCELLED, Job, Outbox
from engine.serving import ACTIVE, ActiveT, AdapterPlan, Busy, ReplyStream
from store.scopes import GLOBAL
from store.settings import Settings

logger = logging.getLogger(__name__)

ENGINE_NAME_PREFIX = "gs-"


def sampling_fields(sampling: Sampling) -> dict[str, Any]:
    """A Sampling as the fields of an OpenAI-compatible (vLLM) completion request."""
    fields: dict[str, Any] = {
        "max_tokens": sampling.max_new_tokens,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p if sampling.temperature > 0 else 1.0,
    }
    if sampling.temperature > 0 and sampling.min_p > 0:
        fields["min_p"] = sampling.min_p
    if sampling.repetition_penalty != 1.0:
        fields["repetition_penalty"] = sampling.repetition_penalty
    if sampling.seed is not None:
        fields["seed"] = sampling.seed
    return fields


def engine_name(version: str) -> str:
    """The immutable name a version is loaded under in the engine."""
    return f"{ENGINE_NAME_PREFIX}{version}"


class RemoteServer:
    """Streams answers from an OpenAI-compatible engine; serves the active adapter and a canary by name."""

    def __init__(self, settings: Settings, *, tokenizer: PreTrainedTokenizerBase | None = None) -> None:
        model = settings.model
        if not model.engine_url:
            raise EngineError("MODEL_BACKEND=openai needs MODEL_ENGINE_URL (e.g. http://127.0.0.1:8000)")
        self.settings = settings
        self.url = model.engine_url.rstrip("/")
        self.timeout_s = model.engine_timeout_s
        self.max_pending = model.max_pending
        self.keep_adapters = model.keep_adapters
        self.plan = AdapterPlan(model.keep_adapters)
        self.tokenizer = tokenizer
        self.context_tokens = model.context_tokens
        self.base_name: str | None = None  # the engine's id for the base model, from /v1/models
        self.runtime_adapters = False  # the engine can load LoRA adapters while serving
        self._loaded: dict[str, Path] = {}  # version name -> folder, as loaded into the engine
        self._inflight: set[asyncio.Task[None]] = set()
        self._in_use: collections.Counter[str | None] = collections.Counter()  # adapter -> requests using it
        self._session: aiohttp.ClientSession | None = None
        self._adapter_lock = asyncio.Lock()  # one load or unload at a time
        self._unguided_said = False  # logged once that guided decoding is not available here
        self.extra_body: dict[
            str, Any
        ] = {}  # engine-specific fields for every completion (bench: ignore_eos)

    # --- lifecycle -------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Connect, find the base model and the adapters already loaded; EngineError says what to check."""
        headers = {}
        if self.settings.model.engine_api_key is not None:
            headers["Authorization"] = f"Bearer {self.settings.model.engine_api_key.get_secret_value()}"
        # idle connections closed well before the engine's own keep-alive limit (uvicorn: 5 s)
        connector = aiohttp.TCPConnector(keepalive_timeout=2.0)
        self._session = aiohttp.ClientSession(headers=headers, connector=connector)
        try:
            models = await self._models()
        except EngineUnavailable as exc:
            await self.close()
            raise EngineError(
                f"the engine at MODEL_ENGINE_URL={self.url} does not answer ({exc}); check that it is "
                "running (vLLM: python -m vllm.entrypoints.openai.api_server --model DIR --enable-lora), "
                "that the URL and port are right, and MODEL_ENGINE_API_KEY if it needs one"
            ) from exc
        bases = [
            m["id"] for m in models if not m.get("parent") and not m["id"].startswith(ENGINE_NAME_PREFIX)
        ]
        if not bases:
            await self.close()
            raise EngineError(f"the engine at {self.url} lists no base model in /v1/models")
        self.base_name = bases[0]
        if self.tokenizer is None or self.context_tokens is None:
            await asyncio.to_thread(self._load_tokenizer)
        for model in models:
            if model["id"].startswith(ENGINE_NAME_PREFIX) and model.get("parent"):
                self._loaded[model["id"].removeprefix(ENGINE_NAME_PREFIX)] = Path(model.get("root") or "")
        self.runtime_adapters = await self._probe_runtime_adapters()
        if self.runtime_adapters:
            logger.info(
                "serving through %s (base %s; adapters loaded there: %s)",
                self.url,
                self.base_name,
                sorted(self._loaded),
            )
        else:
            logger.warning(
                "the engine at %s cannot load LoRA adapters at run time: it serves the base model %s only, "
                "and trained versions are not swapped in (vLLM: start it with --enable-lora and "
                "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True)",
                self.url,
                self.base_name,
            )

    async def close(self) -> None:
        """Cancel the streams in flight and close the connection pool."""
        for task in list(self._inflight):
            task.cancel()
        if self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> RemoteServer:
        await self.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        await self.close()

    def describe(self) -> str:
        """One line for /status and the logs: where answers come from."""
        swap = "adapters swapped at run time" if self.runtime_adapters else "base model only: no runtime LoRA"
        return f"OpenAI-compatible engine at {self.url} ({swap})"

    # --- serving ---------------------------------------------------------------------------------------
    @property
    def pending(self) -> int:
        return len(self._inflight)

    @property
    def active_adapter(self) -> str | None:
        return self.plan.active

    @property
    def canary_adapter(self) -> str | None:
        return self.plan.canary

    @property
    def loaded_adapters(self) -> dict[str, Path]:
        return dict(self._loaded)

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
        """Send a request and return its token stream at once; raises Busy past MODEL_MAX_PENDING."""
        if isinstance(adapter, str) and adapter not in self._loaded:
            raise ValueError(f"adapter {adapter!r} is not loaded; loaded: {sorted(self._loaded)}")
        sampling = Sampling.resolve(
            self.settings.model,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
        )  # no guidance: an OpenAI-compatible API has no second prompt to steer away from
        if guidance != 1.0 and not self._unguided_said:
            logger.info(
                "guided decoding (LADDER_NOTE_GUIDANCE=%s) is embedded-only; %s decodes plainly",
                guidance,
                self.url,
            )
            self._unguided_said = True
        if len(self._inflight) >= self.max_pending:
            raise Busy(1.0)
        job = Job(list(messages), adapter, sampling, Outbox(asyncio.get_running_loop()), scope)
        task = asyncio.get_running_loop().create_task(self._answer(job))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)
        job.task = task  # what `cancel` stops
        return ReplyStream(job, self)

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
        async with stream:
            async for _ in stream:
                pass
        return stream.completion

    # ReplyStream's view of the queue: the engine keeps its own, so a request is never "queued" here
    def queue_position(self, job: Job) -> int:
        return 0

    def cancel(self, job: Job) -> None:
        job.cancelled = True
        task: asyncio.Task[None] | None = job.task
        if task is not None and not task.done():
            task.cancel()  # closes the connection: vLLM aborts the request and frees its slot

    async def _answer(self, job: Job) -> None:
        started = time.perf_counter()
        try:
            completion = await self._complete(job, started)
        except asyncio.CancelledError:
            job.outbox.put(CANCELLED)
            raise
        except Exception as exc:  # the caller's to handle; other requests go on
            job.outbox.put(exc)
            return
        job.outbox.put(completion)

    async def _complete(self, job: Job, started: float) -> Completion:
        adapter = await self._resolve(job)
        self._in_use[adapter] += 1  # not unloaded while this request uses it
        try:
            return await self._decode(job, started, adapter)
        finally:
            self._in_use[adapter] -= 1
            if not self._in_use[adapter]:
                del self._in_use[adapter]

    async def _decode(self, job: Job, started: float, adapter: str | None) -> Completion:
        sampling = job.sampling
        context = self.context_tokens or 0
        budget = context - sampling.max_new_tokens
        if budget <= 0:
            raise ValueError(
                f"max_new_tokens={sampling.max_new_tokens} leaves no room for a prompt in the "
                f"{context}-token context; lower MODEL_MAX_NEW_TOKENS"
            )
        assert self.tokenizer is not None
        tokenizer = self.tokenizer
        prompt, ids = await asyncio.to_thread(
            lambda: (p := trim_to_fit(job.messages, tokenizer, budget), encode_prompt(p, tokenizer))
        )
        body: dict[str, Any] = {
            "model": engine_name(adapter) if adapter is not None else self.base_name,
            "prompt": ids,
            "stream": True,
            "stream_options": {"include_usage": True},
            "skip_special_tokens": True,
            **sampling_fields(sampling),
        } | self.extra_body
        text: list[str] = []
        finish: str | None = None
        usage: dict[str, int] = {}
        for attempt in (1, 2):
            async with self._request("POST", "/v1/completions", json=body) as response:
                if response.status == 404 and adapter is not None and attempt == 1:
                    # the engine restarted and lost its adapters: load this one again, then ask again
                    await self._reload(adapter)
                    continue
                await _raise_for_engine(response, f"answering with {body['model']}")
                async for data in _events(response):
                    choices = data.get("choices") or []
                    if choices:
                        piece = choices[0].get("text") or ""
                        finish = choices[0].get("finish_reason") or finish
                        if piece:
                            text.append(piece)
                            job.outbox.put(piece)
                    if data.get("usage"):
                        usage = data["usage"]
            break
        if finish is None:
            raise EngineUnavailable(f"the engine at {self.url} ended the answer without finishing it")
        return Completion(
            text="".join(text),
            prompt_messages=prompt,
            prompt_tokens=usage.get("prompt_tokens", len(ids)),
            completion_tokens=usage.get("completion_tokens", len(tokenizer("".join(text))["input_ids"])),
            latency_s=time.perf_counter() - started,
            adapter=adapter,
            sampling=sampling,
            finish_reason="length" if finish == "length" else "stop",
        )

    # --- adapters --------------------------------------------------------------------------------------
    async def _resolve(self, job: Job) -> str | None:
        """The job's adapter, loaded into the engine again if it was evicted (other requests go on); if it
        cannot be, the scope's fallback serves and the failure is logged."""
        name = self.plan.resolve(job.adapter, job.scope)
        if name is None or name in self._loaded:
            return name
        path = self.plan.path_of(name)
        if path is not None:
            try:
                await self.load_adapter(name, path)
                await self._evict_extra_adapters()
                return name
            except AdapterLoadError as exc:
                logger.error("could not load %s again: %s", name, exc)
        fallback = self.plan.fallback(job.scope)
        logger.warning("%s is not loaded; %s gets %s", name, job.scope, fallback)
        return fallback if fallback in self._loaded else None

    async def load_adapter(self, name: str, path: Path) -> None:
        """Load a version into the engine under its immutable name; AdapterLoadError leaves serving as it
        was."""
        async with self._adapter_lock:
            if name in self._loaded:
                return
            if not self.runtime_adapters:
                raise AdapterLoadError(
                    f"the engine at {self.url} cannot load adapters at run time, so {name!r} cannot be "
                    "served (vLLM: --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True)"
                )
            seen = self.engine_path(path)
            body = {"lora_name": engine_name(name), "lora_path": seen}
            try:
                async with self._request("POST", "/v1/load_lora_adapter", json=body) as response:
                    if response.status >= 400:
                        problem = await _engine_message(response)
                        raise AdapterLoadError(f"the engine refused adapter {name!r} from {seen}: {problem}")
            except EngineUnavailable as exc:
                raise AdapterLoadError(f"adapter {name!r} could not be loaded: {exc}") from exc
            if engine_name(name) not in {m["id"] for m in await self._models()}:
                raise AdapterLoadError(
                    f"the engine accepted adapter {name!r} but does not list it in /v1/models"
                )
            self._loaded[name] = path
            self.plan.loaded(name, path)
        logger.info("loaded adapter %s into %s as %s", name, self.url, engine_name(name))

    async def _reload(self, name: str) -> None:
        """Load a version the engine lost (it restarted) under the same name: its caches are fresh."""
        async with self._adapter_lock:
            body = {"lora_name": engine_name(name), "lora_path": self.engine_path(self._loaded[name])}
            async with self._request("POST", "/v1/load_lora_adapter", json=body) as response:
                if response.status >= 400:
                    problem = await _engine_message(response)
                    raise AdapterLoadError(f"the engine could not load {name!r} again: {problem}")
        logger.info("loaded adapter %s into %s again (the engine had restarted)", name, self.url)

    async def unload_adapter(self, name: str) -> None:
        async with self._adapter_lock:
            if name not in self._loaded:
                raise ValueError(f"adapter {name!r} is not loaded; loaded: {sorted(self._loaded)}")
            del self._loaded[name]  # no new request picks it; those decoding with it finish in the engine
            body = {"lora_name": engine_name(name)}
            async with self._request("POST", "/v1/unload_lora_adapter", json=body) as response:
                if response.status >= 400 and response.status != 404:
                    logger.warning("the engine did not unload %s: %s", name, await _engine_message(response))
        logger.info("unloaded adapter %s from %s", name, self.url)

    async def activate(self, name: str | None, path: Path | None = None, *, scope: str = GLOBAL) -> None:
        """Serve `name` to the scope's ACTIVE requests from the next one (None: the base model for the global
        scope; for a community, the global scope's version again)."""
        if name is not None:
            if path is not None:
                await self.load_adapter(name, path)
            elif name not in self._loaded:
                raise AdapterLoadError(
                    f"adapter {name!r} is not loaded and no path was given to load it from"
                )
        self.plan.activate(name, scope)
        await self._evict_extra_adapters()

    def set_canary(self, name: str | None, share: float, *, scope: str = GLOBAL) -> None:
        """Serve `share` of the scope's ACTIVE requests with `name` (already loaded); None or share 0 stops
        the canary."""
        if name is not None and name not in self._loaded:
            raise ValueError(f"canary adapter {name!r} is not loaded; load it first")
        self.plan.set_canary(name, share, scope)

    def engine_path(self, path: Path) -> str:
        """How the engine sees an adapter folder: under MODEL_ENGINE_ADAPTER_ROOT when it runs elsewhere."""
        root = self.settings.model.engine_adapter_root
        if root is None:
            return str(path.resolve())
        try:
            relative = path.resolve().relative_to(self.settings.adapters_dir.resolve())
        except ValueError as exc:
            raise AdapterLoadError(
                f"adapter folder {path} is outside {self.settings.adapters_dir}, so "
                "MODEL_ENGINE_ADAPTER_ROOT cannot say where the engine sees it"
            ) from exc
        return f"{root.rstrip('/')}/{relative.as_posix()}"

    async def _evict_extra_adapters(self) -> None:
        for name in self.plan.to_evict(list(self._loaded), set(self._in_use)):
            try:
                await self.unload_adapter(name)
            except (EngineUnavailable, ValueError) as exc:
                logger.warning("could not unload %s: %s", name, exc)

    # --- HTTP --------------------------------------------------------------------------------------------
    def _load_tokenizer(self) -> None:
        source = model_source(self.settings)
        if self.tokenizer is None:
            self.tokenizer = AutoTokenizer.from_pretrained(source)
        if self.context_tokens is None:
            self.context_tokens = int(AutoConfig.from_pretrained(source).max_position_embeddings)

    def _request(self, method: str, path: str, **kwargs: Any) -> _EngineCall:
        if self._session is None:
            raise EngineError("the remote engine client is not started")
        return _EngineCall(self._session, method, self.url + path, self.timeout_s, kwargs)

    async def _models(self) -> list[dict[str, Any]]:
        async with self._request("GET", "/v1/models") as response:
            await _raise_for_engine(response, "listing models")
            payload = await response.json()
        return list(payload.get("data") or [])

    async def _probe_runtime_adapters(self) -> bool:
        """Whether the engine has vLLM's load endpoint: an empty request is refused as invalid, not as
        unknown."""
        async with self._request("POST", "/v1/load_lora_adapter", json={}) as response:
            return response.status not in (404, 405)


class _EngineCall:
    """`async with` one HTTP call; connection failures and timeouts become EngineUnavailable.

    A pooled keep-alive connection the engine has just closed (uvicorn closes idle ones after 5 s) fails
    before any byte of the reply with ServerDisconnectedError: the call is then made once more on a fresh
    connection, since the engine never saw it.
    """

    def __init__(
        self, session: aiohttp.ClientSession, method: str, url: str, timeout_s: float, kwargs: dict[str, Any]
    ) -> None:
        self._open = functools.partial(
            session.request,
            method,
            url,
            timeout=aiohttp.ClientTimeout(sock_connect=timeout_s, sock_read=timeout_s),
            **kwargs,
        )
        self._url = url
        self._response: aiohttp.ClientResponse | None = None

    async def __aenter__(self) -> aiohttp.ClientResponse:
        for attempt in (1, 2):
            try:
                self._response = await self._open()
                return self._response
            except aiohttp.ServerDisconnectedError as exc:
                if attempt == 2:
                    raise EngineUnavailable(f"{self._url}: {exc}") from exc
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise EngineUnavailable(f"{self._url}: {exc or type(exc).__name__}") from exc
        raise AssertionError("unreachable")

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self._response is not None:  # as aiohttp's own context manager: back to the pool, or closed
            await self._response.__aexit__(kind, error, trace)


async def _events(response: aiohttp.ClientResponse) -> Any:
    """The JSON payloads of a server-sent event stream, until `[DONE]`."""
    try:
        async for raw in response.content:
            line = raw.decode("utf-8").strip()
            if not line.startswith("data:"):
                continue
            data = line.removeprefix("data:").strip()
            if data == "[DONE]":
                return
            payload = json.loads(data)
            if "error" in payload:
                raise EngineError(f"the engine failed mid-answer: {payload['error']}")
            yield payload
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise EngineUnavailable(
            f"the engine stopped answering mid-stream: {exc or type(exc).__name__}"
        ) from exc


async def _engine_message(response: aiohttp.ClientResponse) -> str:
    text = await response.text()
    try:
        payload = json.loads(text)
    except json.JSONDecodeError:
        return f"HTTP {response.status}: {text[:300]}"
    error = payload.get("error", payload) if isinstance(payload, dict) else payload
    message = error.get("message", error) if isinstance(error, dict) else error
    return f"HTTP {response.status}: {str(message)[:300]}"


async def _raise_for_engine(response: aiohttp.ClientResponse, doing: str) -> None:
    if response.status >= 500:
        raise EngineUnavailable(f"{doing}: {await _engine_message(response)}")
    if response.status >= 400:
        raise EngineError(f"the engine refused {doing}: {await _engine_message(response)}")
