"""Cutting a long answer into Discord-sized messages: at paragraph, sentence or word ends, fences kept whole.

A cut inside a fenced code block closes the fence at the end of one message and reopens it (with its
language) at the start of the next, so every message renders as valid markdown on its own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

DISCORD_LIMIT = 2000
FENCE = re.compile(r"^[ \t]*```(\S*)", re.MULTILINE)
CLOSE = "\n```"
# Where to cut, best first; each pattern matches the separator the cut goes after.
BOUNDARIES = (re.compile(r"\n\s*\n"), re.compile(r"\n"), re.compile(r"[.!?][)\"'\]]*\s"), re.compile(r"\s"))


def open_fence(text: str) -> str | None:
    """The language tag ("" for none) of the code block still open at the end of `text`; None when closed."""
    language = None
    for match in FENCE.finditer(text):
        language = match.group(1) if language is None else None
    return language


def _cut_position(text: str, budget: int) -> int:
    """Where to end the first message: after the best boundary in the second half of the budget."""
    window = text[:budget]
    floor = budget // 2  # a cut further back would leave a message mostly empty
    inside_code = open_fence(window) is not None
    for pattern in BOUNDARIES[1:] if inside_code else BOUNDARIES:  # code has no paragraphs or sentences
        ends = [m.end() for m in pattern.finditer(window) if m.end() > floor]
        if ends:
            return ends[-1]
    return budget


@dataclass
class Splitter:
    """Feed it text as it streams; `finished` holds final messages, `tail` the one still growing.

    Cuts depend only on the first `limit` characters, so streaming and splitting at once agree.
    """

    limit: int = DISCORD_LIMIT
    finished: list[str] = field(default_factory=list)
    tail: str = ""

    def feed(self, text: str) -> None:
        self.tail += text
        while len(self.tail) > self.limit:
            self._cut()

    def messages(self) -> list[str]:
        """Every message so far; the last one may still grow."""
        return [*self.finished, self.tail] if self.tail.strip() or not self.finished else list(self.finished)

    def _cut(self) -> None:
        budget = self.limit - len(CLOSE)  # room to close a fence the cut may fall inside
        position = _cut_position(self.tail, budget)
        head, rest = self.tail[:position].rstrip(), self.tail[position:]
        language = open_fence(head)
        if language is not None:
            head += CLOSE
            rest = f"```{language}\n" + rest.lstrip("\n")
        else:
            rest = rest.lstrip()
        self.finished.append(head)
        self.tail = rest


def split_message(text: str, limit: int = DISCORD_LIMIT) -> list[str]:
    """Split `text` into messages of at most `limit` characters."""
    splitter = Splitter(limit)
    splitter.feed(text)
    return splitter.messages()
