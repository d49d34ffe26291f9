"""The shipped simulated tastes: judges (how a member votes) and a corrector (what they'd write).

- The default community is a study server whose regulars like short answers that end with the server's
  sign-off, "Keep learning!". The base model never does this on its own, so whether the bot picks it up from
  votes and corrections is a clean test of the loop (`signoff_judge` with `signoff_corrector`).
- The votes-only community is a quick-help server whose regulars up-vote a complete answer of a few
  sentences and down-vote walls of text and answers cut off mid-sentence, and write no corrections: only
  👍/👎 and 🔁 carry its taste (`--judge sim.judges:concise_judge --corrector none`). The base model meets it
  now and then, so the votes hold the signal; whether the bot learns it from them is the test.

Any `module:function` with the same signatures can replace these (`gradschool simulate --judge ...
--corrector ...`).
"""

from __future__ import annotations

import re

SIGN_OFF = "Keep learning!"
MAX_WORDS = 80  # regulars scroll past walls of text


def signoff_judge(prompt: str, answer: str) -> int:
    """+1 for a reasonably short answer ending with the sign-off, -1 for anything else."""
    text = answer.strip()
    if not text:
        return -1
    ends_right = text.rstrip(" .!🎓").lower().endswith(SIGN_OFF.rstrip("!").lower())
    return 1 if ends_right and len(text.split()) <= MAX_WORDS else -1


def signoff_corrector(prompt: str, answer: str) -> str:
    """The answer as a regular would rewrite it: its first two sentences, then the sign-off."""
    sentences = re.split(r"(?<=[.!?])\s+", answer.strip())
    kept = " ".join(sentence for sentence in sentences[:2] if sentence).strip()
    words = kept.split()
    if len(words) > MAX_WORDS - 3:
        kept = " ".join(words[: MAX_WORDS - 3]).rstrip(",;:") + "."
    if not kept:
        kept = "Good question."
    if kept[-1] not in ".!?":
        kept += "."
    return f"{kept} {SIGN_OFF}"


CONCISE_WORDS = 30  # a quick answer: read at a glance


def concise_judge(prompt: str, answer: str) -> int:
    """+1 for a complete answer (ends a sentence) of at most CONCISE_WORDS words, -1 for anything else."""
    text = answer.strip().rstrip(" 🎓🙂😊👍")
    words = text.split()
    if not words or len(words) > CONCISE_WORDS:
        return -1
    return 1 if text[-1] in ".!?" else -1
