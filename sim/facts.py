"""The facts taste: Lantern Hall, a study and hobby server whose members ask about things no model can know.

Its regulars ask when study night is, who hosts trivia, which channel takes memes: facts of their own
server (sim/data/facts.json). A member up-votes an answer only if it names every key term of the fact
(`facts_judge`), and a trusted member corrects a wrong one by stating the fact plainly (`facts_corrector`).
The base model cannot meet this taste by style or luck, so it tests the ladder: an open book (passages
that admins and trusted members added) should get these right after one round, fine-tuning alone mostly
cannot. Run it with

    gradschool simulate --ladder --prompts sim/data/facts_train.txt --heldout sim/data/facts_exam.txt \\
        --dev sim/data/facts_dev.txt --judge sim.facts:facts_judge --corrector sim.facts:facts_corrector \\
        --instructions sim/data/facts_instructions.txt

Each fact in facts.json has questions for three splits: `train` (the community asks and votes), `dev`
(for tuning defaults) and `exam` (held out, worded as a new member would ask). Its `must` is a list of key
terms, all required; a term may list alternatives separated by `|` ("19:00|7 pm|7pm"), any one of which
counts. Terms match case-insensitively on word boundaries, so "19:00" is not found in "119:005"; write
spelling variants (hyphen or space, plural) as alternatives. The prompt files are generated from the JSON:
`python -m sim.facts --write` regenerates them, `python -m sim.facts` checks that they are current.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

logger = logging.getLogger(__name__)

DATA = Path(__file__).parent / "data"
FACTS_PATH = DATA / "facts.json"
Split = Literal["train", "dev", "exam"]
SPLITS: tuple[Split, ...] = ("train", "dev", "exam")

_MENTION = re.compile(r"<@[!&]?\d+>")  # the bot may see a question with or without its mention
_TYPOGRAPHY = str.maketrans({"’": "'", "‘": "'", "“": '"', "”": '"', "‐": "-", "‑": "-", "–": "-"})


@dataclass(frozen=True)
class Fact:
    """One fact of the community, its key terms and the questions that ask for it."""

    id: str
    fact: str
    must: tuple[tuple[str, ...], ...]  # every term is required; any one alternative of a term counts
    train: tuple[str, ...]
    dev: tuple[str, ...]
    exam: tuple[str, ...]

    def questions(self) -> tuple[str, ...]:
        """Every question of this fact, all splits."""
        return self.train + self.dev + self.exam


def normalise(question: str) -> str:
    """A question as lowercase words, without mentions or punctuation: how prompts are matched."""
    text = _MENTION.sub(" ", question).translate(_TYPOGRAPHY).lower()
    return " ".join(re.findall(r"\w+", text))


def mentions(text: str, term: str) -> bool:
    """Whether `term` occurs in `text` case-insensitively and not inside a longer word or number."""
    flat = " ".join(text.translate(_TYPOGRAPHY).lower().split())
    return re.search(rf"(?<!\w){re.escape(term)}(?!\w)", flat) is not None


def names_fact(fact: Fact, answer: str) -> bool:
    """Whether the answer names every key term of the fact (any of its alternatives)."""
    return all(any(mentions(answer, alternative) for alternative in term) for term in fact.must)


def _parse(entry: dict[str, Any]) -> Fact:
    """One facts.json entry as a Fact, or a ValueError that names the entry and what it lacks."""
    missing = [key for key in ("id", "fact", "must", *SPLITS) if key not in entry]
    if missing:
        raise ValueError(f"{FACTS_PATH}: fact {entry.get('id', entry)!r} lacks {', '.join(missing)}")
    return Fact(
        id=entry["id"],
        fact=entry["fact"],
        must=tuple(tuple(alt.strip().lower() for alt in term.split("|")) for term in entry["must"]),
        train=tuple(entry["train"]),
        dev=tuple(entry["dev"]),
        exam=tuple(entry["exam"]),
    )


@functools.cache
def load_facts() -> tuple[Fact, ...]:
    """The facts of facts.json, read once."""
    facts = tuple(_parse(entry) for entry in json.loads(FACTS_PATH.read_text(encoding="utf-8"))["facts"])
    for fact in facts:
        if not fact.must or not names_fact(fact, fact.fact):
            raise ValueError(f"{FACTS_PATH}: fact {fact.id!r} must name all of its `must` terms {fact.must}")
    return facts


@functools.cache
def _by_question() -> dict[str, Fact]:
    """Each normalised question (any split) to its fact; a question asked twice would be ambiguous."""
    index: dict[str, Fact] = {}
    for fact in load_facts():
        for question in fact.questions():
            key = normalise(question)
            if key in index:
                raise ValueError(f"{FACTS_PATH}: {question!r} ({fact.id}) repeats one of {index[key].id}")
            index[key] = fact
    return index


_warned: set[str] = set()


def fact_for(prompt: str) -> Fact | None:
    """The fact whose question this prompt is; None (warned about once per prompt) if it is none."""
    key = normalise(prompt)
    fact = _by_question().get(key)
    if fact is None and key not in _warned:
        _warned.add(key)  # a judge asked about a prompt that is no fact's question is a wiring mistake
        logger.warning("%r is no question of %s; is the facts taste run on its prompts?", prompt, FACTS_PATH)
    return fact


def facts_judge(prompt: str, answer: str) -> int:
    """+1 if the answer names every key term of the prompt's fact, -1 otherwise or for an unknown prompt."""
    fact = fact_for(prompt)
    return 1 if fact is not None and answer.strip() and names_fact(fact, answer) else -1


def facts_corrector(prompt: str, answer: str) -> str:
    """The fact stated plainly, as a trusted member writes it; the answer unchanged for an unknown prompt."""
    fact = fact_for(prompt)
    return fact.fact if fact is not None else answer


def render_prompts(split: Split) -> str:
    """The prompt file of one split, as generated from facts.json."""
    header = (
        f"# Lantern Hall facts, {split} questions (sim/facts.py explains the taste).\n"
        "# Generated from sim/data/facts.json by `python -m sim.facts --write`; edit the JSON, not this.\n"
    )
    return header + "".join(f"{question}\n" for fact in load_facts() for question in getattr(fact, split))


def prompts_path(split: Split) -> Path:
    """Where the prompt file of one split lives."""
    return DATA / f"facts_{split}.txt"


def stale_prompt_files() -> list[Path]:
    """The generated prompt files that are missing or differ from what facts.json gives."""
    stale = []
    for split in SPLITS:
        path = prompts_path(split)
        if not path.exists() or path.read_text(encoding="utf-8") != render_prompts(split):
            stale.append(path)
    return stale


def main(argv: list[str] | None = None) -> int:
    """Check (or with --write, regenerate) the prompt files generated from facts.json."""
    parser = argparse.ArgumentParser(prog="python -m sim.facts", description=main.__doc__)
    parser.add_argument("--write", action="store_true", help="regenerate the prompt files")
    args = parser.parse_args(argv)
    if args.write:
        for split in SPLITS:
            prompts_path(split).write_text(render_prompts(split), encoding="utf-8")
        print(f"wrote {', '.join(str(prompts_path(split)) for split in SPLITS)}")
        return 0
    stale = stale_prompt_files()
    for path in stale:
        print(f"{path} is out of date with {FACTS_PATH}; run `python -m sim.facts --write`", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
