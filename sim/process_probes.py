"""Watching a running bot from inside its process: event-loop stalls, memory, a watched value, log records."""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import statistics
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def _status_mb(*names: str) -> list[float]:
    """Fields of /proc/self/status (reported in kB) in MiB, so no psutil is needed; 0 where there are none."""
    status = Path("/proc/self/status")
    lines = status.read_text().splitlines() if status.exists() else []
    fields = dict(line.split(":", 1) for line in lines if ":" in line)
    return [int(fields[name].split()[0]) / 1024 if name in fields else 0.0 for name in names]


def rss_mb() -> float:
    """This process's resident memory in MiB; 0 where /proc has none."""
    return _status_mb("VmRSS")[0]


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def mappings_kb() -> dict[str, tuple[int, int]]:
    """This process's memory mappings (Linux): "start name" -> (size, resident) in kB; {} elsewhere.

    Diffed over a run it says which mapping grew: glibc's main heap ("[heap]"), one of its per-thread arenas
    (anonymous, 64 MiB reserved each), Python's object arenas (anonymous, 1 MiB each, often merged by the
    kernel into larger runs), a thread's stack, or a mapped file.
    """
    smaps = Path("/proc/self/smaps")
    if not smaps.exists():
        return {}
    found: dict[str, tuple[int, int]] = {}
    key, size = "", 0
    for line in smaps.read_text().splitlines():
        fields = line.split()
        if "-" in fields[0] and ":" not in fields[0]:  # a header: start-end perms offset dev inode [name]
            # keyed by the start alone: a growing heap or arena keeps its start and moves its end
            key = f"{fields[0].split('-')[0]} {fields[5] if len(fields) > 5 else '[anonymous]'}"
        elif fields[0] == "Size:":
            size = int(fields[1])
        elif fields[0] == "Rss:":
            found[key] = (size, int(fields[1]))
    return found


def memory_mb() -> dict[str, float]:
    """This process's memory in MiB: RSS, split into anonymous and file-backed pages, and what glibc's
    allocator holds from the system against what it has handed out and not had back (0 off glibc/Linux).

    In use flat while held grows: freed memory the allocator keeps (fragmented arenas), not a leak. RSS
    growing past both: Python's own object arenas (not malloc) or mapped files.
    """
    rss, anon, file = _status_mb("VmRSS", "RssAnon", "RssFile")
    figures = {"rss": rss, "anon": anon, "file": file, "malloc_held": 0.0, "malloc_in_use": 0.0}
    from engine.memory import glibc  # here: the emulator's process, which uses this module too, has no torch

    libc = glibc()
    if libc is not None and hasattr(libc, "mallinfo2"):  # glibc 2.33 and later
        libc.mallinfo2.restype = _Mallinfo2
        info = libc.mallinfo2()
        figures["malloc_held"] = (info.arena + info.hblkhd) / 2**20
        figures["malloc_in_use"] = (info.uordblks + info.hblkhd) / 2**20
    return figures


