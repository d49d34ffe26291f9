"""Settings: every field documented, bad values stop start-up naming the variable, the token stays secret."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from store.settings import _SECTIONS, Settings, SettingsError, env_name, load_settings

ROOT = Path(__file__).resolve().parents[2]


def all_env_names() -> list[str]:
    names = [env_name(None, field) for field in Settings.model_fields if field not in _SECTIONS]
    for section, cls in _SECTIONS.items():
        names += [env_name(section, field) for field in cls.model_fields]
    return names


def test_env_example_lists_every_field_with_a_comment() -> None:
    text = (ROOT / ".env.example").read_text()
    lines = text.splitlines()
    for name in all_env_names():
        index = next((i for i, line in enumerate(lines) if re.match(rf"#?\s*{name}=", line)), None)
        assert index is not None, f"{name} missing from .env.example"
        assert lines[index - 1].startswith("#") and len(lines[index - 1]) > 3, (
            f"{name} has no comment above it"
        )


def test_env_example_loads_as_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the example's relative data dir lands in tmp
    settings = load_settings(env_file=ROOT / ".env.example")
    assert settings.database_url.startswith("sqlite:///")
    assert settings.data_dir == (tmp_path / "data").resolve()


def test_defaults(tmp_path: Path) -> None:
    settings = load_settings(env_file=None, data_dir=tmp_path / "d")
    assert settings.database_url == f"sqlite:///{tmp_path / 'd' / 'gradschool.db'}"
    assert settings.model.base_model is None
    assert settings.adapters_dir == tmp_path / "d" / "adapters"


def test_environment_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRADSCHOOL_DATA_DIR", str(tmp_path / "x"))
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://u:p@db/gs")
    monkeypatch.setenv("BASE_MODEL", "HuggingFaceTB/SmolLM2-360M-Instruct")
    monkeypatch.setenv("DISCORD_GUILD_IDS", "1, 22,333")
    monkeypatch.setenv("TRAIN_LEARNING_RATE", "1e-4")
    settings = load_settings(env_file=None)
    assert settings.data_dir == tmp_path / "x"
    assert settings.database_url == "postgresql+psycopg://u:p@db/gs"
    assert settings.model.base_model == "HuggingFaceTB/SmolLM2-360M-Instruct"
    assert settings.discord.guild_ids == [1, 22, 333]
    assert settings.train.learning_rate == 1e-4


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("MODEL_DEVICE", "tpu"),
        ("TRAIN_LEARNING_RATE", "-0.1"),
        ("MODEL_TOP_P", "0"),
        ("DISCORD_GUILD_IDS", "12,abc"),
        ("GRADSCHOOL_LOG_LEVEL", "LOUD"),
    ],
)
def test_bad_value_names_the_variable(variable: str, value: str, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError, match=rf"{variable}: .*set {variable} in the environment"):
        load_settings(env_file=None, data_dir=tmp_path)


def test_every_bad_value_is_reported_at_once(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MODEL_DEVICE", "tpu")
    monkeypatch.setenv("TRAIN_LORA_R", "0")
    with pytest.raises(SettingsError) as caught:
        load_settings(env_file=None, data_dir=tmp_path)
    assert "MODEL_DEVICE" in str(caught.value) and "TRAIN_LORA_R" in str(caught.value)


def test_unwritable_data_dir_is_refused(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(SettingsError, match="GRADSCHOOL_DATA_DIR"):
        load_settings(env_file=None, data_dir=blocker / "data")


def test_token_never_shows(monkeypatch, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    secret = "MTIz.secret-token-value.xyz"
    monkeypatch.setenv("DISCORD_TOKEN", secret)
    settings = load_settings(env_file=None, data_dir=tmp_path)
    with caplog.at_level(logging.INFO):
        logging.getLogger("test").info("settings: %s %r", settings, settings.discord)
    assert secret not in repr(settings) + str(settings) + caplog.text + settings.model_dump_json()
    assert settings.discord.token is not None and settings.discord.token.get_secret_value() == secret


def test_bad_token_value_is_not_echoed(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DISCORD_TOKEN", "tok")
    monkeypatch.setenv("MODEL_DEVICE", "tpu")  # some other error: the message must not carry the token
    with pytest.raises(SettingsError) as caught:
        load_settings(env_file=None, data_dir=tmp_path)
    assert "tok'" not in str(caught.value)
