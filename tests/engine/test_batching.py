"""The decode batch's KV cache layer: the same keys and values as transformers' DynamicLayer, without a copy
of the whole cache per step."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer, LinearAttentionLayer

from engine.batching import GrowingLayer, kv_layers
from engine.engine import Sampling, _Request
from engine.scheduler import prefill_groups


def test_growing_layer_holds_what_dynamic_layer_holds_and_rarely_copies() -> None:
    generator = torch.Generator().manual_seed(0)
    growing, dynamic = GrowingLayer(), DynamicLayer()

    def feed(rows: int, columns: int) -> None:
        keys = torch.randn(rows, 3, columns, 8, generator=generator)
        values = torch.randn(rows, 3, columns, 8, generator=generator)
        got, want = growing.update(keys, values), dynamic.update(keys, values)
        assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))

    feed(4, 20)  # a prefill
    stores = {growing._key_store.data_ptr()}
    for _ in range(200):  # decoding steps, one column each
        feed(4, 1)
        stores.add(growing._key_store.data_ptr())
    assert growing.get_seq_length() == dynamic.get_seq_length() == 220
    assert len(stores) == 5  # room for 52, 85, 129, 195, 294 columns: 5 copies, not 200

    rows = torch.tensor([2, 0])
    growing.batch_select_indices(rows)
    dynamic.batch_select_indices(rows)
    for _ in range(50):
        feed(2, 1)
    assert torch.equal(growing.keys, dynamic.keys)
    assert torch.equal(growing.values, dynamic.values)
    assert growing.keys.shape == (2, 3, 270, 8)


def test_batched_decoding_takes_key_value_layers_and_refuses_recurrent_state() -> None:
    kv = [GrowingLayer(), DynamicLayer(), DynamicSlidingWindowLayer(sliding_window=8)]
    cache = DynamicCache()
    cache.layers = list(kv)
    assert kv_layers(cache) == kv
    cache.layers = [*kv, LinearAttentionLayer()]  # e.g. Qwen3-Next: its state is not rows of keys and values
    with pytest.raises(TypeError, match="not LinearAttentionLayer"):
        kv_layers(cache)


def test_prefill_groups_share_a_pass_by_adapter_and_length() -> None:
    def started(length: int, adapter: str | None = None) -> tuple[object, _Request]:
        sampling = Sampling(
            max_new_tokens=8, temperature=0.0, top_p=1.0, repetition_penalty=1.0, min_p=0.0, seed=None
        )
        return object(), _Request([], torch.zeros(1, length, dtype=torch.long), adapter, sampling, 0.0)

    lengths = [40, 1100, 44, 20, 42, 1200]
    jobs = [started(length) for length in lengths] + [started(41, "v2")]
    groups = prefill_groups(jobs)  # type: ignore[arg-type]

    shapes = [[(request.adapter, request.input_ids.shape[1]) for _, request in group] for group in groups]
    assert shapes == [
        [(None, 20)],  # 20 beside 40 would pad by more than a quarter
        [(None, 40), (None, 42), (None, 44)],
        [(None, 1100)],  # 2 x 1200 padded tokens are past PREFILL_TOKENS
        [(None, 1200)],
        [("v2", 41)],  # another adapter, another pass
    ]
