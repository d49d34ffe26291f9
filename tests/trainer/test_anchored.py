"""The KL anchor of SFT: zero while the adapter is new, its exact weight once the adapter moves the model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig

from trainer.anchored import AnchoredSFTTrainer


def trainer(tiny_model_dir: Path, tmp_path: Path, kl_coef: float) -> AnchoredSFTTrainer:
    torch.manual_seed(0)
    rows = [
        {
            "prompt": [{"role": "user", "content": f"Question {i}?"}],
            "completion": [{"role": "assistant", "content": f"Answer {i}. Keep learning!"}],
        }
        for i in range(4)
    ]
    return AnchoredSFTTrainer(
        kl_coef=kl_coef,
        model=AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        args=SFTConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, use_cpu=True, report_to=[]),
        train_dataset=Dataset.from_list(rows),
        processing_class=AutoTokenizer.from_pretrained(tiny_model_dir),
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"),
    )


def test_the_anchor_is_zero_for_a_new_adapter_and_weighs_kl_once_it_moves(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    anchored, plain = trainer(tiny_model_dir, tmp_path, 2.0), trainer(tiny_model_dir, tmp_path, 0.0)
    batch = next(iter(anchored.get_train_dataloader()))
    anchored.model.eval()
    plain.model.eval()

    def losses() -> tuple[float, float]:
        with torch.no_grad():
            return float(anchored.compute_loss(anchored.model, dict(batch))), float(
                plain.compute_loss(anchored.model, dict(batch))  # TRL's own NLL on the same weights
            )

    with_anchor, nll = losses()
    assert with_anchor == pytest.approx(nll, rel=1e-5)  # LoRA's B starts at zero: the model is the base
    for name, weight in anchored.model.named_parameters():
        if "lora_B" in name:
            weight.data.normal_(0, 0.5)
    with_anchor, nll = losses()
    kl = (with_anchor - nll) / 2.0
    assert kl > 0.01  # the adapter moved the model, and the anchor pulls back by kl_coef x KL
