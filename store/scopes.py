"""Scopes: whose adapter a reply is served by and learns into.

`global` is the adapter learned from every server that shares its data (and, before per-server learning,
from everything); `guild:<id>` is one server's own. Names of versions are unique across scopes.
"""

from __future__ import annotations

from sqlmodel import Session, col, select

from store.models import Generation
from store.settings import TrainSettings

GLOBAL = "global"
_GUILD = "guild:"


def guild_scope(guild_id: int) -> str:
    """The scope of one server's own adapter."""
    return f"{_GUILD}{guild_id}"


def guild_of(scope: str) -> int | None:
    """The server a scope belongs to; None for the global scope."""
    if scope == GLOBAL:
        return None
    if not scope.startswith(_GUILD) or not scope[len(_GUILD) :].isdigit():
        raise ValueError(f"not a scope: {scope!r} (expected {GLOBAL!r} or 'guild:<id>')")
    return int(scope[len(_GUILD) :])


def scope_for(*, session: Session, settings: TrainSettings, guild_id: int | None, user_id: int | None) -> str:
    """The scope that answers a message and learns from it: its server's own under TRAIN_SCOPE=guild; for a
    direct message, TRAIN_DM_SCOPE decides (the global scope, or the server where the person last got an
    answer)."""
    if settings.scope == GLOBAL:
        return GLOBAL
    if guild_id is not None:
        return guild_scope(guild_id)
    if settings.dm_scope == "recent_guild" and user_id is not None:
        last = session.exec(
            select(Generation.guild_id)
            .where(Generation.user_id == user_id, col(Generation.guild_id).is_not(None))
            .order_by(col(Generation.created_at).desc(), col(Generation.id).desc())
            .limit(1)
        ).first()
        if last is not None:
            return guild_scope(last)
    return GLOBAL
