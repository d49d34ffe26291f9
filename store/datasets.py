"""Training datasets from the community's feedback, in TRL's own formats.

- SFT (`messages`): replies with a positive net vote, and every correction (prompt + corrected answer).
- DPO (`prompt`, `chosen`, `rejected`): a prompt answered more than once (🔁) where one answer was liked and
  another disliked; and each correction against the answer it corrects.
- KTO (`prompt`, `completion`, `label`): every reply with a clear vote, paired or not; `reasons` lists what
  its 👎s said was wrong ("too_long", ...), for people reading the data (TRL's KTO ignores the column).

Prompts and answers are conversational (lists of chat messages), which TRL's trainers take as they are. On
the way: opted-out and forgotten people's data is left out (as askers, raters and correction authors),
personal data is scrubbed, exact and near-duplicate prompts are collapsed to one example, no single rater may
decide more than `max_rater_share` of a dataset, and each prompt's recorded side puts its examples in the
train or the hold-out split: a prompt's side is fixed the first time it is seen (by a hash of its text, or
the side of a near-duplicate already recorded) and never moves, whatever else the database later holds.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from sqlmodel import Session, col, select

from store import communities, crud
from store.db import write_transaction
from store.knowledge import without_reference
from store.models import Correction, Feedback, Generation, Message, PromptSide
from store.scrub import scrub
from store.settings import TrainSettings

Kind = Literal["sft", "dpo", "kto"]
KINDS: tuple[Kind, ...] = get_args(Kind)
Row = dict[str, Any]
ChatMessages = list[dict[str, str]]

_CORRECTION_STRENGTH = 1_000_000  # a written correction outranks any number of votes on the same prompt
_WORD = re.compile(r"\w+")
_SIDES_LOCK = "prompt_sides"


@dataclass(frozen=True)
class _Example:
    prompt_key: str  # the prompt's normalized text, before near-duplicates are merged
    row: Row
    deciders: frozenset[int]  # who alone made this example (one rater, or a correction's author); else empty
    strength: int  # which example of a duplicate prompt survives: the higher
    label: bool | None = None  # KTO keeps one liked and one disliked answer per prompt


@dataclass
class FeedbackDatasets:
    """The three datasets, each split into train and hold-out, and how many candidates each filter removed."""

    train: dict[Kind, list[Row]]
    holdout: dict[Kind, list[Row]]
    dropped: dict[str, int] = field(default_factory=dict)
    corrections: int = 0  # written corrections the datasets drew on (both splits)

    def counts(self) -> dict[str, int]:
        """Examples per dataset and split, e.g. {"sft": 40, "sft_holdout": 4, ...}."""
        counts: dict[str, int] = {kind: len(self.train[kind]) for kind in KINDS}
        return counts | {f"{kind}_holdout": len(self.holdout[kind]) for kind in KINDS}

    def hashes(self) -> dict[str, str]:
        """A content hash per dataset and split: equal hashes mean identical training data."""
        hashes: dict[str, str] = {kind: rows_hash(self.train[kind]) for kind in KINDS}
        return hashes | {f"{kind}_holdout": rows_hash(self.holdout[kind]) for kind in KINDS}


def build_datasets(*, session: Session, settings: TrainSettings, scope: str = "global") -> FeedbackDatasets:
    """Build the SFT, DPO and KTO datasets of a scope from the store, filtered and split: a server's from its
    own rows only, the global one's from the global rows and the sharing servers' (`training_scopes`)."""
    feedback = _load_feedback(session, scope)
    generations, votes, dropped = feedback.generations, feedback.votes, feedback.dropped
    candidates: dict[Kind, list[_Example]] = {
        "sft": _sft_examples(generations, votes, feedback.corrections, settings.min_votes),
        "dpo": _dpo_examples(generations, votes, feedback.corrections, settings.min_votes),
        "kto": _kto_examples(generations, votes, feedback.reasons, settings.min_votes),
    }
    keys = {example.prompt_key for examples in candidates.values() for example in examples}
    held_out = prompt_sides(
        session=session,
        keys=keys,
        fraction=settings.holdout_fraction,
        similarity=settings.near_duplicate_similarity,
    )
    # Near-duplicates are merged within a side only: a prompt's recorded side decides, never its cluster's.
    clusters = _prompt_clusters({k for k in keys if not held_out[k]}, settings.near_duplicate_similarity)
    clusters |= _prompt_clusters({k for k in keys if held_out[k]}, settings.near_duplicate_similarity)
    train: dict[Kind, list[Row]] = {}
    holdout: dict[Kind, list[Row]] = {}
    for kind, examples in candidates.items():
        # Training keeps one example per prompt (the poisoning guard); the hold-out keeps every distinct
        # answer, since it only judges and each vote on a held-out prompt is evidence.
        unique = _collapse_duplicates([e for e in examples if not held_out[e.prompt_key]], clusters)
        unique += _collapse_duplicates([e for e in examples if held_out[e.prompt_key]], clusters, exact=True)
        dropped[f"{kind}_duplicates"] = len(examples) - len(unique)
        capped = _cap_rater_share(unique, settings.max_rater_share)
        dropped[f"{kind}_rater_cap"] = len(unique) - len(capped)
        train[kind], holdout[kind] = [], []
        for example in sorted(capped, key=lambda e: (clusters[e.prompt_key], e.label is False)):
            side = holdout if held_out[example.prompt_key] else train
            side[kind].append(example.row)
    return FeedbackDatasets(
        train=train, holdout=holdout, dropped=dropped, corrections=len(feedback.corrections)
    )


def prompt_sides(*, session: Session, keys: set[str], fraction: float, similarity: float) -> dict[str, bool]:
    """Each prompt key's side (True = held out), recorded the first time it is seen and never moved after.

    A new prompt joins the side of its most similar recorded near-duplicate (5-gram Jaccard at least
    `similarity`); one with none is placed by a hash of its own text (`is_holdout`).
    """
    hashes = {key: _key_hash(key) for key in keys}
    recorded = _recorded_sides(session, set(hashes.values()))
    if not set(hashes.values()) <= recorded.keys():
        with write_transaction(session, lock=_SIDES_LOCK):
            known = {row.key_hash: row for row in session.exec(select(PromptSide))}
            neighbours = [(frozenset(row.shingles), row.held_out) for row in known.values()]
            for key in sorted(keys):  # sorted: prompts first seen together are placed in one order
                if hashes[key] in known:
                    continue
                shingles = frozenset(_shingle_hashes(key))
                side = _nearest_side(shingles, neighbours, similarity)
                held = is_holdout(key, fraction) if side is None else side
                row = PromptSide(key_hash=hashes[key], held_out=held, shingles=sorted(shingles))
                session.add(row)
                known[row.key_hash] = row
                neighbours.append((shingles, held))
        recorded = _recorded_sides(session, set(hashes.values()))
    return {key: recorded[digest] for key, digest in hashes.items()}


def is_holdout(key: str, fraction: float) -> bool:
    """Whether the prompt with this cluster key belongs to the hold-out slice (a pure function of the key)."""
    bucket = int(_key_hash(key)[:8], 16) / 0x1_0000_0000
    return bucket < fraction


def rows_hash(rows: Iterable[Row]) -> str:
    """sha256 of the rows as canonical JSON lines."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode() + b"\n")
    return digest.hexdigest()


