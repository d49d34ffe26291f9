"""What Discord does when someone acts: validate, change the world, dispatch the matching gateway events."""

from __future__ import annotations

import re
from typing import Any

from . import payloads
from .errors import CANNOT_EDIT_OTHERS_MESSAGE, EMPTY_MESSAGE, MISSING_ACCESS, DiscordError, invalid_form
from .gateway import (
    DIRECT_MESSAGE_REACTIONS,
    DIRECT_MESSAGES,
    GUILD_MEMBERS,
    GUILD_MESSAGE_REACTIONS,
    GUILD_MESSAGES,
    GUILDS,
    Gateway,
)
from .state import (
    BOT_PERMISSIONS,
    DM,
    GUILD_TEXT,
    LOADING,
    PRIVATE_THREAD,
    PUBLIC_THREAD,
    REPLY_MESSAGE,
    Attachment,
    Channel,
    Guild,
    Member,
    Message,
    ReactionEvent,
    Revision,
    Role,
    World,
    permission_bits,
    utcnow,
)

MAX_CONTENT, MAX_EMBEDS, MAX_EMBED_DESCRIPTION, MAX_EMBED_TITLE = 2000, 10, 4096, 256
MAX_PERSON_CONTENT = 4000  # people may have Nitro, which allows 4,000 characters; bots never more than 2,000
MENTION = re.compile(r"<@!?(\d+)>")
EVERYONE_MENTION = re.compile(r"@(?:everyone|here)\b")
ROLE_MENTION = re.compile(r"<@&(\d+)>")
MESSAGE_CHANNEL_TYPES = (GUILD_TEXT, DM, PUBLIC_THREAD, PRIVATE_THREAD)


