"""The `gradschool` command: the composition root that wires settings, store and engine together."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from sqlmodel import Session

from gradschool import bot_command, chat_command, simulate, training
from gradschool.context import invocation, open_database
from store import backup, communities, crud, db, instructions, knowledge, registry, runs
from store.models import Generation
from store.settings import Settings

if TYPE_CHECKING:
    from engine.backend import Server

# show_locals off: a traceback must never print the settings object's secrets
app = typer.Typer(
    help="A Discord bot that goes to graduate school on its community's thumbs.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
db_app = typer.Typer(help="Database migrations and maintenance.", no_args_is_help=True)
app.add_typer(db_app, name="db")
training.register(app)
bot_command.register(app)
simulate.register(app)
chat_command.register(app)

logger = logging.getLogger("gradschool")

DEMO_QUESTIONS = (
    "What is the capital of France?",
    "Give me one tip for writing clear Python code.",
    "What is a LoRA adapter, in one sentence?",
)


@app.callback()
def main(
    env_file: Annotated[Path, typer.Option(help="Settings file read after the environment.")] = Path(".env"),
) -> None:
    """Configure logging; settings are read lazily so `--help` works with a broken .env."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)  # one line per migration step is noise here
    invocation.reset(env_file)


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument(help="Target revision.")] = "head") -> None:
    """Apply the database migrations up to REVISION."""
    settings = invocation.settings
    database = db.make_engine(settings.database_url, busy_timeout_ms=settings.store.busy_timeout_ms)
    db.upgrade(database, revision)
    typer.echo(f"database at revision {db.current_revision(database)}")


