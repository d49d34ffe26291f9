"""Giving memory the process has freed back to the system (glibc keeps it otherwise)."""

from __future__ import annotations

import ctypes
import functools
import logging
import os

logger = logging.getLogger(__name__)


@functools.cache
def glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (whose allocator this is about); None elsewhere."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim  # noqa: B018  # present on glibc only
    except (OSError, AttributeError):
        logger.info("not on glibc: freed memory is left to the allocator")
        return None
    return libc


def malloc_trim() -> None:
    """Ask glibc to return the free pages in all its arenas to the system.

    Freed KV caches, logits and request buffers otherwise stay in the allocator's arenas (several, one per
    thread that allocated), fragmented, and the process's RSS creeps up under load though nothing is leaked
    (bench/soak.py; the figures are in docs/measurements.md, "Soaks"). A pass costs milliseconds.
    """
    libc = glibc()
    if libc is not None:
        libc.malloc_trim(0)


M_MMAP_THRESHOLD, M_ARENA_MAX = -3, -8  # mallopt's parameter numbers (glibc's malloc.h)
ARENAS = 2  # glibc's default is 8 per core, one per thread that ever allocated, each fragmenting alone
MMAP_FROM_BYTES = 512 * 1024  # buffers this large get pages of their own, returned the moment they are freed


def tune_malloc() -> dict[str, int]:
    """Set glibc's allocator up for a long-running server; returns what it set (nothing off glibc, or where
    the environment already chose: MALLOC_ARENA_MAX, MALLOC_MMAP_THRESHOLD_).

    Call it first thing in the process, before threads start allocating. Two arenas instead of one per
    thread; and a fixed mmap threshold, which also stops glibc raising it as big buffers are freed (by
    default it climbs to 32 MiB, after which every KV cache and logits buffer is carved from the arenas and
    leaves holes there). bench/soak.py --malloc compares this against glibc's defaults side by side.
    """
    libc = glibc()
    if libc is None:
        return {}
    chosen = {}
    for variable, parameter, value in (
        ("MALLOC_ARENA_MAX", M_ARENA_MAX, ARENAS),
        ("MALLOC_MMAP_THRESHOLD_", M_MMAP_THRESHOLD, MMAP_FROM_BYTES),
    ):
        if variable not in os.environ and libc.mallopt(parameter, value) == 1:
            chosen[variable] = value
    return chosen
