"""The eval gate: on the hold-out slice, is the new adapter better than the base model and the one in service?

Evidence of taste, each judged only when there is enough of it (TRAIN_GATE_MIN_PAIRS, TRAIN_GATE_MIN_VOTES):
- preference pairs: DPO's implicit reward r = beta * (log p_adapter(y|x) - log p_base(y|x)); accuracy is the
  share of held-out pairs with r(chosen) > r(rejected), the margin the mean of r(chosen) - r(rejected). Both
  must beat the base (accuracy strictly above its threshold, margin above its own) and not fall below the
  adapter in service's by more than a tolerance.
- unpaired votes: the implicit reward per token, on held-out liked versus disliked answers, must separate
  them (AUC strictly above its threshold; the base model's is 0.5) at least about as well as the adapter in
  service does.
Safety, always checked:
- NLL per token on held-out liked answers: at most a bound above the best of the base and the active one.
- degeneracy on fixed and held-out prompts: greedy answers that are empty, loop or derail; a fixed cap.
- NLL per token of the reference answers' text on a general instruction set (shipped in trainer/data, or
  TRAIN_GATE_GENERAL_SET): the new adapter may be worse than the base model by at most a relative bound, so
  learning a community's taste cannot cost the model its general answers.
Outcome: `pass` (enough evidence, all of it and every safety check passed), `reject` (a check failed), or
`canary` (safe, but too little held-out evidence to judge taste: the version becomes a candidate that live
votes settle against the adapter in service).

Runs in a child process like the job (`python -m trainer.gate --work WORK --adapter NEW [--reference ACTIVE]`)
and writes WORK/gate.json: {"passed": ..., "reason": ..., "metrics": {...}}.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import torch
from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from engine.derailment import is_derailed
from engine.loading import load_base_model
from store.settings import Settings, TrainSettings
from trainer.job import read_settings
from trainer.reward import ranking_auc

ChatMessages = list[dict[str, str]]
FIXED_PROMPTS: tuple[str, ...] = (
    "What is the capital of France?",
    "Say hello to the server in one sentence.",
    "Give me one tip for writing clear code.",
    "What is a good question to ask a teacher?",
)
GENERAL_SET = Path(__file__).with_name("data") / "general.jsonl"
MAX_HELDOUT_PROMPTS = 4  # degeneracy also looks at a few real held-out prompts


Decision = Literal["pass", "canary", "reject"]


@dataclass(frozen=True)
class Verdict:
    """The gate's decision, why, and every number it looked at."""

    decision: Decision
    reason: str
    metrics: dict[str, Any]

    @property
    def passed(self) -> bool:
        """Whether the version may serve at all (at once, or as a canary)."""
        return self.decision != "reject"


@dataclass(frozen=True)
class HoldOut:
    """What the gate scores on: preference pairs, liked answers, and prompts to answer."""

    pairs: list[tuple[ChatMessages, str, str]]  # prompt, chosen, rejected
    liked: list[tuple[ChatMessages, str]]  # prompt, answer
    prompts: list[ChatMessages]
    disliked: list[tuple[ChatMessages, str]] = field(default_factory=list)  # prompt, answer
    general: list[tuple[ChatMessages, str]] = field(default_factory=list)  # general instructions, answered


def read_general(path: Path | None) -> list[tuple[ChatMessages, str]]:
    """The general instruction set: conversations whose last message is the reference answer."""
    lines = (path or GENERAL_SET).read_text(encoding="utf-8").splitlines()
    conversations = [json.loads(line)["messages"] for line in lines if line.strip()]
    return [(messages[:-1], messages[-1]["content"]) for messages in conversations]


def read_holdout(work: Path, general: Path | None = None) -> HoldOut:
    """The hold-out rows the runner wrote (DPO pairs, SFT and KTO answers), and the general set."""

    def rows(kind: str) -> list[dict[str, Any]]:
        path = work / f"{kind}_holdout.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    pairs = [(r["prompt"], r["chosen"][-1]["content"], r["rejected"][-1]["content"]) for r in rows("dpo")]
    liked = [(r["messages"][:-1], r["messages"][-1]["content"]) for r in rows("sft")]
    liked += [(r["prompt"], r["completion"][-1]["content"]) for r in rows("kto") if r["label"]]
    disliked = [(r["prompt"], r["completion"][-1]["content"]) for r in rows("kto") if not r["label"]]
    prompts = [prompt for prompt, _ in liked] + [prompt for prompt, _, _ in pairs]
    return HoldOut(
        pairs=pairs,
        liked=_distinct(liked),  # a liked answer is both an SFT and a KTO row: count it once
        prompts=prompts[:MAX_HELDOUT_PROMPTS],
        disliked=_distinct(disliked),
        general=read_general(general),
    )


