"""Instructions per server and channel, versioned, and listen mode, on real databases."""

from __future__ import annotations

import pytest
from sqlmodel import Session

from store import instructions
from store.instructions import SERVER
from store.scopes import guild_scope

HALL, OTHER = guild_scope(10**17 + 1), guild_scope(10**17 + 2)
ADMIN, CHANNEL, THREAD = 1, 500, 501


def say(session: Session, text: str, *, scope: str = HALL, channel_id: int = SERVER) -> int:
    row = instructions.set_instructions(
        session=session, scope=scope, channel_id=channel_id, text=text, by=ADMIN, max_chars=100
    )
    return row.version


def test_each_setting_is_a_new_version_and_clearing_is_one_too(session: Session) -> None:
    assert (
        instructions.instructions_in_play(session=session, scope=HALL, channel_ids=[CHANNEL]).version is None
    )
    assert [say(session, "Be brief."), say(session, "Be brief and kind."), say(session, "")] == [1, 2, 3]
    assert say(session, "Answer in French.", channel_id=CHANNEL) == 1
    assert say(session, "Other server.", scope=OTHER) == 1  # versions count per scope and channel

    in_play = instructions.instructions_in_play(session=session, scope=HALL, channel_ids=[CHANNEL])
    assert in_play.server is None  # cleared
    assert (in_play.version, in_play.text) == ("c1", "Answer in French.")

    say(session, "Be brief.")
    in_play = instructions.instructions_in_play(session=session, scope=HALL, channel_ids=[THREAD, CHANNEL])
    assert (in_play.version, in_play.text) == (
        "s4+c1",
        "Be brief.\n\nAnswer in French.",
    )  # a thread: its parent's
    elsewhere = instructions.instructions_in_play(session=session, scope=HALL, channel_ids=[999])
    assert (elsewhere.version, elsewhere.text) == ("s4", "Be brief.")


def test_instructions_are_capped(session: Session) -> None:
    with pytest.raises(ValueError, match="capped at 100 characters"):
        say(session, "x" * 101)
    assert say(session, "  " + "x" * 100 + "\n") == 1  # surrounding space does not count


def test_listen_mode_is_per_channel(session: Session) -> None:
    assert instructions.listening_channels(session=session) == set()
    instructions.set_listen(session=session, scope=HALL, channel_id=CHANNEL, listen=True, by=ADMIN)
    instructions.set_listen(session=session, scope=HALL, channel_id=THREAD, listen=True, by=ADMIN)
    instructions.set_listen(session=session, scope=HALL, channel_id=THREAD, listen=False, by=ADMIN)
    assert instructions.listening_channels(session=session) == {CHANNEL}
