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
from pathlib import Path
from typing import Any, cast

import torch
from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from engine.derailment import is_derailed
from store.settings import TrainSettings
from trainer.mining import FOLDS, enough_votes

ChatMessages = list[dict[str, str]]
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
    model: PreTrainedModel | PeftModel,
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
    served: Path | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """SFT rows and DPO pairs from sampled answers the vote reward model ranks; and what it measured.

    `voted` are KTO rows (prompt, completion, label); `prompts` the train prompts to answer afresh; `served`
    the adapter in service, which writes the candidates when given (the base model otherwise): each round then
    ranks answers of the way the community is answered now, so what one round learned the next builds on. The
    probe always reads the base model's features, the ones it was fitted on.
    """
    items = [(row["prompt"], row["completion"][-1]["content"]) for row in voted]
    labels = torch.tensor([1.0 if row["label"] else 0.0 for row in voted])
    report: dict[str, Any] = {"votes": len(items), "liked": int(labels.sum())}
    if not enough_votes([bool(row["label"]) for row in voted]):
        return [], [], report | {"used": False, "why": "too few votes of each kind"}
    model.eval()
    features = answer_features(model, tokenizer, items, max_length=train.max_length)
    report["cv_auc"] = round(cross_validated_auc(features, labels, seed=train.seed), 4)
    if report["cv_auc"] < train.vote_reward_min_auc:
        return [], [], report | {"used": False, "why": f"cross-validated AUC < {train.vote_reward_min_auc}"}
    probe = fit(features, labels)
    hints = STYLE_HINTS if train.vote_reward_style_hints else (None,)
    # The adapter goes into the base model's layers in place and out again (unload) before anything else runs.
    writer = PeftModel.from_pretrained(model, str(served)).eval() if served is not None else model
    try:
        candidates = sample_answers(
            writer,
            tokenizer,
            prompts,
            count=train.vote_reward_candidates,
            temperature=train.vote_reward_temperature,
            max_new_tokens=max_new_tokens,
            seed=train.seed,
            hints=hints,
        )
    finally:
        if isinstance(writer, PeftModel):
            writer.unload()
    report["written_by"] = served.name if served is not None else "base model"
    scored = score_candidates(
        model, tokenizer, probe, prompts, candidates, hints, max_length=train.max_length
    )
    liked_share = report["liked"] / report["votes"]
    if train.vote_reward_style_hints:
        sft, dpo, chosen = rows_from_preferred_style(scored, liked_share=liked_share)
        report |= chosen
    else:
        sft, dpo = rows_from_ranking(scored, liked_share=liked_share)
    return (
        sft,
        dpo,
        report
        | {
            "used": True,
            "prompts": len(prompts),
            "candidates": sum(len(answers) for _, answers in scored),
            "sft": len(sft),
            "dpo": len(dpo),
        },
    )


Scored = tuple[ChatMessages, list[tuple[float, str, str | None]]]  # a prompt; (log-odds, answer, hint) each


def score_candidates(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    probe: VoteReward,
    prompts: Sequence[ChatMessages],
    candidates: Sequence[Sequence[str]],
    hints: Sequence[str | None],
    *,
    max_length: int,
) -> list[Scored]:
    """Each prompt's distinct, non-derailed candidates with the probe's log-odds and the hint they were
    written under, best first."""
    result: list[Scored] = []
    for prompt, answers in zip(prompts, candidates, strict=True):
        question = prompt[-1]["content"]
        kept: dict[str, str | None] = {}
        for i, answer in enumerate(answers):
            if answer and answer not in kept and is_derailed(answer, prompt=question) is None:
                kept[answer] = hints[i % len(hints)]
        if kept:
            logits = probe.liked_logit(
                answer_features(model, tokenizer, [(prompt, a) for a in kept], max_length=max_length)
            ).tolist()
            ranked = sorted(zip(logits, kept, kept.values(), strict=True), key=lambda t: t[0], reverse=True)
            result.append((prompt, ranked))
    return result


def sft_row(prompt: ChatMessages, answer: str) -> dict[str, Any]:
    return {"prompt": prompt, "completion": [{"role": "assistant", "content": answer}]}


def dpo_row(prompt: ChatMessages, chosen: str, rejected: str) -> dict[str, Any]:
    return {
        "prompt": prompt,
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
    }


