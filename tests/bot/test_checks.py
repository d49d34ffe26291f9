"""The admin check (`bot.access.admin_only`) through the emulator: who it lets in, and how it says no.

tests/bot/test_commands.py and tests/reliability/test_access.py cover who is refused where; these cover
what the check reads (the cog's settings) and that a refusal is an answer, not an error.
"""

from __future__ import annotations

import logging

import pytest

from sim.discord_emulator import DiscordEmulator
from tests.fixtures.discord import Community, slash


async def test_a_refusal_is_answered_and_logged_as_a_refusal_not_an_error(
    emulator: DiscordEmulator, community: Community, make_bot, caplog: pytest.LogCaptureFixture
) -> None:
    await make_bot()
    # Discord offers /rollback only to Manage Server by default; a server admin opened it to bob
    await emulator.set_command_permission(community.guild, "rollback", community.bob, allowed=True)
    caplog.set_level(logging.INFO)
    caplog.clear()  # connecting logs its own warnings (no voice libraries)

    [answer] = await slash(emulator, community, community.bob, "rollback")

    assert answer.ephemeral
    assert answer.content == (
        "Sorry, only admins can use /rollback (Manage Server permission, or an admin role)."
    )
    refusals = [r for r in caplog.records if r.getMessage().startswith("refused /rollback")]
    assert [(r.levelno, r.getMessage()) for r in refusals] == [
        (logging.INFO, f"refused /rollback to non-admin {community.bob.id}")
    ]
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


async def test_an_admin_by_user_id_passes_the_check_without_manage_server(
    emulator: DiscordEmulator, community: Community, make_bot
) -> None:
    # bob has no Manage Server, only his id in the settings: the admin commands are listed to everyone then
    await make_bot(admin_user_ids=[community.bob.id])

    [answer] = await slash(emulator, community, community.bob, "rollback")

    assert answer.content == "Nothing to roll back: I'm already the base model."
