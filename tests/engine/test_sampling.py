"""Nucleus and min-p sampling keep exactly the tokens transformers keeps, without sorting the whole
vocabulary; the repetition penalty changes the logits as transformers' does."""

from __future__ import annotations

from typing import cast

import pytest
import torch
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TopPLogitsWarper,
)

from engine.sampling import NUCLEUS_SEARCH, RowSampling, next_tokens, nuclei, nucleus, penalize_repetition


@pytest.mark.parametrize("spread", [0.5, 3.0, 12.0])  # flat (the search falls back to all) to peaked
@pytest.mark.parametrize("top_p", [0.1, 0.5, 0.9, 0.99])
def test_nucleus_is_the_set_transformers_keeps(spread: float, top_p: float) -> None:
    generator = torch.Generator().manual_seed(int(spread * 100 + top_p * 1000))
    for _ in range(5):
        scores = torch.randn(4000, generator=generator) * spread
        warped = TopPLogitsWarper(top_p=top_p)(torch.zeros(1, 1, dtype=torch.long), scores[None])[0]
        expected = set(torch.nonzero(warped > float("-inf")).flatten().tolist())

        ids, probabilities = nucleus(scores, top_p)

        assert set(ids.tolist()) == expected
        torch.testing.assert_close(probabilities, scores.softmax(dim=-1)[ids])
        assert (probabilities[:-1] >= probabilities[1:]).all()  # most likely first


def test_a_wide_nucleus_falls_back_to_the_whole_vocabulary() -> None:
    scores = torch.zeros(NUCLEUS_SEARCH * 4)  # uniform: the 0.9 nucleus is 90% of the vocabulary
    ids, _ = nucleus(scores, 0.9)
    assert NUCLEUS_SEARCH < len(ids) <= 0.9 * len(scores) + 1


def test_sampled_tokens_come_from_the_nucleus_in_proportion() -> None:
    scores = torch.tensor([4.0, 3.0, 2.0, -5.0, -6.0] + [-9.0] * 500)
    row = RowSampling(temperature=1.0, top_p=0.9, generator=torch.Generator().manual_seed(0))
    ids, probabilities = nucleus(scores, 0.9)
    draws = torch.tensor([next_tokens(scores[None], [row])[0] for _ in range(3000)])

    assert set(draws.tolist()) <= set(ids.tolist())
    shares = torch.stack([(draws == token).float().mean() for token in ids])
    torch.testing.assert_close(shares, probabilities / probabilities.sum(), atol=0.03, rtol=0)


def test_rows_searched_together_keep_what_each_keeps_alone() -> None:
    generator = torch.Generator().manual_seed(7)
    scores = torch.randn(5, 4000, generator=generator) * torch.tensor([[0.5], [3.0], [12.0], [3.0], [0.5]])
    top_ps = [0.9, 0.5, 0.99, 0.1, 0.3]  # the flat rows' nuclei are wider than the search: they fall back

    together = nuclei(scores, top_ps)

    for row, (ids, probabilities) in enumerate(together):
        alone_ids, alone_probabilities = nucleus(scores[row], top_ps[row])
        assert torch.equal(ids, alone_ids)
        torch.testing.assert_close(probabilities, alone_probabilities)
    assert len(together[0][0]) > NUCLEUS_SEARCH


def test_each_row_draws_with_its_own_generator_whatever_rows_sit_beside_it() -> None:
    scores = torch.randn(3, 1000, generator=torch.Generator().manual_seed(1))

    def draws(rows: list[RowSampling]) -> list[int]:
        return [next_tokens(scores[: len(rows)], rows)[-1] for _ in range(20)]

    def row(seed: int, temperature: float = 1.0, top_p: float = 0.9) -> RowSampling:
        return RowSampling(temperature, top_p, torch.Generator().manual_seed(seed))

    alone = [next_tokens(scores[2:3], [r])[0] for r in [row(5)] for _ in range(20)]
    beside = draws([row(1, top_p=1.0), row(0, temperature=0), row(5)])
    # the third row's draws depend only on its scores and its generator, not on its neighbours
    assert beside == alone


@pytest.mark.parametrize("spread", [0.5, 3.0, 12.0])
@pytest.mark.parametrize(("top_p", "min_p"), [(1.0, 0.05), (1.0, 0.2), (0.9, 0.05), (0.5, 0.1), (0.99, 0.01)])
def test_min_p_keeps_the_set_transformers_keeps_after_top_p(
    spread: float, top_p: float, min_p: float
) -> None:
    generator = torch.Generator().manual_seed(int(spread * 100 + min_p * 1000 + top_p * 10))
    no_ids = cast(torch.LongTensor, torch.zeros(1, 1, dtype=torch.long))
    for _ in range(5):
        scores = torch.randn(4000, generator=generator) * spread
        warped = scores[None]
        if top_p < 1.0:  # generate adds TopPLogitsWarper only below 1, then MinPLogitsWarper
            warped = TopPLogitsWarper(top_p=top_p)(no_ids, warped)
        warped = MinPLogitsWarper(min_p=min_p)(no_ids, warped)[0]
        expected = set(torch.nonzero(warped > float("-inf")).flatten().tolist())

        ids, probabilities = nucleus(scores, top_p, min_p)

        assert set(ids.tolist()) == expected
        torch.testing.assert_close(probabilities, scores.softmax(dim=-1)[ids])


@pytest.mark.parametrize("penalty", [0.8, 1.1, 1.3])
def test_repetition_penalty_changes_the_logits_as_transformers_does(penalty: float) -> None:
    generator = torch.Generator().manual_seed(int(penalty * 10))
    logits = torch.randn(3, 500, generator=generator) * 4  # positive and negative logits
    generated = [[5, 17, 5, 499, 0], [], [250]]  # a repeated token, a row with nothing yet, one token

    penalized = penalize_repetition(logits, [penalty, penalty, 1.0], generated)

    expected = RepetitionPenaltyLogitsProcessor(penalty)(torch.tensor([generated[0]]), logits[:1].clone())
    torch.testing.assert_close(penalized[0], expected[0])
    torch.testing.assert_close(penalized[1:], logits[1:])  # nothing generated yet; penalty 1 is off
    assert penalized[0, 5] != logits[0, 5]


def test_the_repetition_penalty_steers_greedy_rows_too() -> None:
    logits = torch.tensor([[3.0, 2.9, -1.0]])
    greedy = RowSampling(temperature=0.0, top_p=1.0, generator=None, repetition_penalty=1.2)

    assert next_tokens(logits, [greedy], [[1]]) == [0]
    assert next_tokens(logits, [greedy], [[0]]) == [1]  # 3.0 / 1.2 = 2.5 < 2.9
    assert next_tokens(logits, [greedy]) == [0]  # no history given: no penalty


def test_min_p_rows_draw_only_from_the_tokens_it_keeps() -> None:
    scores = torch.tensor([4.0, 3.5, 1.0, 0.0] + [-9.0] * 500)
    row = RowSampling(1.0, 1.0, torch.Generator().manual_seed(0), min_p=0.1)  # keeps e^-0.5, drops e^-3
    draws = {next_tokens(scores[None], [row])[0] for _ in range(500)}

    assert draws == {0, 1}