def rows_from_ranking(
    scored: Sequence[Scored], *, liked_share: float
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A prompt's best candidate is an SFT row when it ranks among the top `liked_share` of all candidates;
    (best, worst) a DPO pair when their log-odds differ by PAIR_LOGIT_GAP or more."""
    every = sorted(score for _, ranked in scored for score, _, _ in ranked)
    cut = every[min(len(every) - 1, int(len(every) * (1 - liked_share)))] if every else 0.0
    sft: list[dict[str, Any]] = []
    dpo: list[dict[str, Any]] = []
    for prompt, ranked in scored:
        (best_score, best, _), (worst_score, worst, _) = ranked[0], ranked[-1]
        if best_score >= cut:
            sft.append(sft_row(prompt, best))
        if best_score - worst_score >= PAIR_LOGIT_GAP:
            dpo.append(dpo_row(prompt, best, worst))
    return sft, dpo


def rows_from_preferred_style(
    scored: Sequence[Scored], *, liked_share: float
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """The way of answering the votes prefer, taught on every prompt.

    A taste is a consistent way of answering, so the hints are compared over all prompts, each within its
    own prompt: a hint's advantage on a prompt is its best answer's log-odds minus the unhinted answers'
    best. (Across prompts the probe's scores also carry the prompt: where the votes never liked an answer to
    "explain ..." questions, every answer to one scores low, so an absolute cut would keep only the prompts
    the model already answers well.) The hint with the largest mean advantage wins when it beats the plain
    answer on most prompts; then each prompt where it does gives an SFT row (its best answer, under the plain
    prompt: the hint is never in the rows) and, with a gap of PAIR_LOGIT_GAP, a DPO pair against the worst
    plain answer. Where no hint wins, the plain answers are the community's style and the rows come from
    `rows_from_ranking` within each prompt's plain answers.
    """
    advantages: dict[str | None, list[float]] = {}
    for _, ranked in scored:
        plain_scores = [score for score, _, hint in ranked if hint is None]
        if not plain_scores:
            continue
        for hint in dict.fromkeys(hint for _, _, hint in ranked if hint is not None):
            best = max(score for score, _, h in ranked if h == hint)
            advantages.setdefault(hint, []).append(best - max(plain_scores))
    means = {hint: sum(values) / len(values) for hint, values in advantages.items()}
    winner = max(means, key=lambda hint: means[hint]) if means else None
    wins = sum(1 for value in advantages.get(winner, []) if value > 0)
    report: dict[str, Any] = {
        "style_advantage": {str(hint): round(mean, 3) for hint, mean in means.items()},
    }
    if winner is None or means[winner] <= 0 or wins * 2 <= len(advantages[winner]):
        unhinted: list[Scored] = [(prompt, [t for t in ranked if t[2] is None]) for prompt, ranked in scored]
        rows = rows_from_ranking(
            [(prompt, ranked) for prompt, ranked in unhinted if ranked], liked_share=liked_share
        )
        return *rows, report | {"style": None}
    sft: list[dict[str, Any]] = []
    dpo: list[dict[str, Any]] = []
    for prompt, ranked in scored:
        styled = [(score, answer) for score, answer, hint in ranked if hint == winner]
        plain = [(score, answer) for score, answer, hint in ranked if hint is None]
        if not styled or not plain or styled[0][0] <= plain[0][0]:
            continue
        sft.append(sft_row(prompt, styled[0][1]))
        if styled[0][0] - plain[-1][0] >= PAIR_LOGIT_GAP:
            dpo.append(dpo_row(prompt, styled[0][1], plain[-1][1]))
    return sft, dpo, report | {"style": winner}


def train_prompts(datasets: dict[str, Any], *, limit: int, seed: int) -> list[ChatMessages]:
    """The distinct prompts of the train rows (SFT, DPO, KTO), at most `limit`, in a seeded order."""
    seen: dict[str, ChatMessages] = {}
    for kind, column in (("kto", "prompt"), ("dpo", "prompt"), ("sft", "prompt")):
        for prompt in datasets[kind][column] if kind in datasets else []:
            seen.setdefault(json.dumps(prompt, sort_keys=True), prompt)
    prompts = list(seen.values())
    random.Random(seed).shuffle(prompts)
    return prompts[:limit]