@db_app.command("backup")
def db_backup(file: Annotated[Path, typer.Argument(help="The backup file to write.")]) -> None:
    """Copy the database to FILE, safely while the bot runs (SQLite: a database file; Postgres: pg_dump -Fc).

    Adapter folders are not in the database: copy the data dir's adapters/ too.
    """
    settings = invocation.settings
    database = db.make_engine(settings.database_url, busy_timeout_ms=settings.store.busy_timeout_ms)
    try:
        written = backup.backup_database(database=database, target=file)
    except backup.BackupError as exc:
        typer.secho(str(exc), fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    typer.echo(f"backed up {database.url.render_as_string(hide_password=True)} to {written}")


@db_app.command("restore")
def db_restore(
    file: Annotated[Path, typer.Argument(help="A backup written by `gradschool db backup`.")],
    yes: Annotated[bool, typer.Option("--yes", help="Replace the database without asking.")] = False,
) -> None:
    """Replace everything in the database with the backup in FILE, then migrate it to this code's head."""
    settings = invocation.settings
    database = db.make_engine(settings.database_url, busy_timeout_ms=settings.store.busy_timeout_ms)
    url = database.url.render_as_string(hide_password=True)
    try:
        revision = backup.backup_revision(database=database, source=file)  # refuse before asking
        if not yes:
            typer.confirm(f"Replace everything in {url} with {file} (revision {revision})?", abort=True)
        restored = backup.restore_database(database=database, source=file)
    except backup.BackupError as exc:
        typer.secho(str(exc), fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    typer.echo(f"restored {file} into {url}; database at revision {restored}")


def _start_server(settings: Settings, session: Session, runner: asyncio.Runner) -> tuple[Server, str | None]:
    """The configured backend with the active adapter loaded (torch is imported only by commands that
    generate)."""
    from engine.backend import start_server

    server = runner.run(start_server(settings))
    active = registry.active_version(session=session)
    if active is not None:
        runner.run(server.activate(active.name, registry.folder(active)))
    return server, (active.name if active else None)


def _ask_and_record(
    server: Server, runner: asyncio.Runner, session: Session, question: str, adapter: str | None
) -> Generation:
    """One question to the model, recorded as the asker's Message and the model's Generation."""
    settings = invocation.settings
    asked = crud.record_message(
        session=session, discord_id=None, author_name="cli", role="user", content=question
    )
    system = settings.model.system_prompt.format(
        date=time.strftime("%Y-%m-%d"), server="the terminal", channel="gradschool ask"
    )
    completion = runner.run(
        server.generate(
            [{"role": "system", "content": system}, {"role": "user", "content": question}], adapter=adapter
        )
    )
    return crud.record_generation(session=session, request_message_id=asked.id, **completion.record_fields())


@app.command()
def ask(question: Annotated[str, typer.Argument(help="What to ask the model.")]) -> None:
    """Ask the model one question on the active adapter; the answer is recorded as a Generation."""
    settings = invocation.settings
    with Session(open_database(settings)) as session, asyncio.Runner() as runner:
        server, adapter = _start_server(settings, session, runner)
        try:
            generation = _ask_and_record(server, runner, session, question, adapter)
        finally:
            runner.run(server.close())
        typer.echo(generation.completion)
        logger.info(
            "recorded generation %s (%s tokens, %.0f ms, adapter %s)",
            generation.id,
            generation.completion_tokens,
            generation.latency_ms,
            adapter or "base",
        )


@app.command()
def status() -> None:
    """Show the base model, how much has been recorded, and each community's adapter, last run and rungs."""
    from engine import base_model_id

    settings = invocation.settings
    with Session(open_database(settings)) as session:
        counts = crud.store_counts(session=session)
        scopes = [
            (scope, _scope_status(session, scope)) for scope in communities.known_scopes(session=session)
        ]
    typer.echo(f"base model:      {base_model_id(settings)}")
    for name, count in counts.items():
        typer.echo(f"{name + ':':<16} {count}")
    for scope, lines in scopes:
        typer.echo(f"\n{scope}")
        for line in lines:
            typer.echo(f"  {line}")


def _scope_status(session: Session, scope: str) -> list[str]:
    """One community's active adapter, last run, instructions and open book, as lines."""
    active = registry.active_version(session=session, scope=scope)
    lines = [f"active adapter:  {f'{active.name} ({active.method})' if active else 'none (base model)'}"]
    last_run = runs.latest_run(session=session, scope=scope)
    if last_run is not None:
        lines.append(
            f"last run:        #{last_run.id} {last_run.status} ({last_run.reason}) "
            f"{last_run.created_at:%Y-%m-%d %H:%M}"
        )
    server = instructions.latest_instructions(session=session, scope=scope)
    if server is not None and server.text:
        lines.append(f"instructions:    server-wide version {server.version}")
    book = knowledge.count_passages(session=session, scope=scope)
    if book:
        pending = f", {book['pending']} waiting for review" if book.get("pending") else ""
        lines.append(f"open book:       {book.get('accepted', 0)} passages{pending}")
    return lines


@app.command()
def demo() -> None:
    """Load the model (embedded SmolLM2 unless BASE_MODEL is set), ask it a few questions, show the rows."""
    settings = invocation.settings
    typer.echo(f"data dir: {settings.data_dir}")
    with Session(open_database(settings)) as session, asyncio.Runner() as runner:
        started = time.perf_counter()
        server, adapter = _start_server(settings, session, runner)
        typer.echo(f"model loaded in {time.perf_counter() - started:.1f} s (adapter: {adapter or 'base'})\n")
        for question in DEMO_QUESTIONS:
            generation = _ask_and_record(server, runner, session, question, adapter)
            typer.echo(
                f"Q: {question}\nA: {generation.completion.strip()}\n"
                f"   [{generation.completion_tokens} tokens in {generation.latency_ms / 1000:.1f} s, "
                f"recorded as generation #{generation.id}]\n"
            )
        runner.run(server.close())
        typer.echo("rows in the store:")
        for name, count in crud.store_counts(session=session).items():
            typer.echo(f"  {name:<12} {count}")


if __name__ == "__main__":
    app()
