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
    """One token per row of `logits` (batch, vocab): argmax for greedy rows, nucleus sampling for the rest.

    The nucleus rows are scaled and searched together (one topk for all of them); only each draw, with the
    row's own generator, is per row."""
    chosen = logits.argmax(dim=-1).tolist()  # one vectorised pass serves every greedy row
    for index, row in enumerate(rows):
        if row.temperature > 0 and row.top_p >= 1.0:  # no nucleus: the whole distribution
            probabilities = (logits[index].float() / row.temperature).softmax(dim=-1)
            chosen[index] = int(torch.multinomial(probabilities, 1, generator=row.generator))
    narrowed = [index for index, row in enumerate(rows) if row.temperature > 0 and row.top_p < 1.0]
    if narrowed:
        temperatures = torch.tensor([rows[index].temperature for index in narrowed], device=logits.device)
        scores = logits[narrowed].float() / temperatures[:, None]
        kept = nuclei(scores, [rows[index].top_p for index in narrowed])
        for index, (ids, probabilities) in zip(narrowed, kept, strict=True):
            draw = torch.multinomial(probabilities, 1, generator=rows[index].generator)  # torch renormalises
            chosen[index] = int(ids[draw])
    return chosen


def nucleus(scores: torch.Tensor, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The tokens nucleus sampling keeps from one row of scores; see `nuclei`."""
    return nuclei(scores[None], [top_p])[0]


def nuclei(
    scores: torch.Tensor, top_ps: list[float], search: int = NUCLEUS_SEARCH
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """For each row of scores (rows, vocab), the tokens nucleus sampling keeps, most likely first, with their
    probabilities (not renormalised).

    The same set transformers' TopPLogitsWarper keeps (a token stays while the mass of the tokens more likely
    than it is below top_p), found among the `search` most likely tokens whenever they hold it, which at any
    usual temperature they do, instead of sorting the whole vocabulary for every token of every row; a row
    whose nucleus is wider is searched again over the whole vocabulary.
    """
    vocabulary = scores.shape[-1]
    search = min(search, vocabulary)
    top_scores, top_ids = scores.topk(search)  # most likely first
    probabilities = (top_scores - scores.logsumexp(dim=-1, keepdim=True)).exp()  # over the whole vocabulary
    before = probabilities.cumsum(dim=-1) - probabilities  # mass of the tokens more likely than each
    limits = torch.tensor(top_ps, dtype=before.dtype, device=before.device)[:, None]
    counts = (before < limits).sum(dim=-1).tolist()
    kept = []
    for row, count in enumerate(counts):
        if count < search or search == vocabulary:  # the nucleus ends inside the tokens searched
            kept.append((top_ids[row, :count], probabilities[row, :count]))
        else:
            kept.append(nuclei(scores[row : row + 1], [top_ps[row]], vocabulary)[0])
    return kept
