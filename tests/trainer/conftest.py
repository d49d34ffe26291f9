"""Trainer fixtures: a migrated SQLite database (settings for the tiny model are in tests/fixtures)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from store.db import make_engine, upgrade


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    """A migrated SQLite database in tmp_path/data (the trainer's own tests need no Postgres)."""
    engine = make_engine(f"sqlite:///{tmp_path / 'data' / 'gradschool.db'}")
    upgrade(engine)
    yield engine
    engine.dispose()
