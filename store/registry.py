"""The adapter registry: version names, adapter folders, and which version each scope serves.

Writes that read and then update registry rows (reserve a name, change a status, activate, roll back) run
under one registry lock: BEGIN IMMEDIATE on SQLite, a transaction-scoped advisory lock on Postgres. The
partial unique index on `scope WHERE status = 'active'` is the last line: the database itself refuses a
second active version. Like store.crud, every function commits before it returns (rolls back on an error).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from sqlmodel import Session, col, select

from store.db import write_transaction
from store.models import ADAPTER_STATUSES, METHODS, AdapterStatus, AdapterVersion, Method, utcnow

REQUIRED_FILES = ("adapter_config.json", "adapter_model.safetensors")
_LOCK = "gradschool.registry"
_TRANSITIONS: dict[AdapterStatus, tuple[AdapterStatus, ...]] = {
    "training": ("candidate", "rejected"),
    "candidate": ("active", "rejected", "retired"),
    "active": ("retired",),
    "retired": ("active",),
    "rejected": (),
}


class InvalidTransition(ValueError):
    """An adapter version cannot go from its status to the one asked for."""


def staging_dir(adapters_dir: Path, prefix: str = "tmp") -> Path:
    """A fresh folder under `adapters_dir/.staging/` to save an adapter into before it is registered."""
    root = adapters_dir / ".staging"
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=root))


def next_version_name(*, session: Session, scope: str = "global") -> str:
    """Reserve the next version name (v1, v2, ...) by inserting its row with status `training`."""
    with write_transaction(session, lock=_LOCK):
        names = session.exec(select(AdapterVersion.name)).all()
        # Numbered across scopes: names are unique in the table.
        number = max((int(name[1:]) for name in names if name[:1] == "v" and name[1:].isdigit()), default=0)
        name = f"v{number + 1}"
        session.add(AdapterVersion(name=name, scope=scope, status="training"))
    return name


def register_adapter(
    *,
    session: Session,
    name: str,
    staging: Path,
    adapters_dir: Path,
    base_model: str,
    method: Method,
    parent: str | None = None,
    dataset_counts: dict[str, int] | None = None,
    metrics: dict[str, Any] | None = None,
    status: AdapterStatus = "candidate",
    reason: str | None = None,
) -> AdapterVersion:
    """Move a complete staged adapter to `adapters_dir/<name>` in one rename and record it under `status`."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    missing = [f for f in REQUIRED_FILES if not (staging / f).is_file() or (staging / f).stat().st_size == 0]
    if missing:
        raise ValueError(f"staged adapter {staging} is incomplete: missing or empty {', '.join(missing)}")
    destination = adapters_dir / name
    first_status: AdapterStatus = "candidate" if status == "active" else status  # active goes via activate
    with write_transaction(session, lock=_LOCK):
        version = _version(session, name)
        _check_transition(version, first_status)
        if destination.exists():
            raise FileExistsError(f"{destination} already exists; adapter folders are never overwritten")
        os.replace(staging, destination)  # one rename: readers see no folder or a complete one
        version.path, version.base_model, version.method = str(destination), base_model, method
        version.parent, version.dataset_counts, version.metrics = parent, dataset_counts or {}, metrics or {}
        version.status, version.status_reason = first_status, reason
    if status == "active":
        return activate(session=session, name=name, reason=reason)
    return _loaded(session, version)


def abandon(*, session: Session, name: str, reason: str) -> AdapterVersion | None:
    """Reject a reserved name whose adapter never got registered (still `training`); None if it was."""
    with write_transaction(session, lock=_LOCK):
        version = _version(session, name)
        if version.status != "training":
            return None
        version.status, version.status_reason = "rejected", reason
    return _loaded(session, version)


def set_status(
    *, session: Session, name: str, status: AdapterStatus, reason: str | None = None
) -> AdapterVersion:
    """Move a version to `status` (`active` goes via `activate`); raises InvalidTransition if not allowed."""
    if status not in ADAPTER_STATUSES:
        raise ValueError(f"status must be one of {ADAPTER_STATUSES}, got {status!r}")
    if status == "active":
        return activate(session=session, name=name, reason=reason)
    with write_transaction(session, lock=_LOCK):
        version = _version(session, name)
        _check_transition(version, status)
        version.status, version.status_reason = status, reason
    return _loaded(session, version)


