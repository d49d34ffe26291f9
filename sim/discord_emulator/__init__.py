"""A local Discord (REST v10 + gateway) on 127.0.0.1 that drives the real discord.py.

async with DiscordEmulator() as emulator:
    guild = await emulator.add_guild("Grad School")
    general = await emulator.add_channel(guild, "general")
    alice = await emulator.add_user("alice")
    await emulator.add_member(guild, alice, permissions=["manage_guild"])
    async with running(my_bot, emulator):  # points discord.py here, logs in, waits for READY
        await emulator.send_message(general, alice, "hi", mentions_bot=True)
        reply = await emulator.wait_for_bot_message(general)
        await emulator.add_reaction(alice, general, reply, "👍")
"""

from .client import logged_in, point_discord_py_at, restore_discord_py, running
from .errors import CommandUnavailable, DiscordError
from .gateway import Dispatch
from .rest import RestCall
from .server import DiscordEmulator
from .state import Attachment, Channel, Guild, Interaction, Member, Message, Role, User

__all__ = [
    "Attachment",
    "Channel",
    "CommandUnavailable",
    "DiscordEmulator",
    "DiscordError",
    "Dispatch",
    "Guild",
    "Interaction",
    "Member",
    "Message",
    "RestCall",
    "Role",
    "User",
    "logged_in",
    "point_discord_py_at",
    "restore_discord_py",
    "running",
]
