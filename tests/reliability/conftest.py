"""The reliability tests' fixtures: the real bot (tests/fixtures/bot.py), stores for the training faults."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine as Database
from sqlmodel import Session

from sim.seeding import seed_community
from store import registry
from store.models import AdapterVersion
from store.settings import Settings
from tests.fixtures.bot import bot_settings, database, make_bot, server  # noqa: F401  (fixtures, found by name)
from tests.reliability.support.training_faults import QUICK, with_train


@pytest.fixture
def quick_settings(train_settings: Settings) -> Settings:
    """The tiny model, two SFT steps, a lenient gate, a heartbeat that goes stale in two seconds."""
    return with_train(train_settings, **QUICK)


@pytest.fixture
def serving_v1(sqlite_database: Database, quick_settings: Settings, make_tiny_adapter) -> AdapterVersion:
    """A store with a community's votes in it and v1, a real adapter, active (what the bot serves)."""
    with Session(sqlite_database) as session:
        seed_community(session, prompts=24)
        name = registry.next_version_name(session=session)
        return registry.register_adapter(
            session=session,
            name=name,
            staging=make_tiny_adapter(registry.staging_dir(quick_settings.adapters_dir), 1),
            adapters_dir=quick_settings.adapters_dir,
            base_model="tiny",
            method="sft",
            status="active",
        )
