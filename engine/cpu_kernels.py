"""Our own matrix-vector kernels for decode steps on the CPU (engine/kernels/matvec.cpp).

A decode step multiplies a few rows of activations by every weight once, so its speed is how fast the
weights stream from memory; torch's CPU kernels, made for matrix-matrix products, read them at about a third
of that here. `use_cpu_kernels` switches a model's plain `nn.Linear` layers to `CpuLinear`, which sends
decode steps (one token a row, at most `MAX_ROWS` rows) to those kernels and everything else (prefill,
training, anything that needs gradients) to torch as before. Weights stay the same tensors, so merging an
adapter by pointing a layer at other weights (engine/routing.py) and PEFT's LoRA layers around a base layer
work as they did. The kernels are compiled once per machine with the system's C++ compiler (torch's
extension builder, cached under ~/.cache/torch_extensions); without a compiler or on another CPU the model
keeps torch's kernels and the log says why.
"""

from __future__ import annotations

import functools
import logging
import os
import platform
import shutil
import sys
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).parent / "kernels" / "matvec.cpp"
# A decode step (one new token per conversation) of up to this many rows goes to our kernels: at 32 rows they
# are still 1.2-1.4x torch's on the 2-core AVX512-BF16 EPYC (at 1 row 3.4x bf16, 4.2x fp32;
# `python bench/serve.py --kernels`). Prefill, whatever its size, stays on torch's GEMM, so a prompt's cache
# is computed the same way alone or beside others, and so is every decode row.
MAX_ROWS = 32
ISA_NAMES = ("scalar", "AVX2", "AVX512F", "AVX512-BF16")
BEST = len(ISA_NAMES) - 1  # `linear`'s use_isa: the best this CPU runs


@functools.cache
def kernels() -> ModuleType | None:
    """The compiled kernels (built on first use, then loaded from the cache), or None where they cannot be."""
    if platform.machine() not in ("x86_64", "AMD64"):
        logger.info("CPU kernels: %s is not x86-64; decode steps use torch's kernels", platform.machine())
        return None
    from torch.utils.cpp_extension import load

    scripts = str(Path(sys.executable).parent)  # the `ninja` package's command, where the venv is not on PATH
    if shutil.which("ninja") is None and shutil.which("ninja", path=scripts) is not None:
        os.environ["PATH"] = os.pathsep.join([scripts, os.environ.get("PATH", "")])
    try:
        module = load(
            name="gradschool_matvec",
            sources=[str(SOURCE)],
            extra_cflags=["-O3", "-fopenmp"],
            extra_ldflags=["-fopenmp"],
            verbose=False,
        )
    except (OSError, RuntimeError, ImportError) as exc:  # no compiler, no ninja, a failed build
        logger.warning("CPU kernels could not be built (%s); decode steps use torch's kernels", exc)
        return None
    logger.info("CPU kernels ready: %s", ISA_NAMES[module.isa()])
    return module


class CpuLinear(nn.Linear):
    """`nn.Linear` whose few-row products without gradients run on our kernels."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        features = input.shape[-1]
        rows = input.numel() // features if features else 0
        one_token_each = input.dim() < 3 or input.shape[-2] == 1  # [batch, tokens, features] in a model
        module = kernels()
        if (
            module is None
            or not one_token_each
            or not 0 < rows <= MAX_ROWS
            or input.dtype != self.weight.dtype
            or not self.weight.is_contiguous()
            or (torch.is_grad_enabled() and (input.requires_grad or self.weight.requires_grad))
        ):
            return F.linear(input, self.weight, self.bias)
        output = module.linear(input.reshape(rows, features), self.weight, self.bias, BEST)
        return output.reshape(*input.shape[:-1], self.out_features)


def use_cpu_kernels(model: nn.Module) -> int:
    """Switch `model`'s plain linear layers to `CpuLinear` where it lives on the CPU in float32 or bfloat16;
    returns how many were switched (0 where the kernels cannot serve it)."""
    parameter = next(model.parameters(), None)
    if parameter is None or parameter.device.type != "cpu":
        return 0
    if parameter.dtype not in (torch.float32, torch.bfloat16) or kernels() is None:
        return 0
    switched = 0
    for module in model.modules():
        if type(module) is nn.Linear:
            module.__class__ = CpuLinear
            switched += 1
    logger.info("decode steps multiply with our CPU kernels in %d linear layers", switched)
    return switched


def use_torch_kernels(model: nn.Module) -> None:
    """Undo `use_cpu_kernels` (benchmarks compare the two on one model)."""
    for module in model.modules():
        if type(module) is CpuLinear:
            module.__class__ = nn.Linear  # type: ignore[assignment]  # back to its own class
