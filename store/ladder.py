"""Which rung of the ladder answered, and how people voted on each: what /ladder tells a server's admins.

The rungs, lowest first: the base model alone; with the community's instructions; with passages of its open
book as well; and with a fine-tuned adapter. An answer is counted on the highest rung it was given, so "the
open book" means instructions (if any) plus passages, and an adapter's answers count for the adapter whatever
else it was shown.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import sqlalchemy as sa
from sqlmodel import Session, col, select

from store.models import Feedback, Generation

Rung = Literal["base", "instructions", "knowledge", "finetune"]
RUNGS: tuple[Rung, ...] = get_args(Rung)
MIN_VOTES = 10  # fewer votes than this on a rung say nothing about its 👍-rate
# How the summary names each rung ("with the open book 55%"), and how a comparison does ("against 40% for
# the open book"); an adapter is named by its version.
SAID_AS: dict[Rung, str] = {
    "base": "the base model alone",
    "instructions": "instructions alone",
    "knowledge": "with the open book",
}
NAMED_AS: dict[Rung, str] = {
    "base": "the base model alone",
    "instructions": "instructions alone",
    "knowledge": "the open book",
}


@dataclass(frozen=True)
class RungRate:
    """The answers of one rung and version (the adapter's, or the instructions' "s3+c1"), and their votes."""

    rung: Rung
    version: str | None
    answers: int
    up_votes: int
    down_votes: int

    @property
    def votes(self) -> int:
        return self.up_votes + self.down_votes

    @property
    def up_rate(self) -> float | None:
        """The share of 👍 among the live votes; None without votes."""
        return self.up_votes / self.votes if self.votes else None


def rung_of(generation: Generation) -> Rung:
    """The highest rung an answer was given: an adapter, else passages, else instructions, else none."""
    return _rung(generation.adapter_version, generation.instructions_version, generation.passage_ids)


def _rung(adapter_version: str | None, instructions_version: str | None, passage_ids: Sequence[int]) -> Rung:
    if adapter_version is not None:
        return "finetune"
    if passage_ids:
        return "knowledge"
    if instructions_version is not None:
        return "instructions"
    return "base"


def rung_rates(*, session: Session, scope: str, limit: int = 500) -> list[RungRate]:
    """Answers and live votes per rung and version over the scope's `limit` latest answers (failed ones left
    out): base, instructions, knowledge, finetune, each rung's newest version first."""
    # The columns that say the rung, not whole rows: prompts are long and /ladder reads hundreds.
    answered = session.exec(
        select(
            Generation.id, Generation.adapter_version, Generation.instructions_version, Generation.passage_ids
        )
        .where(Generation.scope == scope, col(Generation.error).is_(None))
        .order_by(col(Generation.created_at).desc(), col(Generation.id).desc())
        .limit(limit)
    ).all()
    votes = _live_votes(session, [row[0] for row in answered if row[0] is not None])
    counts: dict[tuple[Rung, str | None], list[int]] = defaultdict(lambda: [0, 0, 0])
    newest: dict[tuple[Rung, str | None], int] = {}
    for position, (generation_id, adapter, instructions, passage_ids) in enumerate(answered):  # newest first
        rung = _rung(adapter, instructions, passage_ids)
        # an adapter's answers are told apart by adapter, the lower rungs' by the instructions they were given
        key = (rung, adapter if rung == "finetune" else None if rung == "base" else instructions)
        up, down = votes.get(generation_id, (0, 0))
        counts[key][0] += 1
        counts[key][1] += up
        counts[key][2] += down
        newest.setdefault(key, position)
    ordered = sorted(counts, key=lambda key: (RUNGS.index(key[0]), newest[key]))
    return [RungRate(rung, version, *counts[(rung, version)]) for rung, version in ordered]


def _live_votes(session: Session, generation_ids: Sequence[int]) -> dict[int | None, tuple[int, int]]:
    """(👍, 👎) live votes per generation."""
    if not generation_ids:
        return {}
    statement = (
        select(Feedback.generation_id, Feedback.value, sa.func.count())
        .where(col(Feedback.generation_id).in_(generation_ids), col(Feedback.removed_at).is_(None))
        .group_by(col(Feedback.generation_id), col(Feedback.value))
    )
    votes: dict[int | None, tuple[int, int]] = {}
    for generation_id, value, count in session.exec(statement):
        up, down = votes.get(generation_id, (0, 0))
        votes[generation_id] = (up + count, down) if value == 1 else (up, down + count)
    return votes


