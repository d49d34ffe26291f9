"""The emulator's world: users, guilds, channels, members, roles, messages, reactions, interactions."""

from __future__ import annotations

import mimetypes
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import discord

from .errors import (
    MISSING_ACCESS,
    MISSING_PERMISSIONS,
    UNKNOWN_CHANNEL,
    UNKNOWN_GUILD,
    UNKNOWN_MESSAGE,
    UNKNOWN_USER,
    DiscordError,
)

DISCORD_EPOCH_MS = 1420070400000

# Channel types from the API docs (https://discord.com/developers/docs/resources/channel#channel-object-channel-types).
GUILD_TEXT, DM, GUILD_CATEGORY, PUBLIC_THREAD, PRIVATE_THREAD = 0, 1, 4, 11, 12
THREAD_TYPES = (PUBLIC_THREAD, PRIVATE_THREAD)

# Message flags and types the emulator sets itself.
EPHEMERAL, LOADING = 1 << 6, 1 << 7
DEFAULT_MESSAGE, REPLY_MESSAGE = 0, 19

EVERYONE_PERMISSIONS = discord.Permissions(
    view_channel=True,
    send_messages=True,
    send_messages_in_threads=True,
    create_public_threads=True,
    create_private_threads=True,
    embed_links=True,
    attach_files=True,
    add_reactions=True,
    read_message_history=True,
    use_application_commands=True,
).value
BOT_PERMISSIONS = EVERYONE_PERMISSIONS | discord.Permissions(manage_messages=True, manage_threads=True).value
ALL_PERMISSIONS = discord.Permissions.all().value
ADMINISTRATOR = discord.Permissions(administrator=True).value
VIEW_CHANNEL = discord.Permissions(view_channel=True).value
# What lacking the permission to send implicitly takes away
# (https://discord.com/developers/docs/topics/permissions#implicit-permissions).
NEEDS_SENDING = discord.Permissions(
    mention_everyone=True, send_tts_messages=True, attach_files=True, embed_links=True
).value
ROLE_OVERWRITE, MEMBER_OVERWRITE = 0, 1


class HasId(Protocol):
    id: int


def ident(obj: int | HasId) -> int:
    """The snowflake of an id or of anything with an `id`."""
    return obj if isinstance(obj, int) else obj.id


def permission_bits(permissions: int | str | list[str] | tuple[str, ...]) -> int:
    """Turn discord.py permission names (`manage_guild`) or an int into the permission bit field."""
    if isinstance(permissions, int):
        return permissions
    names = [permissions] if isinstance(permissions, str) else permissions
    return discord.Permissions(**dict.fromkeys(names, True)).value


def utcnow() -> datetime:
    """Timezone-aware now, as Discord stamps everything."""
    return datetime.now(UTC)


class Snowflakes:
    """Strictly increasing snowflakes whose timestamp part is the real time, like Discord's."""

    def __init__(self) -> None:
        self._last = 0

    def next(self) -> int:
        """A fresh id, later than every id handed out before."""
        candidate = (int(time.time() * 1000) - DISCORD_EPOCH_MS) << 22
        self._last = max(candidate, self._last + 1)
        return self._last


@dataclass
class User:
    id: int
    name: str
    bot: bool = False


@dataclass
class Role:
    id: int
    guild_id: int
    name: str
    permissions: int
    position: int = 0
    managed: bool = False


@dataclass
class Member:
    guild_id: int
    user_id: int
    role_ids: list[int]
    joined_at: datetime = field(default_factory=utcnow)
    nick: str | None = None


@dataclass
class Overwrite:
    """A channel's permission overwrite for a role (the guild's id for @everyone) or a member."""

    id: int
    type: int  # ROLE_OVERWRITE or MEMBER_OVERWRITE
    allow: int = 0
    deny: int = 0