def write_jsonl(rows: Iterable[Row], path: Path) -> int:
    """Write rows as JSON lines (what `datasets.load_dataset("json", ...)` reads); returns how many."""
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count


# --- loading, with opted-out and forgotten people left out ---


@dataclass
class _Feedback:
    """A scope's usable generations, their live votes (generation -> rater -> value), the reasons given with
    their 👎s, the corrections, and how many of each were left out (opted-out people)."""

    generations: dict[int, Generation]
    votes: dict[int, dict[int, int]]
    reasons: dict[int, list[str]]
    corrections: list[Correction]
    dropped: dict[str, int]


def _load_feedback(session: Session, scope: str) -> _Feedback:
    """Everything the datasets are built from, without what opted-out people said, asked or voted."""
    excluded = crud.excluded_user_ids(session=session)
    dropped = Counter[str]()
    # Opted-out people's own messages may still sit inside other people's prompts (a thread's history).
    excluded_texts = crud.quoted_forms(
        session.exec(select(Message).where(col(Message.author_id).in_(excluded))).all() if excluded else []
    )
    askers = dict(
        session.exec(
            select(Generation.id, Message.author_id).join(
                Message, col(Message.id) == col(Generation.request_message_id)
            )
        ).all()
    )
    pool = communities.training_scopes(session=session, scope=scope)
    generations: dict[int, Generation] = {}
    answered = select(Generation).where(col(Generation.scope).in_(pool), col(Generation.error).is_(None))
    for generation in session.exec(answered):
        assert generation.id is not None
        asker = generation.user_id if generation.user_id is not None else askers.get(generation.id)
        if asker in excluded or crud.quotes(generation.prompt, excluded_texts):
            dropped["excluded_generations"] += 1
            continue
        generations[generation.id] = generation
    votes: dict[int, dict[int, int]] = defaultdict(dict)
    reasons: dict[int, list[str]] = defaultdict(list)
    live = select(Feedback).join(Generation, col(Generation.id) == col(Feedback.generation_id))
    for vote in session.exec(live.where(col(Generation.scope).in_(pool), col(Feedback.removed_at).is_(None))):
        if vote.generation_id not in generations or vote.rater_id in excluded:
            dropped["excluded_votes"] += 1
            continue
        votes[vote.generation_id][vote.rater_id] = vote.value
        if vote.reason is not None:
            reasons[vote.generation_id].append(vote.reason)
    corrections = []
    for correction in session.exec(select(Correction).order_by(col(Correction.id))):
        if correction.generation_id not in generations or correction.author_id in excluded:
            dropped["excluded_corrections"] += 1
            continue
        corrections.append(correction)
    return _Feedback(generations, dict(votes), dict(reasons), corrections, dict(dropped))