def ladder_advice(rates: Sequence[RungRate]) -> str:
    """What each rung's 👍-rate is, in plain words, and one sentence on which rung to climb or stay on.

    The lower rungs are compared as a whole (every version of the instructions together); the adapter is
    its newest version, the one answering now.
    """
    rungs = _by_rung(rates)
    if not rungs:
        return "No answers yet, so there is nothing to compare."
    said = "; ".join(_rate_words(rate, first=index == 0) for index, rate in enumerate(rungs.values()))
    return f"{said[0].upper()}{said[1:]}. {_suggestion(rungs)}"


def rate_line(rate: RungRate) -> str:
    """One row of `rung_rates` in words: "open book with instructions s2: 55% 👍 of 20 votes (31 answers)"."""
    if rate.rung == "finetune":
        name = f"adapter {rate.version}"
    elif rate.rung == "base":
        name = "base model, no instructions"
    elif rate.version is None:
        name = "open book, no instructions"
    else:
        name = f"{'open book with ' if rate.rung == 'knowledge' else ''}instructions {rate.version}"
    answers = _count(rate.answers, "answer")
    if rate.up_rate is None:
        return f"{name}: no votes ({answers})"
    return f"{name}: {rate.up_rate:.0%} 👍 of {_count(rate.votes, 'vote')} ({answers})"


def _by_rung(rates: Sequence[RungRate]) -> dict[Rung, RungRate]:
    """One rate per rung present, in ladder order: the lower rungs summed, the newest adapter alone."""
    rungs: dict[Rung, RungRate] = {}
    for rung in RUNGS:
        rows = [rate for rate in rates if rate.rung == rung]
        if not rows:
            continue
        if rung == "finetune":
            rungs[rung] = rows[0]
            continue
        rungs[rung] = RungRate(
            rung,
            rows[0].version,
            sum(row.answers for row in rows),
            sum(row.up_votes for row in rows),
            sum(row.down_votes for row in rows),
        )
    return rungs


def _label(rate: RungRate, names: dict[Rung, str] = NAMED_AS) -> str:
    return f"adapter {rate.version}" if rate.rung == "finetune" else names[rate.rung]


def _rate_words(rate: RungRate, *, first: bool) -> str:
    """ "instructions alone got 40% 👍 (10 votes)" first, then "with the open book 55% (20 votes)"."""
    label = _label(rate, SAID_AS)
    if rate.up_rate is None:
        return f"{label}: no votes yet ({_count(rate.answers, 'answer')})"
    rate_text = f"got {rate.up_rate:.0%} 👍" if first else f"{rate.up_rate:.0%}"
    return f"{label} {rate_text} ({_count(rate.votes, 'vote')})"


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _suggestion(rungs: dict[Rung, RungRate]) -> str:
    """Which rung to climb or stay on: the highest rung in use, against the nearest one below it with enough
    votes to say anything."""
    *below, top = rungs.values()
    if top.rung == "base":
        return "Climb the first rung: give me this server's instructions with /instructions set."
    if top.votes < MIN_VOTES:
        return (
            f"Too few votes on {_label(top)} ({top.votes}, under {MIN_VOTES}) to tell whether it helps yet; "
            "stay on this rung and let people vote 👍/👎 a while longer."
        )
    lower = next((rate for rate in reversed(below) if rate.votes >= MIN_VOTES), None)
    if lower is None:
        return (
            f"No rung below {_label(top)} has {MIN_VOTES} votes to compare it with, so there is no telling "
            "whether it helps; stay on this rung for now."
        )
    assert top.up_rate is not None and lower.up_rate is not None  # both have votes
    versus = f"{top.up_rate:.0%} against {lower.up_rate:.0%} for {_label(lower)}"
    helped = top.up_rate > lower.up_rate
    if top.rung == "instructions":
        if not helped:
            return f"The instructions have not helped yet ({versus}); rewrite them before climbing further."
        return f"The instructions help ({versus}); climb to the open book: /knowledge add or /knowledge pins."
    if top.rung == "knowledge":
        if not helped:
            return (
                f"Adding knowledge has not helped yet ({versus}); check the passages with /knowledge list "
                "before climbing to fine-tuning."
            )
        return f"The open book helps ({versus}); fine-tuning (/retrain) is the next rung once votes pile up."
    if not helped:
        return (
            f"{_label(top).capitalize()} is not above the rungs below yet ({versus}); fine-tuning has not "
            "paid off so far: improve the instructions and the open book, and /rollback if it gets worse."
        )
    return f"{_label(top).capitalize()} beats the rungs below ({versus}); stay on this rung and keep voting."
