"""How well one training setting learns a simulated community's taste, and what it costs in general NLL.

    python bench/learn.py --store data/simulations/STAMP [--set learning_rate=6e-4 --set kl_coef=0.5 ...]
                          [--json FILE]

Run by hand. Takes the feedback a `gradschool simulate` run left in its store (--store: the simulation's
folder), builds the datasets as a /retrain would, with TRAIN_* settings overridden by each --set, trains
with `python -m trainer.job` in a child process (as the runner does), then scores the new adapter: the
dev prompts (sim/data/prompts_dev.txt: never the exam the simulation reports on) answered greedily and
graded by the judge (--judge, default the sign-off taste), and the
gate's general-instruction NLL (answers' text) against the base model's. Prints one line, e.g.

    kl_coef=0.5 learning_rate=6e-4: sft+dpo on 49 SFT / 48 pairs, dev 16/20, general NLL +2.2%, 263 s

The table in docs/measurements.md ("Learning the community's taste") comes from this script on the store
of one `make demo` run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import torch
from peft import PeftModel
from sqlmodel import Session

from engine.loading import load_base_model
from sim.community import Judge, load_callable, read_prompts
from store.datasets import build_datasets
from store.db import make_engine
from store.settings import load_settings
from trainer.gate import answer_logprobs, greedy_answers, read_general
from trainer.runner import write_work

ROOT = Path(__file__).resolve().parents[1]
DEV = ROOT / "sim" / "data" / "prompts_dev.txt"  # tune on dev; the exam is only for reports


def parse_value(text: str) -> Any:
    """`6e-4` -> 0.0006, `1000` -> 1000, `true` -> True, anything else stays a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def measure(
    store: Path, overrides: dict[str, Any], max_new_tokens: int, judge: Judge, prompt_file: Path = DEV
) -> dict[str, Any]:
    # answers as long as the simulation's (--max-new-tokens), for the vote reward model's samples too
    sampling = {"max_new_tokens": max_new_tokens}
    settings = load_settings(env_file=None, data_dir=store, train=overrides, model=sampling)
    database = make_engine(settings.database_url)
    with Session(database) as session:
        data = build_datasets(session=session, settings=settings.train)
    database.dispose()
    with tempfile.TemporaryDirectory(prefix="gradschool-learn-") as folder:
        work, adapter = Path(folder) / "work", Path(folder) / "adapter"
        work.mkdir()
        write_work(work, settings, data)
        started = time.monotonic()
        job = [sys.executable, "-m", "trainer.job", "--work", str(work), "--output", str(adapter)]
        done = subprocess.run(job, capture_output=True, text=True, cwd=ROOT)
        if done.returncode:
            raise SystemExit(f"the training job failed:\n{done.stderr[-3000:]}")
        seconds = time.monotonic() - started
        training = json.loads((work / "training.json").read_text())
        method = training["method"]
        base, tokenizer = load_base_model(settings)
        model = PeftModel.from_pretrained(base, str(adapter)).eval()
        general = read_general(None)

        def general_nll() -> float:
            sums, counts = answer_logprobs(model, tokenizer, general, max_length=512, content_only=True)
            return -sum(sums) / sum(counts)

        with model.disable_adapter():
            base_nll = general_nll()
        new_nll = general_nll()
        prompts = read_prompts(prompt_file)
        system = settings.model.system_prompt  # what the simulation's bot answered with
        chats = [[{"role": "system", "content": system}, {"role": "user", "content": p}] for p in prompts]
        with torch.no_grad():
            answers = greedy_answers(model, tokenizer, chats, max_new_tokens=max_new_tokens)
    return {
        "overrides": overrides,
        "method": method,
        "counts": data.counts(),
        "vote_reward": training.get("vote_reward"),  # what the vote reward model added, when on
        "dev_up": sum(judge(p, a) > 0 for p, a in zip(prompts, answers, strict=True)),
        "dev": len(prompts),
        "base_general_nll": round(base_nll, 4),
        "general_nll": round(new_nll, 4),
        "general_nll_rise": round(new_nll / base_nll - 1, 4),
        "train_seconds": round(seconds),
        "sample_answers": answers[:4],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--store", type=Path, required=True, help="A simulation folder.")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="A TRAIN_* override.")
    parser.add_argument("--max-new-tokens", type=int, default=96, help="Exam answer length (as simulate).")
    parser.add_argument("--json", type=Path, help="Append the figures to this JSON-lines file.")
    parser.add_argument(
        "--judge", default="sim.judges:signoff_judge", help="module:function grading the dev answers."
    )
    parser.add_argument("--prompts", type=Path, default=DEV, help="Prompts to grade (default: the dev set).")
    args = parser.parse_args()
    if not (args.store / "gradschool.db").exists():
        raise SystemExit(f"{args.store} has no gradschool.db: pass a `gradschool simulate` output folder")
    overrides = {}
    for item in args.set:
        key, separator, value = item.partition("=")
        if not separator:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE, e.g. --set kl_coef=0.5")
        overrides[key.strip().lower().removeprefix("train_")] = parse_value(value.strip())
    judge = cast(Judge, load_callable(args.judge, "--judge"))
    figures = measure(args.store, overrides, args.max_new_tokens, judge, args.prompts)
    label = " ".join(f"{k}={v}" for k, v in overrides.items()) or "defaults"
    if figures["vote_reward"]:
        label += f" (vote reward: {figures['vote_reward']})"
    counts = figures["counts"]
    print(
        f"{label}: {figures['method']} on {counts['sft']} SFT / {counts['dpo']} pairs, dev "
        f"{figures['dev_up']}/{figures['dev']}, general NLL {figures['general_nll_rise']:+.1%}, "
        f"{figures['train_seconds']} s"
    )
    if args.json:
        with args.json.open("a") as out:
            out.write(json.dumps(figures) + "\n")


if __name__ == "__main__":
    main()
