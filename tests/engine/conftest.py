"""Engine-test fixtures: an Engine on the tiny model, a running GenerationServer, and saved adapters."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from engine import Engine
from engine.serving import GenerationServer
from store.settings import Settings


@pytest.fixture
def tiny_engine(tiny_settings: Settings) -> Engine:
    """An Engine on the tiny real model."""
    return Engine.from_settings(tiny_settings)


@pytest.fixture
async def server(tiny_engine: Engine) -> AsyncIterator[GenerationServer]:
    """A started server on the tiny engine, batching up to 4 requests."""
    async with GenerationServer(tiny_engine, max_batch=4, max_pending=256) as running:
        yield running


@pytest.fixture(scope="session")
def tiny_adapters(
    tmp_path_factory: pytest.TempPathFactory, make_tiny_adapter: Callable[[Path, int], Path]
) -> dict[str, Path]:
    """Three saved LoRA versions, v1..v3, each changing the tiny model's answers differently."""
    folder = tmp_path_factory.mktemp("adapters")
    return {f"v{seed}": make_tiny_adapter(folder / f"v{seed}", seed) for seed in (1, 2, 3)}
