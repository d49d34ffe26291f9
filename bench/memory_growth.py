"""Where a long-running process's memory goes: live Python objects by kind, Python allocations by
traceback, resident memory by mapping, each between a point S s in and the end (bench/soak.py's --objects
and --tracemalloc)."""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from collections import Counter

from sim.process_probes import mappings_kb


async def object_growth(after_s: float | None, done: asyncio.Event, top: int = 12) -> list[str]:
    """With --objects S: which kinds of Python object the bot holds more of at the end than S s in.

    Counted after a full collection, so it is what is really kept (a leak, or a cache still filling), not
    garbage waiting for the collector; the objects gc.freeze() set aside at start-up are not counted.
    """
    if after_s is None:
        return []
    await asyncio.sleep(after_s)
    first, first_maps = _live_objects(), mappings_kb()
    await done.wait()
    last, last_maps = _live_objects(), mappings_kb()
    growth = sorted(((last[kind] - first[kind], kind) for kind in last), reverse=True)
    lines = [f"all tracked objects: {first.total()} -> {last.total()}"]
    lines += [f"{kind}: {first[kind]} -> {last[kind]}" for more, kind in growth[:top] if more > 0]
    ours = [kind for more, kind in growth if more > 100 and kind.split(".")[0] in OUR_PACKAGES]
    lines += [f"what holds a {kind}: {_holders(kind)}" for kind in ours[:3]]
    grown = sorted(
        ((rss - first_maps.get(key, (0, 0))[1], key, size) for key, (size, rss) in last_maps.items()),
        reverse=True,
    )
    lines.append(
        f"resident memory by mapping: {sum(r for _, r in first_maps.values()) // 1024} -> "
        f"{sum(r for _, r in last_maps.values()) // 1024} MiB; grew most:"
    )
    return lines + [
        f"  +{more} kB in {key} (mapping of {size} kB)" for more, key, size in grown[:8] if more > 0
    ]


OUR_PACKAGES = {"store", "engine", "bot", "trainer", "sim", "gradschool"}


def _holders(kind: str, depth: int = 4) -> str:
    """The chain of objects that keep one (the newest) object of `kind` alive, `depth` steps up."""
    found = [o for o in gc.get_objects() if _kind(o) == kind]
    chain, current, seen = [], found[-1] if found else None, {id(found)}
    for _ in range(depth):
        if current is None:
            break
        seen.add(id(current))
        holders = [h for h in gc.get_referrers(current) if id(h) not in seen and h is not found]
        current = holders[0] if holders else None
        if current is not None:
            name = type(current).__qualname__
            if isinstance(current, dict):
                name += f"(keys {sorted(map(str, current))[:5]})"
            chain.append(name)
    return " <- ".join(chain) or "nothing found"


def _live_objects() -> Counter[str]:
    gc.collect()
    return Counter(_kind(o) for o in gc.get_objects())


def _kind(thing: object) -> str:
    return f"{type(thing).__module__}.{type(thing).__qualname__}"


async def python_growth(after_s: float | None, done: asyncio.Event, top: int = 12) -> list[str]:
    """With --tracemalloc S: where the bot process's Python objects grew from S s into the load to its end.

    Tracing slows the bot (its stall figures are then not comparable), and sees only Python allocations:
    tensors and other native buffers are outside it.
    """
    if after_s is None:
        return []
    tracemalloc.start(8)
    await asyncio.sleep(after_s)
    first = tracemalloc.take_snapshot()
    await done.wait()
    last = tracemalloc.take_snapshot()
    tracemalloc.stop()
    before, after = (sum(stat.size for stat in snap.statistics("filename")) for snap in (first, last))
    lines = [f"traced {before / 2**20:.1f} MiB at {after_s:.0f} s, {after / 2**20:.1f} MiB at the end"]
    for stat in last.compare_to(first, "traceback")[:top]:
        if stat.size_diff <= 0:
            break
        lines.append(f"{stat.size_diff / 2**10:+.0f} KiB in {stat.count_diff:+d} blocks, allocated at:")
        lines.extend(f"    {frame.filename}:{frame.lineno}" for frame in stat.traceback)
    return lines
