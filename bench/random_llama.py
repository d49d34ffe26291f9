"""A randomly initialised Llama of about 1.07B parameters, for GPU benchmarks on a box with no weights.

bench/serve.py and bench/train.py both use it (imported as a sibling script: run them as `python bench/...`).
"""

from __future__ import annotations

from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase


def random_llama_1b(tokenizer: PreTrainedTokenizerBase) -> LlamaForCausalLM:
    """16 layers of width 2048 (32 heads, 8 KV heads, MLP 8192), tied embeddings, `tokenizer`'s vocabulary."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    )
    return LlamaForCausalLM(config)
