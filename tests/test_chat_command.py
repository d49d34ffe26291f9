"""`gradschool chat`: the loop in a terminal, on the tiny model, writing to the same store as the bot."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sqlmodel import Session, select

from gradschool.cli import app
from store import db
from store.models import Correction, Feedback, Generation, Message, TrainingRun
from tests.fixtures.cli import activate_tiny_adapter, runner


def chat(script: list[str], *args: str) -> str:
    result = runner.invoke(app, ["chat", *args], input="\n".join(script) + "\n")
    assert result.exit_code == 0, f"exit {result.exit_code}: {result.output}\n{result.exception!r}"
    return result.output


def test_every_turn_vote_retry_correction_and_retrain_is_recorded(cli_env: Path) -> None:
    output = chat(
        ["/good", "hello there", "/good", "/retry", "/bad", "/correct", "/correct A better answer.",
         "/retrain", "/status", "/bogus", "/quit", "never read"],
        "--user-id", "7",
    )  # fmt: skip
    database = db.make_engine(f"sqlite:///{cli_env / 'gradschool.db'}")
    with Session(database) as session:
        [asked] = session.exec(select(Message)).all()
        first, second = session.exec(select(Generation).order_by(Generation.id)).all()
        votes = session.exec(select(Feedback).order_by(Feedback.id)).all()
        [correction] = session.exec(select(Correction)).all()
        [run] = session.exec(select(TrainingRun)).all()
    assert (asked.content, asked.author_id) == ("hello there", 7)
    assert first.request_message_id == second.request_message_id == asked.id
    assert second.regenerates == first.id and second.prompt == first.prompt  # 🔁: same question again
    assert [(v.generation_id, v.rater_id, v.value) for v in votes] == [(first.id, 7, 1), (second.id, 7, -1)]
    assert (correction.generation_id, correction.author_id, correction.content) == (
        second.id, 7, "A better answer.",
    )  # fmt: skip
    assert (run.reason, run.requested_by, run.status) == ("admin", 7, "queued")
    assert "nothing to vote on yet" in output and "usage: /correct TEXT" in output
    assert "unknown command /bogus" in output and f"training run #{run.id} is queued" in output
    assert "adapter: base model" in output and "generations 2" in output


def test_a_new_active_adapter_takes_over_between_turns(
    cli_env: Path,
    make_tiny_adapter: Callable[[Path, int], Path],
) -> None:
    chat(["hello"])  # creates the store
    name = activate_tiny_adapter(cli_env, make_tiny_adapter)
    output = chat(["hello again", "/new", "and again"])
    with Session(db.make_engine(f"sqlite:///{cli_env / 'gradschool.db'}")) as session:
        generations = session.exec(select(Generation).order_by(Generation.id)).all()
    assert [g.adapter_version for g in generations] == [None, name, name]
    assert f"[now answering with {name}]" in output and "new conversation" in output
    assert generations[2].prompt[1:] == [{"role": "user", "content": "and again"}]  # /new forgot the rest
