"""Who may talk to the bot and run admin commands, and how often."""

from __future__ import annotations

import math
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import discord
from discord import app_commands

from store.settings import DiscordSettings

T = TypeVar("T")


def is_admin(user: discord.User | discord.Member, settings: DiscordSettings) -> bool:
    """An admin user id; or Manage Server permission or an admin role, in a guild the bot is allowed in."""
    if user.id in settings.admin_user_ids:
        return True
    if not isinstance(user, discord.Member):
        return False
    # Every guild shares one adapter: whoever runs a guild outside the allow-list must not steer it.
    if settings.allowed_guild_ids and user.guild.id not in settings.allowed_guild_ids:
        return False
    if user.guild_permissions.manage_guild:
        return True
    return any(role.id in settings.admin_role_ids for role in user.roles)


class NotAdmin(app_commands.CheckFailure):
    """Someone who is not an admin ran an admin command; the message is the refusal they are shown."""

    def __init__(self, command: str) -> None:
        self.command = command
        super().__init__(
            f"Sorry, only admins can use /{command} (Manage Server permission, or an admin role)."
        )


def admin_only() -> Callable[[T], T]:
    """An `app_commands.check` letting admins (`is_admin`) run a cog's command; others raise `NotAdmin`.

    The admins are those of the settings (a `Settings`) the command's cog holds as `settings`.
    """

    def predicate(interaction: discord.Interaction) -> bool:
        command = interaction.command
        assert isinstance(command, app_commands.Command)  # a check runs only for the command it is on
        cog = command.binding
        assert cog is not None, f"/{command.name} is not in a cog"
        if is_admin(interaction.user, cog.settings.discord):
            return True
        raise NotAdmin(command.name)

    return app_commands.check(predicate)


def is_allowed(message: discord.Message, settings: DiscordSettings) -> bool:
    """Whether the allow-lists (guilds, channels or categories, roles, users, DMs) let this message in."""
    if settings.allowed_user_ids and message.author.id not in settings.allowed_user_ids:
        return False
    if message.guild is None:
        return settings.allow_dms
    if settings.allowed_guild_ids and message.guild.id not in settings.allowed_guild_ids:
        return False
    if settings.allowed_channel_ids and not set(_channel_ids(message.channel)) & set(
        settings.allowed_channel_ids
    ):
        return False
    if settings.allowed_role_ids:
        roles = getattr(message.author, "roles", [])
        return any(role.id in settings.allowed_role_ids for role in roles)
    return True


def _channel_ids(channel: discord.abc.MessageableChannel) -> Iterator[int]:
    """The channel, the channel a thread lives in, and the category above them."""
    yield channel.id
    parent = getattr(channel, "parent", None)
    if parent is not None:
        yield parent.id
        if parent.category_id is not None:
            yield parent.category_id
    elif (category_id := getattr(channel, "category_id", None)) is not None:
        yield category_id


class UserRateLimit:
    """At most `limit` answers per user in any `window_s` seconds (a sliding window)."""

    def __init__(self, limit: int, window_s: float) -> None:
        self.limit = limit
        self.window_s = window_s
        self._times: dict[int, deque[float]] = defaultdict(deque)
        self._refused: dict[int, float] = {}  # user -> the oldest ask in the window when last refused
        self._swept = time.monotonic()

    def retry_after(self, user_id: int) -> float:
        """0 when the user may ask now (and counts this ask); else the seconds until they may."""
        now = time.monotonic()
        if now - self._swept >= self.window_s:
            self._forget_idle(now)
        times = self._times[user_id]
        while times and now - times[0] >= self.window_s:
            times.popleft()
        if len(times) >= self.limit:
            return self.window_s - (now - times[0])
        times.append(now)
        return 0.0

    @property
    def tracked_users(self) -> int:
        """People with an ask still inside the window (give or take one window): what this holds in memory."""
        return len(self._times)

    def _forget_idle(self, now: float) -> None:
        """Drop people whose last ask left the window: a big server's passers-by are not kept forever."""
        idle = [user for user, times in self._times.items() if not times or now - times[-1] >= self.window_s]
        for user in idle:
            del self._times[user]
            self._refused.pop(user, None)
        self._swept = now

    def first_refusal(self, user_id: int) -> bool:
        """Whether this is the first refusal since the user's window last moved (to warn them only once)."""
        times = self._times[user_id]
        oldest = times[0] if times else 0.0
        if self._refused.get(user_id) == oldest:
            return False
        self._refused[user_id] = oldest
        return True


class ChannelSlots:
    """At most `per_channel` answers being written in one channel at a time."""

    def __init__(self, per_channel: int) -> None:
        self.per_channel = per_channel
        self._busy: dict[int, int] = defaultdict(int)

    @property
    def answering(self) -> int:
        """Channels with an answer being written now (all this keeps in memory)."""
        return len(self._busy)

    @contextmanager
    def take(self, channel_id: int) -> Iterator[bool]:
        """Yield True holding a slot, or False when the channel is full."""
        if self._busy[channel_id] >= self.per_channel:
            yield False
            return
        self._busy[channel_id] += 1
        try:
            yield True
        finally:
            self._busy[channel_id] -= 1
            if not self._busy[channel_id]:
                del self._busy[channel_id]  # only channels answering right now are kept


def seconds_text(seconds: float) -> str:
    """A wait as people say it: "5 s", "2 min"."""
    seconds = max(1, math.ceil(seconds))
    return f"{seconds} s" if seconds < 120 else f"{math.ceil(seconds / 60)} min"
