"""Faults: the bot's process is SIGKILLed and started again.

The bot runs as a real process (support/bot_process.py, which runs `gradschool bot`'s own serve) against
an emulator in a thread of the test. The votes it had recorded before the kill are all in the store
afterwards, the new process records votes on answers the old one gave, and it answers with the active
adapter from its first answer on: the registry poll is set to an hour, so only its start-up check can have
loaded it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine as Database
from sqlmodel import Session, col, select

from sim.discord_emulator import DiscordEmulator, Message
from store import db, registry
from store.models import Feedback, Generation
from store.settings import Settings
from tests.fixtures.discord import Community
from tests.reliability.support.training_faults import wait_for

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def emulator() -> Iterator[DiscordEmulator]:
    """An emulator in a thread of its own (the bot is another process; the test drives it synchronously)."""
    started = DiscordEmulator()
    started.start_in_thread()
    yield started
    started.stop_thread()


@pytest.fixture
def community(emulator: DiscordEmulator) -> Community:
    guild = emulator.call(emulator.add_guild("Grad School"))
    general = emulator.call(emulator.add_channel(guild, "general"))
    alice, bob = emulator.call(emulator.add_user("alice")), emulator.call(emulator.add_user("bob"))
    for person in (alice, bob):
        emulator.call(emulator.add_member(guild, person))
    return Community(guild, general, alice, bob)


@pytest.fixture
def database(tiny_settings: Settings, make_tiny_adapter) -> Iterator[Database]:
    """The store the bot will open, with v1 (a real adapter for the tiny model) active."""
    database = db.open_store(tiny_settings)
    with Session(database) as session:
        name = registry.next_version_name(session=session)
        staging = make_tiny_adapter(registry.staging_dir(tiny_settings.adapters_dir), 1)
        registry.register_adapter(
            session=session,
            name=name,
            staging=staging,
            adapters_dir=tiny_settings.adapters_dir,
            base_model="tiny",
            method="sft",
            status="active",
        )
    yield database
    database.dispose()


@pytest.fixture
def start_bot(
    tmp_path: Path, tiny_settings: Settings, emulator: DiscordEmulator, community: Community
) -> Iterator[Callable[[], subprocess.Popen]]:
    """`start_bot()`: a bot process on the tiny model and the store in tiny_settings' data dir."""
    env = os.environ | {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "HF_HUB_OFFLINE": "1",
        "GRADSCHOOL_DATA_DIR": str(tiny_settings.data_dir),
        "BASE_MODEL": str(tiny_settings.model.base_model),
        "MODEL_DEVICE": "cpu",
        "MODEL_DTYPE": tiny_settings.model.dtype,
        "MODEL_TEMPERATURE": "0",
        "MODEL_MAX_NEW_TOKENS": "32",  # the tiny model's context is 256 tokens
        "DISCORD_TOKEN": emulator.token,
        "DISCORD_GUILD_IDS": str(community.guild.id),
        "DISCORD_EDIT_INTERVAL_S": "0.05",
        "DISCORD_REGISTRY_POLL_S": "3600",  # only the start-up check can put it on the active adapter
    }
    started: list[subprocess.Popen] = []

    def start() -> subprocess.Popen:
        log = tmp_path / f"bot-{len(started)}.log"
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.reliability.support.bot_process", emulator.base_url],
            cwd=ROOT,
            env=env,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        started.append(process)
        readies = len(started)

        def ready() -> bool:
            assert process.poll() is None, log.read_text()[-3000:]
            return [d.event for d in emulator.dispatches].count("READY") == readies

        wait_for(ready, 300, "the bot process to connect")
        emulator.call(emulator.wait_until_connected(timeout=60), timeout=70)
        return process

    yield start
    for process in started:
        process.kill()
        process.wait()


def on_emulator(emulator: DiscordEmulator, condition: Callable[[], Any], what: str) -> Any:
    """Wait for `condition` on the emulator's own thread (it reads the emulator's state)."""
    return emulator.call(emulator.wait_for(condition, timeout=120, what=what), timeout=130)


def ask(emulator: DiscordEmulator, community: Community, text: str) -> Message:
    """alice asks; the bot's finished answer (its feedback reactions come last)."""
    question = emulator.call(
        emulator.send_message(community.general, community.alice, text, mentions_bot=True)
    )
    return on_emulator(
        emulator,
        lambda: next(
            (
                m
                for m in emulator.bot_messages(community.general)
                if m.reference_id == question.id and m.reactors("🔁")
            ),
            None,
        ),
        f"the answer to {text!r}",
    )


def generations(database: Database) -> list[Generation]:
    with Session(database) as session:
        return list(session.exec(select(Generation).order_by(col(Generation.id))))


def votes(database: Database) -> list[tuple[int, int, bool]]:
    """(rater, value, live) of every Feedback row."""
    with Session(database) as session:
        return sorted((f.rater_id, f.value, f.removed_at is None) for f in session.exec(select(Feedback)))


def test_a_killed_bot_restarts_on_the_active_adapter_and_keeps_every_recorded_vote(
    emulator: DiscordEmulator, community: Community, database: Database, start_bot
) -> None:
    general, alice, bob = community.general, community.alice, community.bob
    first_bot = start_bot()
    answer = ask(emulator, community, "what is the capital of France?")
    emulator.call(emulator.add_reaction(alice, general, answer, "👍"))
    emulator.call(emulator.add_reaction(bob, general, answer, "👎"))
    recorded = sorted([(alice.id, 1, True), (bob.id, -1, True)])
    wait_for(lambda: votes(database) == recorded, 60, "both votes in the store")  # acknowledged

    first_bot.send_signal(signal.SIGKILL)
    assert first_bot.wait(timeout=30) == -signal.SIGKILL
    start_bot()

    assert votes(database) == recorded  # nothing recorded was lost with the process
    # the new process never saw that answer, yet a changed vote on it counts (raw reaction events)
    emulator.call(emulator.remove_reaction(bob, general, answer, "👎"))
    emulator.call(emulator.add_reaction(bob, general, answer, "👍"))
    wanted = sorted([(alice.id, 1, True), (bob.id, 1, True)])
    wait_for(lambda: votes(database) == wanted, 60, "bob's changed vote")
    again = ask(emulator, community, "and the capital of Italy?")

    first, second = wait_for(lambda: len(generations(database)) == 2 and generations(database), 60, "2 rows")
    assert (first.discord_message_ids, second.discord_message_ids) == ([answer.id], [again.id])
    assert (first.adapter_version, second.adapter_version) == ("v1", "v1")  # before and after the restart
