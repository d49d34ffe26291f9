"""llama.cpp as a peer for bench/serve.py --peer llamacpp: a child process in .llamacpp-venv that decodes on
command, through llama.cpp's own C API (llama.h), nothing else of ours in between.

    scripts/llamacpp-venv.sh       # once: a venv with llama-cpp-cffi's prebuilt llama.cpp
    .llamacpp-venv/bin/python bench/llamacpp_peer.py --check

bench/serve.py starts it and talks JSON lines over stdin/stdout:

    {"load": "FILE.gguf", "threads": 2, "sequences": 8}      -> {"loaded": "FILE.gguf", "system": "..."}
    {"prompts": [[ids...], ...], "tokens": 64, "sampling": {"temperature": 0, "top_p": 1, "min_p": 0,
     "repetition_penalty": 1.1, "seeds": [0, ...]}}
                                                   -> {"tokens": N, "seconds": S, "answers": [[ids]]}

Each command decodes every prompt at once (one sequence each, as llama.cpp's batched example does: all
prompts prefilled in one batch, then one token of every sequence per step), `tokens` new tokens each with no
early stop, sampled by llama.cpp's sampler chain with the same settings as the other sides (the repetition
penalty over the answer's tokens only, as gradschool's engine applies it). The seconds include the prefill,
as the other sides' do. Only the standard library and cffi: the binding's own Python layer (which imports
transformers < 5) is bypassed by loading its compiled module directly.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Any

NO_SEQUENCE_LIMIT = -1  # penalty_last_n -1: the whole context (each sampler only ever sees its own answer)


def load_library() -> tuple[Any, Any]:
    """llama-cpp-cffi's CPU module (lib, ffi), found next to this interpreter's site-packages."""
    for folder in map(Path, sys.path):
        found = sorted((folder / "llama").glob("_llama_cpp_cpu*.so")) if folder.is_dir() else []
        if found:
            spec = importlib.util.spec_from_file_location("_llama_cpp_cpu", found[0])
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module.lib, module.ffi
    raise SystemExit("llama-cpp-cffi is not installed in this interpreter: run scripts/llamacpp-venv.sh")


class Peer:
    def __init__(self) -> None:
        self.lib, self.ffi = load_library()
        self.lib.llama_backend_init()
        self.model: Any = None
        self.context: Any = None
        self.sequences = 1

    def load(self, path: str, *, threads: int, sequences: int, context: int = 4096) -> str:
        lib = self.lib
        self.close()
        model_params = lib.llama_model_default_params()
        model_params.n_gpu_layers = 0
        self.model = lib.llama_model_load_from_file(path.encode(), model_params)
        if self.model == self.ffi.NULL:
            raise RuntimeError(f"llama.cpp could not load {path}")
        params = lib.llama_context_default_params()
        params.n_ctx = context
        params.n_batch = params.n_ubatch = context
        params.n_seq_max = self.sequences = sequences
        params.n_threads = params.n_threads_batch = threads
        params.no_perf = True
        self.context = lib.llama_init_from_model(self.model, params)
        if self.context == self.ffi.NULL:
            raise RuntimeError("llama.cpp could not make a context")
        return str(self.ffi.string(lib.llama_print_system_info()).decode())

    def sampler(self, sampling: dict[str, Any], seed: int) -> Any:
        lib = self.lib
        chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        if sampling["repetition_penalty"] != 1.0:
            penalties = lib.llama_sampler_init_penalties(
                NO_SEQUENCE_LIMIT, sampling["repetition_penalty"], 0.0, 0.0
            )
            lib.llama_sampler_chain_add(chain, penalties)
        if sampling["temperature"] == 0:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_greedy())
            return chain
        # the engine's order (engine/sampling.py): temperature, then top-p and min-p on what it left
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_temp(sampling["temperature"]))
        if sampling["top_p"] < 1.0:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_p(sampling["top_p"], 1))
        if sampling["min_p"] > 0:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_min_p(sampling["min_p"], 1))
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_dist(seed))
        return chain

    def generate(self, prompts: list[list[int]], *, tokens: int, sampling: dict[str, Any]) -> dict[str, Any]:
        """Decode `tokens` new tokens for every prompt at once; the tokens made and the seconds taken."""
        lib = self.lib
        if len(prompts) > self.sequences:
            raise ValueError(f"{len(prompts)} prompts, the context was made for {self.sequences}")
        lib.llama_kv_cache_clear(self.context)
        seeds = sampling.get("seeds") or [0] * len(prompts)
        samplers = [self.sampler(sampling, seed) for seed in seeds[: len(prompts)]]
        batch = lib.llama_batch_init(sum(map(len, prompts)), 0, len(prompts))
        answers: list[list[int]] = [[] for _ in prompts]
        try:
            start = time.perf_counter()
            # prefill: every prompt in one batch, logits at each prompt's last token
            batch.n_tokens = 0
            last: list[int] = []
            for sequence, ids in enumerate(prompts):
                for position, token in enumerate(ids):
                    self.put(batch, token, position, sequence, position == len(ids) - 1)
                last.append(batch.n_tokens - 1)
            positions = [len(ids) for ids in prompts]
            for step in range(tokens):
                self.decode(batch)
                chosen = [
                    lib.llama_sampler_sample(samplers[s], self.context, last[s]) for s in range(len(prompts))
                ]
                for answer, token in zip(answers, chosen, strict=True):
                    answer.append(token)
                if step == tokens - 1:
                    break
                batch.n_tokens = 0  # no early stop: every sequence goes on to `tokens`
                for sequence, token in enumerate(chosen):
                    self.put(batch, token, positions[sequence], sequence, True)
                    positions[sequence] += 1
                last = list(range(len(prompts)))
            seconds = time.perf_counter() - start
        finally:
            lib.llama_batch_free(batch)
            for chain in samplers:
                lib.llama_sampler_free(chain)
        return {"tokens": sum(map(len, answers)), "seconds": seconds, "answers": answers}

    def put(self, batch: Any, token: int, position: int, sequence: int, logits: bool) -> None:
        i = batch.n_tokens
        batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, position, 1
        batch.seq_id[i][0], batch.logits[i] = sequence, logits
        batch.n_tokens = i + 1

    def decode(self, batch: Any) -> None:
        code = self.lib.llama_decode(self.context, batch)
        if code != 0:
            raise RuntimeError(f"llama_decode returned {code}")

    def close(self) -> None:
        if self.context is not None:
            self.lib.llama_free(self.context)
        if self.model is not None:
            self.lib.llama_model_free(self.model)
        self.model = self.context = None


def serve() -> None:
    peer = Peer()
    for line in sys.stdin:
        command = json.loads(line)
        try:
            if "load" in command:
                system = peer.load(
                    command["load"], threads=command["threads"], sequences=command["sequences"]
                )
                reply: dict[str, Any] = {"loaded": command["load"], "system": system}
            else:
                reply = peer.generate(
                    command["prompts"], tokens=command["tokens"], sampling=command["sampling"]
                )
        except Exception as exc:  # the parent prints it and stops the run
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(reply), flush=True)
    peer.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="load llama.cpp, print its CPU features, exit")
    if parser.parse_args().check:
        lib, ffi = load_library()
        print("llama.cpp:", ffi.string(lib.llama_print_system_info()).decode())
        return
    serve()


if __name__ == "__main__":
    main()