# --- the three kinds of example ---


def _sft_examples(
    generations: dict[int, Generation],
    votes: dict[int, dict[int, int]],
    corrections: Sequence[Correction],
    min_votes: int,
) -> list[_Example]:
    examples = []
    for generation_id, cast in votes.items():
        net = sum(cast.values())
        if net > 0 and len(cast) >= min_votes:
            generation = generations[generation_id]
            prompt = _prompt(generation)
            row = {"messages": prompt + _answer(generation.completion)}
            examples.append(_Example(_prompt_key(prompt), row, _sole(cast, 1), net))
    for correction in corrections:
        prompt = _prompt(generations[correction.generation_id])
        row = {"messages": prompt + _answer(correction.content)}
        examples.append(
            _Example(_prompt_key(prompt), row, frozenset({correction.author_id}), _CORRECTION_STRENGTH)
        )
    return examples


def _dpo_examples(
    generations: dict[int, Generation],
    votes: dict[int, dict[int, int]],
    corrections: Sequence[Correction],
    min_votes: int,
) -> list[_Example]:
    examples = []
    for members in _regeneration_groups(generations).values():
        voted = [(sum(votes[g].values()), g) for g in members if len(votes.get(g, {})) >= min_votes]
        liked = sorted(((net, g) for net, g in voted if net > 0), reverse=True)
        disliked = sorted((net, g) for net, g in voted if net < 0)
        if not liked or not disliked:
            continue
        (best, chosen), (worst, rejected) = liked[0], disliked[0]  # the clearest pair of the group
        prompt = _prompt(generations[min(members)])  # the first answer's prompt; 🔁 reuses it
        row = {
            "prompt": prompt,
            "chosen": _answer(generations[chosen].completion),
            "rejected": _answer(generations[rejected].completion),
        }
        deciders = {r for r, v in votes[chosen].items() if v > 0} | {
            r for r, v in votes[rejected].items() if v < 0
        }
        sole = frozenset(deciders) if len(deciders) == 1 else frozenset()
        examples.append(_Example(_prompt_key(prompt), row, sole, best - worst))
    for correction in corrections:
        generation = generations[correction.generation_id]
        if scrub(correction.content).strip() == scrub(generation.completion).strip():
            continue  # "corrected" to the same text: no preference in it
        prompt = _prompt(generation)
        row = {
            "prompt": prompt,
            "chosen": _answer(correction.content),
            "rejected": _answer(generation.completion),
        }
        examples.append(
            _Example(_prompt_key(prompt), row, frozenset({correction.author_id}), _CORRECTION_STRENGTH)
        )
    return examples


def _kto_examples(
    generations: dict[int, Generation],
    votes: dict[int, dict[int, int]],
    reasons: dict[int, list[str]],
    min_votes: int,
) -> list[_Example]:
    """Every clearly voted answer, liked or not; a disliked one carries the reasons its 👎s gave."""
    examples = []
    for generation_id, cast in votes.items():
        net = sum(cast.values())
        if net == 0 or len(cast) < min_votes:
            continue
        generation = generations[generation_id]
        prompt = _prompt(generation)
        row = {
            "prompt": prompt,
            "completion": _answer(generation.completion),
            "label": net > 0,
            "reasons": [] if net > 0 else sorted(reasons.get(generation_id, [])),
        }
        sign = 1 if net > 0 else -1
        examples.append(_Example(_prompt_key(prompt), row, _sole(cast, sign), abs(net), label=net > 0))
    return examples


