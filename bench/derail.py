"""Derail rate: how often the served model's answers loop, switch language or come back empty, per setting.

    python bench/derail.py [--temperature 0.3] [--top-p 0.9] [--repetition-penalty 1.0 1.2]
                           [--min-p 0 0.1] [--tries 5] [--alternatives 1] [--json FILE]
    python bench/derail.py --rescore FILE

Run by hand. Each sampling option takes one value (every setting shares it) or one value per setting, so
`--repetition-penalty 1.0 1.2 --min-p 0 0.1` compares two settings side by side; an option left out takes
MODEL_* (today's defaults). Every setting answers the same prompts with the same seeds: the user turns of
the gate's general set (trainer/data/general.jsonl) and the simulated community's train prompts
(sim/data/prompts_train.txt), `--tries` times each, through the real serving path (GenerationServer, the
configured system prompt, 96 new tokens as `gradschool simulate`). `--alternatives` of those answers per
prompt also get a 🔁 alternative as the bot makes one (temperature raised to DISCORD_REGENERATE_TEMPERATURE);
its derail rate and how much it differs from the answer it replaces (token Jaccard, over pairs where
neither derailed: lower is more diverse) are printed beside. Derailed is `engine.derailment.is_derailed`;
--rescore judges a saved run's answers again, without the model, after the detector changed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from engine import ChatMessage, Completion, Engine
from engine.derailment import is_derailed
from engine.loading import base_model_id, load_base_model
from engine.serving import GenerationServer
from sim.community import read_prompts
from store.settings import ModelSettings, Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
PROMPT_SETS = {
    "general": ROOT / "trainer" / "data" / "general.jsonl",
    "community": ROOT / "sim" / "data" / "prompts_train.txt",
}
SAMPLING_OPTIONS = ("temperature", "top_p", "repetition_penalty", "min_p")
_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class Answer:
    """One answer (or 🔁 alternative) and why it derailed, if it did."""

    prompt_set: str
    prompt: str
    try_index: int
    alternative: bool
    text: str
    reason: str | None


def read_prompt_sets() -> dict[str, list[str]]:
    """The general set's first user turns and the community's train prompts."""
    lines = PROMPT_SETS["general"].read_text(encoding="utf-8").splitlines()
    general = [json.loads(line)["messages"][0]["content"] for line in lines if line.strip()]
    return {"general": general, "community": read_prompts(PROMPT_SETS["community"])}


def sampling_settings(settings: ModelSettings, args: argparse.Namespace) -> list[ModelSettings]:
    """One ModelSettings per compared setting: option i's i-th value, or its only one, or MODEL_*'s."""
    given = {name: getattr(args, name) for name in SAMPLING_OPTIONS if getattr(args, name)}
    count = max((len(values) for values in given.values()), default=1)
    for name, values in given.items():
        if len(values) not in (1, count):
            sys.exit(f"--{name.replace('_', '-')} has {len(values)} values; give 1 or {count}")
    return [
        settings.model_copy(
            update={"max_new_tokens": args.max_new_tokens}
            | {name: values[index if len(values) > 1 else 0] for name, values in given.items()}
        )
        for index in range(count)
    ]


async def answer_all(
    server: GenerationServer,
    prompt_sets: dict[str, list[str]],
    system: str,
    *,
    tries: int,
    alternatives: int,
    alternative_temperature: float,
) -> list[Answer]:
    """Every prompt `tries` times and `alternatives` 🔁 alternatives, all queued at once to batch well."""
    jobs: list[tuple[str, str, int, bool]] = []
    requests = []
    for prompt_set, prompts in prompt_sets.items():
        for index, prompt in enumerate(prompts):
            chat: list[ChatMessage] = [
                {"role": "system", "content": system},
                {"role": "user", "content": prompt},
            ]
            seed = 1000 * index + (0 if prompt_set == "general" else 500)  # same seeds in every setting
            for try_index in range(tries):
                jobs.append((prompt_set, prompt, try_index, False))
                requests.append(server.generate(chat, seed=seed + try_index))
            for try_index in range(min(alternatives, tries)):
                jobs.append((prompt_set, prompt, try_index, True))
                requests.append(
                    server.generate(chat, temperature=alternative_temperature, seed=seed + 100 + try_index)
                )
    completions: list[Completion] = await asyncio.gather(*requests)
    return [
        Answer(prompt_set, prompt, try_index, alternative, c.text, is_derailed(c.text, prompt=prompt))
        for (prompt_set, prompt, try_index, alternative), c in zip(jobs, completions, strict=True)
    ]


def derail_figures(answers: list[Answer]) -> dict[str, Any]:
    """Share derailed overall, per reason and per prompt set."""
    reasons = Counter(answer.reason for answer in answers if answer.reason)
    figures: dict[str, Any] = {
        "answers": len(answers),
        "derail_rate": sum(reasons.values()) / len(answers),
        "by_reason": {reason: reasons[reason] / len(answers) for reason in ("empty", "loop", "language")},
    }
    for prompt_set in PROMPT_SETS:
        in_set = [answer for answer in answers if answer.prompt_set == prompt_set]
        figures[prompt_set] = sum(answer.reason is not None for answer in in_set) / max(len(in_set), 1)
    return figures


def jaccard(first: str, second: str) -> float:
    """Shared words over all words of the two texts (lowercased); 1 for two texts without words."""
    a, b = set(_WORD.findall(first.lower())), set(_WORD.findall(second.lower()))
    return len(a & b) / len(a | b) if a | b else 1.0


def diversity_figures(answers: list[Answer]) -> dict[str, Any]:
    """How far each 🔁 alternative is from the answer it replaces, over pairs where neither derailed."""
    originals = {(a.prompt_set, a.prompt, a.try_index): a for a in answers if not a.alternative}
    pairs = [
        (originals[(a.prompt_set, a.prompt, a.try_index)], a)
        for a in answers
        if a.alternative
        and a.reason is None
        and originals[(a.prompt_set, a.prompt, a.try_index)].reason is None
    ]
    if not pairs:
        return {"pairs": 0, "jaccard": None, "differs": None}
    return {
        "pairs": len(pairs),
        "jaccard": statistics.fmean(jaccard(original.text, again.text) for original, again in pairs),
        "differs": statistics.fmean(original.text.strip() != again.text.strip() for original, again in pairs),
    }


def distinct_share(answers: list[Answer]) -> float:
    """Mean over prompts of distinct answers among its tries, as a share of the tries."""
    by_prompt: dict[tuple[str, str], list[str]] = {}
    for answer in answers:
        by_prompt.setdefault((answer.prompt_set, answer.prompt), []).append(answer.text.strip())
    return statistics.fmean(len(set(texts)) / len(texts) for texts in by_prompt.values())


async def measure(
    settings: Settings, model_settings: ModelSettings, loaded: tuple[Any, Any], args: argparse.Namespace
) -> dict[str, Any]:
    """Answer every prompt under one sampling setting and sum up how often it derailed."""
    model, tokenizer = loaded
    engine = Engine(model, tokenizer, model_settings, base_model_id=base_model_id(settings))
    alternative_temperature = max(model_settings.temperature, settings.discord.regenerate_temperature)
    system = model_settings.system_prompt.format(
        date=time.strftime("%Y-%m-%d"), server="bench", channel="bench"
    )
    started = time.perf_counter()
    async with GenerationServer(engine, max_batch=args.max_batch, max_pending=100_000) as server:
        answers = await answer_all(
            server,
            read_prompt_sets(),
            system,
            tries=args.tries,
            alternatives=args.alternatives,
            alternative_temperature=alternative_temperature,
        )
    setting = {name: getattr(model_settings, name) for name in SAMPLING_OPTIONS}
    return summary(setting, answers, alternative_temperature, time.perf_counter() - started)


def summary(
    setting: dict[str, float], answers: list[Answer], alternative_temperature: float, seconds: float
) -> dict[str, Any]:
    """The figures of one setting, and every answer behind them."""
    first = [answer for answer in answers if not answer.alternative]
    again = [answer for answer in answers if answer.alternative]
    return {
        "setting": setting,
        "answer": derail_figures(first) | {"distinct_share": distinct_share(first)},
        "alternative": {"temperature": alternative_temperature}
        | (derail_figures(again) if again else {})
        | diversity_figures(answers),
        "seconds": seconds,
        "answers": [asdict(answer) for answer in answers],
    }


def rescore(result: dict[str, Any]) -> dict[str, Any]:
    """A saved setting's figures again, with every answer judged by today's detector."""
    answers = [
        Answer(**(answer | {"reason": is_derailed(answer["text"], prompt=answer["prompt"])}))
        for answer in result["answers"]
    ]
    temperature = result["alternative"]["temperature"]
    return summary(result["setting"], answers, temperature, result["seconds"])


def percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def print_header() -> None:
    columns = ["T", "top_p", "rep", "min_p", "|", "derail", "empty", "loop", "lang", "general", "commun."]
    columns += ["distinct", "|", "🔁T", "derail", "Jaccard", "differs", "|", "s"]
    widths = [4, 5, 4, 5, 1, 6, 6, 6, 6, 7, 7, 8, 1, 4, 6, 7, 7, 1, 4]
    print(" ".join(f"{column:>{width}}" for column, width in zip(columns, widths, strict=True)), flush=True)


def print_row(result: dict[str, Any]) -> None:
    """One setting: answer derail rate (overall, by reason, by prompt set), then the 🔁 figures."""
    s, a, r = result["setting"], result["answer"], result["alternative"]
    jaccard_text = "-" if r["jaccard"] is None else f"{r['jaccard']:.3f}"
    print(
        f"{s['temperature']:>4g} {s['top_p']:>5g} {s['repetition_penalty']:>4g} {s['min_p']:>5g} | "
        f"{percent(a['derail_rate']):>6} {percent(a['by_reason']['empty']):>6} "
        f"{percent(a['by_reason']['loop']):>6} {percent(a['by_reason']['language']):>6} "
        f"{percent(a['general']):>7} {percent(a['community']):>7} {percent(a['distinct_share']):>8} | "
        f"{r['temperature']:>4g} {percent(r.get('derail_rate')):>6} {jaccard_text:>7} "
        f"{percent(r['differs']):>7} | {result['seconds']:>4.0f}",
        flush=True,
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    for name, what in [
        ("temperature", "sampling temperature (0 = greedy)"),
        ("top_p", "nucleus mass"),
        ("repetition_penalty", "repetition penalty (1 = off)"),
        ("min_p", "min-p share of the top token (0 = off)"),
    ]:
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            type=float,
            nargs="+",
            help=f"{what}; one value per setting",
        )
    parser.add_argument("--tries", type=int, default=5, help="Answers per prompt and setting (default 5).")
    parser.add_argument(
        "--alternatives",
        type=int,
        default=1,
        help="🔁 alternatives per prompt, to the first tries (default 1).",
    )
    parser.add_argument("--max-new-tokens", type=int, default=96, help="Answer length (as simulate; 96).")
    parser.add_argument("--max-batch", type=int, default=32, help="Answers decoded together (default 32).")
    parser.add_argument("--json", type=Path, help="Write every figure and every answer to this JSON file.")
    parser.add_argument(
        "--rescore",
        type=Path,
        metavar="JSON",
        help="Judge the answers a run saved with --json again (after the detector changed); no model.",
    )
    return parser.parse_args()


async def main() -> None:
    args = parse_args()
    if args.rescore:
        print_header()
        for result in json.loads(args.rescore.read_text(encoding="utf-8")):
            print_row(rescore(result))
        return
    settings = load_settings()
    loaded = load_base_model(settings)
    results = []
    print_header()
    for model_settings in sampling_settings(settings.model, args):
        results.append(await measure(settings, model_settings, loaded, args))
        print_row(results[-1])
        if args.json:  # after each setting: a long run killed midway keeps what it measured
            args.json.write_text(json.dumps(results, indent=1, ensure_ascii=False), encoding="utf-8")


if __name__ == "__main__":
    asyncio.run(main())
