"""Learning from votes alone: a reward model of the community's votes ranks fresh answers into more examples.

Where people only vote (no corrections, few 🔁 pairs), most of a community's signal is hundreds of unpaired
👍/👎 on the bot's own answers, and about one answer in four or five is liked. This stage turns them into
many more training examples, as rejection sampling / expert iteration does:

1. A reward model of the votes: a logistic probe on the frozen base model's last hidden state (at the final
   answer token, and averaged over the answer), fitted to the voted answers' labels. With tens to a few
   hundred labels, fitting a probe on frozen features is the standard low-data choice; fine-tuning a 135M
   reward model (TRL's RewardTrainer, which also needs pairs) on so few would only memorize them.
2. Its cross-validated AUC on the votes says whether it learned anything; below TRAIN_VOTE_REWARD_MIN_AUC
   its rankings are not used and the run trains on the votes as before.
3. Several answers to each train prompt, sampled from the base model, skipping derailed ones (loops,
   language switches, empty). Thresholds are relative, because the probe's probabilities carry the votes'
   base rate (where one answer in five is liked, few candidates score above 0.5 however good): the best
   answer to a prompt becomes an SFT example when it ranks among the top `liked share` of all candidates
   (as many as the community would like of the base model's answers), and (best, worst) a DPO pair when
   their log-odds differ by PAIR_LOGIT_GAP or more (the probe thinks best e times likelier to be liked).

Everything here runs inside the training job (trainer.job), on train-side prompts only.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from engine.derailment import is_derailed
from store.settings import TrainSettings

ChatMessages = list[dict[str, str]]
FOLDS = 5
SAMPLE_BATCH = 32  # sequences decoded together: on a CPU, decoding is memory-bound, so wide batches are cheap
PAIR_LOGIT_GAP = 1.0  # the probe's log-odds gap that makes a (best, worst) pair
# Generic ways to answer, one per candidate in turn: the votes' reward model judges which the community likes,
# and the adapter learns it from the plain prompt (the hint is never in the training rows).
STYLE_HINTS: tuple[str | None, ...] = (
    None,
    "Answer in one or two sentences.",
    "Answer in detail, with an example.",
    "Answer step by step.",
    "Answer in a warm, casual tone.",
    "Answer formally and precisely.",
)


@dataclass(frozen=True)
class VoteReward:
    """A logistic probe on frozen features: P(liked | prompt, answer)."""

    mean: torch.Tensor
    scale: torch.Tensor
    weights: torch.Tensor
    bias: torch.Tensor

    def liked_logit(self, features: torch.Tensor) -> torch.Tensor:
        return ((features - self.mean) / self.scale) @ self.weights + self.bias

    def liked_probability(self, features: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.liked_logit(features))


@torch.no_grad()
def answer_features(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    items: Sequence[tuple[ChatMessages, str]],
    *,
    max_length: int,
) -> torch.Tensor:
    """Per (prompt, answer): the last hidden state at the answer's final token, and its mean over it."""
    rows = []
    for prompt, answer in items:
        prompt_text = cast(
            str, tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        )
        prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"] or [tokenizer.eos_token_id]
        ids = (prompt_ids + answer_ids)[-max_length:]
        first = max(0, len(ids) - len(answer_ids))
        outputs = model(input_ids=torch.tensor([ids], device=model.device), output_hidden_states=True)
        hidden = outputs.hidden_states[-1][0]
        rows.append(torch.cat([hidden[-1], hidden[first:].mean(0)]).float().cpu())
    return torch.stack(rows) if rows else torch.empty(0)


def fit(features: torch.Tensor, labels: torch.Tensor, *, l2: float = 1.0, steps: int = 200) -> VoteReward:
    """Logistic regression with an L2 penalty on standardized features (LBFGS, full batch)."""
    mean, scale = features.mean(0), features.std(0).clamp(min=1e-4)
    x = (features - mean) / scale
    weights = torch.zeros(x.shape[1], requires_grad=True)
    bias = torch.zeros((), requires_grad=True)
    optimizer = torch.optim.LBFGS([weights, bias], max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        logits = x @ weights + bias
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
        loss = loss + l2 * (weights**2).sum() / len(labels)
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    optimizer.step(closure)  # type: ignore[no-untyped-call]
    return VoteReward(mean, scale, weights.detach(), bias.detach())


def ranking_auc(liked: Sequence[float], disliked: Sequence[float]) -> float | None:
    """Share of (liked, disliked) couples their scores rank right, ties counting half; None without both."""
    if not liked or not disliked:
        return None
    right = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in liked for b in disliked)
    return right / (len(liked) * len(disliked))


def auc(scores: Sequence[float], labels: Sequence[float]) -> float:
    """`ranking_auc` of scores labelled 1 (liked) or 0; 0.5 (no evidence either way) without both labels."""
    liked = [s for s, label in zip(scores, labels, strict=True) if label > 0.5]
    disliked = [s for s, label in zip(scores, labels, strict=True) if label <= 0.5]
    result = ranking_auc(liked, disliked)
    return 0.5 if result is None else result


def cross_validated_auc(features: torch.Tensor, labels: torch.Tensor, *, seed: int) -> float:
    """AUC of probes fitted on 4/5 of the votes, scored on the fifth they did not see."""
    order = list(range(len(labels)))
    random.Random(seed).shuffle(order)
    scores = [0.0] * len(labels)
    for fold in range(FOLDS):
        held = order[fold::FOLDS]
        kept = [i for i in order if i not in set(held)]
        if not held or not kept or len(set(labels[kept].tolist())) < 2:
            return 0.5
        probe = fit(features[kept], labels[kept])
        for i, score in zip(held, probe.liked_probability(features[held]).tolist(), strict=True):
            scores[i] = score
    return auc(scores, labels.tolist())


