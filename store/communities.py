"""Communities: each server's data-sharing switch, and which scopes' data teaches which adapter.

A server's own adapter learns only from its own rows. The global adapter learns from the rows recorded in the
global scope (everything from before per-server learning, TRAIN_SCOPE=global installs, direct messages under
TRAIN_DM_SCOPE=global) and from the servers whose admins turned sharing on; no other server's row ever
reaches it. Same convention as `store.crud`: the caller's session first, keyword-only arguments, and every
writer commits before it returns.
"""

from __future__ import annotations

from sqlmodel import Session, col, select

from store.db import loaded, write_transaction
from store.models import AdapterVersion, Community, Generation, Instructions, Passage, TrainingRun, utcnow
from store.scopes import GLOBAL, guild_of

_LOCK = "gradschool.communities"


def set_share_data(*, session: Session, scope: str, share: bool, by: int | None) -> Community:
    """Turn a server's data sharing on or off (its row is made the first time); `by`: the admin."""
    if guild_of(scope) is None:
        raise ValueError(
            f"only a server's scope shares its data, not {scope!r}: the global scope is the pool"
        )
    with write_transaction(session, lock=_LOCK):  # the lock: two first settings at once make one row
        community = session.get(Community, scope, with_for_update=True) or Community(scope=scope)
        community.share_data, community.updated_by, community.updated_at = share, by, utcnow()
        session.add(community)
    return loaded(session, community)


def shares_data(*, session: Session, scope: str) -> bool:
    """Whether the scope's data also teaches the global adapter (never, until its admins say so)."""
    community = session.get(Community, scope)
    return community is not None and community.share_data


def sharing_scopes(*, session: Session) -> list[str]:
    """The servers' scopes whose data also teaches the global adapter, sorted."""
    statement = (
        select(Community.scope).where(col(Community.share_data).is_(True)).order_by(col(Community.scope))
    )
    return list(session.exec(statement))


def training_scopes(*, session: Session, scope: str) -> list[str]:
    """The scopes whose rows teach (and judge) `scope`'s adapter: a server's own only; for the global one,
    the global rows and every sharing server's."""
    if scope != GLOBAL:
        return [scope]
    return [GLOBAL, *sharing_scopes(session=session)]


def known_scopes(*, session: Session) -> list[str]:
    """The global scope first, then every other scope any generation, adapter version, run, instructions
    or passage has, sorted."""
    found: set[str] = set()
    for scope in (
        Generation.scope,
        AdapterVersion.scope,
        TrainingRun.scope,
        Instructions.scope,
        Passage.scope,
    ):
        found.update(session.exec(select(scope).distinct()))
    return [GLOBAL, *sorted(found - {GLOBAL})]