def _regeneration_groups(generations: dict[int, Generation]) -> dict[int, list[int]]:
    """Generations grouped by the first answer of their 🔁 chain."""

    def root(generation_id: int) -> int:
        seen = set()
        while (parent := generations[generation_id].regenerates) in generations and parent not in seen:
            seen.add(generation_id)
            generation_id = parent  # type: ignore[assignment]  # `in generations` rules out None
        return generation_id

    groups: dict[int, list[int]] = defaultdict(list)
    for generation_id in sorted(generations):
        groups[root(generation_id)].append(generation_id)
    return groups


def _sole(cast: dict[int, int], sign: int) -> frozenset[int]:
    """The one rater behind a label, when only one person voted that way; else nobody alone decided it."""
    supporters = [rater for rater, value in cast.items() if value == sign]
    return frozenset(supporters) if len(supporters) == 1 else frozenset()


def _prompt(generation: Generation) -> ChatMessages:
    return [
        {"role": str(message["role"]), "content": scrub(str(message.get("content", "")))}
        for message in generation.prompt
    ]


def _answer(text: str) -> ChatMessages:
    return [{"role": "assistant", "content": scrub(text)}]


# --- duplicates, the poisoning guard ---


def _prompt_key(prompt: ChatMessages) -> str:
    """The prompt's words without the system message (which carries the date) and without the open book's
    notes in front of a question (which change as the book grows), lower-cased."""
    text = " | ".join(without_reference(m["content"]) for m in prompt if m["role"] != "system")
    return " ".join(_WORD.findall(text.lower()))


def _shingles(key: str) -> frozenset[str]:
    """Character 5-grams: a word more or less, or a typo, changes only a few of them."""
    return frozenset(key[i : i + 5] for i in range(max(1, len(key) - 4)))


def _prompt_clusters(keys: set[str], similarity: float) -> dict[str, str]:
    """Map each prompt key to its cluster's id: exact and near-duplicates (5-gram Jaccard) share one."""
    representatives: list[tuple[frozenset[str], str]] = []
    clusters = {}
    for key in sorted(keys):  # sorted: the same prompts always form the same clusters
        shingles = _shingles(key)
        for other, cluster in representatives:
            union = len(shingles | other)
            if union and len(shingles & other) / union >= similarity:
                clusters[key] = cluster
                break
        else:
            cluster = hashlib.sha256(key.encode()).hexdigest()
            representatives.append((shingles, cluster))
            clusters[key] = cluster
    return clusters


def _collapse_duplicates(
    examples: Sequence[_Example], clusters: dict[str, str], *, exact: bool = False
) -> list[_Example]:
    """One example per prompt cluster (per label for KTO): the strongest, ties broken by content.

    `exact`: only identical rows are collapsed.
    """
    best: dict[tuple[str, bool | None], _Example] = {}
    ranked = sorted(
        ((json.dumps(e.row, sort_keys=True), e) for e in examples), key=lambda r: (-r[1].strength, r[0])
    )
    for row, example in ranked:
        best.setdefault((row if exact else clusters[example.prompt_key], example.label), example)
    return list(best.values())


def _key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _shingle_hashes(key: str) -> set[int]:
    """The key's 5-grams as signed 64-bit hashes: enough to match near-duplicates, not to read the text."""
    return {
        int.from_bytes(hashlib.sha256(s.encode()).digest()[:8], "big", signed=True) for s in _shingles(key)
    }


def _nearest_side(
    shingles: frozenset[int], neighbours: Sequence[tuple[frozenset[int], bool]], similarity: float
) -> bool | None:
    """The side of the most similar recorded prompt at `similarity` or above (held out on a tie), or None."""
    best: tuple[float, bool] | None = None
    for other, held in neighbours:
        union = len(shingles | other)
        score = len(shingles & other) / union if union else 0.0
        if score >= similarity and (best is None or (score, held) > best):
            best = (score, held)
    return None if best is None else best[1]


def _recorded_sides(session: Session, hashes: set[str]) -> dict[str, bool]:
    if not hashes:
        return {}
    query = select(PromptSide.key_hash, PromptSide.held_out).where(col(PromptSide.key_hash).in_(hashes))
    return dict(session.exec(query).all())


def _cap_rater_share(examples: Sequence[_Example], share: float) -> list[_Example]:
    """Drop the weakest examples of any rater who alone decides more than `share` of what is kept."""
    kept = sorted(examples, key=lambda e: (-e.strength, json.dumps(e.row, sort_keys=True)))
    if share >= 1.0:
        return kept
    while True:
        counts = Counter(rater for example in kept for rater in example.deciders)
        if not counts:
            return kept
        rater, decided = min(counts.items(), key=lambda item: (-item[1], item[0]))
        if decided <= share * len(kept):
            return kept
        weakest = max(i for i, example in enumerate(kept) if rater in example.deciders)
        del kept[weakest]
