"""Our decode-step kernels (engine/kernels/matvec.cpp): every matrix-vector path on this machine against
exact sums, rows independent of their batch, the fused RMSNorm against transformers', and the engine's
layers using them only where they may."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from engine import Engine
from engine.cpu_kernels import ISA_NAMES, MAX_ROWS, CpuLinear, kernels, use_cpu_kernels, use_torch_kernels
from store.settings import Settings
from tests.fixtures.asking import QUESTIONS, ask

# rows, features (K), outputs (N): SmolLM2's shapes, tails shorter than a vector, more rows than a block
SHAPES = [(1, 576, 1536), (3, 37, 5), (8, 1536, 576), (5, 64, 100), (2, 7, 3), (11, 9, 40), (MAX_ROWS, 70, 3)]
DTYPES = [torch.float32, torch.bfloat16]


@pytest.fixture(scope="module")
def matvec():  # type: ignore[no-untyped-def]  # the extension module has no stubs
    module = kernels()
    if module is None:
        pytest.skip("the CPU kernels cannot be built on this machine (see the log)")
    return module


def within_rounding(y: torch.Tensor, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """The textbook bound for a float32 sum of K products in any order (K·u·Σ|x·w|, u = 2⁻²⁴), plus rounding
    the result to y's dtype: a wrong product, a lost row or a dropped tail exceeds it by far."""
    exact = F.linear(x.double(), w.double(), None if bias is None else bias.double())
    magnitude = F.linear(x.double().abs(), w.double().abs(), None if bias is None else bias.double().abs())
    output_rounding = 2.0**-24 if y.dtype == torch.float32 else 2.0**-8
    bound = (x.shape[1] + 1) * 2.0**-24 * magnitude + output_rounding * exact.abs()
    return bool(((y.double() - exact).abs() <= bound).all())


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("rows", "features", "outputs"), SHAPES)
def test_every_path_is_as_close_to_exact_as_torch_and_rows_do_not_depend_on_their_batch(
    matvec, dtype: torch.dtype, rows: int, features: int, outputs: int
) -> None:
    generator = torch.Generator().manual_seed(rows * features + outputs)
    x = torch.randn(rows, features, generator=generator).to(dtype)
    w = torch.randn(outputs, features, generator=generator).to(dtype)
    bias = torch.randn(outputs, generator=generator).to(dtype)
    assert within_rounding(F.linear(x, w, bias), x, w, bias)  # the bound holds for torch's kernels too
    for isa in range(matvec.isa() + 1):  # every path this CPU can run, the slowest included
        y = matvec.linear(x, w, bias, isa)
        assert y.dtype == dtype and y.shape == (rows, outputs)
        assert within_rounding(y, x, w, bias), ISA_NAMES[isa]
        alone = torch.cat([matvec.linear(x[i : i + 1], w, bias, isa) for i in range(rows)])
        assert torch.equal(alone, y), ISA_NAMES[isa]
        assert within_rounding(matvec.linear(x, w, None, isa), x, w, None), ISA_NAMES[isa]


def test_the_layer_sends_decode_steps_to_the_kernels_and_the_rest_to_torch(matvec) -> None:
    layer = nn.Linear(48, 24)
    reference = nn.Linear(48, 24)
    reference.load_state_dict(layer.state_dict())
    model = nn.Sequential(layer)
    assert use_cpu_kernels(model) == 1 and type(layer) is CpuLinear
    with torch.no_grad():
        for prefill in (torch.randn(1, 2, 48), torch.randn(MAX_ROWS + 1, 1, 48)):  # a prompt; too many rows
            assert torch.equal(layer(prefill), reference(prefill))  # torch's kernels
        step = torch.randn(2, 1, 48)
        expected = matvec.linear(step.reshape(2, 48), layer.weight, layer.bias, matvec.isa())
        assert torch.equal(layer(step), expected.reshape(2, 1, 24))
    # gradients: torch's kernels, so training a switched model still works
    loss = layer(torch.randn(1, 48, requires_grad=True)).sum()
    loss.backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    use_torch_kernels(model)
    assert type(layer) is nn.Linear


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_the_fused_rms_norm_is_transformers_within_one_rounding_and_prompts_go_to_transformers(
    matvec, dtype: torch.dtype
) -> None:
    norm, reference = LlamaRMSNorm(576, eps=1e-5).to(dtype), LlamaRMSNorm(576, eps=1e-5).to(dtype)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(576, generator=torch.Generator().manual_seed(1)).to(dtype))
    reference.load_state_dict(norm.state_dict())
    model = nn.Sequential(norm)
    use_cpu_kernels(model)
    assert type(norm).__name__ == "CpuLlamaRMSNorm" and isinstance(norm, LlamaRMSNorm)
    scale = torch.tensor([3.0, 1e-3]).repeat(MAX_ROWS // 2)[:, None, None]  # at 1e-3, eps (1e-5) dominates
    step = (scale * torch.randn(MAX_ROWS, 1, 576, generator=torch.Generator().manual_seed(2))).to(dtype)
    prompt = torch.randn(1, 5, 576, generator=torch.Generator().manual_seed(3)).to(dtype)
    with torch.no_grad():
        ours, theirs = norm(step), reference(step)
        assert torch.equal(norm(prompt), reference(prompt))
    # both sum 576 squares in fp32 (any order: (H + 8)·u relative) and round the output twice (bf16: 2⁻⁸
    # relative each side); a wrong mean, or a missing weight or eps, is off by far more
    rounding = 2.0**-24 if dtype == torch.float32 else 2.0**-8
    bound = ((576 + 8) * 2.0**-24 + 4 * rounding) * theirs.double().abs()
    assert ((ours.double() - theirs.double()).abs() <= bound).all()
    use_torch_kernels(model)
    assert type(norm) is LlamaRMSNorm


def test_the_engine_switches_its_layers_unless_told_not_to(matvec, tiny_settings: Settings) -> None:
    engine = Engine.from_settings(tiny_settings)
    layers = [m for m in engine.model.modules() if isinstance(m, nn.Linear)]
    assert layers and all(type(m) is CpuLinear for m in layers)
    norms = [m for m in engine.model.modules() if isinstance(m, LlamaRMSNorm)]
    assert norms and all(type(m).__name__ == "CpuLlamaRMSNorm" for m in norms)

    off = tiny_settings.model.model_copy(update={"cpu_kernels": False})
    plain = Engine.from_settings(tiny_settings.model_copy(update={"model": off}))
    assert all(type(m) is nn.Linear for m in plain.model.modules() if isinstance(m, nn.Linear))
    for question in QUESTIONS[:4]:
        assert (
            engine.generate(ask(question), temperature=0, max_new_tokens=16).text
            == plain.generate(ask(question), temperature=0, max_new_tokens=16).text
        )
