"""The store, called from the event loop: each call is one short session in a worker thread."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import Engine as Database
from sqlmodel import Session

T = TypeVar("T")


class Store:
    """Runs store functions (`crud.*`, `registry.*`) off the event loop, each in its own fresh session.

    A fresh session per call matters: a long-lived SQLite session keeps one snapshot and would never see
    the trainer's progress or a newly activated adapter. A thread matters too: a writer may wait on the
    SQLite busy timeout, and the gateway heartbeat must not wait with it.
    """

    def __init__(self, database: Database) -> None:
        self.database = database

    async def __call__(self, function: Callable[..., T], /, **kwargs: Any) -> T:
        return await asyncio.to_thread(self._run, function, kwargs)

    def _run(self, function: Callable[..., T], kwargs: dict[str, Any]) -> T:
        with Session(self.database) as session:
            return function(session=session, **kwargs)
