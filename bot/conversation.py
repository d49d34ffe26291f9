"""Turning Discord messages into the conversation the model answers: reply chain, thread or DM history."""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import discord

from engine.prompting import ChatMessage

logger = logging.getLogger(__name__)

USER_MENTION = re.compile(r"<@!?(\d+)>")
LONE_SURROGATE = re.compile("[\ud800-\udfff]")  # a paired one is a single character in a Python str
TEXT_SUFFIXES = {
    ".txt", ".md", ".rst", ".py", ".js", ".ts", ".json", ".yaml", ".yml", ".toml", ".ini", ".cfg", ".csv",
    ".log", ".html", ".css", ".xml", ".sql", ".sh", ".c", ".h", ".cpp", ".rs", ".go", ".java", ".rb",
}  # fmt: skip

# Finds the full answer (all its split messages) a bot message belongs to; None for other bot messages.
AnswerLookup = Callable[[int], Awaitable[str | None]]


@dataclass
class Turn:
    """One Discord message as the model will see it."""

    message_id: int
    author_id: int
    author_name: str
    role: str  # "user" or "assistant"
    text: str
    reply_to: int | None = None
    declined: list[str] = field(default_factory=list)  # attachments the bot could not read


def clean_text(text: str) -> str:
    """Text that the store, the tokenizer and the logs can take; "" when nothing in it is visible.

    Discord's JSON may carry a lone surrogate (an escaped "\\ud800"), which no UTF-8 encoder accepts: it
    becomes U+FFFD. NULs go (PostgreSQL refuses them in text). Zero-width, direction and other format
    characters stay inside text (emoji sequences need them), but text made only of them counts as empty.
    """
    text = without_surrogates(text).replace("\x00", "")
    return text if any(char.isprintable() and not char.isspace() for char in text) else ""


def without_surrogates(text: str) -> str:
    """`text` with each lone surrogate (which no UTF-8 encoder accepts) replaced by U+FFFD."""
    return LONE_SURROGATE.sub("\ufffd", text)


def is_answer_request(message: discord.Message, me: discord.abc.User) -> bool:
    """Mentioned, replied to, in a thread the bot started, or in a DM (bots, itself included, never)."""
    if message.author.bot:
        return False
    if message.guild is None:
        return True
    if any(user.id == me.id for user in message.mentions):
        return True
    if isinstance(message.channel, discord.Thread) and message.channel.owner_id == me.id:
        return True
    resolved = message.reference.resolved if message.reference else None
    return isinstance(resolved, discord.Message) and resolved.author.id == me.id


async def history(message: discord.Message, limit: int) -> list[discord.Message]:
    """The messages the answer should see, oldest first, the asking message last."""
    if message.reference is not None and message.reference.message_id is not None:
        return await reply_chain(message, limit)
    if message.guild is None or isinstance(message.channel, discord.Thread):
        found = [m async for m in message.channel.history(limit=limit, before=message)]
        return [*reversed(found[: limit - 1]), message]
    return [message]


async def reply_chain(message: discord.Message, limit: int) -> list[discord.Message]:
    """The message and the ones it replies to, transitively, up to `limit`, oldest first."""
    chain = [message]
    while len(chain) < limit:
        parent = await _replied_to(chain[-1])
        if parent is None:
            break
        chain.append(parent)
    return chain[::-1]


async def _replied_to(message: discord.Message) -> discord.Message | None:
    reference = message.reference
    if reference is None or reference.message_id is None:
        return None
    parent = reference.cached_message
    if parent is None and isinstance(reference.resolved, discord.Message):
        parent = reference.resolved
    # a replied-to message embedded in a reply may lack its own reference; then fetch it whole
    if parent is not None and not (parent.type == discord.MessageType.reply and parent.reference is None):
        return parent
    try:
        return await message.channel.fetch_message(reference.message_id)
    except discord.HTTPException as exc:  # deleted, or no access: the chain ends here
        logger.info("reply chain stops at message %s: %s", reference.message_id, exc)
        return None


