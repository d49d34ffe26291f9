"""The trainer's commands: `train --now`, `trainer` (the service) and `export`."""

from __future__ import annotations

from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from sqlmodel import Session
from tqdm import tqdm

from gradschool.context import invocation, open_database
from store import runs
from store.datasets import build_datasets, write_jsonl
from store.models import TrainingRun
from store.scopes import GLOBAL, guild_of


def _checked_scope(scope: str) -> str:
    try:
        guild_of(scope)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    return scope


ScopeOption = Annotated[
    str,
    typer.Option(
        help="Whose adapter: 'global', or one server's own as 'guild:<server id>' (see /status there).",
        callback=_checked_scope,
    ),
]


class Kind(StrEnum):
    sft = "sft"
    dpo = "dpo"
    kto = "kto"


class Split(StrEnum):
    train = "train"
    holdout = "holdout"
    all = "all"


def train(
    now: Annotated[bool, typer.Option("--now", help="Run one cycle here, in the foreground.")] = False,
    scope: ScopeOption = GLOBAL,
) -> None:
    """Train a new adapter from the feedback: with --now here and now, else ask the trainer service."""
    from trainer.runner import run_cycle

    settings = invocation.settings
    database = open_database(settings)
    with Session(database) as session:
        queued = runs.queue_training_run(session=session, reason="admin", scope=scope)
        if not now:
            typer.echo(f"queued training run #{queued.id} ({scope}); the trainer service will pick it up")
            return
        run = runs.claim_run_if_idle(
            session=session, stale_after=timedelta(seconds=settings.train.heartbeat_timeout_s), scope=scope
        )
    if run is None:
        message = "another training run is in progress; yours stays queued"
        typer.secho(message, fg=typer.colors.YELLOW, err=True)
        raise typer.Exit(1)
    with tqdm(desc=f"run #{run.id}", unit="step") as bar:

        def show(progress: TrainingRun) -> None:
            if progress.total_steps:
                bar.total = progress.total_steps
            bar.n = progress.step or 0
            bar.set_postfix(loss=f"{progress.loss:.3f}" if progress.loss is not None else "-")
            bar.refresh()

        finished = run_cycle(settings=settings, database=database, run_id=run.id, on_progress=show)
    assert finished is not None
    outcome = " ".join(filter(None, [finished.adapter_version, finished.error]))
    typer.echo(f"run #{finished.id} {finished.status}: {outcome}")
    if finished.status == "failed":
        raise typer.Exit(1)


def trainer() -> None:
    """Run the trainer service: the schedule, /retrain requests, the new-feedback threshold, canaries."""
    from trainer.service import serve

    settings = invocation.settings
    serve(database=open_database(settings), settings=settings)


def export(
    kind: Annotated[Kind, typer.Option(help="Which dataset.")],
    out: Annotated[Path, typer.Option(help="JSON-lines file to write.")],
    split: Annotated[Split, typer.Option(help="Train split, hold-out split, or both.")] = Split.train,
    scope: ScopeOption = GLOBAL,
) -> None:
    """Write a training dataset in TRL's format (loads with datasets.load_dataset("json", ...))."""
    settings = invocation.settings
    with Session(open_database(settings)) as session:
        data = build_datasets(session=session, settings=settings.train, scope=scope)
    rows = []
    if split in (Split.train, Split.all):
        rows += data.train[kind.value]
    if split in (Split.holdout, Split.all):
        rows += data.holdout[kind.value]
    typer.echo(f"wrote {write_jsonl(rows, out)} {kind.value} examples to {out}")


def register(app: typer.Typer) -> None:
    """Add the trainer's commands to the `gradschool` app."""
    app.command()(train)
    app.command()(trainer)
    app.command()(export)
