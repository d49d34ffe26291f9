"""Sequences decoding together: one left-padded KV cache, one forward pass per step for all of them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from peft import PeftModel
from transformers import DynamicCache, PreTrainedModel
from transformers.cache_utils import CacheLayerMixin, DynamicLayer, LinearAttentionCacheLayerMixin

from engine.routing import AdapterRouter


class GrowingLayer(DynamicLayer):
    """One layer's keys and values as views of a buffer with room to grow.

    A decoding step writes its column in place, where transformers' DynamicLayer `torch.cat`s the whole cache
    into a new tensor (every layer, every step: at 8 rows and chat-length contexts, a tenth of the step). When
    the room runs out the buffer grows by half, so the copies cost O(1) per token, amortised."""

    keys: torch.Tensor  # set by lazy_initialization before any read
    values: torch.Tensor

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self._key_store = self._value_store = torch.empty(0, device=self.device)

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: object, **kwargs: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        length = self.get_seq_length()  # the columns `keys` views; the store holds room past them
        end = length + key_states.shape[-2]
        if length == 0 or end > self._key_store.shape[-2]:
            self.replace(torch.cat([self.keys, key_states], -2), torch.cat([self.values, value_states], -2))
        else:
            self._key_store[:, :, length:end] = key_states
            self._value_store[:, :, length:end] = value_states
            self._view(end)
        return self.keys, self.values

    def replace(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Hold these keys and values (rows, heads, columns, head size), with room for more columns."""
        length = keys.shape[-2]
        room = length + max(32, length // 2)
        self._key_store = keys.new_empty(*keys.shape[:2], room, keys.shape[-1])
        self._value_store = values.new_empty(*values.shape[:2], room, values.shape[-1])
        self._key_store[:, :, :length] = keys
        self._value_store[:, :, :length] = values
        self._view(length)

    def _view(self, length: int) -> None:
        self.keys = self._key_store[:, :, :length]
        self.values = self._value_store[:, :, :length]

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.get_seq_length() > 0:
            keys, values = self.keys.repeat_interleave(repeats, 0), self.values.repeat_interleave(repeats, 0)
            self.replace(keys, values)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.get_seq_length() > 0:
            self.replace(self.keys[indices], self.values[indices])

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.batch_select_indices(beam_idx)


def hold(layer: CacheLayerMixin, keys: torch.Tensor, values: torch.Tensor) -> None:
    """Make a cache layer hold these keys and values, whatever kind of layer it is."""
    if isinstance(layer, GrowingLayer):
        layer.replace(keys, values)
    else:
        layer.keys, layer.values = keys, values


def kv_layers(cache: DynamicCache) -> list[DynamicLayer]:
    """The cache's layers, each holding keys and values (a model with other kinds cannot batch-decode)."""
    layers = []
    for layer in cache.layers:
        # a linear-attention layer keeps recurrent states beside (or instead of) keys and values
        if not isinstance(layer, DynamicLayer) or isinstance(layer, LinearAttentionCacheLayerMixin):
            raise TypeError(f"batched decoding needs key/value cache layers, not {type(layer).__name__}")
        layers.append(layer)
    return layers


def growing_cache(model: PreTrainedModel | PeftModel) -> DynamicCache:
    """transformers' DynamicCache for this model with its plain (full-attention) layers made GrowingLayers;
    other kinds (sliding-window layers) stay as transformers built them."""
    cache = DynamicCache(config=model.config)
    cache.layers = [GrowingLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


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
        prompts: list[torch.Tensor],
        adapters: list[str | None],
    ) -> torch.Tensor:
        """Prefill prompts (each (1, length)) in one forward pass, left-padded to the longest, then join them;
        returns each one's last logits, one row each. A prompt alone has no padding, like `generate`."""
        width = max(prompt.shape[1] for prompt in prompts)
        input_ids = torch.cat([F.pad(prompt, (width - prompt.shape[1], 0)) for prompt in prompts])
        mask = torch.cat([F.pad(torch.ones_like(prompt), (width - prompt.shape[1], 0)) for prompt in prompts])
        cache = growing_cache(model)
        output = model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=(mask.cumsum(dim=1) - 1).clamp(min=0),
            cache=cache,
            use_cache=True,
            logits_to_keep=1,  # a 1,000-token prompt would otherwise build a (1000, vocab) logits matrix
            **router.route(model, adapters),
        )
        self._join(cache, mask)
        return output.logits[:, -1]

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
        for layer in kv_layers(self.cache):
            assert layer.keys is not None and layer.values is not None
            hold(layer, layer.keys[index, :, start:], layer.values[index, :, start:])

    def _join(self, cache: DynamicCache, mask: torch.Tensor) -> None:
        """Append freshly prefilled rows (their cache and mask), left-padding whichever side is shorter."""
        device = mask.device
        positions = mask.sum(dim=1)
        if self.cache is None:
            self.device, self.cache, self.mask, self.positions = device, cache, mask, positions
            self.last = torch.zeros(len(mask), dtype=torch.long, device=device)
            return
        self.positions = torch.cat([self.positions, positions])
        self.last = torch.cat([self.last, torch.zeros(len(mask), dtype=torch.long, device=device)])
        width = max(self.mask.shape[1], mask.shape[1])
        old_pad, new_pad = width - self.mask.shape[1], width - mask.shape[1]
        self.mask = torch.cat([F.pad(self.mask, (old_pad, 0)), F.pad(mask, (new_pad, 0))])
        for mine, theirs in zip(kv_layers(self.cache), kv_layers(cache), strict=True):
            assert mine.keys is not None and mine.values is not None
            assert theirs.keys is not None and theirs.values is not None
            # zeros, not garbage, in padded columns: masked weights are 0, and 0 * NaN would still poison them
            keys = torch.cat([F.pad(mine.keys, (0, 0, old_pad, 0)), F.pad(theirs.keys, (0, 0, new_pad, 0))])
            values = torch.cat(
                [F.pad(mine.values, (0, 0, old_pad, 0)), F.pad(theirs.values, (0, 0, new_pad, 0))]
            )
            hold(mine, keys, values)