class DiscordService:
    """The platform's rules, shared by the REST routes (the bot) and the driving API (people)."""

    def __init__(self, world: World, gateway: Gateway) -> None:
        self.world = world
        self.gateway = gateway

    @property
    def base_url(self) -> str:
        return self.gateway.base_url

    # -- community setup ------------------------------------------------------------------------------

    def add_guild(self, name: str, owner_id: int) -> Guild:
        """A guild the bot is in, with its managed bot role; a connected bot gets GUILD_CREATE."""
        guild = self.world.add_guild(name, owner_id)
        guild.members[owner_id] = Member(guild.id, owner_id, [])
        bot_role = self.world.add_role(guild, self.world.bot.name, BOT_PERMISSIONS, managed=True)
        guild.members[self.world.bot.id] = Member(guild.id, self.world.bot.id, [bot_role.id])
        self.gateway.announce_guild(guild)
        return guild

    def add_channel(self, guild: Guild, name: str, channel_type: int = GUILD_TEXT) -> Channel:
        channel = self.world.add_channel(channel_type, name, guild_id=guild.id)
        self.gateway.dispatch("CHANNEL_CREATE", payloads.channel(self.world, channel), intent=GUILDS)
        return channel

    def add_role(self, guild: Guild, name: str, permissions: int) -> Role:
        role = self.world.add_role(guild, name, permissions)
        event = {"guild_id": str(guild.id), "role": payloads.role(role)}
        self.gateway.dispatch("GUILD_ROLE_CREATE", event, intent=GUILDS)
        return role

    def add_member(self, guild: Guild, user_id: int, role_ids: list[int]) -> Member:
        member = Member(guild.id, user_id, role_ids)
        guild.members[user_id] = member
        event = payloads.member(self.world, member) | {"guild_id": str(guild.id)}
        self.gateway.dispatch("GUILD_MEMBER_ADD", event, intent=GUILD_MEMBERS)
        return member

    # -- messages -------------------------------------------------------------------------------------

    def post_message(
        self,
        channel_id: int,
        author_id: int,
        body: dict[str, Any],
        files: list[Attachment],
        *,
        allow_empty: bool = False,
        **fields: Any,
    ) -> Message:
        """Create a message from an API body (content, embeds, components, message_reference, ...)."""
        channel = self.world.channel(channel_id)
        if channel.type not in MESSAGE_CHANNEL_TYPES:
            raise DiscordError(400, 50008, "Cannot send messages in a non-text channel")
        needed = "send_messages_in_threads" if channel.is_thread else "send_messages"
        self.world.require_permission(channel, author_id, needed)
        self._validate(body, files, allow_empty=allow_empty, limit=self._content_limit(author_id))
        reference_id = self._reference(channel, body.get("message_reference"))
        message = Message(
            id=self.world.snowflakes.next(),
            channel_id=channel.id,
            guild_id=channel.guild_id,
            author_id=author_id,
            content=body.get("content") or "",
            embeds=body.get("embeds") or [],
            components=body.get("components") or [],
            attachments=self._attach(files, body.get("attachments")),
            reference_id=reference_id,
            type=REPLY_MESSAGE if reference_id else 0,
            nonce=body.get("nonce"),
            **fields,
        )
        message.flags |= int(body.get("flags") or 0)
        self._resolve_mentions(message, body.get("allowed_mentions"))
        message.revisions.append(Revision(message.created_at, message.content, message.embeds))
        self.world.messages[message.id] = message
        channel.last_message_id = message.id
        if not message.ephemeral:  # ephemeral messages exist only for the person who invoked
            self._dispatch_message("MESSAGE_CREATE", message)
        return message

    def edit_message(self, message: Message, body: dict[str, Any], files: list[Attachment]) -> Message:
        """Apply an edit body; keys left out stay as they were."""
        merged = {
            "content": body.get("content", message.content),
            "embeds": body.get("embeds", message.embeds),
            "components": body.get("components", message.components),
        }
        kept = message.attachments
        if "attachments" in body:
            listed = {int(a["id"]) for a in body["attachments"] or [] if "id" in a}
            kept = [a for a in message.attachments if a.id in listed]
        self._validate(merged, kept + files, limit=self._content_limit(message.author_id))
        message.content = merged["content"] or ""
        message.embeds = merged["embeds"] or []
        message.components = merged["components"] or []
        message.attachments = kept + self._attach(files, body.get("attachments"))
        message.flags = (message.flags & ~LOADING) | int(body.get("flags") or 0)  # an edit ends "thinking"
        message.edited_at = utcnow()
        self._resolve_mentions(message, body.get("allowed_mentions"))
        message.revisions.append(Revision(message.edited_at, message.content, message.embeds))
        if not message.ephemeral:
            self._dispatch_message("MESSAGE_UPDATE", message)
        return message

    def edit_own_message(
        self, channel_id: int, message_id: int, editor_id: int, body: dict[str, Any], files: list[Attachment]
    ) -> Message:
        """An edit through the channel route, which only the author may make."""
        message = self.world.message(channel_id, message_id)
        if message.author_id != editor_id:
            raise DiscordError(
                403, CANNOT_EDIT_OTHERS_MESSAGE, "Cannot edit a message authored by another user"
            )
        return self.edit_message(message, body, files)

    def delete_message(self, message: Message, deleter_id: int) -> None:
        channel = self.world.channel(message.channel_id)
        if message.author_id != deleter_id:
            if channel.guild_id is None:
                raise DiscordError(403, 50003, "Cannot execute action on a DM channel")
            self.world.require_permission(channel, deleter_id, "manage_messages")
        message.deleted_at = utcnow()
        if message.ephemeral:
            return
        data = {"id": str(message.id), "channel_id": str(message.channel_id)}
        if message.guild_id is not None:
            data["guild_id"] = str(message.guild_id)
        self.gateway.dispatch("MESSAGE_DELETE", data, intent=self._intent(message, GUILD_MESSAGES))

    # -- reactions ------------------------------------------------------------------------------------

    def add_reaction(self, message: Message, user_id: int, emoji: str) -> None:
        """Add `emoji` for `user_id`; adding one that is already there changes nothing, as on Discord."""
        self.world.require_permission(self.world.channel(message.channel_id), user_id, "add_reactions")
        users = message.reactions.setdefault(emoji, [])
        if user_id in users:
            return
        users.append(user_id)
        message.reaction_log.append(ReactionEvent(utcnow(), user_id, emoji, added=True))
        data = self._reaction_event(message, user_id, emoji) | {"message_author_id": str(message.author_id)}
        if message.guild_id is not None:
            data["member"] = payloads.member(self.world, self.world.guilds[message.guild_id].members[user_id])
        self.gateway.dispatch(
            "MESSAGE_REACTION_ADD", data, intent=self._intent(message, GUILD_MESSAGE_REACTIONS)
        )

    def remove_reaction(self, message: Message, user_id: int, emoji: str) -> None:
        users = message.reactions.get(emoji, [])
        if user_id not in users:
            return
        users.remove(user_id)
        message.reaction_log.append(ReactionEvent(utcnow(), user_id, emoji, added=False))
        data = self._reaction_event(message, user_id, emoji)
        self.gateway.dispatch(
            "MESSAGE_REACTION_REMOVE", data, intent=self._intent(message, GUILD_MESSAGE_REACTIONS)
        )

    # -- threads and DMs ------------------------------------------------------------------------------

    def create_thread(
        self,
        parent_id: int,
        owner_id: int,
        name: str,
        *,
        message_id: int | None = None,
        private: bool = False,
    ) -> Channel:
        """A thread under a text channel; one started from a message takes the message's id, as on Discord."""
        parent = self.world.channel(parent_id)
        if parent.type != GUILD_TEXT:
            raise DiscordError(400, 50024, "Cannot execute action on this channel type")
        self.world.require_permission(parent, owner_id, "create_public_threads")
        if not 1 <= len(name) <= 100:
            raise invalid_form("name", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length.")
        if message_id is not None:
            self.world.message(parent_id, message_id)
            if message_id in self.world.channels:
                raise DiscordError(400, 160004, "A thread has already been created for this message")
        thread_type = PRIVATE_THREAD if private else PUBLIC_THREAD
        thread = self.world.add_channel(
            thread_type, name, id=message_id, guild_id=parent.guild_id, parent_id=parent.id, owner_id=owner_id
        )
        data = payloads.channel(self.world, thread, newly_created=True)
        self.gateway.dispatch("THREAD_CREATE", data, intent=GUILDS)
        return thread

    def open_dm(self, user_id: int) -> Channel:
        """The DM channel between the bot and a user (Discord sends bots no event for it)."""
        self.world.user(user_id)
        return self.world.dm_channel(user_id) or self.world.add_channel(DM, "", recipient_id=user_id)

    # -- helpers --------------------------------------------------------------------------------------

    def _dispatch_message(self, event: str, message: Message) -> None:
        data = payloads.message(self.world, self.base_url, message)
        exempt = (
            message.guild_id is None
            or message.author_id == self.world.bot.id
            or self.world.bot.id in message.mention_ids
        )
        self.gateway.dispatch(
            event, data, intent=self._intent(message, GUILD_MESSAGES), needs_content_intent=not exempt
        )

    def _intent(self, message: Message, guild_intent: int) -> int:
        """The guild intent, or its direct-message twin (which sits three bits higher)."""
        if message.guild_id is not None:
            return guild_intent
        return {GUILD_MESSAGES: DIRECT_MESSAGES, GUILD_MESSAGE_REACTIONS: DIRECT_MESSAGE_REACTIONS}[
            guild_intent
        ]

    def _reaction_event(self, message: Message, user_id: int, emoji: str) -> dict[str, Any]:
        data = {
            "user_id": str(user_id),
            "channel_id": str(message.channel_id),
            "message_id": str(message.id),
            "emoji": payloads.emoji(emoji),
            "burst": False,
            "burst_colors": [],
            "type": 0,
        }
        if message.guild_id is not None:
            data["guild_id"] = str(message.guild_id)
        return data

    def _content_limit(self, author_id: int) -> int:
        return MAX_CONTENT if self.world.user(author_id).bot else MAX_PERSON_CONTENT

    def _validate(
        self,
        body: dict[str, Any],
        files: list[Attachment],
        *,
        allow_empty: bool = False,
        limit: int = MAX_CONTENT,
    ) -> None:
        content = body.get("content") or ""
        if len(content) > limit:
            raise invalid_form("content", "BASE_TYPE_MAX_LENGTH", f"Must be {limit} or fewer in length.")
        embeds = body.get("embeds") or []
        if len(embeds) > MAX_EMBEDS:
            raise invalid_form("embeds", "BASE_TYPE_MAX_LENGTH", f"Must be {MAX_EMBEDS} or fewer in length.")
        for index, embed in enumerate(embeds):
            for key, limit in (("title", MAX_EMBED_TITLE), ("description", MAX_EMBED_DESCRIPTION)):
                if len(embed.get(key) or "") > limit:
                    path = f"embeds.{index}.{key}"
                    raise invalid_form(path, "BASE_TYPE_MAX_LENGTH", f"Must be {limit} or fewer in length.")
        if not (
            allow_empty
            or content
            or embeds
            or files
            or body.get("components")
            or body.get("sticker_ids")
            or body.get("poll")
        ):
            raise DiscordError(400, EMPTY_MESSAGE, "Cannot send an empty message")

    def _reference(self, channel: Channel, reference: dict[str, Any] | None) -> int | None:
        if not reference or reference.get("type", 0) != 0:
            return None
        message_id = int(reference["message_id"])
        target = self.world.messages.get(message_id)
        if target is not None and target.deleted_at is None and target.guild_id == channel.guild_id:
            return message_id
        if reference.get("fail_if_not_exists", True):
            raise invalid_form("message_reference", "MESSAGE_REFERENCE_UNKNOWN_MESSAGE", "Unknown message")
        return None

    def _attach(self, files: list[Attachment], described: list[dict[str, Any]] | None) -> list[Attachment]:
        """Uploaded files become attachments; the body's `attachments[i]` may describe upload `i`."""
        descriptions = {int(a["id"]): a.get("description") for a in described or [] if "id" in a}
        for index, upload in enumerate(files):
            upload.description = upload.description or descriptions.get(index)
            self.world.attachments[upload.id] = upload
        return files

    def _resolve_mentions(self, message: Message, allowed: dict[str, Any] | None) -> None:
        message.mention_ids = self._mentions(message, allowed)
        message.mention_everyone, message.mention_role_ids = self._group_mentions(message, allowed)

    def _group_mentions(self, message: Message, allowed: dict[str, Any] | None) -> tuple[bool, list[int]]:
        """@everyone/@here and role mentions as Discord resolves them: only in a guild, only when the author
        may Mention Everyone (the emulator's roles are never mentionable), and only what allowed_mentions
        lets through (everything when it is absent)."""
        if message.guild_id is None:
            return False, []
        permitted = self.world.permissions(message.guild_id, message.author_id)
        if not permitted & permission_bits("mention_everyone"):
            return False, []
        parse = ["everyone", "roles"] if allowed is None else allowed.get("parse") or []
        listed = {int(r) for r in (allowed or {}).get("roles") or []}
        everyone = "everyone" in parse and EVERYONE_MENTION.search(message.content) is not None
        guild_roles = self.world.guilds[message.guild_id].role_ids
        role_ids = [
            int(raw)
            for raw in ROLE_MENTION.findall(message.content)
            if int(raw) in guild_roles and ("roles" in parse or int(raw) in listed)
        ]
        return everyone, list(dict.fromkeys(role_ids))

    def _mentions(self, message: Message, allowed: dict[str, Any] | None) -> list[int]:
        """User mentions as Discord resolves them: markup in the content, filtered by allowed_mentions, plus
        the replied-to author (on by default, off by default once allowed_mentions is given)."""
        ids = [int(raw) for raw in MENTION.findall(message.content) if int(raw) in self.world.users]
        if allowed is not None:
            listed = {int(u) for u in allowed.get("users") or []}
            ids = [i for i in ids if "users" in (allowed.get("parse") or []) or i in listed]
        replied = self.world.messages.get(message.reference_id) if message.reference_id else None
        ping_reply = allowed is None or allowed.get("replied_user", False)
        if replied is not None and ping_reply and replied.author_id != message.author_id:
            ids.append(replied.author_id)
        return list(dict.fromkeys(ids))

    def check_member(self, channel: Channel, user_id: int) -> None:
        """People may only act where they are: in the guild, or in their own DM."""
        if not self.world.can_see(channel, user_id):
            raise DiscordError(403, MISSING_ACCESS, "Missing Access")