@dataclass
class Channel:
    id: int
    type: int
    name: str
    guild_id: int | None = None
    parent_id: int | None = None
    owner_id: int | None = None  # threads: who started it
    recipient_id: int | None = None  # DMs: the person the bot talks to
    position: int = 0
    last_message_id: int | None = None
    created_at: datetime = field(default_factory=utcnow)
    overwrites: dict[int, Overwrite] = field(default_factory=dict)  # threads use their parent's
    archived: bool = False  # threads only, like the three fields below
    locked: bool = False
    archive_timestamp: datetime = field(default_factory=utcnow)
    auto_archive_duration: int = 1440

    @property
    def is_thread(self) -> bool:
        return self.type in THREAD_TYPES


@dataclass
class Guild:
    id: int
    name: str
    owner_id: int
    members: dict[int, Member] = field(default_factory=dict)
    role_ids: list[int] = field(default_factory=list)
    channel_ids: list[int] = field(default_factory=list)


@dataclass
class Attachment:
    id: int
    filename: str
    data: bytes
    description: str | None = None

    @property
    def content_type(self) -> str:
        """Discord works the type out from the file, not from what the uploader declared."""
        return mimetypes.guess_type(self.filename)[0] or "application/octet-stream"


@dataclass
class Revision:
    """One version of a message's content, kept so tests can see every edit."""

    at: datetime
    content: str
    embeds: list[dict[str, Any]]


@dataclass
class ReactionEvent:
    """One reaction added or removed, in the order it happened."""

    at: datetime
    user_id: int
    emoji: str
    added: bool


@dataclass
class Message:
    id: int
    channel_id: int
    guild_id: int | None
    author_id: int
    content: str = ""
    embeds: list[dict[str, Any]] = field(default_factory=list)
    components: list[dict[str, Any]] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)
    mention_ids: list[int] = field(default_factory=list)
    mention_everyone: bool = False  # @everyone or @here that Discord resolved (pinged)
    mention_role_ids: list[int] = field(default_factory=list)  # roles Discord resolved (pinged)
    reference_id: int | None = None
    type: int = DEFAULT_MESSAGE
    flags: int = 0
    nonce: str | None = None
    webhook_id: int | None = None
    interaction_id: int | None = None
    created_at: datetime = field(default_factory=utcnow)
    edited_at: datetime | None = None
    deleted_at: datetime | None = None
    pinned_at: datetime | None = None
    revisions: list[Revision] = field(default_factory=list)
    reactions: dict[str, list[int]] = field(default_factory=dict)  # emoji -> user ids, in reaction order
    reaction_log: list[ReactionEvent] = field(default_factory=list)

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & EPHEMERAL)

    @property
    def loading(self) -> bool:
        return bool(self.flags & LOADING)

    def reactors(self, emoji: str) -> list[int]:
        """Who currently has `emoji` on this message."""
        return list(self.reactions.get(emoji, []))


@dataclass
class Interaction:
    """An interaction the emulator sent to the bot, and everything the bot answered."""

    id: int
    token: str
    type: int
    user_id: int
    channel_id: int
    guild_id: int | None
    data: dict[str, Any]
    message_id: int | None = None  # the message a component lives on
    created_at: float = field(default_factory=time.monotonic)
    callback_types: list[int] = field(default_factory=list)
    original_id: int | None = None
    followup_ids: list[int] = field(default_factory=list)
    modal: dict[str, Any] | None = None
    modal_opened_at: float | None = None  # time.monotonic() when the bot opened `modal`
    choices: list[dict[str, Any]] | None = None  # autocomplete answer

    @property
    def acknowledged(self) -> bool:
        return bool(self.callback_types)


