"""Merged-adapter serving: the same answers as PEFT's LoRA path, and the base weights are never changed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from peft import PeftModel

from engine import ChatMessage, Engine
from engine.routing import AdapterRouter
from store.settings import Settings

MakeAdapter = Callable[[Path, int], Path]
QUESTION: list[ChatMessage] = [{"role": "user", "content": "What is the capital of France?"}]


def engine_with_adapters(
    settings: Settings, make_tiny_adapter: MakeAdapter, tmp_path: Path, merge: bool
) -> Engine:
    settings = settings.model_copy(
        update={"model": settings.model.model_copy(update={"merge_adapter": merge})}
    )
    engine = Engine.from_settings(settings)
    for seed in (1, 2):
        folder = tmp_path / f"v{seed}"
        engine.load_adapter(folder.name, folder if folder.exists() else make_tiny_adapter(folder, seed))
    return engine


def answers(engine: Engine) -> list[str]:
    return [
        engine.generate(QUESTION, adapter=adapter, temperature=0, max_new_tokens=16).text
        for adapter in ("v1", None, "v2", "v1", None)
    ]


def base_weights(engine: Engine) -> dict[str, torch.Tensor]:
    """The weights of the base layers as the model would compute with them with every adapter off."""
    model = engine.model
    assert isinstance(model, PeftModel)
    engine.router.route(model, [None])
    return {name: param.detach().clone() for name, param in model.named_parameters() if "lora_" not in name}


def test_merged_serving_answers_as_the_lora_path_does(
    tiny_settings: Settings, make_tiny_adapter: MakeAdapter, tmp_path: Path
) -> None:
    merged = engine_with_adapters(tiny_settings, make_tiny_adapter, tmp_path, merge=True)
    plain = engine_with_adapters(tiny_settings, make_tiny_adapter, tmp_path, merge=False)  # same folders

    merged_answers = answers(merged)

    assert merged_answers == answers(plain)
    assert len(set(merged_answers[:3])) == 3  # the two adapters and the base really answer differently
    assert merged.router.merged == "v1"  # the last single-adapter request built v1's merged copy
    assert plain.router.merged is None


def test_merged_logits_match_the_lora_path(
    tiny_settings: Settings, make_tiny_adapter: MakeAdapter, tmp_path: Path
) -> None:
    engine = engine_with_adapters(tiny_settings, make_tiny_adapter, tmp_path, merge=True)
    model = engine.model
    ids = torch.tensor([[1, 5, 9, 13, 2, 7]])
    router = engine.router
    with torch.inference_mode():
        lora = model(input_ids=ids.repeat(2, 1), **router.route(model, ["v2", None])).logits[0]
        merged = model(input_ids=ids, **router.route(model, ["v2"])).logits[0]
        base = model(input_ids=ids, **router.route(model, [None])).logits[0]

    assert router.merged == "v2"
    torch.testing.assert_close(merged, lora, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(merged, base, atol=1e-2)


def test_switching_never_changes_the_base_weights(
    tiny_settings: Settings, make_tiny_adapter: MakeAdapter, tmp_path: Path
) -> None:
    engine = engine_with_adapters(tiny_settings, make_tiny_adapter, tmp_path, merge=True)
    before = base_weights(engine)
    base_answer = engine.generate(QUESTION, temperature=0, max_new_tokens=16).text

    for adapters in (["v1"], ["v2"], ["v1", None], ["v2"], [None, "v2"], ["v1"]):
        engine.router.route(engine.model, adapters)
    engine.unload_adapter("v1")  # unloading puts the originals back before PEFT removes the layers

    after = base_weights(engine)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[name], after[name]) for name in before)  # bit for bit: nothing drifted
    assert engine.generate(QUESTION, temperature=0, max_new_tokens=16).text == base_answer


def test_the_plain_base_model_needs_no_routing(tiny_settings: Settings) -> None:
    engine = Engine.from_settings(tiny_settings)
    assert AdapterRouter(merge=True).route(engine.model, [None, None]) == {}