async def to_turns(
    messages: list[discord.Message], me: discord.abc.User, answer_of: AnswerLookup, max_bytes: int
) -> list[Turn]:
    """Read each message (text attachments included); the bot's split answers become one turn each."""
    turns: list[Turn] = []
    for message in messages:
        if message.author.id == me.id:
            answer = await answer_of(message.id)
            if answer is None or (turns and turns[-1].role == "assistant" and turns[-1].text == answer):
                continue  # a notice (rate limit, queue) or the next part of an answer already taken
            turns.append(Turn(message.id, me.id, me.display_name, "assistant", answer))
            continue
        text, declined = await read_message(message, me.id, max_bytes)
        reply_to = message.reference.message_id if message.reference else None
        author = clean_text(message.author.display_name)
        turns.append(Turn(message.id, message.author.id, author, "user", text, reply_to, declined))
    return turns


def message_text(message: discord.Message, bot_id: int) -> str:
    """The message's own text, mentions written as names (the bot's own mention dropped)."""
    names = {user.id: user.display_name for user in message.mentions}

    def name(match: re.Match[str]) -> str:
        user_id = int(match.group(1))
        return "" if user_id == bot_id else f"@{names.get(user_id, 'someone')}"

    return USER_MENTION.sub(name, message.content).strip()


async def read_message(message: discord.Message, bot_id: int, max_bytes: int) -> tuple[str, list[str]]:
    """The message's text with mentions as names, text attachments appended; and the files declined."""
    text = message_text(message, bot_id)
    declined = []
    for attachment in message.attachments:
        if not _is_text(attachment):
            declined.append(attachment.filename)
            continue
        text += await _read_attachment(attachment, max_bytes)
    return clean_text(text).strip(), declined


def _is_text(attachment: discord.Attachment) -> bool:
    content_type = (attachment.content_type or "").split(";")[0]
    if content_type.startswith("text/") or content_type in ("application/json", "application/xml"):
        return True
    return PurePosixPath(attachment.filename).suffix.lower() in TEXT_SUFFIXES


async def _read_attachment(attachment: discord.Attachment, max_bytes: int) -> str:
    try:
        data = await attachment.read()
    except discord.HTTPException as exc:
        logger.warning("could not download attachment %s: %s", attachment.filename, exc)
        return f"\n\n[attached file {attachment.filename}: could not be downloaded]"
    cut = len(data) > max_bytes
    body = data[:max_bytes].decode("utf-8", errors="replace")
    note = f" (cut at {max_bytes} bytes of {len(data)})" if cut else ""
    return f"\n\n[attached file {attachment.filename}{note}]\n{body}"


def to_chat(turns: list[Turn], asker_id: int, system: str) -> list[ChatMessage]:
    """Chat messages, newest last; people other than the asker are prefixed with their names."""
    chat: list[ChatMessage] = [{"role": "system", "content": system}]
    for turn in turns:
        if turn.role == "assistant":
            chat.append({"role": "assistant", "content": turn.text})
        elif turn.author_id == asker_id:
            chat.append({"role": "user", "content": turn.text})
        else:
            chat.append({"role": "user", "content": f"{turn.author_name}: {turn.text}"})
    return chat


def system_prompt(template: str, channel: discord.abc.MessageableChannel) -> str:
    """The configured system prompt with {date}, {server} and {channel} filled in."""
    guild = getattr(channel, "guild", None)
    values = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d"),
        "server": guild.name if guild is not None else "a direct message",
        "channel": getattr(channel, "name", None) or "direct messages",
    }
    try:
        return template.format_map(values)
    except (KeyError, ValueError, IndexError) as exc:  # a stray brace in the template: use it as written
        logger.warning("MODEL_SYSTEM_PROMPT could not be filled in (%r); using it as written", exc)
        return template


def channel_chain(channel: discord.abc.Messageable) -> list[int]:
    """The channel's id, then its parent's for a thread: whose channel instructions apply, nearest first."""
    ids = [getattr(channel, "id", None), getattr(channel, "parent_id", None)]
    return [channel_id for channel_id in ids if isinstance(channel_id, int)]
