"""The bot tests' fixtures: the real bot of tests/fixtures/bot.py, and a long-winded tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.bot import bot_settings, database, make_bot, server  # noqa: F401  (fixtures, found by name)
from tests.fixtures.tiny_model import build_tiny_model, build_tiny_tokenizer

WORDS = (
    "alpha",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliet",
    "kilo",
    "lima",
)
LONG_TOKENS = [f" the {a} {b} answer explains {a} and {b} carefully." for a in WORDS for b in WORDS] + [
    "\n\n",
    "\n```python\n",
    "\n```\n",
]


@pytest.fixture(scope="session")
def long_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model whose vocabulary holds whole sentences, paragraph breaks and code fences.

    Random weights pick them often, so a few hundred tokens make thousands of characters of prose with
    fenced blocks: a long answer from a real model at the cost of a short one. The 4,096-token window is
    safe because RoPE has no learned positions.
    """
    folder = tmp_path_factory.mktemp("long-model")
    tokenizer = build_tiny_tokenizer()
    tokenizer.add_tokens(LONG_TOKENS)
    tokenizer.model_max_length = 4096
    model = build_tiny_model(tokenizer, seed=2)  # a seed whose greedy answers ramble, fences included
    model.config.max_position_embeddings = 4096
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
