"""Whether a run's votes are enough for the vote reward model (trainer.reward) to mine them.

No torch here: the trainer service asks before it starts a run (trainer.runner.skip_reason), the job and the
reward model ask the same question the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

from store.settings import TrainSettings

FOLDS = 5  # the probe's cross-validation folds
MIN_OF_EACH = 2  # liked and disliked votes the probe needs at the least


def enough_votes(labels: Sequence[bool]) -> bool:
    """Enough votes of each kind to fit the probe and cross-validate it."""
    liked = sum(1 for label in labels if label)
    return len(labels) >= 2 * FOLDS and liked >= MIN_OF_EACH and len(labels) - liked >= MIN_OF_EACH


def corrections_teach(corrections: int, train: TrainSettings) -> bool:
    """Enough written corrections that the votes are not mined: they already show what people want."""
    return corrections >= train.vote_reward_max_corrections


def will_mine(labels: Sequence[bool], *, corrections: int, train: TrainSettings) -> bool:
    """The job will try the vote reward model on these votes (it may still find the probe untrustworthy)."""
    return (
        train.vote_reward_candidates > 0
        and not corrections_teach(corrections, train)
        and enough_votes(labels)
    )
