"""Choosing each sequence's next token from its logits with its own temperature, top_p, min_p, repetition
penalty and seed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

NUCLEUS_SEARCH = 256  # tokens searched for the nucleus before falling back to sorting the vocabulary


@dataclass(frozen=True)
class RowSampling:
    """How one sequence picks tokens; temperature 0 is greedy, repetition_penalty 1 and min_p 0 are off."""

    temperature: float
    top_p: float
    generator: torch.Generator | None  # None: torch's global generator
    repetition_penalty: float = 1.0
    min_p: float = 0.0


def next_tokens(
    logits: torch.Tensor, rows: list[RowSampling], generated: Sequence[Sequence[int]] | None = None
) -> list[int]:
    """One token per row of `logits` (batch, vocab): argmax for greedy rows, nucleus sampling for the rest.

    `generated` holds each row's answer tokens so far, which its repetition penalty (greedy rows too, as in
    transformers) makes less likely. The nucleus rows are scaled and searched together (one topk for all of
    them); only each draw, with the row's own generator, is per row."""
    if generated is not None:
        logits = penalize_repetition(logits, [row.repetition_penalty for row in rows], generated)
    chosen = logits.argmax(dim=-1).tolist()  # one vectorised pass serves every greedy row
    for index, row in enumerate(rows):
        if row.temperature > 0 and not _narrowed(row):  # no nucleus: the whole distribution
            probabilities = (logits[index].float() / row.temperature).softmax(dim=-1)
            chosen[index] = int(torch.multinomial(probabilities, 1, generator=row.generator))
    narrowed = [index for index, row in enumerate(rows) if row.temperature > 0 and _narrowed(row)]
    if narrowed:
        temperatures = torch.tensor([rows[index].temperature for index in narrowed], device=logits.device)
        scores = logits[narrowed].float() / temperatures[:, None]
        kept = nuclei(
            scores, [rows[index].top_p for index in narrowed], [rows[index].min_p for index in narrowed]
        )
        for index, (ids, probabilities) in zip(narrowed, kept, strict=True):
            draw = torch.multinomial(probabilities, 1, generator=rows[index].generator)  # torch renormalises
            chosen[index] = int(ids[draw])
    return chosen


def _narrowed(row: RowSampling) -> bool:
    return row.top_p < 1.0 or row.min_p > 0.0


def penalize_repetition(
    logits: torch.Tensor, penalties: list[float], generated: Sequence[Sequence[int]]
) -> torch.Tensor:
    """The logits with each row's generated tokens made less likely, as transformers'
    RepetitionPenaltyLogitsProcessor does (a positive logit divided by the penalty, a negative one
    multiplied), over the answer's own tokens only: the prompt's (the end-of-turn marker, the question's
    words) stay free.

    Returns `logits` itself when no row has a penalty to apply, otherwise a float copy."""
    rows = [index for index, penalty in enumerate(penalties) if penalty != 1.0 and generated[index]]
    if not rows:
        return logits
    vocabulary = logits.shape[-1]
    longest = max(len(generated[index]) for index in rows)
    padded = [list(generated[index]) + [vocabulary] * (longest - len(generated[index])) for index in rows]
    ids = torch.tensor(padded, device=logits.device)  # the padding points at one spare column, dropped after
    scores = torch.nn.functional.pad(logits.float(), (0, 1))
    picked = scores[rows]
    seen = picked.gather(1, ids)
    factor = torch.tensor([penalties[index] for index in rows], device=logits.device)[:, None]
    picked.scatter_(1, ids, torch.where(seen < 0, seen * factor, seen / factor))
    scores[rows] = picked
    return scores[:, :vocabulary]


def nucleus(scores: torch.Tensor, top_p: float, min_p: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The tokens nucleus sampling keeps from one row of scores; see `nuclei`."""
    return nuclei(scores[None], [top_p], [min_p])[0]


def nuclei(
    scores: torch.Tensor,
    top_ps: list[float],
    min_ps: list[float] | None = None,
    search: int = NUCLEUS_SEARCH,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """For each row of scores (rows, vocab), the tokens nucleus sampling keeps, most likely first, with their
    probabilities (not renormalised).

    The same set transformers' TopPLogitsWarper then MinPLogitsWarper keep (a token stays while the mass of
    the tokens more likely than it is below top_p, and while its probability is at least min_p times the
    most likely token's), found among the `search` most likely tokens whenever they hold it, which at any
    usual temperature they do, instead of sorting the whole vocabulary for every token of every row; a row
    whose nucleus is wider is searched again over the whole vocabulary.
    """
    min_ps = min_ps or [0.0] * len(top_ps)
    vocabulary = scores.shape[-1]
    search = min(search, vocabulary)
    top_scores, top_ids = scores.topk(search)  # most likely first
    probabilities = (top_scores - scores.logsumexp(dim=-1, keepdim=True)).exp()  # over the whole vocabulary
    before = probabilities.cumsum(dim=-1) - probabilities  # mass of the tokens more likely than each
    unlimited = [top_p if top_p < 1.0 else float("inf") for top_p in top_ps]  # 1: no cut, rounding aside
    limits = torch.tensor(unlimited, dtype=before.dtype, device=before.device)[:, None]
    floors = torch.tensor(min_ps, dtype=before.dtype, device=before.device)[:, None] * probabilities[:, :1]
    # both keep a most-likely-first prefix, so keeping what both keep is keeping the shorter one
    counts = torch.minimum((before < limits).sum(dim=-1), (probabilities >= floors).sum(dim=-1)).tolist()
    kept = []
    for row, count in enumerate(counts):
        if count < search or search == vocabulary:  # the nucleus ends inside the tokens searched
            kept.append((top_ids[row, :count], probabilities[row, :count]))
        else:
            kept.append(nuclei(scores[row : row + 1], [top_ps[row]], [min_ps[row]], vocabulary)[0])
    return kept
