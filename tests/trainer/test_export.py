"""`gradschool export` writes files that `datasets` loads and TRL's trainers take unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest
from datasets import load_dataset
from peft import LoraConfig
from sqlmodel import Session, select
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer, SFTConfig, SFTTrainer
from typer.testing import CliRunner

from gradschool.cli import app
from sim.seeding import seed_community
from store import crud
from store.db import make_engine, upgrade
from store.models import Feedback

TRAINERS = {
    "sft": (SFTTrainer, SFTConfig),
    "dpo": (DPOTrainer, DPOConfig),
    "kto": (KTOTrainer, KTOConfig),
}


@pytest.fixture
def cli_data_dir(tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The environment of a `gradschool` run on the tiny model, with a seeded database."""
    data_dir = tmp_path / "data"
    monkeypatch.setenv("GRADSCHOOL_DATA_DIR", str(data_dir))
    monkeypatch.setenv("BASE_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("MODEL_DEVICE", "cpu")
    monkeypatch.setenv("TRAIN_HOLDOUT_FRACTION", "0.2")
    monkeypatch.chdir(tmp_path)  # no stray .env from the repo
    database = make_engine(f"sqlite:///{data_dir / 'gradschool.db'}")
    upgrade(database)
    with Session(database) as session:
        seed_community(session, prompts=16)
        downvotes = list(session.exec(select(Feedback).where(Feedback.value == -1)))
    with Session(database) as session:  # some 👎s say why: the KTO rows carry it in their own column
        for vote in downvotes[::2]:
            crud.set_downvote_reason(
                session=session, generation_id=vote.generation_id, rater_id=vote.rater_id, reason="too_long"
            )
    database.dispose()
    return data_dir


@pytest.mark.parametrize("kind", ["sft", "dpo", "kto"])
def test_export_loads_in_datasets_and_trl(
    cli_data_dir: Path, tiny_model_dir: Path, tmp_path: Path, kind: str
):
    out = tmp_path / f"{kind}.jsonl"
    result = CliRunner().invoke(app, ["export", "--kind", kind, "--out", str(out)])
    assert result.exit_code == 0, result.output
    holdout = CliRunner().invoke(
        app, ["export", "--kind", kind, "--out", str(tmp_path / "h.jsonl"), "--split", "holdout"]
    )
    assert holdout.exit_code == 0, holdout.output

    dataset = load_dataset("json", data_files=str(out), split="train")
    held = load_dataset("json", data_files=str(tmp_path / "h.jsonl"), split="train")
    assert len(dataset) > 0 and len(held) > 0
    assert f"wrote {len(dataset)} {kind} examples" in result.output
    expected = {
        "sft": {"messages"},
        "dpo": {"prompt", "chosen", "rejected"},
        "kto": {"prompt", "completion", "label", "reasons"},
    }
    assert set(dataset.column_names) == expected[kind]

    trainer_cls, config_cls = TRAINERS[kind]
    trainer = trainer_cls(
        model=AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        args=config_cls(output_dir=str(tmp_path / "out"), report_to="none", max_steps=1, use_cpu=True),
        train_dataset=dataset,
        processing_class=AutoTokenizer.from_pretrained(tiny_model_dir),
        peft_config=LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    # TRL recognised the format and tokenized every example (the prompt as a chat, not as plain text)
    tokenized = trainer.train_dataset
    assert len(tokenized) == len(dataset)
    assert any(column.endswith("_ids") for column in tokenized.column_names), tokenized.column_names


def test_export_takes_one_scope(cli_data_dir: Path, tmp_path: Path):
    """The seeded feedback is the global scope's: a server's own export has none of it; a bad scope is
    named."""
    out = tmp_path / "sft.jsonl"
    own = CliRunner().invoke(app, ["export", "--kind", "sft", "--out", str(out), "--scope", "guild:42"])
    assert own.exit_code == 0, own.output
    assert "wrote 0 sft examples" in own.output
    shared = CliRunner().invoke(app, ["export", "--kind", "sft", "--out", str(out), "--scope", "global"])
    assert shared.exit_code == 0 and "wrote 0 " not in shared.output
    bad = CliRunner().invoke(app, ["export", "--kind", "sft", "--out", str(out), "--scope", "guild:x"])
    assert bad.exit_code != 0 and "guild:<id>" in bad.output
