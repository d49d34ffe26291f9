"""The `Engine`: one base model and tokenizer, LoRA adapters by version name, generation and streaming."""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
import time
from collections.abc import Generator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import torch
from peft import PeftModel, PeftModelForCausalLM
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors import SafetensorError
from transformers import (
    LogitsProcessorList,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    RepetitionPenaltyLogitsProcessor,
    TextIteratorStreamer,
)

from engine.cpu_kernels import use_cpu_kernels
from engine.loading import EngineError, base_model_id, load_base_model
from engine.prompting import ChatMessage, encode_prompt, trim_to_fit
from engine.routing import AdapterRouter
from store.settings import MAX_NOTE_GUIDANCE, ModelSettings, Settings

logger = logging.getLogger(__name__)

ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")  # what PEFT's save_pretrained writes
# torch's load_state_dict message for a weight whose shape differs from the model's
_SIZE_MISMATCH = re.compile(
    r"size mismatch for (\S+): copying a param with shape torch\.Size\(\[([\d, ]*)\]\) from checkpoint, "
    r"the shape in current model is torch\.Size\(\[([\d, ]*)\]\)"
)


class AdapterLoadError(EngineError):
    """An adapter folder is missing or unreadable; the engine keeps serving what it had."""


@dataclass(frozen=True)
class Sampling:
    """How one completion is sampled: built and validated once per request (`resolve`), then passed whole
    through the server, the scheduler and the engine (or to a remote engine)."""

    max_new_tokens: int
    temperature: float  # 0: greedy
    top_p: float
    repetition_penalty: float  # over the answer's tokens only
    min_p: float
    seed: int | None = None
    # context-aware decoding: > 1 pushes each token away from what the request's `unguided` prompt (the same
    # conversation without its reference notes) predicts; 1 is plain decoding
    guidance: float = 1.0

    def __post_init__(self) -> None:
        if self.max_new_tokens <= 0:
            raise ValueError(f"max_new_tokens must be positive, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be 0 (greedy) or more, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be positive, got {self.repetition_penalty}")
        if not 0.0 <= self.min_p < 1.0:
            raise ValueError(f"min_p must be in [0, 1), got {self.min_p}")
        if not 1.0 <= self.guidance <= MAX_NOTE_GUIDANCE:
            raise ValueError(f"guidance must be in [1, {MAX_NOTE_GUIDANCE}], got {self.guidance}")

    @classmethod
    def resolve(
        cls,
        settings: ModelSettings,
        *,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        guidance: float = 1.0,
    ) -> Sampling:
        """What a request asked for, the MODEL_* settings for the rest."""
        return cls(
            max_new_tokens=settings.max_new_tokens if max_new_tokens is None else max_new_tokens,
            temperature=settings.temperature if temperature is None else temperature,
            top_p=settings.top_p if top_p is None else top_p,
            repetition_penalty=settings.repetition_penalty,
            min_p=settings.min_p,
            seed=seed,
            guidance=guidance,
        )

    def record(self) -> dict[str, Any]:
        """The Generation's `sampling` column."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Completion:
    """One finished answer and everything needed to record it."""

    text: str
    prompt_messages: list[ChatMessage]  # the trimmed conversation actually rendered
    prompt_tokens: int
    completion_tokens: int
    latency_s: float  # from the call to the last token
    adapter: str | None  # None: the base model
    sampling: Sampling
    finish_reason: Literal["stop", "length"]  # "length": cut off by max_new_tokens

    def record_fields(self) -> dict[str, Any]:
        """The Generation columns this answer fills: keywords for `store.crud.record_generation`."""
        return {
            "prompt": [dict(message) for message in self.prompt_messages],
            "completion": self.text,
            "adapter_version": self.adapter,
            "sampling": self.sampling.record(),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "latency_ms": self.latency_s * 1000,
        }


@dataclass(frozen=True)
class _Request:
    messages: list[ChatMessage]
    input_ids: torch.Tensor
    adapter: str | None
    sampling: Sampling
    started: float
    unguided_ids: torch.Tensor | None = None  # the prompt without its notes, when sampling.guidance > 1


def unguided_for(sampling: Sampling, unguided: Sequence[ChatMessage] | None) -> list[ChatMessage] | None:
    """The conversation a request's decoding steers away from: None when it is not guided; a guided request
    without one is refused (ValueError)."""
    if sampling.guidance == 1.0:
        return None
    if not unguided:
        raise ValueError("guidance > 1 needs the unguided conversation to steer away from")
    return list(unguided)


def guided_scores(guided: torch.Tensor, unguided: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """Context-aware decoding (Shi et al. 2023; classifier-free guidance for language models, Sanchez et al.
    2023): log p(x | notes) + (scale - 1) * (log p(x | notes) - log p(x | no notes)), row by row. Tokens the
    notes make likelier gain, what the model would say anyway loses. The same sum as transformers'
    UnbatchedClassifierFreeGuidanceLogitsProcessor, so `generate` and the batch decode alike."""
    with_notes, without = guided.log_softmax(dim=-1), unguided.log_softmax(dim=-1)
    return scale * (with_notes - without) + without


class CompletionStream(Iterator[str]):
    """Text pieces as they are decoded; `.completion` holds the finished answer once iteration ends."""

    def __init__(self, pieces: Generator[str, None, Completion]) -> None:
        self._pieces = pieces
        self._completion: Completion | None = None

    def __next__(self) -> str:
        try:
            return next(self._pieces)
        except StopIteration as stop:
            self._completion = stop.value
            raise

    @property
    def completion(self) -> Completion:
        if self._completion is None:
            raise RuntimeError("the stream is not finished; iterate it to the end before reading .completion")
        return self._completion


class Engine:
    """Owns the model and tokenizer; generate, stream and swap adapters, safely from several threads."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        settings: ModelSettings,
        *,
        base_model_id: str,
    ) -> None:
        if settings.cpu_kernels:
            use_cpu_kernels(model)
        self.model: PreTrainedModel | PeftModelForCausalLM = model
        self.tokenizer = tokenizer
        self.settings = settings
        self.base_model_id = base_model_id
        window = model.config.max_position_embeddings
        if settings.context_tokens is not None and settings.context_tokens > window:
            raise EngineError(
                f"MODEL_CONTEXT_TOKENS={settings.context_tokens} exceeds the model's {window}-token context "
                "window; lower it or leave it unset"
            )
        self.context_tokens: int = settings.context_tokens or window
        generation_config = model.generation_config
        if generation_config.eos_token_id is None:
            generation_config.eos_token_id = tokenizer.eos_token_id
        if generation_config.pad_token_id is None:
            generation_config.pad_token_id = tokenizer.pad_token_id or tokenizer.eos_token_id
        eos = generation_config.eos_token_id
        self._stop_ids: set[int] = set(eos) if isinstance(eos, list) else {eos}
        self._adapters: dict[str, Path] = {}
        self._lock = threading.Lock()  # one generation or adapter change at a time
        self.router = AdapterRouter(merge=settings.merge_adapter)  # used under the lock
        self._streams = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine-stream")

    @classmethod
    def from_settings(cls, settings: Settings) -> Engine:
        """Load the configured base model (converting the embedded default on first use)."""
        model, tokenizer = load_base_model(settings)
        return cls(model, tokenizer, settings.model, base_model_id=base_model_id(settings))

    @property
    def loaded_adapters(self) -> dict[str, Path]:
        """Loaded adapter names and the folders they came from."""
        return dict(self._adapters)

    def generate(
        self,
        messages: Sequence[ChatMessage],
        *,
        adapter: str | None = None,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        guidance: float = 1.0,
        unguided: Sequence[ChatMessage] | None = None,
    ) -> Completion:
        """Answer with the base model (adapter=None) or a loaded adapter; temperature 0 is greedy. With
        guidance > 1, decode guided away from the `unguided` conversation (see `guided_scores`)."""
        sampling = self._sampling(max_new_tokens, temperature, top_p, seed, guidance)
        with self._lock:
            request = self._prepare(messages, adapter, sampling, unguided)
            new_ids = self._run(request)
        return self._finish(request, new_ids)

    def stream(
        self,
        messages: Sequence[ChatMessage],
        *,
        adapter: str | None = None,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        guidance: float = 1.0,
        unguided: Sequence[ChatMessage] | None = None,
    ) -> CompletionStream:
        """Like `generate`, but yield text pieces as they are decoded; then the answer is `.completion`."""
        sampling = self._sampling(max_new_tokens, temperature, top_p, seed, guidance)
        with self._lock:
            request = self._prepare(messages, adapter, sampling, unguided)
        return CompletionStream(self._stream_pieces(request))

    def _sampling(
        self,
        max_new_tokens: int | None,
        temperature: float | None,
        top_p: float | None,
        seed: int | None,
        guidance: float,
    ) -> Sampling:
        return Sampling.resolve(
            self.settings,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            guidance=guidance,
        )

    def load_adapter(self, name: str, path: Path) -> None:
        """Load the LoRA adapter saved in `path` under its immutable version name."""
        with self._lock:
            if name in self._adapters:
                if self._adapters[name] != path:
                    raise ValueError(
                        f"adapter {name!r} is already loaded from {self._adapters[name]}, not {path}"
                    )
                return
            if not (path / "adapter_config.json").is_file():
                raise AdapterLoadError(
                    f"adapter folder {path} has no adapter_config.json (missing or incomplete)"
                )
            if not any((path / weights).is_file() for weights in ADAPTER_WEIGHTS):
                raise AdapterLoadError(
                    f"adapter folder {path} has no {ADAPTER_WEIGHTS[0]} (missing or incomplete)"
                )
            self.router.forget()
            try:
                if isinstance(self.model, PeftModel):
                    self.model.load_adapter(path, adapter_name=name)
                else:
                    # our adapters are saved with task_type CAUSAL_LM, so PEFT builds a PeftModelForCausalLM
                    peft_model = PeftModel.from_pretrained(self.model, path, adapter_name=name)
                    self.model = cast(PeftModelForCausalLM, peft_model)
            except Exception as exc:  # PEFT raises many kinds; undo its partial work either way
                self._forget_partial_adapter(name)
                raise AdapterLoadError(
                    f"adapter {name!r} in {path} could not be loaded: {load_problem(exc)}"
                ) from exc
            self._adapters[name] = path
        logger.info("loaded adapter %s from %s", name, path)

    def unload_adapter(self, name: str) -> None:
        """Free a loaded adapter; unloading the last one leaves the plain base model."""
        with self._lock:
            self._check_loaded(name)
            assert isinstance(self.model, PeftModel)
            self.router.forget()
            if len(self._adapters) == 1:
                self.model = self.model.unload()
            else:
                self.model.delete_adapter(name)
            del self._adapters[name]
        logger.info("unloaded adapter %s", name)

    def _prepare(
        self,
        messages: Sequence[ChatMessage],
        adapter: str | None,
        sampling: Sampling,
        unguided: Sequence[ChatMessage] | None = None,
    ) -> _Request:
        started = time.perf_counter()
        self._check_loaded(adapter)
        budget = self.context_tokens - sampling.max_new_tokens
        if budget <= 0:
            raise ValueError(
                f"max_new_tokens={sampling.max_new_tokens} leaves no room for a prompt in the "
                f"{self.context_tokens}-token context; lower MODEL_MAX_NEW_TOKENS"
            )
        prompt, input_ids = self._fit(messages, budget)
        without = unguided_for(sampling, unguided)
        unguided_ids = None if without is None else self._fit(without, budget)[1]
        return _Request(prompt, input_ids, adapter, sampling, started, unguided_ids)

    def _fit(self, messages: Sequence[ChatMessage], budget: int) -> tuple[list[ChatMessage], torch.Tensor]:
        """The conversation trimmed to `budget` prompt tokens, and its token ids as a (1, length) tensor."""
        prompt = trim_to_fit(messages, self.tokenizer, budget)
        return prompt, torch.tensor([encode_prompt(prompt, self.tokenizer)], device=self.model.device)

    def _run(self, request: _Request, streamer: TextIteratorStreamer | None = None) -> torch.Tensor:
        """Generate under the request's adapter; the caller holds the lock. Returns the new token ids."""
        sampling = request.sampling
        options: dict[str, Any] = {"max_new_tokens": sampling.max_new_tokens, "do_sample": False}
        if sampling.temperature > 0:
            options.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p)
            if sampling.min_p > 0:
                options.update(min_p=sampling.min_p)
        if sampling.repetition_penalty != 1.0:
            # generate's own processor penalizes the prompt too; this one, put in its place, only the answer
            prompt_length = request.input_ids.shape[1]
            penalty = sampling.repetition_penalty
            answer_only = RepetitionPenaltyLogitsProcessor(penalty, prompt_ignore_length=prompt_length)
            options.update(repetition_penalty=penalty, logits_processor=LogitsProcessorList([answer_only]))
        if request.unguided_ids is not None:  # transformers' classifier-free guidance: the same sum
            options.update(guidance_scale=sampling.guidance, negative_prompt_ids=request.unguided_ids)
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        self._check_loaded(request.adapter)  # again: it may have been unloaded since the request was prepared
        self.router.route(self.model, [request.adapter])  # one row: never PEFT's mixed-batch arguments
        output = self.model.generate(  # type: ignore[operator]  # PreTrainedModel's type lacks generate
            input_ids=request.input_ids,
            attention_mask=torch.ones_like(request.input_ids),
            streamer=streamer,
            **options,
        )
        return output[0, request.input_ids.shape[1] :]

    def _stream_pieces(self, request: _Request) -> Generator[str, None, Completion]:
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)

        def work() -> torch.Tensor:
            try:
                with self._lock:
                    return self._run(request, streamer)
            except BaseException:
                streamer.end()  # wake the reader; the error itself is raised from future.result()
                raise

        future = self._streams.submit(work)
        yield from (piece for piece in streamer if piece)  # the streamer also emits empty pieces
        return self._finish(request, future.result())

    def _finish(self, request: _Request, new_ids: torch.Tensor) -> Completion:
        ids = new_ids.tolist()
        return Completion(
            text=cast(str, self.tokenizer.decode(ids, skip_special_tokens=True)),
            prompt_messages=request.messages,
            prompt_tokens=request.input_ids.shape[1],
            completion_tokens=len(ids),
            latency_s=time.perf_counter() - request.started,
            adapter=request.adapter,
            sampling=request.sampling,
            finish_reason="stop" if ids and ids[-1] in self._stop_ids else "length",
        )

    def _check_loaded(self, adapter: str | None) -> None:
        if adapter is not None and adapter not in self._adapters:
            raise ValueError(f"adapter {adapter!r} is not loaded; loaded: {sorted(self._adapters)}")

    def _forget_partial_adapter(self, name: str) -> None:
        """Undo what a failed PEFT load left behind, so the engine serves exactly as before."""
        if isinstance(self.model, PeftModel):
            if name in self.model.peft_config:
                self.model.delete_adapter(name)
            return
        # a failed first load injected LoRA layers into the base model before the PeftModel was lost
        for module_name, module in list(self.model.named_modules()):
            if isinstance(module, BaseTunerLayer):
                parent, _, child = module_name.rpartition(".")
                setattr(self.model.get_submodule(parent), child, module.get_base_layer())
        if hasattr(self.model, "peft_config"):
            del self.model.peft_config


def load_problem(error: Exception) -> str:
    """What PEFT's load error means, in one line: a damaged weights file, another rank, another base model."""
    if isinstance(error, SafetensorError):
        return f"{ADAPTER_WEIGHTS[0]} is damaged or not a safetensors file ({error})"
    mismatches = _SIZE_MISMATCH.findall(str(error))
    if not mismatches:
        return str(error)
    key, saved_text, expected_text = mismatches[0]
    saved, expected = ([int(n) for n in text.split(",")] for text in (saved_text, expected_text))
    rank_axis = 0 if ".lora_A." in key else 1  # lora_A is (rank, in_features), lora_B (out_features, rank)
    where = key.removeprefix("base_model.model.").split(".lora_")[0]
    if saved[rank_axis] != expected[rank_axis]:
        return (
            f"its weights have LoRA rank {saved[rank_axis]} but its adapter_config.json says "
            f"r={expected[rank_axis]} ({len(mismatches)} weights do not match)"
        )
    return (
        f"it was trained for a different base model: its {where} weights are {saved}, this model needs "
        f"{expected} ({len(mismatches)} weights do not match)"
    )
