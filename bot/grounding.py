"""The ladder's lower rungs in the prompt: the community's instructions, then its open book's passages.

Instructions come from the server's admins and are part of what the model is told: they follow the
configured system prompt. Passages are data: they go in front of the person's question as reference notes
(`store.knowledge.with_reference`), one line each, so no text in the book can end the notes, forge another
one or start a section of its own. Chat-template control tokens typed into a passage are encoded as plain
text by the engine (`engine.prompting.encode_prompt`), like everything people type.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlmodel import Session, col, select

from bot.replies import clip
from engine.embedding import Embedder, search_book
from engine.prompting import ChatMessage
from store import instructions, knowledge
from store.models import Passage
from store.settings import LadderSettings

INSTRUCTIONS_HEADER = "Instructions from this server's admins:"
FOOTER_MAX = 300  # the sources line stays short beside an answer of up to 2000 characters
TITLE_MAX = 60


@dataclass(frozen=True)
class Grounding:
    """What the lower rungs add to one answer: the system prompt, the passages, what to record and show."""

    system: str
    instructions_version: str | None = None
    passages: list[Passage] = field(default_factory=list)

    @property
    def passage_ids(self) -> tuple[int, ...]:
        return tuple(p.id for p in self.passages if p.id is not None)

    @property
    def footer(self) -> str | None:
        """The sources line under the answer."""
        return sources_footer([p.title for p in self.passages])

    def apply(self, chat: list[ChatMessage]) -> list[ChatMessage]:
        """The conversation with this system prompt, and the passages in front of the newest question."""
        grounded = [*chat]
        if grounded and grounded[0]["role"] == "system":
            grounded[0] = {"role": "system", "content": self.system}
        if self.passages and grounded[-1]["role"] == "user":
            question = grounded[-1]["content"]
            grounded[-1] = {"role": "user", "content": knowledge.with_reference(question, self.passages)}
        return grounded


def without_notes(chat: Sequence[ChatMessage]) -> list[ChatMessage]:
    """The conversation as the model would see it with the book closed: what guided decoding steers away from
    (`LADDER_NOTE_GUIDANCE`). Only the newest question ever carries notes."""
    if not chat or chat[-1]["role"] != "user":
        return list(chat)
    return [*chat[:-1], {"role": "user", "content": knowledge.without_reference(chat[-1]["content"])}]


def ground(
    *,
    session: Session,
    settings: LadderSettings,
    system: str,
    scope: str,
    channel_ids: list[int],
    question: str,
    embedder: Embedder | None,
) -> Grounding:
    """The system prompt with the scope's instructions in play, and the passages answering `question`."""
    in_play = instructions.instructions_in_play(session=session, scope=scope, channel_ids=channel_ids)
    hits = search_book(
        session=session,
        scope=scope,
        question=question,
        limit=settings.passages,
        min_share=settings.min_score_share,
        embedder=embedder,
    )
    return Grounding(
        system=system_text(system, in_play.text),
        instructions_version=in_play.version,
        passages=[hit.passage for hit in hits],
    )


def system_text(system: str, community_instructions: str) -> str:
    """The configured system prompt, then the community's instructions."""
    sections = [system.strip()] if system.strip() else []
    if community_instructions:
        sections.append(f"{INSTRUCTIONS_HEADER}\n{community_instructions}")
    return "\n\n".join(sections)


def sources_footer(titles: Sequence[str]) -> str | None:
    """A small grey line naming the passages an answer was given ("-# Sources: ..."); None for none."""
    names = list(dict.fromkeys(clip(" ".join(title.split()), TITLE_MAX) for title in titles))
    if not names:
        return None
    return clip("-# Sources: " + " · ".join(names), FOOTER_MAX)


def passage_titles(*, session: Session, passage_ids: Sequence[int]) -> list[str]:
    """The titles of those passages still in the book, in the given order (for a 🔁 of an earlier answer)."""
    rows = session.exec(select(Passage).where(col(Passage.id).in_(passage_ids)))
    titles = {row.id: row.title for row in rows}
    return [titles[i] for i in passage_ids if i in titles]
