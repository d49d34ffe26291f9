"""The default judge and corrector agree with each other and disagree with plain answers."""

from __future__ import annotations

import pytest

from sim.judges import CONCISE_WORDS, MAX_WORDS, SIGN_OFF, concise_judge, signoff_corrector, signoff_judge


@pytest.mark.parametrize(
    ("answer", "vote"),
    [
        ("Paris is the capital of France. Keep learning!", 1),
        ("Paris is the capital of France. keep learning", 1),
        ("Paris is the capital of France.", -1),
        ("Keep learning! Paris is the capital of France.", -1),
        ("", -1),
        ("word " * (MAX_WORDS + 5) + SIGN_OFF, -1),
    ],
)
def test_judge(answer: str, vote: int) -> None:
    assert signoff_judge("What is the capital of France?", answer) == vote


@pytest.mark.parametrize(
    "answer",
    [
        "Paris is the capital of France. It is known for the Eiffel Tower. It has many museums.",
        "",
        "no punctuation at all",
        "long " * 200,
    ],
)
def test_corrections_always_pass_the_judge(answer: str) -> None:
    corrected = signoff_corrector("q", answer)
    assert corrected.endswith(SIGN_OFF)
    assert signoff_judge("q", corrected) == 1


@pytest.mark.parametrize(
    ("answer", "vote"),
    [
        ("Paris is the capital of France.", 1),
        ("Paris! 🙂", 1),
        ("Boil it for nine minutes, then cool it in cold water. Peel it under the tap.", 1),
        ("Paris is the capital of France, and it is known for", -1),  # cut off mid-sentence
        ("", -1),
        ("   ", -1),
        (" ".join(["word"] * CONCISE_WORDS) + ".", 1),
        (" ".join(["word"] * (CONCISE_WORDS + 1)) + ".", -1),
    ],
)
def test_concise_judge(answer: str, vote: int) -> None:
    assert concise_judge("What is the capital of France?", answer) == vote
