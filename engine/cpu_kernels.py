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
from typing import cast

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
        rows = decode_rows(input, self.weight)
        if not rows:
            return F.linear(input, self.weight, self.bias)
        output = kernels().linear(input.reshape(rows, -1), self.weight, self.bias, BEST)  # type: ignore[union-attr]
        return output.reshape(*input.shape[:-1], self.out_features)


# transformers' RMSNorms that compute exactly LlamaRMSNorm's formula (weight · x / rms(x) in fp32, no offset)
RMS_NORMS = frozenset({"LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm"})


def decode_rows(input: torch.Tensor, weight: torch.Tensor) -> int:
    """How many rows `input` is as a decode step our kernels take (one token a row, at most MAX_ROWS rows,
    `weight`'s dtype, no gradients wanted); 0 where it goes to torch."""
    features = input.shape[-1]
    rows = input.numel() // features if features else 0
    if (
        not 0 < rows <= MAX_ROWS
        or (input.dim() >= 3 and input.shape[-2] != 1)  # [batch, tokens, features]: a prompt
        or input.dtype != weight.dtype
        or not weight.is_contiguous()
        or (torch.is_grad_enabled() and (input.requires_grad or weight.requires_grad))
        or kernels() is None
    ):
        return 0
    return rows


def _rms_norm_forward(self: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    weight = cast(torch.Tensor, self.weight)
    rows = decode_rows(hidden_states, weight)
    if not rows:
        return super(type(self), self).forward(hidden_states)  # type: ignore[misc]  # the transformers class's
    normed = kernels().rms_norm(hidden_states.reshape(rows, -1), weight, self.variance_epsilon)  # type: ignore[union-attr]
    return normed.reshape(hidden_states.shape)


_FUSED_NORMS: dict[type[nn.Module], type[nn.Module]] = {}


def _fused_norm_class(cls: type[nn.Module]) -> type[nn.Module]:
    """A subclass of the transformers RMSNorm `cls` whose decode steps run on our kernel (made once)."""
    if cls not in _FUSED_NORMS:
        _FUSED_NORMS[cls] = type(f"Cpu{cls.__name__}", (cls,), {"forward": _rms_norm_forward})
    return _FUSED_NORMS[cls]


def use_cpu_kernels(model: nn.Module) -> int:
    """Switch `model`'s plain linear layers to `CpuLinear` where it lives on the CPU in float32 or bfloat16;
    returns how many were switched (0 where the kernels cannot serve it)."""
    parameter = next(model.parameters(), None)
    if parameter is None or parameter.device.type != "cpu":
        return 0
    if parameter.dtype not in (torch.float32, torch.bfloat16) or kernels() is None:
        return 0
    switched = norms = 0
    for module in model.modules():
        if type(module) is nn.Linear:
            module.__class__ = CpuLinear
            switched += 1
        elif type(module).__name__ in RMS_NORMS:
            module.__class__ = _fused_norm_class(type(module))
            norms += 1
    logger.info("decode steps on our CPU kernels: %d linear layers, %d RMSNorms", switched, norms)
    return switched


def use_torch_kernels(model: nn.Module) -> None:
    """Undo `use_cpu_kernels` (benchmarks compare the two on one model)."""
    for module in model.modules():
        if type(module) is CpuLinear:
            module.__class__ = nn.Linear  # type: ignore[assignment]  # back to its own class
        elif type(module) in _FUSED_NORMS.values():
            module.__class__ = type(module).__mro__[1]  # the transformers class it was made from
