"""Choosing each sequence's next token from its logits with its own temperature, top_p and seed."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RowSampling:
    """How one sequence picks tokens; temperature 0 is greedy."""

    temperature: float
    top_p: float
    generator: torch.Generator | None  # None: torch's global generator


def next_tokens(logits: torch.Tensor, rows: list[RowSampling]) -> list[int]:
    """One token per row of `logits` (batch, vocab): argmax for greedy rows, nucleus sampling for the rest."""
    chosen = logits.argmax(dim=-1).tolist()  # one vectorised pass serves every greedy row
    for index, row in enumerate(rows):
        if row.temperature > 0:
            chosen[index] = _sample(logits[index], row)
    return chosen


def _sample(logits: torch.Tensor, row: RowSampling) -> int:
    """Nucleus sampling as transformers' TopPLogitsWarper does it: keep the smallest set holding top_p."""
    scores = logits.float() / row.temperature
    if row.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=False)
        cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
        drop = cumulative <= 1 - row.top_p
        drop[-1] = False  # the most likely token always stays
        scores = scores.scatter(0, order[drop], float("-inf"))
    probabilities = scores.softmax(dim=-1)
    return int(torch.multinomial(probabilities, 1, generator=row.generator))
