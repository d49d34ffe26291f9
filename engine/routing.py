"""Which weights a forward pass runs on: the base, one adapter merged into a copy of them, or a mixed batch.

A batch whose rows all want one adapter runs on that adapter's merged weights (W + scale·B·A, built once and
kept beside the originals), with PEFT's LoRA layers switched off: the same cost per token as the plain base
model. Switching between the originals and the merged copy swaps which tensor each layer points at, nothing
is added to or subtracted from the weights, so the base model's numbers never drift however often adapters
change. Only a batch that mixes adapters (a canary beside the active one, or rows started before a swap) pays
for PEFT's per-row LoRA path.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from peft import PeftModel
from peft.tuners.lora import Linear as LoraLinear
from peft.tuners.lora import LoraLayer
from transformers import PreTrainedModel

logger = logging.getLogger(__name__)

BASE = "__base__"  # PEFT's name for "no adapter" in a mixed-adapter batch


class AdapterRouter:
    """Puts the model in the state a batch needs; its owner calls it under the lock that guards the model."""

    def __init__(self, *, merge: bool) -> None:
        self.merge = merge
        self._merged_name: str | None = None  # the adapter `_merged` holds
        self._merged: dict[LoraLinear, torch.nn.Parameter] = {}
        self._originals: dict[LoraLinear, torch.nn.Parameter] = {}  # filled while merged weights are in place
        self._layers_on: bool | None = None  # PEFT's LoRA layers switched on; None: not known

    @property
    def merged(self) -> str | None:
        """The adapter whose merged weights are built (in place or not)."""
        return self._merged_name

    def route(self, model: PreTrainedModel | PeftModel, adapters: list[str | None]) -> dict[str, Any]:
        """Ready `model` for a forward pass whose rows use `adapters` (None: base); returns extra kwargs."""
        if not isinstance(model, PeftModel):
            return {}
        names = set(adapters)
        if len(names) > 1:
            self._put_back()
            self._switch_layers(model, on=True)
            return {"adapter_names": [name or BASE for name in adapters]}
        (name,) = names
        if name is None:
            self._put_back()
            self._switch_layers(model, on=False)
        elif self.merge and self._merge_in(model, name):
            self._switch_layers(model, on=False)
        else:
            self._put_back()
            if model.active_adapter != name:
                model.set_adapter(name, inference_mode=True)
            self._switch_layers(model, on=True)
        return {}

    def forget(self) -> None:
        """Before PEFT changes the model (an adapter loaded or unloaded): originals back, merged copy gone."""
        self._put_back()
        self._merged_name, self._merged = None, {}
        self._layers_on = None

    def _merge_in(self, model: PeftModel, name: str) -> bool:
        """Point each LoRA layer at its weights merged with `name`; False where that cannot be exact."""
        if self._merged_name != name:
            self._put_back()
            self._merged_name, self._merged = None, {}  # the old copy goes before the new one is built
            merged = _merged_weights(model, name)
            if merged is None:
                return False
            self._merged_name, self._merged = name, merged
            logger.info("merged adapter %s into a copy of %d weights", name, len(merged))
        if not self._originals:
            for layer, weight in self._merged.items():
                original = layer.base_layer.weight
                assert isinstance(original, torch.nn.Parameter)  # a plain Linear's (_merged_weights' check)
                self._originals[layer] = original
                layer.base_layer.weight = weight
        return True

    def _put_back(self) -> None:
        for layer, weight in self._originals.items():
            layer.base_layer.weight = weight
        self._originals = {}

    def _switch_layers(self, model: PeftModel, *, on: bool) -> None:
        if self._layers_on is on:
            return
        for module in model.modules():
            if isinstance(module, LoraLayer):
                module.enable_adapters(on)
        self._layers_on = on


def _merged_weights(model: PeftModel, name: str) -> dict[LoraLinear, torch.nn.Parameter] | None:
    """Each of `name`'s layers' base weight plus its LoRA delta, as new tensors; None for a layer kind (or a
    LoRA variant such as DoRA) whose delta is not a plain weight sum; it is then served unmerged."""
    merged: dict[LoraLinear, torch.nn.Parameter] = {}
    for module in model.modules():
        if not isinstance(module, LoraLayer) or name not in module.lora_A:
            continue
        if not isinstance(module, LoraLinear) or name in module.lora_variant:
            logger.info("adapter %s has a %s layer; serving it unmerged", name, type(module).__name__)
            return None
        weight = module.base_layer.weight
        delta = module.get_delta_weight(name)
        merged[module] = torch.nn.Parameter(weight + delta.to(weight.dtype), requires_grad=False)
    return merged
