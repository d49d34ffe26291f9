"""The eval gate: on the hold-out slice, is the new adapter better than the active one (or the base)?

Checks, each recorded in the metrics:
- preference: DPO's implicit reward r = beta * (log p_adapter(y|x) - log p_base(y|x)); accuracy is the share
  of held-out pairs with r(chosen) > r(rejected), the margin the mean of r(chosen) - r(rejected).
- NLL per token on held-out liked answers: the new adapter may be worse than the active one by at most
  a bound.
- degeneracy on fixed and held-out prompts: greedy answers that are empty or loop.
- NLL per token of the reference answers' text on a general instruction set (shipped in trainer/data, or
  TRAIN_GATE_GENERAL_SET): the new adapter may be worse than the base model by at most a relative bound, so
  learning a community's taste cannot cost the model its general answers.

Runs in a child process like the job (`python -m trainer.gate --work WORK --adapter NEW [--reference ACTIVE]`)
and writes WORK/gate.json: {"passed": ..., "reason": ..., "metrics": {...}}.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from engine.loading import load_base_model
from store.settings import Settings, TrainSettings
from trainer.job import read_settings

ChatMessages = list[dict[str, str]]
FIXED_PROMPTS: tuple[str, ...] = (
    "What is the capital of France?",
    "Say hello to the server in one sentence.",
    "Give me one tip for writing clear code.",
    "What is a good question to ask a teacher?",
)
GENERAL_SET = Path(__file__).with_name("data") / "general.jsonl"
MAX_HELDOUT_PROMPTS = 4  # degeneracy also looks at a few real held-out prompts
_LOOP = re.compile(r"(.{1,12}?)\1{5,}", re.DOTALL)  # a piece of text repeated six or more times in a row


@dataclass(frozen=True)
class Verdict:
    """The gate's decision, why, and every number it looked at."""

    passed: bool
    reason: str
    metrics: dict[str, Any]


@dataclass(frozen=True)
class HoldOut:
    """What the gate scores on: preference pairs, liked answers, and prompts to answer."""

    pairs: list[tuple[ChatMessages, str, str]]  # prompt, chosen, rejected
    liked: list[tuple[ChatMessages, str]]  # prompt, answer
    prompts: list[ChatMessages]
    general: list[tuple[ChatMessages, str]] = field(default_factory=list)  # general instructions, answered


def read_general(path: Path | None) -> list[tuple[ChatMessages, str]]:
    """The general instruction set: conversations whose last message is the reference answer."""
    lines = (path or GENERAL_SET).read_text(encoding="utf-8").splitlines()
    conversations = [json.loads(line)["messages"] for line in lines if line.strip()]
    return [(messages[:-1], messages[-1]["content"]) for messages in conversations]


def read_holdout(work: Path, general: Path | None = None) -> HoldOut:
    """The hold-out rows the runner wrote (DPO pairs, SFT and KTO-liked answers), and the general set."""

    def rows(kind: str) -> list[dict[str, Any]]:
        path = work / f"{kind}_holdout.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    pairs = [(r["prompt"], r["chosen"][-1]["content"], r["rejected"][-1]["content"]) for r in rows("dpo")]
    liked = [(r["messages"][:-1], r["messages"][-1]["content"]) for r in rows("sft")]
    liked += [(r["prompt"], r["completion"][-1]["content"]) for r in rows("kto") if r["label"]]
    prompts = [prompt for prompt, _ in liked] + [prompt for prompt, _, _ in pairs]
    return HoldOut(
        pairs=pairs, liked=liked, prompts=prompts[:MAX_HELDOUT_PROMPTS], general=read_general(general)
    )


def is_degenerate(text: str) -> bool:
    """An empty answer, or one stuck in a loop (a short piece repeated, or very few distinct words)."""
    stripped = text.strip()
    if not stripped:
        return True
    words = stripped.split()
    return bool(_LOOP.search(stripped)) or (len(words) >= 12 and len(set(words)) / len(words) < 0.3)


