"""Choosing each sequence's next token from its logits with its own temperature, top_p and seed."""

from __future__ import annotations

from dataclasses import dataclass

import torch

NUCLEUS_SEARCH = 256  # tokens searched for the nucleus before falling back to sorting the vocabulary


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
    scores = logits.float() / row.temperature
    if row.top_p >= 1.0:
        return int(torch.multinomial(scores.softmax(dim=-1), 1, generator=row.generator))
    ids, probabilities = nucleus(scores, row.top_p)
    return int(ids[torch.multinomial(probabilities, 1, generator=row.generator)])  # torch renormalises


def nucleus(scores: torch.Tensor, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The tokens nucleus sampling keeps, most likely first, with their probabilities (not renormalised).

    The same set transformers' TopPLogitsWarper keeps (a token stays while the mass of the tokens more likely
    than it is below top_p), found among the `NUCLEUS_SEARCH` most likely tokens whenever they hold it, which
    at any usual temperature they do, instead of sorting the whole vocabulary for every token of every row.
    """
    for k in (min(NUCLEUS_SEARCH, scores.numel()), scores.numel()):
        top_scores, top_ids = scores.topk(k)  # most likely first
        probabilities = (top_scores - scores.logsumexp(dim=-1)).exp()  # over the whole vocabulary
        before = probabilities.cumsum(dim=-1) - probabilities  # mass of the tokens more likely than each
        kept = int((before < top_p).sum())
        if kept < k:  # the nucleus ends inside the k searched
            break
    return top_ids[:kept], probabilities[:kept]
