"""SFT with a KL anchor to the base model, so learning the community's taste does not sharpen everything else.

The SFT targets are mostly the bot's own words (liked answers; corrections keep much of the answer they fix).
Cross-entropy on text the model already finds likely is cheapest to lower by making the model surer of its
own wording everywhere, and that raises its NLL on anybody else's text. The anchor adds, on every answer
token, `kl_coef` x KL(base || model) of the next-token distributions, with the base model read from the same
weights with the LoRA adapter switched off (no second copy). Where the community asked for something the
base would not say, the cross-entropy outweighs it; where the target is what the base says anyway, it keeps
the rest of the distribution where the base had it. The measurements behind it are in docs/measurements.md
("Learning the community's taste"), the method in docs/training.md.
"""

from __future__ import annotations

from typing import Any

import torch
from peft import PeftModel
from trl import SFTTrainer


class AnchoredSFTTrainer(SFTTrainer):
    """`SFTTrainer` whose loss is mean over answer tokens of NLL + kl_coef x KL(base || model)."""

    def __init__(self, *args: Any, kl_coef: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.kl_coef = kl_coef

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> Any:
        if self.kl_coef <= 0:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        labels = inputs["labels"][:, 1:]
        counted = labels != -100
        forward = {k: v for k, v in inputs.items() if k != "labels"} | {"use_cache": False}
        outputs = model(**forward)
        logprobs = outputs.logits[:, :-1].float().log_softmax(-1)
        peft_model = self.accelerator.unwrap_model(model)
        assert isinstance(peft_model, PeftModel), "the anchor needs a LoRA model (its base is the anchor)"
        with torch.no_grad(), peft_model.disable_adapter():
            base = peft_model(**forward).logits[:, :-1].float().log_softmax(-1)
        nll = -logprobs.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        kl = (base.exp() * (base - logprobs)).sum(-1)
        tokens = counted.sum() if num_items_in_batch is None else num_items_in_batch
        loss = ((nll + self.kl_coef * kl) * counted).sum() / torch.as_tensor(tokens).clamp(min=1)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # as SFTTrainer: DDP averages the gradients
        if model.training:
            with torch.no_grad():
                n = counted.sum().clamp(min=1)
                self._metrics["train"]["kl_to_base"].append(float((kl * counted).sum() / n))
        return (loss, outputs) if return_outputs else loss