@torch.no_grad()
def answer_logprobs(
    model: PreTrainedModel | PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    items: Sequence[tuple[ChatMessages, str]],
    *,
    max_length: int,
    content_only: bool = False,
) -> tuple[list[float], list[int]]:
    """Sum of log-probabilities of each answer given its prompt (chat template applied), and its length.

    `content_only` scores the answer's text without the end-of-turn marker after it: whether a sign-off
    the community asked for now comes where the reference answer stopped is taste, not lost knowledge.
    """
    sums, counts = [], []
    for prompt, answer in items:
        prompt_text = cast(
            str, tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        )
        full_text = cast(
            str,
            tokenizer.apply_chat_template(
                [*prompt, {"role": "assistant", "content": answer}], tokenize=False
            ),
        )
        prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
        full_ids = tokenizer(full_text, add_special_tokens=False)["input_ids"]
        start = len(prompt_ids)
        end = len(full_ids)
        if content_only:
            end = min(end, len(tokenizer(prompt_text + answer, add_special_tokens=False)["input_ids"]))
        # keep the end when too long: the answer is what is scored
        cut = max(0, end - max_length)
        ids = torch.tensor([full_ids[cut:end]], device=model.device)
        start = max(1, start - cut)
        logits = model(input_ids=ids).logits[0, start - 1 : -1].float()
        targets = ids[0, start:]
        logprobs = torch.log_softmax(logits, dim=-1).gather(1, targets[:, None]).squeeze(1)
        sums.append(float(logprobs.sum()))
        counts.append(int(targets.numel()))
    return sums, counts


@torch.no_grad()
def greedy_answers(
    model: PreTrainedModel | PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[ChatMessages],
    *,
    max_new_tokens: int,
) -> list[str]:
    """Greedy answers to each prompt (deterministic, so the comparison is fair), decoded as one batch."""
    if not prompts:
        return []
    texts = [
        cast(str, tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False))
        for prompt in prompts
    ]
    padding_side, pad_token = tokenizer.padding_side, tokenizer.pad_token
    tokenizer.padding_side = "left"  # decoder-only: pad on the left so every answer starts at the end
    tokenizer.pad_token = pad_token or tokenizer.eos_token
    try:
        batch = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt").to(model.device)
        pad_token_id = tokenizer.pad_token_id
    finally:
        tokenizer.padding_side, tokenizer.pad_token = padding_side, pad_token
    output = model.generate(  # type: ignore[operator]
        **batch,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=pad_token_id,
    )
    new_tokens = output[:, batch["input_ids"].shape[1] :]
    return [cast(str, text) for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]


def score(
    model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    holdout: HoldOut,
    adapter: str | None,
    train: TrainSettings,
) -> dict[str, Any]:
    """The metrics of one adapter (None = the base model) on the hold-out."""
    scope: AbstractContextManager[Any] = model.disable_adapter() if adapter is None else nullcontext()
    if adapter is not None:
        model.set_adapter(adapter)
    with scope:
        chosen = [(prompt, good) for prompt, good, _ in holdout.pairs]
        rejected = [(prompt, bad) for prompt, _, bad in holdout.pairs]
        chosen_lp, _ = answer_logprobs(model, tokenizer, chosen, max_length=train.max_length)
        rejected_lp, _ = answer_logprobs(model, tokenizer, rejected, max_length=train.max_length)
        liked_lp, liked_tokens = answer_logprobs(model, tokenizer, holdout.liked, max_length=train.max_length)
        general_lp, general_tokens = answer_logprobs(
            model, tokenizer, holdout.general, max_length=train.max_length, content_only=True
        )
        prompts = [[{"role": "user", "content": text}] for text in FIXED_PROMPTS] + holdout.prompts
        answers = greedy_answers(model, tokenizer, prompts, max_new_tokens=train.gate_max_new_tokens)
    return {
        "chosen_logprobs": chosen_lp,
        "rejected_logprobs": rejected_lp,
        "nll": -sum(liked_lp) / sum(liked_tokens) if liked_tokens else None,
        "general_nll": -sum(general_lp) / sum(general_tokens) if general_tokens else None,
        "degenerate_share": sum(map(is_degenerate, answers)) / len(answers),
        "sample_answers": answers[:2],
    }


def preference(new: dict[str, Any], base: dict[str, Any], beta: float) -> tuple[float | None, float | None]:
    """DPO reward accuracy and mean margin of an adapter's scores against the base model's."""
    margins = [
        beta * ((c - base_c) - (r - base_r))
        for c, r, base_c, base_r in zip(
            new["chosen_logprobs"],
            new["rejected_logprobs"],
            base["chosen_logprobs"],
            base["rejected_logprobs"],
            strict=True,
        )
    ]
    if not margins:
        return None, None
    return sum(m > 0 for m in margins) / len(margins), sum(margins) / len(margins)


