"""The OpenAI-compatible backend without an engine: what it says when there is none to reach."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from engine.loading import EngineError
from engine.remote import RemoteServer
from store.settings import load_settings
from tests.fixtures.vllm import free_port


async def test_an_unreachable_engine_at_start_names_the_setting_and_what_to_check(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    settings = load_settings(env_file=None, data_dir=tmp_path, model={"backend": "openai", "engine_url": url})
    with pytest.raises(EngineError, match=re.escape(f"MODEL_ENGINE_URL={url} does not answer")) as raised:
        await RemoteServer(settings).start()
    assert "check that it is running" in str(raised.value)


def test_the_openai_backend_needs_an_engine_url(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="MODEL_BACKEND=openai needs MODEL_ENGINE_URL"):
        load_settings(env_file=None, data_dir=tmp_path, model={"backend": "openai"})