def activate(*, session: Session, name: str, reason: str | None = None) -> AdapterVersion:
    """Make `name` the active version of its scope, retiring the one active before, in one transaction."""
    with write_transaction(session, lock=_LOCK):
        target = _version(session, name)
        if target.status != "active":
            _check_transition(target, "active")
            current = _active(session, target.scope)
            if current is not None:
                current.status, current.status_reason = "retired", f"replaced by {name}"
                session.flush()  # retire first: the unique index is checked per row, in primary-key order
            target.status, target.status_reason, target.activated_at = "active", reason, utcnow()
    return _loaded(session, target)


def rollback(*, session: Session, scope: str = "global") -> AdapterVersion | None:
    """Retire the active version and bring back the one active before it; None means the base model.

    The restored version keeps its activated_at and the rolled-back one loses its own, so repeated rollbacks
    walk back the stack of activations (v3, v2, v1, base) and never return to a version rolled back from.
    """
    with write_transaction(session, lock=_LOCK):
        current = _active(session, scope)
        if current is None or current.activated_at is None:
            return None
        previous = session.exec(
            select(AdapterVersion)
            .where(
                AdapterVersion.scope == scope,
                AdapterVersion.status == "retired",
                col(AdapterVersion.activated_at) < current.activated_at,
            )
            .order_by(col(AdapterVersion.activated_at).desc())
        ).first()
        current.status, current.activated_at = "retired", None
        current.status_reason = f"rolled back to {previous.name if previous else 'the base model'}"
        session.flush()  # retire first, as in activate
        if previous is None:
            return None
        previous.status, previous.status_reason = "active", f"rolled back from {current.name}"
    return _loaded(session, previous)


def mark_unservable(*, session: Session, name: str, cause: str | None) -> AdapterVersion:
    """Record on the version why the engine would not load it (`serve_error` in its metrics), or clear that
    (`cause=None`) once it loaded; the status stays: the bot keeps serving what it served before."""
    with write_transaction(session, lock=_LOCK):
        version = _version(session, name)
        metrics = {k: v for k, v in version.metrics.items() if k != "serve_error"}
        version.metrics = metrics | ({"serve_error": cause[:500]} if cause else {})
    return _loaded(session, version)


def active_version(*, session: Session, scope: str = "global") -> AdapterVersion | None:
    """The version the scope serves; None means the base model."""
    return _active(session, scope)


def list_versions(*, session: Session, scope: str = "global") -> list[AdapterVersion]:
    """Every version of the scope, newest first, with its metrics."""
    statement = (
        select(AdapterVersion)
        .where(AdapterVersion.scope == scope)
        .order_by(col(AdapterVersion.created_at).desc(), col(AdapterVersion.id).desc())
    )
    return list(session.exec(statement))


def serving_versions(*, session: Session) -> list[AdapterVersion]:
    """The active version and the candidates of every scope, newest first: what the bot must serve."""
    statement = (
        select(AdapterVersion)
        .where(col(AdapterVersion.status).in_(("active", "candidate")))
        .order_by(col(AdapterVersion.created_at).desc(), col(AdapterVersion.id).desc())
    )
    return list(session.exec(statement))


def get_version(*, session: Session, name: str) -> AdapterVersion | None:
    """The version called `name`, if there is one."""
    return session.exec(select(AdapterVersion).where(AdapterVersion.name == name)).first()


def folder(version: AdapterVersion) -> Path:
    """Where a registered version's adapter lies (a name reserved for a run in progress has none yet)."""
    if version.path is None:
        raise LookupError(f"adapter {version.name} is not registered yet: it has no folder")
    return Path(version.path)


def _active(session: Session, scope: str) -> AdapterVersion | None:
    statement = select(AdapterVersion).where(AdapterVersion.scope == scope, AdapterVersion.status == "active")
    return session.exec(statement).first()


def _version(session: Session, name: str) -> AdapterVersion:
    version = get_version(session=session, name=name)
    if version is None:
        raise LookupError(f"no adapter version {name!r}; reserve names with next_version_name")
    return version


def _check_transition(version: AdapterVersion, status: AdapterStatus) -> None:
    if status not in _TRANSITIONS[version.status]:
        allowed = ", ".join(_TRANSITIONS[version.status]) or "nothing"
        raise InvalidTransition(
            f"{version.name} cannot go from {version.status} to {status} (allowed: {allowed})"
        )


def _loaded(session: Session, version: AdapterVersion) -> AdapterVersion:
    session.refresh(version)  # commit expired it; loaded now, it can be read after the session closes
    return version