class World:
    """Everything that exists on the emulated Discord, with lookups that fail like the API does."""

    def __init__(self, bot_name: str) -> None:
        self.snowflakes = Snowflakes()
        self.users: dict[int, User] = {}
        self.guilds: dict[int, Guild] = {}
        self.roles: dict[int, Role] = {}
        self.channels: dict[int, Channel] = {}
        self.messages: dict[int, Message] = {}
        self.attachments: dict[int, Attachment] = {}
        self.interactions: dict[int, Interaction] = {}
        self.global_commands: list[dict[str, Any]] = []
        self.guild_commands: dict[int, list[dict[str, Any]]] = {}
        # (guild, command id) -> {user, role or @everyone id: allowed}, from Server Settings > Integrations
        self.command_permissions: dict[tuple[int, str], dict[int, bool]] = {}
        self.application_id = self.snowflakes.next()
        self.owner = self.add_user("owner")
        self.bot = self.add_user(bot_name, bot=True)

    def add_user(self, name: str, *, bot: bool = False) -> User:
        """Create a user account."""
        user = User(id=self.snowflakes.next(), name=name, bot=bot)
        self.users[user.id] = user
        return user

    def add_guild(self, name: str, owner_id: int) -> Guild:
        """Create a guild with its @everyone role (whose id is the guild's, as on Discord)."""
        guild = Guild(id=self.snowflakes.next(), name=name, owner_id=owner_id)
        self.guilds[guild.id] = guild
        self.roles[guild.id] = Role(guild.id, guild.id, "@everyone", EVERYONE_PERMISSIONS)
        guild.role_ids.append(guild.id)
        return guild

    def add_role(self, guild: Guild, name: str, permissions: int, *, managed: bool = False) -> Role:
        """Create a role in a guild, above the existing ones."""
        role = Role(self.snowflakes.next(), guild.id, name, permissions, len(guild.role_ids), managed)
        self.roles[role.id] = role
        guild.role_ids.append(role.id)
        return role

    def add_channel(self, channel_type: int, name: str, **fields: Any) -> Channel:
        """Create a channel (guild text channel, thread or DM)."""
        channel = Channel(
            id=fields.pop("id", None) or self.snowflakes.next(), type=channel_type, name=name, **fields
        )
        self.channels[channel.id] = channel
        if channel.guild_id is not None and not channel.is_thread:
            guild = self.guild(channel.guild_id)
            channel.position = len(guild.channel_ids)
            guild.channel_ids.append(channel.id)
        return channel

    def user(self, user_id: int) -> User:
        if user_id not in self.users:
            raise DiscordError(404, UNKNOWN_USER, "Unknown User")
        return self.users[user_id]

    def guild(self, guild_id: int) -> Guild:
        if guild_id not in self.guilds:
            raise DiscordError(404, UNKNOWN_GUILD, "Unknown Guild")
        return self.guilds[guild_id]

    def channel(self, channel_id: int) -> Channel:
        if channel_id not in self.channels:
            raise DiscordError(404, UNKNOWN_CHANNEL, "Unknown Channel")
        return self.channels[channel_id]

    def message(self, channel_id: int, message_id: int) -> Message:
        """A live message in that channel; deleted or misplaced ones are unknown, as on Discord."""
        message = self.messages.get(message_id)
        if message is None or message.channel_id != channel_id or message.deleted_at is not None:
            raise DiscordError(404, UNKNOWN_MESSAGE, "Unknown Message")
        return message

    def member(self, guild_id: int, user_id: int) -> Member | None:
        return self.guild(guild_id).members.get(user_id)

    def everyone_role(self, guild: Guild) -> Role:
        return self.roles[guild.id]  # the @everyone role shares the guild's id

    def permissions(self, guild_id: int, user_id: int) -> int:
        """Guild-level permissions of a member: the owner and administrators have them all."""
        guild = self.guild(guild_id)
        member = guild.members.get(user_id)
        if member is None:
            return 0
        bits = self.everyone_role(guild).permissions
        for role_id in member.role_ids:
            bits |= self.roles[role_id].permissions
        if user_id == guild.owner_id or bits & ADMINISTRATOR:
            return ALL_PERMISSIONS
        return bits

    def channel_permissions(self, channel: Channel, user_id: int) -> int:
        """A member's permissions in a guild channel, by Discord's algorithm: guild permissions, then the
        @everyone overwrite, the member's roles' overwrites together, the member's own; owners and
        administrators keep everything; threads take their parent's overwrites
        (https://discord.com/developers/docs/topics/permissions#permission-overwrites)."""
        if channel.guild_id is None:
            return ALL_PERMISSIONS if self.can_see(channel, user_id) else 0
        bits = self.permissions(channel.guild_id, user_id)
        member = self.member(channel.guild_id, user_id)
        if member is None or bits & ADMINISTRATOR:
            return bits
        source = self.channel(channel.parent_id) if channel.is_thread and channel.parent_id else channel
        overwrites = source.overwrites
        if everyone := overwrites.get(channel.guild_id):
            bits = (bits & ~everyone.deny) | everyone.allow
        roles = [overwrites[r] for r in member.role_ids if r in overwrites and r != channel.guild_id]
        bits &= ~_union(o.deny for o in roles)
        bits |= _union(o.allow for o in roles)
        if own := overwrites.get(user_id):
            bits = (bits & ~own.deny) | own.allow
        if not bits & VIEW_CHANNEL:
            return 0
        send = "send_messages_in_threads" if channel.is_thread else "send_messages"
        if not bits & permission_bits(send):
            bits &= ~NEEDS_SENDING
        return bits

    def has_permission(self, channel: Channel, user_id: int, name: str) -> bool:
        """Whether a user may do `name` (a discord.py permission name) in the channel."""
        needed = permission_bits(name)
        return (
            self.can_see(channel, user_id) and self.channel_permissions(channel, user_id) & needed == needed
        )

    def can_view(self, channel: Channel, user_id: int) -> bool:
        return self.has_permission(channel, user_id, "view_channel")

    def can_see(self, channel: Channel, user_id: int) -> bool:
        """Whether a user is part of the channel: a member of its guild, or the DM's two ends."""
        if channel.guild_id is None:
            return user_id in (channel.recipient_id, self.bot.id)
        return self.member(channel.guild_id, user_id) is not None

    def require_permission(self, channel: Channel, user_id: int, name: str) -> None:
        """Raise Discord's 403 when a user lacks a permission in the channel: Missing Access where they cannot
        see it, Missing Permissions otherwise (DMs grant everything but deleting others')."""
        if not self.can_view(channel, user_id):
            raise DiscordError(403, MISSING_ACCESS, "Missing Access")
        if not self.has_permission(channel, user_id, name):
            raise DiscordError(403, MISSING_PERMISSIONS, "Missing Permissions")

    def pinned_messages(self, channel_id: int) -> list[Message]:
        """A channel's live pinned messages, the latest pinned first."""
        pinned = [m for m in self.channel_messages(channel_id) if m.pinned_at is not None]
        return sorted(pinned, key=lambda m: (m.pinned_at, m.id), reverse=True)

    def channel_messages(self, channel_id: int, *, include_deleted: bool = False) -> list[Message]:
        """Messages of a channel, oldest first."""
        return [
            m
            for m in self.messages.values()
            if m.channel_id == channel_id and (include_deleted or m.deleted_at is None)
        ]

    def dm_channel(self, user_id: int) -> Channel | None:
        return next((c for c in self.channels.values() if c.type == DM and c.recipient_id == user_id), None)

    def commands(self, guild_id: int | None) -> list[dict[str, Any]]:
        return self.global_commands if guild_id is None else self.guild_commands.setdefault(guild_id, [])

    def find_command(self, guild_id: int | None, name: str, command_type: int) -> dict[str, Any]:
        """A synced command by name: the guild's own first, then the global ones, as Discord lists them."""
        scopes = ([guild_id] if guild_id is not None else []) + [None]
        for scope in scopes:
            for command in self.commands(scope):
                if command["name"] == name and command.get("type", 1) == command_type:
                    return command
        raise LookupError(f"no synced command {name!r} of type {command_type}; did the bot call tree.sync()?")


def _union(bit_fields: Iterable[int]) -> int:
    bits = 0
    for value in bit_fields:
        bits |= value
    return bits
