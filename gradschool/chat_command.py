"""`gradschool chat`: the loop in a terminal, without Discord, writing to the same store as the bot."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated

import typer
from sqlmodel import Session

from gradschool.context import invocation, open_database
from store import crud, registry, runs
from store.models import Generation
from store.settings import Settings

if TYPE_CHECKING:
    from engine import ChatMessage, Completion
    from engine.backend import Server

HELP = """Type a message to talk to the model. Commands:
  /good            the last answer was good (👍)
  /bad             the last answer was bad (👎)
  /retry           another answer to the same question (🔁)
  /correct TEXT    TEXT is the answer it should have given
  /retrain         ask the trainer service for a new adapter
  /status          the adapter in use, what is recorded, the last training run
  /new             start a new conversation
  /quit            leave (Ctrl-D too)"""


class TerminalChat:
    """One person's conversation with the model; every turn, vote and correction goes into the store."""

    def __init__(
        self,
        settings: Settings,
        session: Session,
        server: Server,
        runner: asyncio.Runner,
        user_id: int,
        say: Callable,
    ) -> None:
        self.settings = settings
        self.session = session
        self.server = server
        self.runner = runner  # the event loop the server lives on, run for each answer
        self.user_id = user_id
        self.say = say
        self.adapter: str | None = None
        self.history: list[ChatMessage] = []
        self.last: Generation | None = None

    def handle(self, line: str) -> bool:
        """Act on one line of input; False when the person wants to leave."""
        text = line.strip()
        command, _, argument = text.partition(" ")
        if not text:
            return True
        if command in ("/quit", "/exit"):
            return False
        actions: dict[str, Callable[[str], None]] = {
            "/good": lambda _: self.vote(1),
            "/bad": lambda _: self.vote(-1),
            "/retry": lambda _: self.retry(),
            "/correct": self.correct,
            "/retrain": lambda _: self.retrain(),
            "/status": lambda _: self.status(),
            "/new": lambda _: self.new(),
            "/help": lambda _: self.say(HELP),
        }
        if command in actions:
            actions[command](argument.strip())
        elif text.startswith("/"):
            self.say(f"unknown command {command}; /help lists them")
        else:
            self.ask(text)
        return True

    def ask(self, text: str) -> None:
        asked = crud.record_message(
            session=self.session, discord_id=None, author_id=self.user_id, author_name="terminal",
            role="user", content=text,
        )  # fmt: skip
        self.history.append({"role": "user", "content": text})
        self.answer(request_message_id=asked.id)

    def answer(self, *, request_message_id: int | None, regenerates: int | None = None) -> None:
        """Stream an answer to the conversation so far on the active adapter and record it."""
        self.follow_registry()
        system = self.settings.model.system_prompt.format(
            date=time.strftime("%Y-%m-%d"), server="the terminal", channel="gradschool chat"
        )
        temperature = self.settings.discord.regenerate_temperature if regenerates else None
        messages: list[ChatMessage] = [{"role": "system", "content": system}, *self.history]

        async def speak() -> Completion:
            stream = self.server.stream(messages, adapter=self.adapter, temperature=temperature)
            async with stream:  # Ctrl-C mid-answer frees its place
                async for piece in stream:
                    self.say(piece, nl=False)
            self.say("")
            return stream.completion

        completion = self.runner.run(speak())
        self.last = crud.record_generation(
            session=self.session, request_message_id=request_message_id, user_id=self.user_id,
            regenerates=regenerates, **completion.record_fields(),
        )  # fmt: skip
        self.history.append({"role": "assistant", "content": completion.text})

    def retry(self) -> None:
        if self.last is None:
            self.say("nothing to retry yet: ask something first")
            return
        previous = self.last
        self.history.pop()  # the answer being replaced
        self.answer(request_message_id=previous.request_message_id, regenerates=previous.id)

    def vote(self, value: int) -> None:
        if self.last is None or self.last.id is None:
            self.say("nothing to vote on yet: ask something first")
            return
        crud.record_feedback(
            session=self.session, generation_id=self.last.id, rater_id=self.user_id, value=value
        )
        self.say(f"recorded {'👍' if value > 0 else '👎'} on answer #{self.last.id}")

    def correct(self, text: str) -> None:
        if self.last is None or self.last.id is None:
            self.say("nothing to correct yet: ask something first")
            return
        if not text:
            self.say("usage: /correct TEXT (the answer it should have given)")
            return
        crud.record_correction(
            session=self.session, generation_id=self.last.id, author_id=self.user_id, content=text
        )
        self.say(f"recorded your correction of answer #{self.last.id}; it will be trained on")

    def retrain(self) -> None:
        run = runs.queue_training_run(session=self.session, reason="admin", requested_by=self.user_id)
        self.say(
            f"training run #{run.id} is {run.status}; `gradschool trainer` (the service) or "
            "`gradschool train --now` runs it, and this chat switches to the new adapter when it passes"
        )

    def status(self) -> None:
        self.follow_registry()
        counts = crud.store_counts(session=self.session)
        last = runs.latest_run(session=self.session)
        self.say(f"adapter: {self.adapter or 'base model'}")
        self.say(", ".join(f"{name} {count}" for name, count in counts.items()))
        if last is not None:
            self.say(
                f"last training run: #{last.id} {last.status} {last.adapter_version or ''} {last.error or ''}"
            )

    def new(self) -> None:
        self.history, self.last = [], None
        self.say("new conversation")

    def follow_registry(self) -> None:
        """Serve the registry's active adapter: a run that passed while we talked takes over here too."""
        self.session.expire_all()  # see what other processes committed
        active = registry.active_version(session=self.session)
        name = active.name if active else None
        if name == self.adapter:
            return
        if active is not None and name not in self.server.loaded_adapters:
            self.runner.run(self.server.load_adapter(active.name, registry.folder(active)))
        self.say(f"[now answering with {name or 'the base model'}]")
        self.adapter = name


def chat(
    user_id: Annotated[int, typer.Option(help="Who you are in the store (votes are one per person).")] = 1,
) -> None:
    """Talk to the model in the terminal; /good, /bad, /retry, /correct, /retrain, /status are recorded."""
    from engine.backend import start_server

    settings = invocation.settings
    with Session(open_database(settings)) as session, asyncio.Runner() as runner:
        server = runner.run(start_server(settings))
        terminal = TerminalChat(settings, session, server, runner, user_id, typer.echo)
        typer.echo(HELP)
        try:
            while True:
                try:
                    line = input("> ")
                except EOFError:
                    break
                if not terminal.handle(line):
                    break
        finally:
            runner.run(server.close())


def register(app: typer.Typer) -> None:
    """Add `chat` to the CLI."""
    app.command()(chat)
