"""Who may talk to the bot and run admin commands, and how often."""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import discord
from discord import app_commands

from bot.storage import Store
from store.scopes import scope_for
from store.settings import DiscordSettings, TrainSettings

T = TypeVar("T")

logger = logging.getLogger(__name__)


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


ON_OFF = [app_commands.Choice(name="on", value="on"), app_commands.Choice(name="off", value="off")]


async def command_scope(store: Store, settings: TrainSettings, interaction: discord.Interaction) -> str:
    """The scope a slash command acts on: its server's (TRAIN_SCOPE=guild), else the global one."""
    return await store(
        scope_for, settings=settings, guild_id=interaction.guild_id, user_id=interaction.user.id
    )


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
        raise NotAdmin(command.qualified_name)  # "knowledge add" for a group's command

    return app_commands.check(predicate)


async def answer_command_error(interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
    """Tell the person why their command did not run (ephemeral), and log it by what it was: a refusal, a
    client with an old copy of the command, or a bug."""
    name = interaction.command.qualified_name if interaction.command else "?"
    if isinstance(error, NotAdmin):
        logger.info("refused /%s to non-admin %s", name, interaction.user.id)
        text = str(error)
    elif isinstance(error, app_commands.CommandSignatureMismatch):  # a client with an old copy of it
        logger.warning("/%s arrived with options it does not have: %s", name, error)
        text = "This command has changed since your Discord app loaded it; reload Discord and try again."
    else:
        logger.exception("/%s failed", name, exc_info=error)
        text = "Sorry, that didn't work; the error is in the bot's log."
    try:
        if interaction.response.is_done():
            await interaction.followup.send(text, ephemeral=True)
        else:
            await interaction.response.send_message(text, ephemeral=True)
    except discord.HTTPException as exc:
        logger.warning("could not report the error: %s", exc)


ADMIN_PERMISSIONS = discord.Permissions(manage_guild=True)  # who sees admin commands unless set otherwise


def admin_command(function: T) -> T:
    """An admin command: checked by `admin_only`; listed by Discord only in servers, to Manage Server (unless
    `show_admin_commands_to_admins` widens it), and never for user installs."""
    checked = admin_only()(function)
    return app_commands.default_permissions(ADMIN_PERMISSIONS)(
        app_commands.guild_only()(app_commands.guild_install()(checked))
    )


def admin_group(name: str, description: str) -> app_commands.Group:
    """A group of admin commands (`/knowledge add`), published as `admin_command` publishes one command;
    Discord takes these settings from the group only, so each of its commands is checked by `admin_only`."""
    return app_commands.Group(
        name=name,
        description=description,
        guild_only=True,
        allowed_contexts=app_commands.AppCommandContext(guild=True),
        allowed_installs=app_commands.AppInstallationType(guild=True),
        default_permissions=ADMIN_PERMISSIONS,
    )


def public_command(function: T) -> T:
    """A command anyone may use in the servers the bot is in and in its DMs, never for user installs (a
    person installing the app would otherwise run it in servers the bot is not in)."""
    return app_commands.allowed_contexts(guilds=True, dms=True, private_channels=False)(
        app_commands.guild_install()(function)
    )


def show_admin_commands_to_admins(cog: Any, settings: DiscordSettings) -> None:
    """With admin roles or users configured, list a cog's admin commands to everyone: Discord would hide
    them from admins without Manage Server. Everyone else is still refused by `admin_only`."""
    if not (settings.admin_role_ids or settings.admin_user_ids):
        return
    for command in cog.__cog_app_commands__:
        if command.default_permissions == ADMIN_PERMISSIONS:
            command.default_permissions = None


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
