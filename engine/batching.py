"""Sequences decoding together: one left-padded KV cache, one forward pass per step for all of them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from peft import PeftModel
from transformers import DynamicCache, PreTrainedModel

from engine.routing import AdapterRouter


class DecodeBatch:
    """Its caller runs it under torch.inference_mode(), so the cache and these tensors stay inference tensors.

    KV cache, attention mask and positions of the rows decoding; rows join and leave between steps."""

    def __init__(self) -> None:
        self.cache: DynamicCache | None = None
        self.mask = torch.zeros(0, 0, dtype=torch.long)  # (rows, cached columns): 0 where a row is padded
        self.positions = torch.zeros(0, dtype=torch.long)  # each row's next position id
        self.last = torch.zeros(0, dtype=torch.long)  # each row's newest token, fed at the next step
        self.device = torch.device("cpu")

    def __len__(self) -> int:
        return self.mask.shape[0]

    def prefill(
        self,
        model: PreTrainedModel | PeftModel,
        router: AdapterRouter,
        input_ids: torch.Tensor,
        adapter: str | None,
    ) -> torch.Tensor:
        """Prefill one prompt alone (no padding, like `generate`), then join it; returns its last logits."""
        length = input_ids.shape[1]
        cache = DynamicCache(config=model.config)
        output = model(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            position_ids=torch.arange(length, device=input_ids.device)[None],
            cache=cache,
            use_cache=True,
            logits_to_keep=1,  # a 1,000-token prompt would otherwise build a (1000, vocab) logits matrix
            **router.route(model, [adapter]),
        )
        self._join(cache, length, input_ids.device)
        return output.logits[0, -1]

    def set_last(self, row: int, token: int) -> None:
        """The token a row feeds at the next step."""
        self.last[row] = token

    def step(
        self, model: PreTrainedModel | PeftModel, router: AdapterRouter, adapters: list[str | None]
    ) -> torch.Tensor:
        """Feed every row its newest token; returns the next-token logits, one row each."""
        assert self.cache is not None
        mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)
        output = model(
            input_ids=self.last[:, None],
            attention_mask=mask,
            position_ids=self.positions[:, None],
            cache=self.cache,
            use_cache=True,
            **router.route(model, adapters),
        )
        self.mask = mask
        self.positions += 1
        return output.logits[:, -1]

    def keep(self, rows: list[int]) -> None:
        """Keep only these rows (in this order), and drop cache columns that are padding for all of them."""
        if not rows:
            self.__init__()  # type: ignore[misc]  # back to empty; the cache is freed
            return
        assert self.cache is not None
        index = torch.tensor(rows, dtype=torch.long, device=self.device)
        self.mask, self.positions, self.last = self.mask[index], self.positions[index], self.last[index]
        start = int(self.mask.any(dim=0).long().argmax())  # first column some row still attends to
        self.mask = self.mask[:, start:]
        for layer in self.cache.layers:
            layer.keys = layer.keys[index, :, start:]
            layer.values = layer.values[index, :, start:]

    def _join(self, cache: DynamicCache, length: int, device: torch.device) -> None:
        """Append a freshly prefilled single-row cache, left-padding whichever side is shorter."""
        if self.cache is None:
            self.device = device
            self.cache, self.mask = cache, torch.ones(1, length, dtype=torch.long, device=device)
            self.positions = torch.tensor([length], device=device)
            self.last = torch.zeros(1, dtype=torch.long, device=device)
            return
        self.positions = torch.cat([self.positions, torch.tensor([length], device=device)])
        self.last = torch.cat([self.last, torch.zeros(1, dtype=torch.long, device=device)])
        new_mask = torch.ones(1, length, dtype=torch.long, device=device)
        width = max(self.mask.shape[1], length)
        old_pad, new_pad = width - self.mask.shape[1], width - length
        self.mask = torch.cat([F.pad(self.mask, (old_pad, 0)), F.pad(new_mask, (new_pad, 0))])
        for mine, theirs in zip(self.cache.layers, cache.layers, strict=True):
            # zeros, not garbage, in padded columns: masked weights are 0, and 0 * NaN would still poison them
            mine.keys = torch.cat(
                [F.pad(mine.keys, (0, 0, old_pad, 0)), F.pad(theirs.keys, (0, 0, new_pad, 0))]
            )
            mine.values = torch.cat(
                [F.pad(mine.values, (0, 0, old_pad, 0)), F.pad(theirs.values, (0, 0, new_pad, 0))]
            )
