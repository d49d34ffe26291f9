"""`gradschool simulate`: the whole loop on this machine, with a scripted community instead of people.

The Discord emulator, the real bot connected to it through discord.py, the real engine, and the trainer
service in a thread of this process. Each round the community studies (asks train prompts, votes with the
judge's verdict, presses 🔁, writes corrections), the admin runs /retrain, and the round waits for the run to
finish and the bot to serve the new adapter; before the first round and after each, an exam asks every
held-out prompt. Nothing here looks at the judge except the community (sim/community.py).

The gate is the bot's own: an adapter with too little held-out evidence is served as a canary to a share of
questions, and the next round's votes settle it, as on a real server. `--seeds N` runs N independent
simulations one after another and reports the mean and range of each round's held-out 👍-rate.

`--communities N` runs N servers with different tastes at once against one bot (each learning its own
adapter under TRAIN_SCOPE=guild, served side by side): each is reported alone, its exam answers graded by
the other communities' judges too (does one server's taste leak into another's answers?), and the top of
the result holds their mean.

`--ladder` climbs the ladder with one community and measures each rung on the exam: the base model, then the
admin's instructions (`--instructions FILE`, set with /instructions), then after the first round of study
the open book (what trusted members corrected is knowledge at once; the admin reviews the others'
corrections with /knowledge review, accepting those the judge finds right), then the adapter each /retrain
makes. `result.json` gets `ladder: {base, instructions, knowledge, finetune}`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer
from sqlalchemy import Engine as Database
from sqlmodel import Session, col, select
from tqdm import tqdm

from gradschool.context import invocation
from sim import report
from sim.community import Activity, Community, Corrector, Graded, Judge, load_callable, read_prompts
from store import db, registry
from store.models import TrainingRun
from store.scopes import GLOBAL, guild_scope
from store.settings import Settings

if TYPE_CHECKING:  # the engine (torch) loads only when a simulation runs
    from engine.backend import Server

logger = logging.getLogger("gradschool")

DATA = Path(__file__).resolve().parents[1] / "sim" / "data"
DEFAULT_JUDGE = "sim.judges:signoff_judge"
DEFAULT_CORRECTOR = "sim.judges:signoff_corrector"
# the shipped tastes, in the order `--communities N` gives them out where --judge is not given N times
SHIPPED_TASTES: list[tuple[str, str | None]] = [
    (DEFAULT_JUDGE, DEFAULT_CORRECTOR),
    ("sim.judges:concise_judge", None),  # the votes-only quick-help server
]
# the ladder's extra exams, by stage: before the instructions, and with the book before /retrain
STAGES = {"nothing": "no instructions, no book", "book": "with the open book, before /retrain"}
GUILD_NAMES = ["Study Hall", "Quick Help", "Server 3", "Server 4", "Server 5", "Server 6"]


@dataclass(frozen=True)
class Plan:
    """What to simulate: the prompts, the community's taste and size, how many rounds."""

    train_prompts: list[str]
    heldout_prompts: list[str]  # the exam: what the result reports
    judge: str
    corrector: str | None
    rounds: int
    users: int
    channels: int
    questions: int  # train prompts asked per round
    seed: int
    out: Path
    dev_prompts: list[str] = field(default_factory=list)  # asked beside the exam, for tuning only
    seeds: int = 1  # independent simulations, seed, seed + 1, ...
    others: list[tuple[str, str | None]] = field(default_factory=list)  # more communities' (judge, corrector)
    ladder: bool = False  # measure each rung: base, instructions, the open book, fine-tuning
    instructions: str | None = None  # the admin's /instructions for the server
    trusted: int = 0  # members holding the trusted role: their corrections are knowledge at once

    @property
    def tastes(self) -> list[tuple[str, str | None]]:
        """Each community's (judge, corrector): the first is `judge`, `corrector`."""
        return [(self.judge, self.corrector), *self.others]


