"""The ladder's first rung: a community's own instructions to the model, per server and per channel, and the
channels in listen mode.

Instructions are versioned and never rewritten: setting or clearing adds a version, so every Generation's
`instructions_version` ("s3+c1": the server's third version and the channel's first) says exactly what the
model was told. Same convention as `store.crud`: the caller's session first, keyword-only arguments, and
every writer commits before it returns.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlmodel import Session, col, select

from store.db import loaded, write_transaction
from store.models import ChannelMode, Instructions, utcnow

SERVER = 0  # the channel id of instructions for the whole server
_LOCK = "gradschool.instructions"


@dataclass(frozen=True)
class InstructionsInPlay:
    """The instructions an answer in one channel is given: the server's, then the channel's own."""

    server: Instructions | None
    channel: Instructions | None

    @property
    def version(self) -> str | None:
        """ "s3+c1" for the server's version 3 and the channel's version 1; None when there are none."""
        parts = [
            f"{mark}{row.version}"
            for mark, row in (("s", self.server), ("c", self.channel))
            if row is not None
        ]
        return "+".join(parts) or None

    @property
    def text(self) -> str:
        """Both texts, the server's first; "" when there are none."""
        return "\n\n".join(row.text for row in (self.server, self.channel) if row is not None)


def set_instructions(
    *, session: Session, scope: str, channel_id: int = SERVER, text: str, by: int | None, max_chars: int
) -> Instructions:
    """Add a new version of the server's (channel_id=SERVER) or a channel's instructions; "" clears them."""
    text = text.strip()
    if len(text) > max_chars:
        raise ValueError(
            f"instructions are capped at {max_chars} characters (these have {len(text)}); shorten them"
        )
    with write_transaction(session, lock=_LOCK):  # the lock: two admins at once get versions n and n+1
        latest = session.exec(
            select(sa.func.max(Instructions.version)).where(
                Instructions.scope == scope, Instructions.channel_id == channel_id
            )
        ).one()
        row = Instructions(
            scope=scope, channel_id=channel_id, version=(latest or 0) + 1, text=text, set_by=by
        )
        session.add(row)
    return loaded(session, row)


def latest_instructions(*, session: Session, scope: str, channel_id: int = SERVER) -> Instructions | None:
    """The newest version of the server's or a channel's instructions, cleared ones included."""
    return session.exec(
        select(Instructions)
        .where(Instructions.scope == scope, Instructions.channel_id == channel_id)
        .order_by(col(Instructions.version).desc())
        .limit(1)
    ).first()


def instructions_in_play(*, session: Session, scope: str, channel_ids: list[int]) -> InstructionsInPlay:
    """The server's instructions and those of the first of `channel_ids` that has any (a thread, then its
    parent channel); cleared ones count as none."""
    server = latest_instructions(session=session, scope=scope)
    channel = None
    for channel_id in channel_ids:
        channel = latest_instructions(session=session, scope=scope, channel_id=channel_id)
        if channel is not None:
            break
    return InstructionsInPlay(
        server=server if server is not None and server.text else None,
        channel=channel if channel is not None and channel.text else None,
    )


def set_listen(*, session: Session, scope: str, channel_id: int, listen: bool, by: int | None) -> ChannelMode:
    """Put a channel in listen mode (the bot answers every message there) or take it out."""
    with write_transaction(session, lock=_LOCK):
        mode = session.get(ChannelMode, channel_id, with_for_update=True) or ChannelMode(
            channel_id=channel_id, scope=scope
        )
        mode.listen, mode.updated_by, mode.updated_at = listen, by, utcnow()
        session.add(mode)
    return loaded(session, mode)


def listening_channels(*, session: Session) -> set[int]:
    """Every channel in listen mode."""
    return set(session.exec(select(ChannelMode.channel_id).where(col(ChannelMode.listen).is_(True))))