def decide(
    new: dict[str, Any], active: dict[str, Any], base: dict[str, Any], train: TrainSettings
) -> Verdict:
    """Apply the gate's rules to the scores of the new adapter, the active one and the base model."""
    accuracy, margin = preference(new, base, train.beta)
    active_accuracy, active_margin = preference(active, base, train.beta)
    metrics: dict[str, Any] = {
        "heldout_pairs": len(new["chosen_logprobs"]),
        "pref_accuracy": accuracy,
        "reward_margin": margin,
        "active_pref_accuracy": active_accuracy,
        "active_reward_margin": active_margin,
        "nll": new["nll"],
        "active_nll": active["nll"],
        "general_nll": new["general_nll"],
        "active_general_nll": active["general_nll"],
        "base_general_nll": base["general_nll"],
        "degenerate_share": new["degenerate_share"],
        "active_degenerate_share": active["degenerate_share"],
        "sample_answers": new["sample_answers"],
    }
    reasons = []
    if accuracy is not None and accuracy < train.gate_min_pref_accuracy:
        reasons.append(f"preference accuracy {accuracy:.2f} < {train.gate_min_pref_accuracy:.2f}")
    if margin is not None and margin <= train.gate_min_reward_margin:
        reasons.append(f"reward margin {margin:.3f} <= {train.gate_min_reward_margin:.3f}")
    if new["nll"] is not None and new["nll"] > active["nll"] + train.gate_nll_regression_bound:
        reasons.append(
            f"NLL on held-out liked answers {new['nll']:.3f} > active {active['nll']:.3f} "
            f"+ {train.gate_nll_regression_bound}"
        )
    if new["general_nll"] is not None and base["general_nll"]:
        rise = new["general_nll"] / base["general_nll"] - 1
        metrics["general_nll_rise"] = rise
        if rise > train.gate_general_nll_bound:
            reasons.append(
                f"NLL on general instructions {new['general_nll']:.3f} is {rise:.0%} above the base model's "
                f"{base['general_nll']:.3f} (bound {train.gate_general_nll_bound:.0%})"
            )
    allowed = max(train.gate_max_degenerate_share, active["degenerate_share"])
    if new["degenerate_share"] > allowed:
        reasons.append(f"degenerate answers {new['degenerate_share']:.2f} > {allowed:.2f}")
    if reasons:
        return Verdict(False, "; ".join(reasons), metrics)
    checked = (
        "preference, NLL, general NLL, degeneracy"
        if accuracy is not None
        else "NLL, general NLL, degeneracy (no held-out pairs)"
    )
    return Verdict(True, f"passed: {checked}", metrics)


def evaluate(*, settings: Settings, holdout: HoldOut, adapter: Path, reference: Path | None) -> Verdict:
    """Load the base model with the new (and the active) adapter, score all three, and decide."""
    model, tokenizer = load_base_model(settings)
    peft_model = PeftModel.from_pretrained(model, adapter, adapter_name="new")
    if reference is not None:
        peft_model.load_adapter(reference, adapter_name="active")
    peft_model.eval()
    base = score(peft_model, tokenizer, holdout, None, settings.train)
    new = score(peft_model, tokenizer, holdout, "new", settings.train)
    active = (
        score(peft_model, tokenizer, holdout, "active", settings.train) if reference is not None else base
    )
    return decide(new, active, base, settings.train)


def main(work: Path, adapter: Path, reference: Path | None) -> Verdict:
    """Evaluate the adapter on the work folder's hold-out and write WORK/gate.json."""
    settings = read_settings(work)
    holdout = read_holdout(work, settings.train.gate_general_set)
    verdict = evaluate(settings=settings, holdout=holdout, adapter=adapter, reference=reference)
    (work / "gate.json").write_text(json.dumps(asdict(verdict), indent=2))
    return verdict


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--work", type=Path, required=True, help="Folder with settings.json and the hold-out."
    )
    parser.add_argument("--adapter", type=Path, required=True, help="The new adapter's folder.")
    parser.add_argument(
        "--reference", type=Path, default=None, help="The active adapter's folder (unset: base)."
    )
    args = parser.parse_args()
    result = main(args.work, args.adapter, args.reference)
    print(f"gate {'passed' if result.passed else 'failed'}: {result.reason}", flush=True)
