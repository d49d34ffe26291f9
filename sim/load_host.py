"""The Discord emulator and the load's people in a process of their own, so the bot's holds only the bot.

The emulator keeps every message, dispatch and REST call it ever saw (the audit reads them back), so in the
bot's process it would hide whether the bot's own memory stays bounded. bench/soak.py starts `host` in a
child process and talks to it over a `multiprocessing` pipe:

    child -> parent  {"base_url", "token", "guild_id", "channel_ids"}   the emulator is up and populated
    (the parent connects its bot to base_url; the child waits for the connection, then runs the load)
    child -> parent  {"seconds", "counts", "latency_s", "problems", "rss_mb"}   after the audit
    child -> parent  {"error": traceback}   if anything in the child failed

The audit runs while the parent's bot is still connected (the store may be catching up with Discord), and
reads the parent's store through `database_url`.
"""

from __future__ import annotations

import asyncio
import threading
import time
import traceback
from multiprocessing.connection import Connection
from typing import Any

from sim.discord_emulator import DiscordEmulator
from sim.load import LoadConfig, LoadDriver, populate
from sim.load_audit import settled_audit
from sim.process_probes import rss_mb
from store.db import make_engine

CONNECT_TIMEOUT_S = 120.0  # the parent loads its model before it connects


def host(connection: Connection, config: LoadConfig, database_url: str, progress_every_s: float) -> None:
    """The child process's whole life: emulator up, people in, load run, audit sent back."""
    emulator = DiscordEmulator()
    emulator.start_in_thread()
    try:
        population = emulator.call(populate(emulator, config.users, config.channels))
        connection.send(
            {
                "base_url": emulator.base_url,
                "token": emulator.token,
                "guild_id": population.guild_id,
                "channel_ids": population.channel_ids,
            }
        )
        emulator.call(emulator.wait_until_connected(CONNECT_TIMEOUT_S), CONNECT_TIMEOUT_S + 1)
        driver = LoadDriver(emulator, population, config)
        stop = threading.Event()
        threading.Thread(target=_progress, args=(driver, stop, progress_every_s), daemon=True).start()
        record = emulator.call(driver.run(), config.seconds + config.answer_timeout_s + 60)
        stop.set()
        database = make_engine(database_url)
        report = asyncio.run(settled_audit(driver, emulator, database))
        database.dispose()
        connection.send(
            {
                "seconds": record.seconds,
                "counts": report.counts,
                "latency_s": report.latency_s,
                "problems": report.problems,
                "rss_mb": rss_mb(),
            }
        )
    except BaseException:
        connection.send({"error": traceback.format_exc()})
        raise
    finally:
        emulator.stop_thread()
        connection.close()


def _progress(driver: LoadDriver, stop: threading.Event, every_s: float) -> None:
    started = time.monotonic()
    while not stop.wait(every_s):
        record = driver.record
        answered = sum(1 for ask in record.asks if ask.outcome == "answer")
        print(
            f"  load {(time.monotonic() - started) / 60:.0f} min: {len(record.asks)} requests, "
            f"{answered} answered, {record.votes_added} votes; emulator process RSS {rss_mb():.0f} MiB",
            flush=True,
        )


def receive(connection: Connection, timeout_s: float) -> dict[str, Any]:
    """The child's next message (blocking: call it in a thread); its error, or silence, raises."""
    if not connection.poll(timeout_s):
        raise TimeoutError(f"the load process said nothing for {timeout_s:.0f} s")
    message: dict[str, Any] = connection.recv()
    if "error" in message:
        raise RuntimeError(f"the load process failed:\n{message['error']}")
    return message