@dataclass
class LoopProbe:
    """A task on the watched loop: sleeps `interval_s` again and again and records how late it woke.

    A late wake-up is a stall: the loop was busy with something else (a blocking call, a long callback), and
    everything on it (gateway heartbeats, answers, votes) waited that long too. Also samples RSS every
    `rss_every_s`, and notes each change of `watch()` (e.g. the adapter being served) with its time. A
    watchdog thread saves what the loop's thread was running whenever a tick is over `catch_s` late, and
    full garbage collections are timed (they hold every thread of the process while they run).
    """

    interval_s: float = 0.05
    rss_every_s: float = 60.0
    watch: Callable[[], Any] | None = None
    lateness_s: list[float] = field(default_factory=list)
    rss_samples: list[tuple[float, float]] = field(default_factory=list)  # (seconds since start, MiB)
    changes: list[tuple[float, Any]] = field(default_factory=list)  # (monotonic time, new value)
    # (seconds since start, lateness, CPU seconds the loop's thread used meanwhile)
    long_stalls: list[tuple[float, float, float]] = field(default_factory=list)
    catch_s: float = 0.5
    caught: list[tuple[float, str]] = field(default_factory=list)  # (seconds since start, the loop's stack)
    _task: asyncio.Task[None] | None = None
    _started: float = 0.0
    _tick: float = 0.0
    _watchdog: threading.Thread | None = None
    full_gcs: list[tuple[float, float]] = field(
        default_factory=list
    )  # (wall, CPU) seconds of each gen-2 pass
    _gc_began: tuple[float, float] = (0.0, 0.0)

    def start(self) -> None:
        self._started = time.monotonic()
        self.rss_samples.append((0.0, rss_mb()))
        if self.watch is not None:
            self.changes.append((self._started, self.watch()))
        self._tick = self._started
        self._task = asyncio.get_running_loop().create_task(self._run(), name="loop-probe")
        loop_thread = threading.get_ident()
        self._watchdog = threading.Thread(target=self._watch_loop, args=(loop_thread,), daemon=True)
        self._watchdog.start()
        gc.callbacks.append(self._on_gc)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        self.rss_samples.append((time.monotonic() - self._started, rss_mb()))

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            self._gc_began = (time.perf_counter(), time.thread_time())
        else:
            wall, cpu = self._gc_began
            self.full_gcs.append((time.perf_counter() - wall, time.thread_time() - cpu))

    def _watch_loop(self, loop_thread: int) -> None:
        """Off the loop: when it is late by `catch_s`, keep the stack its thread is in (once per stall)."""
        caught_tick = None
        while self._task is not None:
            time.sleep(self.catch_s / 5)
            tick = self._tick
            if tick == caught_tick or time.monotonic() - tick < self.interval_s + self.catch_s:
                continue
            frame = sys._current_frames().get(loop_thread)
            if frame is not None and len(self.caught) < 20:
                stack = "".join(traceback.format_stack(frame)[-12:])
                self.caught.append((round(time.monotonic() - self._started, 1), stack))
            caught_tick = tick

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_rss = self._started + self.rss_every_s
        while True:
            before, cpu_before = loop.time(), time.thread_time()
            await asyncio.sleep(self.interval_s)
            late = loop.time() - before - self.interval_s
            self.lateness_s.append(late)
            now = self._tick = time.monotonic()
            if late > 0.25:
                # the loop thread's own CPU meanwhile: near zero when it waited (a lock, or no CPU to run on)
                cpu = time.thread_time() - cpu_before
                self.long_stalls.append((round(now - self._started, 1), round(late, 3), round(cpu, 3)))
            if now >= next_rss:
                self.rss_samples.append((now - self._started, rss_mb()))
                next_rss += self.rss_every_s
            if self.watch is not None and (value := self.watch()) != self.changes[-1][1]:
                self.changes.append((now, value))

    @property
    def max_stall_s(self) -> float:
        return max(self.lateness_s, default=0.0)

    def summary(self) -> dict[str, Any]:
        late = sorted(self.lateness_s)
        return {
            "loop_ticks": len(late),
            "max_stall_s": round(self.max_stall_s, 3),
            "p99_stall_s": round(late[int(0.99 * (len(late) - 1))], 3) if late else 0.0,
            "median_stall_s": round(statistics.median(late), 4) if late else 0.0,
            "stalls_over_250ms": self.long_stalls,
            "full_gcs": len(self.full_gcs),
            "full_gc_max_s": round(max((w for w, _ in self.full_gcs), default=0.0), 3),
            "full_gc_max_cpu_s": round(max((c for _, c in self.full_gcs), default=0.0), 3),
            "rss_start_mb": round(self.rss_samples[0][1], 1) if self.rss_samples else None,
            "rss_end_mb": round(self.rss_samples[-1][1], 1) if self.rss_samples else None,
            "rss_curve_mb": [(round(t), round(mb, 1)) for t, mb in self.rss_samples],
        }


class LogTally(logging.Handler):
    """Counts WARNING-and-above records per logger and keeps the ERROR ones (with their tracebacks)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.warnings: dict[str, int] = {}
        self.errors: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR:
            text = f"{record.name}: {record.getMessage()}"
            if record.exc_info and record.exc_info[1] is not None:
                text += (
                    f" ({record.exc_info[0].__name__ if record.exc_info[0] else ''}: {record.exc_info[1]})"
                )
            self.errors.append(text)
        else:
            self.warnings[record.name] = self.warnings.get(record.name, 0) + 1

    def __enter__(self) -> LogTally:
        logging.getLogger().addHandler(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        logging.getLogger().removeHandler(self)
