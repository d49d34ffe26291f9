"""The adapter registry: names, complete folders, status transitions, activation and rollback."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from store import registry
from store.models import AdapterStatus, AdapterVersion
from store.registry import InvalidTransition


def staged(adapters_dir: Path, *, files: tuple[str, ...] = registry.REQUIRED_FILES) -> Path:
    folder = registry.staging_dir(adapters_dir)
    for name in files:
        (folder / name).write_text("{}" if name.endswith(".json") else "weights")
    return folder


def trained(session: Session, adapters_dir: Path, *, status: AdapterStatus = "candidate") -> str:
    name = registry.next_version_name(session=session)
    registry.register_adapter(
        session=session,
        name=name,
        staging=staged(adapters_dir),
        adapters_dir=adapters_dir,
        base_model="HuggingFaceTB/SmolLM2-135M-Instruct",
        method="sft+dpo",
        dataset_counts={"sft": 10, "dpo": 4},
        metrics={"preference_accuracy": 0.75},
        status=status,
    )
    return name


def active_name(session: Session, scope: str = "global") -> str | None:
    active = registry.active_version(session=session, scope=scope)
    return active.name if active else None


def test_names_are_reserved_in_order(session: Session) -> None:
    assert [registry.next_version_name(session=session) for _ in range(3)] == ["v1", "v2", "v3"]
    assert registry.next_version_name(session=session, scope="guild:1") == "v4"  # names are unique everywhere
    reserved = registry.get_version(session=session, name="v2")
    assert reserved is not None and reserved.status == "training" and reserved.path is None
    with pytest.raises(LookupError, match="v2 is not registered yet"):
        registry.folder(reserved)  # a run in progress has no adapter to load


def test_registering_moves_the_complete_folder_into_place(session: Session, tmp_path: Path) -> None:
    adapters_dir = tmp_path / "adapters"
    name = registry.next_version_name(session=session)
    staging = staged(adapters_dir)
    assert staging.parent == adapters_dir / ".staging"

    version = registry.register_adapter(
        session=session,
        name=name,
        staging=staging,
        adapters_dir=adapters_dir,
        base_model="base",
        method="sft",
        metrics={"nll": 1.5},
        dataset_counts={"sft": 3},
    )

    assert version.status == "candidate" and version.method == "sft" and version.base_model == "base"
    assert version.metrics == {"nll": 1.5} and version.dataset_counts == {"sft": 3}
    assert version.path == str(adapters_dir / name) and registry.folder(version) == adapters_dir / name
    assert sorted(p.name for p in (adapters_dir / name).iterdir()) == sorted(registry.REQUIRED_FILES)
    assert not staging.exists()


@pytest.mark.parametrize(
    "files",
    [("adapter_config.json",), ("adapter_model.safetensors",), ()],
    ids=["no-weights", "no-config", "empty"],
)
def test_an_incomplete_folder_is_refused(session: Session, tmp_path: Path, files: tuple[str, ...]) -> None:
    adapters_dir = tmp_path / "adapters"
    name = registry.next_version_name(session=session)
    with pytest.raises(ValueError, match="incomplete"):
        registry.register_adapter(
            session=session,
            name=name,
            staging=staged(adapters_dir, files=files),
            adapters_dir=adapters_dir,
            base_model="base",
            method="sft",
        )
    assert not (adapters_dir / name).exists()
    version = registry.get_version(session=session, name=name)
    assert version is not None and version.status == "training" and version.path is None


def test_an_empty_weights_file_is_incomplete(session: Session, tmp_path: Path) -> None:
    adapters_dir = tmp_path / "adapters"
    staging = staged(adapters_dir)
    (staging / "adapter_model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="incomplete"):
        registry.register_adapter(
            session=session,
            name=registry.next_version_name(session=session),
            staging=staging,
            adapters_dir=adapters_dir,
            base_model="base",
            method="sft",
        )


def test_registering_needs_a_reserved_name_and_a_known_method(session: Session, tmp_path: Path) -> None:
    adapters_dir = tmp_path / "adapters"
    with pytest.raises(LookupError, match="v9"):
        registry.register_adapter(
            session=session,
            name="v9",
            staging=staged(adapters_dir),
            adapters_dir=adapters_dir,
            base_model="base",
            method="sft",
        )
    assert not (adapters_dir / "v9").exists()
    with pytest.raises(ValueError, match="method"):
        registry.register_adapter(
            session=session,
            name=registry.next_version_name(session=session),
            staging=staged(adapters_dir),
            adapters_dir=adapters_dir,
            base_model="base",
            method="ppo",  # type: ignore[arg-type]
        )


def test_an_existing_folder_is_never_overwritten(session: Session, tmp_path: Path) -> None:
    adapters_dir = tmp_path / "adapters"
    name = registry.next_version_name(session=session)
    (adapters_dir / name).mkdir(parents=True)
    (adapters_dir / name / "keep.txt").write_text("someone else's")
    with pytest.raises(FileExistsError):
        registry.register_adapter(
            session=session,
            name=name,
            staging=staged(adapters_dir),
            adapters_dir=adapters_dir,
            base_model="base",
            method="sft",
        )
    assert (adapters_dir / name / "keep.txt").read_text() == "someone else's"


ALLOWED: set[tuple[AdapterStatus, AdapterStatus]] = {
    ("training", "candidate"),
    ("training", "rejected"),
    ("candidate", "active"),
    ("candidate", "rejected"),
    ("candidate", "retired"),
    ("active", "retired"),
    ("retired", "active"),
}
STATUSES: tuple[AdapterStatus, ...] = ("training", "candidate", "active", "rejected", "retired")


def test_status_transitions(session: Session) -> None:
    pairs = [(start, goal) for start in STATUSES for goal in STATUSES if not start == goal == "active"]
    for start, goal in pairs:  # one row per pair, each in its own scope so several may be active
        session.add(AdapterVersion(name=f"{start}-{goal}", scope=f"{start}-{goal}", status=start))
    session.commit()

    for start, goal in pairs:
        name = f"{start}-{goal}"
        if (start, goal) in ALLOWED:
            assert (
                registry.set_status(session=session, name=name, status=goal, reason="because").status == goal
            )
        else:
            with pytest.raises(InvalidTransition, match=f"{name} cannot go from {start} to {goal}"):
                registry.set_status(session=session, name=name, status=goal)
            unchanged = registry.get_version(session=session, name=name)
            assert unchanged is not None and unchanged.status == start


def test_an_unknown_status_is_refused(session: Session) -> None:
    registry.next_version_name(session=session)
    with pytest.raises(ValueError, match="status must be"):
        registry.set_status(session=session, name="v1", status="great")  # type: ignore[arg-type]


def test_a_failed_transition_leaves_the_session_usable(session: Session) -> None:
    registry.next_version_name(session=session)
    with pytest.raises(InvalidTransition):
        registry.activate(session=session, name="v1")  # still training
    assert registry.next_version_name(session=session) == "v2"


def test_activating_retires_the_previous_version(session: Session, tmp_path: Path) -> None:
    adapters_dir = tmp_path / "adapters"
    v1, v2 = trained(session, adapters_dir), trained(session, adapters_dir)
    assert active_name(session) is None

    first = registry.activate(session=session, name=v1)
    assert first.status == "active" and first.activated_at is not None
    registry.activate(session=session, name=v2)
    assert active_name(session) == v2
    previous = registry.get_version(session=session, name=v1)
    assert previous is not None and previous.status == "retired"

    # Going back to an older version (lower id) must retire the newer one first.
    registry.activate(session=session, name=v1)
    assert active_name(session) == v1
    assert registry.activate(session=session, name=v1).status == "active"  # no-op


def test_register_straight_to_active(session: Session, tmp_path: Path) -> None:
    adapters_dir = tmp_path / "adapters"
    v1 = trained(session, adapters_dir, status="active")
    v2 = trained(session, adapters_dir, status="active")
    assert active_name(session) == v2
    old = registry.get_version(session=session, name=v1)
    assert old is not None and old.status == "retired"


def test_scopes_have_their_own_active_version(session: Session) -> None:
    for name, scope in (("g1", "global"), ("a1", "guild:1")):
        session.add(AdapterVersion(name=name, scope=scope, status="candidate"))
    session.commit()
    registry.activate(session=session, name="g1")
    registry.activate(session=session, name="a1")
    assert (active_name(session), active_name(session, "guild:1")) == ("g1", "a1")


def test_rollback_walks_back_the_stack(session: Session, tmp_path: Path) -> None:
    adapters_dir = tmp_path / "adapters"
    v1, v2, v3 = (trained(session, adapters_dir) for _ in range(3))
    activated = {name: registry.activate(session=session, name=name).activated_at for name in (v1, v2, v3)}

    restored = registry.rollback(session=session)
    assert restored is not None and restored.name == v2
    assert restored.activated_at == activated[v2]  # kept, so the next rollback goes further back
    rolled_back = registry.get_version(session=session, name=v3)
    assert rolled_back is not None and rolled_back.status == "retired"

    restored = registry.rollback(session=session)
    assert restored is not None and restored.name == v1
    assert registry.rollback(session=session) is None
    assert active_name(session) is None  # the base model
    assert registry.rollback(session=session) is None  # nothing left to roll back


def test_rollback_never_returns_to_a_version_rolled_back_from(session: Session, tmp_path: Path) -> None:
    adapters_dir = tmp_path / "adapters"
    v1, v2, v3 = (trained(session, adapters_dir) for _ in range(3))
    registry.activate(session=session, name=v1)
    registry.activate(session=session, name=v2)
    registry.rollback(session=session)  # v2 was bad: back to v1
    registry.activate(session=session, name=v3)

    restored = registry.rollback(session=session)
    assert restored is not None and restored.name == v1


def test_the_database_forbids_two_active_versions(session: Session) -> None:
    session.add(AdapterVersion(name="v1", status="active"))
    session.commit()
    session.add(AdapterVersion(name="v2", status="active"))
    with pytest.raises(IntegrityError):
        session.commit()
    session.rollback()
    session.add(AdapterVersion(name="v3", status="active", scope="guild:1"))
    session.add(AdapterVersion(name="v4", status="retired"))
    session.add(AdapterVersion(name="v5", status="retired"))
    session.commit()  # other scopes and other statuses are not limited


def test_list_versions_newest_first(session: Session, tmp_path: Path) -> None:
    adapters_dir = tmp_path / "adapters"
    names = [trained(session, adapters_dir) for _ in range(3)]
    registry.next_version_name(session=session, scope="guild:1")
    listed = registry.list_versions(session=session)
    assert [v.name for v in listed] == names[::-1]
    assert listed[0].metrics == {"preference_accuracy": 0.75}
    assert registry.get_version(session=session, name="v99") is None