def with_hint(prompt: ChatMessages, hint: str | None) -> ChatMessages:
    """The prompt with a style hint added to its system message (one is made if it has none)."""
    if hint is None:
        return prompt
    if prompt and prompt[0]["role"] == "system":
        return [{"role": "system", "content": f"{prompt[0]['content']}\n{hint}"}, *prompt[1:]]
    return [{"role": "system", "content": hint}, *prompt]


@torch.no_grad()
def sample_answers(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[ChatMessages],
    *,
    count: int,
    temperature: float,
    max_new_tokens: int,
    seed: int,
    hints: Sequence[str | None] = (None,),
) -> list[list[str]]:
    """`count` sampled answers to each prompt, the i-th written under `hints[i % len(hints)]`, decoded in
    batches (left-padded)."""
    torch.manual_seed(seed)
    padding_side, pad_token = tokenizer.padding_side, tokenizer.pad_token
    tokenizer.padding_side, tokenizer.pad_token = "left", pad_token or tokenizer.eos_token
    asked = [with_hint(prompt, hints[i % len(hints)]) for prompt in prompts for i in range(count)]
    decoded: list[str] = []
    try:
        for start in range(0, len(asked), SAMPLE_BATCH):
            texts = [
                cast(str, tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False))
                for p in asked[start : start + SAMPLE_BATCH]
            ]
            batch = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt")
            output = model.generate(  # type: ignore[operator]
                **batch.to(model.device),
                do_sample=True,
                temperature=temperature,
                top_p=1.0,
                max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
            )
            new_tokens = output[:, batch["input_ids"].shape[1] :]
            decoded += [text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
    finally:
        tokenizer.padding_side, tokenizer.pad_token = padding_side, pad_token
    return [decoded[i * count : (i + 1) * count] for i in range(len(prompts))]


def augment(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    *,
    voted: Sequence[dict[str, Any]],
    prompts: Sequence[ChatMessages],
    train: TrainSettings,
    max_new_tokens: int,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """SFT rows and DPO pairs from sampled answers the vote reward model ranks; and what it measured.

    `voted` are KTO rows (prompt, completion, label); `prompts` the train prompts to answer afresh.
    """
    items = [(row["prompt"], row["completion"][-1]["content"]) for row in voted]
    labels = torch.tensor([1.0 if row["label"] else 0.0 for row in voted])
    report: dict[str, Any] = {"votes": len(items), "liked": int(labels.sum())}
    if len(items) < 2 * FOLDS or report["liked"] < 2 or len(items) - report["liked"] < 2:
        return [], [], report | {"used": False, "why": "too few votes of each kind"}
    model.eval()
    features = answer_features(model, tokenizer, items, max_length=train.max_length)
    report["cv_auc"] = round(cross_validated_auc(features, labels, seed=train.seed), 4)
    if report["cv_auc"] < train.vote_reward_min_auc:
        return [], [], report | {"used": False, "why": f"cross-validated AUC < {train.vote_reward_min_auc}"}
    probe = fit(features, labels)
    candidates = sample_answers(
        model,
        tokenizer,
        prompts,
        count=train.vote_reward_candidates,
        temperature=train.vote_reward_temperature,
        max_new_tokens=max_new_tokens,
        seed=train.seed,
        hints=STYLE_HINTS if train.vote_reward_style_hints else (None,),
    )
    ranked: list[tuple[ChatMessages, list[tuple[float, str]]]] = []
    for prompt, answers in zip(prompts, candidates, strict=True):
        question = prompt[-1]["content"]
        answers = [a for a in dict.fromkeys(answers) if a and is_derailed(a, prompt=question) is None]
        if answers:
            logits = probe.liked_logit(
                answer_features(model, tokenizer, [(prompt, a) for a in answers], max_length=train.max_length)
            ).tolist()
            ranked.append((prompt, sorted(zip(logits, answers, strict=True), reverse=True)))
    every = sorted(score for _, scored in ranked for score, _ in scored)
    liked_share = report["liked"] / report["votes"]
    cut = every[min(len(every) - 1, int(len(every) * (1 - liked_share)))] if every else 0.0
    sft: list[dict[str, Any]] = []
    dpo: list[dict[str, Any]] = []
    for prompt, scored in ranked:
        (best_score, best), (worst_score, worst) = scored[0], scored[-1]
        if best_score >= cut:
            sft.append({"prompt": prompt, "completion": [{"role": "assistant", "content": best}]})
        if best_score - worst_score >= PAIR_LOGIT_GAP:
            dpo.append(
                {
                    "prompt": prompt,
                    "chosen": [{"role": "assistant", "content": best}],
                    "rejected": [{"role": "assistant", "content": worst}],
                }
            )
    return (
        sft,
        dpo,
        report
        | {
            "used": True,
            "prompts": len(prompts),
            "candidates": len(every),
            "sft": len(sft),
            "dpo": len(dpo),
        },
    )


def train_prompts(datasets: dict[str, Any], *, limit: int, seed: int) -> list[ChatMessages]:
    """The distinct prompts of the train rows (SFT, DPO, KTO), at most `limit`, in a seeded order."""
    seen: dict[str, ChatMessages] = {}
    for kind, column in (("kto", "prompt"), ("dpo", "prompt"), ("sft", "prompt")):
        for prompt in datasets[kind][column] if kind in datasets else []:
            seen.setdefault(json.dumps(prompt, sort_keys=True), prompt)
    prompts = list(seen.values())
    random.Random(seed).shuffle(prompts)
    return prompts[:limit]