def simulate(
    rounds: Annotated[int, typer.Option(min=1, help="Study + /retrain rounds.")] = 3,
    prompts: Annotated[
        Path | None, typer.Option(help="Train prompts, one per line (default: the shipped set).")
    ] = None,
    heldout: Annotated[
        Path | None,
        typer.Option(
            help="Exam prompts, one per line, what the result reports (default: shipped; with --prompts: "
            "every 4th)."
        ),
    ] = None,
    dev: Annotated[
        Path | None,
        typer.Option(
            help="Dev prompts, asked beside the exam and reported apart (dev_up_rate), for tuning defaults "
            "without looking at the exam (shipped: sim/data/prompts_dev.txt)."
        ),
    ] = None,
    users: Annotated[int, typer.Option(min=1, help="Simulated members.")] = 8,
    channels: Annotated[int, typer.Option(min=1, help="Channels they talk in.")] = 2,
    questions: Annotated[int, typer.Option(min=1, help="Train prompts asked per round.")] = 40,
    communities: Annotated[
        int,
        typer.Option(
            min=1,
            max=len(GUILD_NAMES),
            help="Servers with different tastes at once, each learning its own adapter (the i-th --judge "
            "and --corrector are the i-th server's; the shipped tastes fill in: sign-off, then concise).",
        ),
    ] = 1,
    judge: Annotated[
        list[str] | None,
        typer.Option(help="module:function(prompt, answer) -> +1, -1 or 0 (once per community)."),
    ] = None,
    corrector: Annotated[
        list[str] | None,
        typer.Option(
            help="module:function(prompt, answer) -> better answer; 'none' for no corrections (once per "
            "community)."
        ),
    ] = None,
    ladder: Annotated[
        bool,
        typer.Option(
            "--ladder",
            help="Measure each rung on the exam: base, instructions, the open book after one round, then "
            "fine-tuning (result.json: ladder).",
        ),
    ] = False,
    instructions: Annotated[
        Path | None,
        typer.Option(
            help="The server's instructions, set by its admin with /instructions before the rounds."
        ),
    ] = None,
    trusted: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Members holding the trusted role, whose corrections become knowledge at once (default: a "
            "quarter of them with --ladder, else none).",
        ),
    ] = None,
    max_new_tokens: Annotated[
        int | None, typer.Option(min=1, help="Longest answer in tokens (default: 96 here, not MODEL_*).")
    ] = 96,
    seed: Annotated[int, typer.Option(help="Seed for who asks what, votes and corrects.")] = 0,
    seeds: Annotated[
        int,
        typer.Option(min=1, help="Independent simulations (seed, seed+1, ...), reported as mean and range."),
    ] = 1,
    out: Annotated[
        Path | None, typer.Option(help="Folder for everything (default: DATA_DIR/simulations/<time>).")
    ] = None,
) -> None:
    """Prove the loop: a scripted community votes, the bot retrains, the held-out 👍-rate is measured."""
    settings = invocation.settings
    try:
        tastes = choose_tastes(communities, judge or [], corrector or [])
        plan = make_plan(
            settings=settings,
            rounds=rounds,
            prompts=prompts,
            heldout=heldout,
            users=users,
            channels=channels,
            questions=questions,
            judge=tastes[0][0],
            corrector=tastes[0][1],
            seed=seed,
            out=out,
            dev=dev,
            seeds=seeds,
            others=tastes[1:],
            ladder=ladder,
            instructions=instructions,
            trusted=trusted,
        )
        load_taste(plan)
    except ValueError as exc:
        typer.secho(str(exc), fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    for noisy in ("aiohttp.access", "discord", "bot", "engine", "trainer", "store", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)  # the progress lines and bars tell the story
    logging.getLogger("apscheduler").setLevel(logging.ERROR)  # "check skipped: still training" each second
    result = run_seeds(settings, plan, max_new_tokens=max_new_tokens, say=typer.echo)
    for community in result.get("communities", []):
        typer.echo(f"\n{community['guild']} ({community['judge']})\n" + report.table(community))
    if "communities" in result:
        typer.echo(f"\nmean of the {len(result['communities'])} communities")
    typer.echo("\n" + report.table(result))
    if "ladder" in result:
        typer.echo("\n" + report.ladder_table(result))
    typer.echo(f"\nplot: {plan.out / 'up_rate.png'}\nresult: {plan.out / 'result.json'}")


def choose_tastes(communities: int, judges: list[str], correctors: list[str]) -> list[tuple[str, str | None]]:
    """Each community's (judge, corrector) from the repeated --judge / --corrector ('none': no corrections),
    the shipped tastes filling in; ValueError when there are more of them than communities, or too few."""
    if len(judges) > communities or len(correctors) > communities:
        raise ValueError(
            f"{len(judges)} --judge and {len(correctors)} --corrector for {communities} communities"
        )
    tastes = []
    for i in range(communities):
        if i < len(judges):
            shipped_corrector = dict(SHIPPED_TASTES).get(judges[i]) if i >= len(correctors) else None
            judge, corrector = judges[i], correctors[i] if i < len(correctors) else shipped_corrector
        elif i < len(SHIPPED_TASTES):
            judge, corrector = SHIPPED_TASTES[i]
            corrector = correctors[i] if i < len(correctors) else corrector
        else:
            raise ValueError(
                f"community {i + 1} needs its own --judge (there are {len(SHIPPED_TASTES)} shipped)"
            )
        tastes.append((judge, None if corrector is None or corrector.lower() == "none" else corrector))
    return tastes


def make_plan(
    *,
    settings: Settings,
    rounds: int,
    prompts: Path | None,
    heldout: Path | None,
    users: int,
    channels: int,
    questions: int,
    judge: str,
    corrector: str | None,
    seed: int,
    out: Path | None,
    dev: Path | None = None,
    seeds: int = 1,
    others: list[tuple[str, str | None]] | None = None,
    ladder: bool = False,
    instructions: Path | None = None,
    trusted: int | None = None,
) -> Plan:
    """Read the prompt files and fix the output folder; ValueError says what is wrong with them."""
    if ladder and others:
        raise ValueError("--ladder climbs with one community; leave out --communities")
    train_prompts = read_prompts(prompts or DATA / "prompts_train.txt")
    if heldout is not None:
        heldout_prompts = read_prompts(heldout)
    elif prompts is not None:  # one file: every 4th prompt is held out
        train_prompts, heldout_prompts = (
            [p for i, p in enumerate(train_prompts) if i % 4 != 3],
            train_prompts[3::4],
        )
    else:
        heldout_prompts = read_prompts(DATA / "prompts_exam.txt")
    dev_prompts = read_prompts(dev) if dev is not None else []
    if not train_prompts or not heldout_prompts:
        raise ValueError(
            "need at least one train and one held-out prompt (a --prompts file of 4 or more lines)"
        )
    for name, one, other in (
        ("train and held-out", train_prompts, heldout_prompts),
        ("train and dev", train_prompts, dev_prompts),
        ("dev and held-out", dev_prompts, heldout_prompts),
    ):
        overlap = set(one) & set(other)
        if overlap:
            raise ValueError(f"{len(overlap)} prompts are both {name}, e.g. {sorted(overlap)[0]!r}")
    text = _instructions_text(instructions, settings.ladder.instructions_max_chars)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    folder = out or settings.data_dir / "simulations" / stamp
    return Plan(
        train_prompts,
        heldout_prompts,
        judge,
        corrector,
        rounds,
        users,
        channels,
        questions,
        seed,
        folder,
        dev_prompts=dev_prompts,
        seeds=seeds,
        others=others or [],
        ladder=ladder,
        instructions=text,
        trusted=trusted if trusted is not None else (users // 4 if ladder else 0),
    )


def _instructions_text(path: Path | None, max_chars: int) -> str | None:
    if path is None:
        return None
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ValueError(f"--instructions {path}: {exc.strerror}") from exc
    if not text or len(text) > max_chars:
        raise ValueError(
            f"--instructions {path} holds {len(text)} characters; the server's instructions take 1 to "
            f"{max_chars} (LADDER_INSTRUCTIONS_MAX_CHARS)"
        )
    return text


def load_taste(plan: Plan) -> list[tuple[Judge, Corrector | None]]:
    """Each community's judge and corrector functions named in the plan, imported from the PYTHONPATH."""
    return [
        (
            cast(Judge, load_callable(judge, "--judge")),
            cast(Corrector, load_callable(corrector, "--corrector")) if corrector else None,
        )
        for judge, corrector in plan.tastes
    ]


def simulation_settings(settings: Settings, out: Path, *, max_new_tokens: int | None) -> Settings:
    """This invocation's settings, with a store and adapters of its own under `out` and lab pacing.

    The model cache stays shared (a link), so the embedded model is converted once per data dir. Members
    may ask as fast as the engine answers; only the admin's /retrain starts training; an adapter the gate
    passes is activated at once so the next round measures it. One it cannot judge (too little held-out
    evidence) answers half the questions as a canary, so that one round of votes (15 on each side) settles
    it; a real server's defaults are a tenth and 20.
    """
    out.mkdir(parents=True, exist_ok=True)
    shared_models = settings.model_cache_dir
    shared_models.mkdir(parents=True, exist_ok=True)
    link = out / "models"
    if not link.exists():
        link.symlink_to(shared_models.resolve(), target_is_directory=True)
    model = settings.model.model_copy(
        update={"max_new_tokens": max_new_tokens or settings.model.max_new_tokens}
    )
    discord = settings.discord.model_copy(
        update={
            "token": None,
            "user_rate_limit": 10_000,
            "channel_concurrency": 64,
            "registry_poll_s": 0.5,
            "progress_poll_s": 2.0,
            "allowed_guild_ids": [],
            "allowed_channel_ids": [],
            "allowed_role_ids": [],
            "allowed_user_ids": [],
        }
    )
    train = settings.train.model_copy(
        update={
            "min_new_votes": 0,
            "check_interval_s": 1.0,
            "promotion": "activate",
            "canary_share": 0.5,
            "canary_min_votes": 15,
        }
    )
    store = settings.store.model_copy(update={"database_url": f"sqlite:///{out / 'gradschool.db'}"})
    return settings.model_copy(
        update={"data_dir": out, "model": model, "discord": discord, "train": train, "store": store}
    )


def run_seeds(
    settings: Settings, plan: Plan, *, max_new_tokens: int | None, say: Callable[[str], None]
) -> dict[str, Any]:
    """Run the plan once per seed (each in a folder of its own when several); write and return the result."""
    if plan.seeds == 1:
        sim_settings = simulation_settings(settings, plan.out, max_new_tokens=max_new_tokens)
        return asyncio.run(run(sim_settings, plan, say=say))
    results = []
    for seed in range(plan.seed, plan.seed + plan.seeds):
        say(f"seed {seed} ({seed - plan.seed + 1} of {plan.seeds})")
        one = replace(plan, seed=seed, seeds=1, out=plan.out / f"seed-{seed}")
        sim_settings = simulation_settings(settings, one.out, max_new_tokens=max_new_tokens)
        results.append(asyncio.run(run(sim_settings, one, say=say)))
    result = report.combine_seeds(results)
    result["plan"] = _plan_summary(plan)
    (plan.out / "result.json").write_text(json.dumps(result, indent=2, ensure_ascii=False, default=str))
    report.plot(result, plan.out / "up_rate.png")
    return result


def _about(plan: Plan) -> dict[str, Any]:
    """What every result says of its plan: the settings, and how many prompts of each split."""
    return {
        "plan": _plan_summary(plan),
        "train_prompts": len(plan.train_prompts),
        "heldout_prompts": len(plan.heldout_prompts),
        "dev_prompts": len(plan.dev_prompts),
    }


def _plan_summary(plan: Plan) -> dict[str, Any]:
    return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(plan).items() if "prompts" not in k}


async def run(settings: Settings, plan: Plan, *, say: Callable[[str], None]) -> dict[str, Any]:
    """Run every round; write result.json, the exams and the plot into plan.out; return the result."""
    from bot import GradschoolBot, Services  # the bot's and trainer's libraries load only for this command
    from sim.discord_emulator import DiscordEmulator, point_discord_py_at, restore_discord_py, running
    from trainer.service import serve_in_background

    tastes = load_taste(plan)
    several = len(tastes) > 1
    database = db.open_store(settings)
    started = time.monotonic()
    async with DiscordEmulator() as emulator:
        point_discord_py_at(emulator.base_url)
        communities = [
            await Community.gather(
                emulator,
                members=plan.users,
                channels=plan.channels,
                judge=judge,
                corrector=corrector,
                seed=plan.seed + 1000 * i,
                name=GUILD_NAMES[i],
                trusted=plan.trusted,
            )
            for i, (judge, corrector) in enumerate(tastes)
        ]
        discord = settings.discord.model_copy(update={"guild_ids": [c.guild.id for c in communities]})
        trusted_roles = [c.trusted_role.id for c in communities if c.trusted_role is not None]
        ladder = settings.ladder.model_copy(update={"trusted_role_ids": trusted_roles})
        settings = settings.model_copy(update={"discord": discord, "ladder": ladder})
        say(f"loading the model ({settings.model.base_model or 'embedded SmolLM2-135M-Instruct'})…")
        services = await Services.start(settings, database)
        # no cron job: a scheduled run firing mid-simulation would train before the admin asks
        stop_trainer = serve_in_background(database=database, settings=settings, schedule=False)
        try:
            async with running(GradschoolBot(services), emulator):
                everyone = []
                for i, community in enumerate(communities):
                    # its server's own adapter under TRAIN_SCOPE=guild (the default), else the global one
                    scope = guild_scope(community.guild.id) if settings.train.scope == "guild" else GLOBAL
                    names = [spec for spec, _ in plan.tastes]
                    others = {names[j]: judge for j, (judge, _) in enumerate(tastes) if j != i}
                    out = plan.out / community.guild.name.lower().replace(" ", "-") if several else plan.out
                    label = f"{community.guild.name}: " if several else ""
                    rounds = Rounds(
                        plan,
                        community,
                        database,
                        services.server,
                        say,
                        scope,
                        plan.tastes[i],
                        others,
                        out,
                        label,
                    )
                    everyone.append(rounds)
                results = await asyncio.gather(*(rounds.base() for rounds in everyone))
                for number in range(1, plan.rounds + 1):
                    rows = await asyncio.gather(*(rounds.play(number) for rounds in everyone))
                    for result, row in zip(results, rows, strict=True):
                        result["base_general_nll"] = result.get("base_general_nll") or (
                            row["gate"] or {}
                        ).get("base_general_nll")
                        result["rounds"].append(row)
                        if plan.ladder:  # the book after the first round's study; the newest adapter
                            result["ladder"].setdefault("knowledge", row["book_up_rate"])
                            result["ladder"]["finetune"] = row["held_out_up_rate"]
                    write_result(plan.out, _whole(plan, results), started)
                for rounds, result in zip(everyone, results, strict=True):
                    result["exam_question_ids"] = rounds.exam_activity.questions
        finally:
            await asyncio.to_thread(stop_trainer)
            await services.close()
            restore_discord_py()
    whole = _whole(plan, results)
    write_result(plan.out, whole, started)
    report.plot(whole, plan.out / "up_rate.png")
    return whole


def _whole(plan: Plan, results: list[dict[str, Any]]) -> dict[str, Any]:
    """One community's result as it is; several communities' mean at the top, each in `communities`."""
    if len(results) == 1:
        return results[0]
    whole = report.combine_seeds(results, kept="communities")
    whole.pop("guild", None)  # the first community's: the mean is no one server's
    return whole | {"judge": f"mean of {len(results)} communities", "corrector": None} | _about(plan)


class Rounds:
    """One simulation's rounds: study, /retrain, wait for the new adapter, exam."""

    def __init__(
        self,
        plan: Plan,
        community: Community,
        database: Database,
        server: Server,
        say: Callable[[str], None],
        scope: str,
        taste: tuple[str, str | None] | None = None,
        others: dict[str, Judge] | None = None,
        out: Path | None = None,
        label: str = "",
    ) -> None:
        self.plan = plan
        self.community = community
        self.database = database
        self.server = server  # the bot's generation server: which adapter it serves
        self.scope = scope  # whose adapter the community's answers come from and train
        self.taste = taste or plan.tastes[0]  # the names of its judge and corrector
        self.others = others or {}  # the other communities' judges, by name: does their taste leak in?
        self.out = out or plan.out
        self.say = lambda line: say(label + line)
        order = list(plan.train_prompts)
        random.Random(plan.seed).shuffle(order)
        self.order = order
        self.exam_activity = Activity()  # every exam question posted, to check the store against

    async def base(self) -> dict[str, Any]:
        """The community's result so far: who it is, and its exam on what serves it before any round."""
        judge, corrector = self.taste
        result: dict[str, Any] = {
            "guild": self.community.guild.name,
            "guild_id": self.community.guild.id,
            "scope": self.scope,
            "judge": judge,
            "corrector": corrector,
            **_about(self.plan),
            "admin_id": self.community.admin.id,
            "rounds": [],
        }
        if self.plan.ladder:
            result["ladder"] = {"base": up_rate((await self.exams(0, "nothing"))[0])}
        if self.plan.instructions is not None:
            reply = await self.community.set_instructions(self.plan.instructions)
            self.say(f"the admin set the server's instructions: {reply}")
        base, base_dev = await self.exams(0)
        result["base_held_out_up_rate"] = up_rate(base)
        if self.plan.ladder:
            result["ladder"]["instructions"] = result["base_held_out_up_rate"]
        if self.others:
            result |= self.cross(base, prefix="base_")
        if base_dev is not None:
            result["base_dev_up_rate"] = up_rate(base_dev)
        return result

    def cross(self, graded: list[Graded], *, prefix: str = "") -> dict[str, Any]:
        """The exam's answers graded by each other community's judge, and their mean."""
        rates = {
            name: up_rate(
                [Graded(g.prompt, g.answer, judge(g.prompt, g.answer) if g.answer else -1) for g in graded]
            )
            for name, judge in self.others.items()
        }
        return {
            f"{prefix}other_judge_up_rates": rates,
            f"{prefix}cross_up_rate": sum(rates.values()) / len(rates),
        }

    def batch(self, number: int) -> list[str]:
        """This round's train prompts: the next `questions` of a seeded shuffle, wrapping around."""
        start = (number - 1) * self.plan.questions
        return [self.order[(start + i) % len(self.order)] for i in range(self.plan.questions)]

    async def play(self, number: int) -> dict[str, Any]:
        prompts = self.batch(number)
        with tqdm(total=len(prompts), desc=f"round {number}: study", unit="q", leave=False) as bar:
            activity = await self.community.study(prompts, on_answer=bar.update)
        self.say(
            f"round {number}: {activity.answers} answers, {activity.up_votes} 👍 / {activity.down_votes} 👎, "
            f"{activity.regenerations} 🔁, {activity.corrections} corrections, {activity.busy} busy"
        )
        book: dict[str, Any] = {}
        if self.plan.ladder:
            accepted, dropped = await self.community.review_knowledge()
            self.say(
                f"round {number}: the admin accepted {accepted} corrections into the book, dropped {dropped}"
            )
            graded, dev = await self.exams(number, "book")
            book = {"book_up_rate": up_rate(graded), "reviewed": {"accepted": accepted, "dropped": dropped}}
            if dev is not None:
                book["book_dev_up_rate"] = up_rate(dev)
        run = await self.retrain(number)
        version = self.adapter(run.adapter_version)
        status = (version or {}).get("status")
        if run.status == "succeeded" and run.adapter_version:
            await self.wait_until_served(run.adapter_version, canary=status == "candidate")
        self.say(
            f"round {number}: run #{run.id} {run.status} {run.adapter_version or ''} {status or ''} "
            f"{(version or {}).get('reason') or run.error or ''}"
        )
        graded, dev = await self.exams(number)
        row = {
            "round": number,
            "held_out_up_rate": up_rate(graded),
            "votes": len(activity.votes),
            "up_votes": activity.up_votes,
            "down_votes": activity.down_votes,
            "answers": activity.answers,
            "busy": activity.busy,
            "unanswered": activity.unanswered,
            "regenerations": activity.regenerations,
            "corrections": activity.corrections,
            "questions": len(activity.questions),
            "question_ids": activity.questions,
            "vote_log": [[member, message, value] for (member, message), value in activity.votes.items()],
            "run_id": run.id,
            "run_status": run.status,
            "run_error": run.error,
            "adapter_version": run.adapter_version,
            "adapter_status": status,
            "gate_decision": (version or {}).get("decision"),
            "served_adapter": self.served(canary=False),
            "served_canary": self.served(canary=True),
            "gate": (version or {}).get("gate"),
            "dataset_counts": (version or {}).get("dataset_counts"),
            "train_seconds": _seconds(run.started_at, run.finished_at),
        }
        if self.others:
            row |= self.cross(graded)
        if dev is not None:
            row["dev_up_rate"] = up_rate(dev)
        return row | book

    async def retrain(self, number: int) -> TrainingRun:
        """The admin runs /retrain; wait for the run it queued to finish, showing its progress."""
        with Session(self.database) as session:
            before = session.exec(select(TrainingRun.id).order_by(col(TrainingRun.id).desc())).first() or 0
        await self.community.request_retrain()
        with tqdm(desc=f"round {number}: training", unit="step", leave=False) as bar:
            while True:
                with Session(self.database) as session:
                    run = session.exec(  # two servers' /retrain in one scope (TRAIN_SCOPE=global): one run
                        select(TrainingRun).where(
                            col(TrainingRun.id) > before, TrainingRun.scope == self.scope
                        )
                    ).first()
                if run is not None:
                    bar.total = run.total_steps or bar.total
                    bar.n = run.step or 0
                    bar.set_postfix_str(run.status)
                    bar.refresh()
                    if run.status not in ("queued", "running"):
                        return run
                await asyncio.sleep(1.0)

    def adapter(self, name: str | None) -> dict[str, Any] | None:
        if name is None:
            return None
        with Session(self.database) as session:
            version = registry.get_version(session=session, name=name)
            if version is None:
                return None
            metrics = version.metrics
            gate = {
                k: v for k, v in metrics.get("gate", {}).items() if not k.endswith(("logprobs", "tokens"))
            }
            return {
                "gate": gate,
                "decision": metrics.get("gate_decision"),
                "reason": version.status_reason,
                "status": version.status,
                "dataset_counts": version.dataset_counts,
            }

    async def wait_until_served(self, name: str, *, canary: bool = False, timeout: float = 120.0) -> None:
        """The bot notices the registry change and swaps (or starts a canary); wait until it serves `name`."""
        async with asyncio.timeout(timeout):
            while self.served(canary=canary) != name:
                await asyncio.sleep(0.2)

    def served(self, *, canary: bool) -> str | None:
        """The community's own active version (or canary) as the bot serves it now."""
        plan = self.server.plan
        return plan.canary_of(self.scope) if canary else plan.active_of(self.scope)

    async def exams(self, number: int, stage: str = "") -> tuple[list[Graded], list[Graded] | None]:
        """The exam, and the dev prompts when the plan has them (graded apart, never reported as the exam);
        `stage` names an exam of the ladder taken before the usual one ("nothing" in play, the "book")."""
        graded = await self.exam(number, self.plan.heldout_prompts, "exam", stage)
        dev = await self.exam(number, self.plan.dev_prompts, "dev", stage) if self.plan.dev_prompts else None
        return graded, dev

    async def exam(self, number: int, prompts: list[str], kind: str, stage: str = "") -> list[Graded]:
        label = "base model" if number == 0 else f"round {number}"
        label += f" ({STAGES[stage]})" if stage else ""
        with tqdm(total=len(prompts), desc=f"{label}: {kind}", unit="q", leave=False) as bar:
            graded = await self.community.exam(prompts, on_answer=bar.update, activity=self.exam_activity)
        exams = self.out / "exams"
        exams.mkdir(parents=True, exist_ok=True)
        lines = [json.dumps(asdict(g), ensure_ascii=False) for g in graded]
        name = "-".join(filter(None, [None if kind == "exam" else kind, stage, f"round-{number}"])) + ".jsonl"
        (exams / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
        what = "held-out 👍-rate" if kind == "exam" else f"{kind} 👍-rate"
        self.say(f"{label}: {what} {up_rate(graded):.0%} ({len(graded)} prompts)")
        return graded


def up_rate(graded: list[Graded]) -> float:
    return sum(g.verdict > 0 for g in graded) / len(graded) if graded else 0.0


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    return (end - start).total_seconds() if start and end else None


def write_result(out: Path, result: dict[str, Any], started: float) -> None:
    result["seconds"] = round(time.monotonic() - started, 1)
    (out / "result.json").write_text(json.dumps(result, indent=2, ensure_ascii=False, default=str))


def register(app: typer.Typer) -> None:
    """Add `simulate` to the CLI."""
    app.command()(simulate)
