"""The `gradschool` command, run in-process on the tiny model and a real SQLite file."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from sqlmodel import Session, select

from gradschool.cli import app
from store import db
from store.models import Generation, Message
from tests.fixtures.cli import activate_tiny_adapter, runner


def invoke(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, f"exit {result.exit_code}: {result.output}\n{result.exception!r}"
    return result.output


def test_help_lists_the_commands() -> None:
    output = invoke("--help")
    for command in ("db", "ask", "status", "demo"):
        assert command in output


def test_db_upgrade_reaches_head(cli_env: Path) -> None:
    assert "database at revision" in invoke("db", "upgrade")
    database = db.make_engine(f"sqlite:///{cli_env / 'gradschool.db'}")
    assert db.current_revision(database) == db.head_revision()


def test_ask_records_message_and_generation(cli_env: Path) -> None:
    output = invoke("ask", "hello there")
    database = db.make_engine(f"sqlite:///{cli_env / 'gradschool.db'}")
    with Session(database) as session:
        (generation,) = session.exec(select(Generation)).all()
        (asked,) = session.exec(select(Message)).all()
    assert generation.completion.strip() in output
    assert generation.request_message_id == asked.id and asked.content == "hello there"
    assert generation.prompt[-1] == {"role": "user", "content": "hello there"}
    assert generation.prompt[0]["role"] == "system" and "the terminal" in generation.prompt[0]["content"]
    assert generation.adapter_version is None and generation.completion_tokens > 0


def test_ask_uses_the_active_adapter(cli_env: Path, make_tiny_adapter: Callable[[Path, int], Path]) -> None:
    name = activate_tiny_adapter(cli_env, make_tiny_adapter)
    database = db.make_engine(f"sqlite:///{cli_env / 'gradschool.db'}")
    invoke("ask", "hello there")
    with Session(database) as session:
        (generation,) = session.exec(select(Generation)).all()
    assert generation.adapter_version == name


def test_status_counts_rows_and_shows_each_community(cli_env: Path) -> None:
    from store import instructions, knowledge

    invoke("ask", "one")
    invoke("ask", "two")
    database = db.make_engine(f"sqlite:///{cli_env / 'gradschool.db'}")
    with Session(database) as session:
        instructions.set_instructions(session=session, scope="guild:7", text="Be brief.", by=1, max_chars=99)
        for status in ("accepted", "pending"):
            knowledge.add_passages(
                session=session, scope="guild:7", source="admin", title="t", text="Chess on Monday.",
                max_chars=600, added_by=1, status=status,
            )  # fmt: skip
    database.dispose()
    output = invoke("status")
    assert "generations:     2" in output and "messages:        2" in output
    assert "\nglobal\n  active adapter:  none (base model)" in output
    assert (
        "\nguild:7\n  active adapter:  none (base model)\n  instructions:    server-wide version 1\n"
        in output
    )
    assert "  open book:       1 passages, 1 waiting for review" in output


def test_demo_answers_and_shows_rows(cli_env: Path) -> None:
    output = invoke("demo")
    assert output.count("Q: ") == 3 and output.count("A: ") == 3
    assert "generations  3" in output


def test_bad_setting_stops_with_the_variable_named(cli_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEL_DEVICE", "tpu")
    result = runner.invoke(app, ["status"])
    assert result.exit_code == 2
    assert "MODEL_DEVICE" in result.output and "set MODEL_DEVICE" in result.output
