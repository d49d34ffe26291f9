"""Turning a conversation into the model's prompt: its own chat template, trimmed to the context budget."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal, TypedDict, cast

from transformers import BatchEncoding, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

SYSTEM_SHARE = 0.75  # the most of the prompt budget the system message may take; the rest is the question's


class ChatMessage(TypedDict):
    """One chat turn, in the shape every chat template (and TRL's datasets) expects."""

    role: Literal["system", "user", "assistant"]
    content: str


def render_prompt(messages: Sequence[ChatMessage], tokenizer: PreTrainedTokenizerBase) -> str:
    """The prompt text the model sees, ending with the assistant's header."""
    return cast(
        str, tokenizer.apply_chat_template(_plain(messages), add_generation_prompt=True, tokenize=False)
    )


def encode_prompt(messages: Sequence[ChatMessage], tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The prompt's token ids; control tokens typed by users (`<|im_end|>`) are encoded as plain text."""
    encoded = tokenizer.apply_chat_template(
        _plain(messages), add_generation_prompt=True, sanitize_control_tokens=True, return_dict=True
    )
    assert isinstance(encoded, BatchEncoding)
    return list(encoded["input_ids"])


def _plain(messages: Sequence[ChatMessage]) -> list[dict[str, str]]:
    """Role and content only: extra keys callers keep (ids, names) have no business in the template."""
    return [{"role": message["role"], "content": message["content"]} for message in messages]


def trim_to_fit(
    messages: Sequence[ChatMessage], tokenizer: PreTrainedTokenizerBase, budget_tokens: int
) -> list[ChatMessage]:
    """Drop the oldest turns (never the system message or the newest) until the prompt fits the budget."""
    if not messages:
        raise ValueError("cannot build a prompt from an empty conversation")
    system = list(messages[:1]) if messages[0]["role"] == "system" else []
    turns = list(messages[len(system) :])
    if not turns:
        return system
    system = _fit_system(system, turns[-1], tokenizer, budget_tokens)

    def fits(candidate: list[ChatMessage]) -> bool:
        return len(encode_prompt(system + candidate, tokenizer)) <= budget_tokens

    dropped = 0
    while len(turns) > 1 and not fits(turns):
        turns.pop(0)
        dropped += 1
        # a reply without its question reads as the model talking to itself; drop it with the question
        while len(turns) > 1 and turns[0]["role"] == "assistant":
            turns.pop(0)
            dropped += 1
    if dropped:
        logger.debug(
            "dropped the %d oldest of %d messages to fit %d tokens", dropped, len(messages), budget_tokens
        )
    if not fits(turns):
        turns[-1] = _keep_end(system, turns[-1], tokenizer, budget_tokens)
    return system + turns


def _fit_system(
    system: list[ChatMessage], newest: ChatMessage, tokenizer: PreTrainedTokenizerBase, budget_tokens: int
) -> list[ChatMessage]:
    """Cut the system message at its end so that it leaves the newest message a share of the budget.

    Its end is where a community's reference material goes (after the configured prompt and the
    instructions), and a long passage must cost some of the book, not the answer.
    """
    if not system:
        return system
    room = int(budget_tokens * SYSTEM_SHARE)
    overhead = len(encode_prompt([*system, {"role": newest["role"], "content": ""}], tokenizer))
    if overhead <= room:
        return system
    content_ids = tokenizer(system[0]["content"], add_special_tokens=False)["input_ids"]
    keep = len(content_ids) - (overhead - room)
    while True:
        # as in _keep_end: re-encoding a decoded slice can merge differently at the cut
        text = cast(str, tokenizer.decode(content_ids[:keep])) if keep > 0 else ""
        cut: list[ChatMessage] = [{"role": "system", "content": text}]
        excess = len(encode_prompt([*cut, {"role": newest["role"], "content": ""}], tokenizer)) - room
        if excess <= 0 or keep <= 0:
            break
        keep -= excess
    logger.warning(
        "the system prompt (%d tokens) takes over %d%% of the %d-token prompt budget; kept its first %d "
        "tokens (shorten MODEL_SYSTEM_PROMPT or the instructions, lower LADDER_PASSAGES or raise "
        "MODEL_CONTEXT_TOKENS)",
        len(content_ids),
        int(SYSTEM_SHARE * 100),
        budget_tokens,
        max(keep, 0),
    )
    return cut


def _keep_end(
    system: list[ChatMessage], newest: ChatMessage, tokenizer: PreTrainedTokenizerBase, budget_tokens: int
) -> ChatMessage:
    """Cut the newest message from the front so that it and the system message fit; its end matters most."""
    overhead = len(encode_prompt([*system, {"role": newest["role"], "content": ""}], tokenizer))
    if overhead > budget_tokens:
        raise ValueError(
            f"the system prompt and chat template alone take {overhead} tokens, over the "
            f"{budget_tokens}-token prompt budget; shorten MODEL_SYSTEM_PROMPT, lower MODEL_MAX_NEW_TOKENS "
            "or raise MODEL_CONTEXT_TOKENS"
        )
    content_ids = tokenizer(newest["content"], add_special_tokens=False)["input_ids"]
    keep = budget_tokens - overhead
    while True:
        # re-encoding a decoded slice can merge differently at the cut, so check and shrink until it fits
        text = cast(str, tokenizer.decode(content_ids[-keep:])) if keep > 0 else ""
        cut: ChatMessage = {"role": newest["role"], "content": text}
        excess = len(encode_prompt([*system, cut], tokenizer)) - budget_tokens
        if excess <= 0:
            break
        keep -= excess
    logger.warning(
        "the newest message (%d tokens) does not fit the %d-token prompt budget; kept its last %d tokens",
        len(content_ids),
        budget_tokens,
        max(keep, 0),
    )
    return cut
