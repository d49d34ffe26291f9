#!/usr/bin/env bash
# One GPU check, both sides: decode tok/s of the embedded engine on a ~1B model against the card's
# bandwidth roofline (bench/serve.py), training samples/s of SFT and DPO with LoRA (bench/train.py), and,
# when a CUDA build of vLLM is installed (VLLM_PYTHON), vLLM's own single-stream decode on the same model.
#
#   bench/gpu_check.sh            # on a CUDA machine; figures under $OUT (default /tmp/gpu_check)
#
# Run by hand, never in CI. It needs the CUDA build of torch in .venv (the CPU build finds no device).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1

if ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "no NVIDIA GPU here (nvidia-smi not found)" >&2
    exit 1
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
"$PY" - <<'PYTHON' | tee "$OUT/roofline.txt"
import torch

if not torch.cuda.is_available():
    raise SystemExit(f"torch {torch.__version__} sees no CUDA device: install torch's CUDA build in .venv")
p = torch.cuda.get_device_properties(0)
# DDR: two transfers per clock; memory_clock_rate in kHz, memory_bus_width in bits
peak = 2 * p.memory_clock_rate * 1e3 * p.memory_bus_width / 8 / 1e9
print(f"{p.name}: {p.total_memory / 2**30:.0f} GiB, theoretical memory bandwidth {peak:.0f} GB/s")
PYTHON

echo "== serving: the embedded engine on a random ~1B Llama (bench/serve.py)"
"$PY" bench/serve.py --device cuda --random-1b --quick --json "$OUT/serve.json"
echo "== training: SFT and DPO with LoRA on the same model (bench/train.py)"
"$PY" bench/train.py --gpu --quick --json "$OUT/train.json"

if [ -n "${VLLM_PYTHON:-}" ] && [ -x "$VLLM_PYTHON" ]; then
    echo "== vLLM on the same random ~1B model"
    MODEL_DIR="$OUT/random-1b"
    "$PY" - "$MODEL_DIR" <<'PYTHON'
import sys

import torch
from transformers import AutoTokenizer

sys.path.insert(0, "bench")
from random_llama import random_llama_1b  # noqa: E402

from engine.loading import embedded_model_dir  # noqa: E402
from store.settings import load_settings  # noqa: E402

tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir(load_settings(env_file=None)))
random_llama_1b(tokenizer).to(torch.bfloat16).save_pretrained(sys.argv[1])
tokenizer.save_pretrained(sys.argv[1])
PYTHON
    "$VLLM_PYTHON" - "$MODEL_DIR" <<'PYTHON' | tee "$OUT/vllm.txt"
import sys, time
from vllm import LLM, SamplingParams

llm = LLM(model=sys.argv[1], gpu_memory_utilization=0.5, enforce_eager=False)
params = SamplingParams(max_tokens=256, temperature=0.0, ignore_eos=True)
llm.generate(["warm up"], params)
best = 0.0
for _ in range(3):
    started = time.perf_counter()
    out = llm.generate(["Tell me a story."], params)
    best = max(best, len(out[0].outputs[0].token_ids) / (time.perf_counter() - started))
print(f"vLLM single stream: {best:.1f} tok/s (256 tokens, greedy, best of 3)")
PYTHON
else
    echo "== vLLM: skipped (set VLLM_PYTHON to a python with a CUDA build of vllm)"
fi
echo "figures in $OUT"