def _distinct(items: list[tuple[ChatMessages, str]]) -> list[tuple[ChatMessages, str]]:
    seen: dict[str, tuple[ChatMessages, str]] = {}
    for prompt, answer in items:
        seen.setdefault(json.dumps([prompt, answer], sort_keys=True), (prompt, answer))
    return list(seen.values())


def is_degenerate(text: str, prompt: ChatMessages | None = None) -> bool:
    """An empty answer, one stuck in a loop, or one in another language than the question (derailed)."""
    question = next((m["content"] for m in reversed(prompt or []) if m["role"] == "user"), None)
    return is_derailed(text, prompt=question) is not None


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
        disliked_lp, disliked_tokens = answer_logprobs(
            model, tokenizer, holdout.disliked, max_length=train.max_length
        )
        general_lp, general_tokens = answer_logprobs(
            model, tokenizer, holdout.general, max_length=train.max_length, content_only=True
        )
        prompts = [[{"role": "user", "content": text}] for text in FIXED_PROMPTS] + holdout.prompts
        answers = greedy_answers(model, tokenizer, prompts, max_new_tokens=train.gate_max_new_tokens)
    return {
        "chosen_logprobs": chosen_lp,
        "rejected_logprobs": rejected_lp,
        "liked_logprobs": liked_lp,
        "liked_tokens": liked_tokens,
        "disliked_logprobs": disliked_lp,
        "disliked_tokens": disliked_tokens,
        "nll": -sum(liked_lp) / sum(liked_tokens) if liked_tokens else None,
        "general_nll": -sum(general_lp) / sum(general_tokens) if general_tokens else None,
        "degenerate_share": sum(map(is_degenerate, answers, prompts)) / len(answers),
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


def vote_auc(new: dict[str, Any], base: dict[str, Any]) -> float | None:
    """How well the implicit reward per token ranks held-out liked answers above disliked ones (AUC).

    The reward of an answer is the adapter's log-probability of it minus the base model's, per token; the AUC
    is the share of (liked, disliked) couples ranked right, ties counting half. The base model's own is 0.5.
    """

    def rewards(kind: str) -> list[float]:
        return [
            (lp - base_lp) / max(tokens, 1)
            for lp, base_lp, tokens in zip(
                new[f"{kind}_logprobs"], base[f"{kind}_logprobs"], new[f"{kind}_tokens"], strict=True
            )
        ]

    return ranking_auc(rewards("liked"), rewards("disliked"))


def decide(
    new: dict[str, Any], active: dict[str, Any] | None, base: dict[str, Any], train: TrainSettings
) -> Verdict:
    """Apply the gate's rules to the scores of the new adapter, the one in service (None) and the base."""
    accuracy, margin = preference(new, base, train.beta)
    auc = vote_auc(new, base)
    serving = active if active is not None else base
    active_accuracy, active_margin = preference(serving, base, train.beta) if active else (None, None)
    active_auc = vote_auc(serving, base) if active else None
    pairs = len(new["chosen_logprobs"])
    liked, disliked = len(new["liked_logprobs"]), len(new["disliked_logprobs"])
    metrics: dict[str, Any] = {
        "heldout_pairs": pairs,
        "heldout_liked": liked,
        "heldout_disliked": disliked,
        "pref_accuracy": accuracy,
        "reward_margin": margin,
        "vote_auc": auc,
        "active_pref_accuracy": active_accuracy,
        "active_reward_margin": active_margin,
        "active_vote_auc": active_auc,
        "nll": new["nll"],
        "active_nll": serving["nll"],
        "base_nll": base["nll"],
        "general_nll": new["general_nll"],
        "active_general_nll": serving["general_nll"],
        "base_general_nll": base["general_nll"],
        "degenerate_share": new["degenerate_share"],
        "active_degenerate_share": serving["degenerate_share"],
        "sample_answers": new["sample_answers"],
    }
    reasons = _safety_problems(new, serving, base, train, metrics)
    judged = []
    tolerance = train.gate_active_tolerance
    if accuracy is not None and margin is not None and pairs >= train.gate_min_pairs:
        judged.append(f"{pairs} pairs")
        if accuracy <= train.gate_min_pref_accuracy:
            reasons.append(f"preference accuracy {accuracy:.2f} <= {train.gate_min_pref_accuracy:.2f}")
        if margin <= train.gate_min_reward_margin:
            reasons.append(f"reward margin {margin:.3f} <= {train.gate_min_reward_margin:.3f}")
        if active_accuracy is not None and accuracy < active_accuracy - tolerance:
            reasons.append(
                f"preference accuracy {accuracy:.2f} below the active adapter's {active_accuracy:.2f}"
            )
        if active_margin is not None and margin < active_margin - tolerance:
            reasons.append(f"reward margin {margin:.3f} below the active adapter's {active_margin:.3f}")
    if auc is not None and liked + disliked >= train.gate_min_votes:
        judged.append(f"{liked} liked / {disliked} disliked answers")
        if auc <= train.gate_min_vote_auc:
            reasons.append(f"vote AUC {auc:.2f} <= {train.gate_min_vote_auc:.2f}")
        if active_auc is not None and auc < active_auc - tolerance:
            reasons.append(f"vote AUC {auc:.2f} below the active adapter's {active_auc:.2f}")
    if reasons:
        return Verdict("reject", "; ".join(reasons), metrics)
    if not judged:
        return Verdict(
            "canary",
            f"safe, but too little held-out evidence to judge taste ({pairs} pairs < {train.gate_min_pairs}, "
            f"{liked + disliked} votes < {train.gate_min_votes}): live votes decide as a canary",
            metrics,
        )
    return Verdict("pass", f"passed on {' and '.join(judged)}, NLL, general NLL, degeneracy", metrics)


def _safety_problems(
    new: dict[str, Any],
    serving: dict[str, Any],
    base: dict[str, Any],
    train: TrainSettings,
    metrics: dict[str, Any],
) -> list[str]:
    """What is wrong whatever the evidence of taste: forgotten liked or general answers, degenerate text."""
    problems = []
    best = min((nll for nll in (serving["nll"], base["nll"]) if nll is not None), default=None)
    if new["nll"] is not None and best is not None and new["nll"] > best + train.gate_nll_regression_bound:
        problems.append(
            f"NLL on held-out liked answers {new['nll']:.3f} > best of base and active {best:.3f} "
            f"+ {train.gate_nll_regression_bound}"
        )
    if new["general_nll"] is not None and base["general_nll"]:
        rise = new["general_nll"] / base["general_nll"] - 1
        metrics["general_nll_rise"] = rise
        if rise > train.gate_general_nll_bound:
            problems.append(
                f"NLL on general instructions {new['general_nll']:.3f} is {rise:.0%} above the base model's "
                f"{base['general_nll']:.3f} (bound {train.gate_general_nll_bound:.0%})"
            )
    if new["degenerate_share"] > train.gate_max_degenerate_share:
        problems.append(
            f"degenerate answers {new['degenerate_share']:.2f} > {train.gate_max_degenerate_share:.2f}"
        )
    return problems


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
        score(peft_model, tokenizer, holdout, "active", settings.train) if reference is not None else None
    )
    return decide(new, active, base, settings.train)


def main(work: Path, adapter: Path, reference: Path | None) -> Verdict:
    """Evaluate the adapter on the work folder's hold-out and write WORK/gate.json."""
    settings = read_settings(work)
    holdout = read_holdout(work, settings.train.gate_general_set)
    verdict = evaluate(settings=settings, holdout=holdout, adapter=adapter, reference=reference)
    (work / "gate.json").write_text(json.dumps(asdict(verdict) | {"passed": verdict.passed}, indent=2))
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
    print(f"gate: {result.decision}: {result.reason}", flush=True)
