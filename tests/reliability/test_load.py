"""Load: 50 people in 10 channels for a minute, while a training run finishes and its adapter swaps in.

The bot runs on the test's loop with its shipped limits (5 answers a minute per person, 2 at once per
channel); the emulator and the people (sim/load.py) run on a loop of their own in a thread. Afterwards
(sim/load_audit.py): every request got exactly one reply, an answer or a clear busy / rate-limit notice;
every answered question is one Message row and its answer one linked Generation (questions refused before
they are read, for the rate limit or a full channel, are not recorded: that is by design, and counted); the
live votes in the store are exactly the 👍/👎 on Discord now; no handler logged an error; and the bot's event
loop never stalled for a second. The load runs at least 60 s and on until the new adapter has answered for a
while. `bench/soak.py` is the long version.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine as Database
from sqlmodel import Session, col, select

from bot.client import GradschoolBot, Services
from sim.discord_emulator import DiscordEmulator, restore_discord_py, running
from sim.load import LoadConfig, LoadDriver, populate
from sim.load_audit import settled_audit
from sim.process_probes import LogTally, LoopProbe
from sim.seeding import seed_community
from store import db, runs
from store.models import Generation, TrainingRun
from store.settings import Settings
from trainer import service

LOAD = LoadConfig(users=50, channels=10, seconds=60, max_seconds=240, seed=7)
AFTER_SWAP_S = 10  # the load goes on this long after the swap, so the new adapter answers under load too


@pytest.fixture
def emulator() -> Iterator[DiscordEmulator]:
    """An emulator on its own loop in a thread, so the bot's loop carries only the bot."""
    emulator = DiscordEmulator()
    emulator.start_in_thread()
    try:
        yield emulator
    finally:
        emulator.stop_thread()
        restore_discord_py()


@pytest.fixture
def settings(train_settings: Settings) -> Settings:
    """The tiny model with short answers; a short SFT-only run; the bot's default limits."""
    train = train_settings.train.model_copy(
        # SFT only: a DPO stage would double a run that already takes most of a minute on 2 cores
        update={"max_steps": 2, "dpo_min_pairs": 1000, "kto_min_examples": 1000}
    )
    discord = train_settings.discord.model_copy(update={"registry_poll_s": 1.0})  # the rest as shipped
    return train_settings.model_copy(update={"train": train, "discord": discord})


@pytest.fixture
def database(settings: Settings) -> Iterator[Database]:
    database = db.open_store(settings)
    with Session(database) as session:
        seed_community(session, prompts=24)  # the history the training run learns from
    yield database
    database.dispose()


class TrainingThread(threading.Thread):
    """Queue a run and do what the trainer service's next check does: claim, train, gate, activate."""

    def __init__(self, database: Database, settings: Settings) -> None:
        super().__init__(name="training", daemon=True)
        self.database, self.settings = database, settings
        self.run_row: TrainingRun | None = None

    def run(self) -> None:
        with Session(self.database) as session:
            runs.queue_training_run(session=session, reason="admin")
        self.run_row = service.check(database=self.database, settings=self.settings)


async def test_fifty_people_for_a_minute_while_an_adapter_swaps_in(
    emulator: DiscordEmulator, settings: Settings, database: Database
) -> None:
    population = emulator.call(populate(emulator, LOAD.users, LOAD.channels))
    discord = settings.discord.model_copy(update={"guild_ids": [population.guild_id]})
    settings = settings.model_copy(update={"discord": discord})
    training = TrainingThread(database, settings)
    training.start()  # a head start: it needs most of a minute on 2 cores, and must finish mid-load
    services = await Services.start(settings, database)
    probe = LoopProbe(watch=lambda: services.server.active_adapter)
    driver = LoadDriver(emulator, population, LOAD)

    def swapped_a_while_ago() -> bool:  # read from the emulator's thread; the probe appends on the bot's
        changes = probe.changes
        return len(changes) > 1 and time.monotonic() - changes[-1][0] > AFTER_SWAP_S

    with LogTally() as logs:
        try:
            async with running(GradschoolBot(services), emulator, timeout=30, threaded=True):
                probe.start()
                run = driver.run(until=swapped_a_while_ago)
                record = await asyncio.to_thread(emulator.call, run, LOAD.max_seconds + LOAD.answer_timeout_s)
                report = await settled_audit(driver, emulator, database)
                await probe.stop()
        finally:
            await services.server.close()
    await asyncio.to_thread(training.join, 300)

    stats = probe.summary()
    swapped_at = probe.changes[-1][0] - probe.changes[0][0]
    print(f"\nload {record.seconds:.0f} s, swap at {swapped_at:.0f} s: {report.summary()}\nbot: {stats}")
    print(f"warnings: {logs.warnings}\nstalled in:\n" + "\n".join(f"{t} s:\n{s}" for t, s in probe.caught))
    assert training.run_row is not None and training.run_row.status == "succeeded", training.run_row
    assert [value for _, value in probe.changes] == [None, "v1"]  # swapped once, mid-load
    served = {g.adapter_version for g in _generations(database, population.channel_ids)}
    assert served == {None, "v1"}  # answers came from the base model and then from the new adapter
    assert report.problems == []
    assert logs.errors == []
    assert probe.max_stall_s < 1.0, stats
    kinds = {ask.kind for ask in record.asks}
    assert kinds == {"mention", "reply", "regenerate"} and report.counts["votes_live_on_discord"] > 0
    assert report.counts["mention_answer"] > 0 and report.counts["reply_answer"] > 0
    assert report.counts["commands_answered"] == report.counts["commands"] > 0


def _generations(database: Database, channel_ids: list[int]) -> list[Generation]:
    with Session(database) as session:
        return list(session.exec(select(Generation).where(col(Generation.channel_id).in_(channel_ids))))
