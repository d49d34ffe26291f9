"""What Discord does when someone acts: validate, change the world, dispatch the matching gateway events."""

from __future__ import annotations

import re
from typing import Any

from . import payloads
from .errors import (
    CANNOT_EDIT_OTHERS_MESSAGE,
    CANNOT_EXECUTE_IN_DM,
    MAX_PINS_REACHED,
    REPLY_WITHOUT_HISTORY,
    THREAD_ARCHIVED,
    THREAD_LOCKED,
    DiscordError,
    invalid_form,
    missing_access,
    missing_permissions,
)
from .gateway import (
    DIRECT_MESSAGE_REACTIONS,
    DIRECT_MESSAGES,
    GUILD_MEMBERS,
    GUILD_MESSAGE_REACTIONS,
    GUILD_MESSAGES,
    GUILDS,
    Gateway,
)
from .limits import MAX_CONTENT, MAX_PERSON_CONTENT, MAX_PINS, check_message, check_uploads
from .ratelimits import OldMessageEdits
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
    Overwrite,
    ReactionEvent,
    Revision,
    Role,
    World,
    utcnow,
)

MENTION = re.compile(r"<@!?(\d+)>")
EVERYONE_MENTION = re.compile(r"@(?:everyone|here)\b")
ROLE_MENTION = re.compile(r"<@&(\d+)>")
MESSAGE_CHANNEL_TYPES = (GUILD_TEXT, DM, PUBLIC_THREAD, PRIVATE_THREAD)


class DiscordService:
    """The platform's rules, shared by the REST routes (the bot) and the driving API (people)."""

    def __init__(self, world: World, gateway: Gateway, old_message_edits: int = 3) -> None:
        self.world = world
        self.gateway = gateway
        self.old_edits = OldMessageEdits(old_message_edits)

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
        """Create a message from an API body (content, embeds, components, message_reference, ...).

        Interaction responses (`webhook_id` in `fields`) are sent as the app, which needs no permissions in
        the channel; anyone else needs them, and a message to an archived thread unarchives it.
        """
        channel = self.world.channel(channel_id)
        if channel.type not in MESSAGE_CHANNEL_TYPES:
            raise DiscordError(400, 50008, "Cannot send messages in a non-text channel")
        if fields.get("webhook_id") is None:
            body = self._permitted_body(channel, author_id, body, files)
        self._require_open_thread(channel, author_id, sending=True)
        check_uploads(files)
        check_message(body, files, allow_empty=allow_empty, content_limit=self._content_limit(author_id))
        reference_id = self._reference(channel, body.get("message_reference"))
        if channel.archived:
            self.set_thread_archived(channel, archived=False, locked=False)
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
        """Apply an edit body by the message's author; keys left out stay as they were."""
        self._require_open_thread(self.world.channel(message.channel_id), message.author_id)
        merged = {
            "content": body.get("content", message.content),
            "embeds": body.get("embeds", message.embeds),
            "components": body.get("components", message.components),
            "flags": message.flags | int(body.get("flags") or 0),
        }
        kept = message.attachments
        if "attachments" in body:
            listed = {int(a["id"]) for a in body["attachments"] or [] if "id" in a}
            kept = [a for a in message.attachments if a.id in listed]
        check_uploads(files)
        check_message(merged, kept + files, content_limit=self._content_limit(message.author_id))
        self.old_edits.take(message)
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
        channel = self.world.channel(channel_id)
        self.world.require_permission(channel, editor_id, "view_channel")
        message = self.world.message(channel_id, message_id)
        if message.author_id != editor_id:
            raise DiscordError(
                403, CANNOT_EDIT_OTHERS_MESSAGE, "Cannot edit a message authored by another user"
            )
        if files:
            self.world.require_permission(channel, editor_id, "attach_files")
        return self.edit_message(message, self._without_forbidden_embeds(channel, editor_id, body), files)

    def delete_message(self, message: Message, deleter_id: int, *, as_app: bool = False) -> None:
        """Delete a message; the app deleting its interaction responses needs no channel permissions."""
        channel = self.world.channel(message.channel_id)
        if not as_app:
            self.world.require_permission(channel, deleter_id, "view_channel")
        if message.author_id != deleter_id:
            self._require_moderator(channel, deleter_id)
        if channel.archived and channel.locked:
            raise DiscordError(400, THREAD_ARCHIVED, "Thread is archived")
        message.deleted_at = utcnow()
        if message.ephemeral or not self._bot_sees(channel):
            return
        data = {"id": str(message.id), "channel_id": str(message.channel_id)}
        if message.guild_id is not None:
            data["guild_id"] = str(message.guild_id)
        self.gateway.dispatch("MESSAGE_DELETE", data, intent=self._intent(message, GUILD_MESSAGES))

    def set_pinned(self, message: Message, user_id: int, *, pinned: bool) -> None:
        """Pin or unpin a message (Pin Messages; at most MAX_PINS per channel); the bot gets
        CHANNEL_PINS_UPDATE. Pinning a pinned message, or unpinning one that is not, changes nothing."""
        channel = self.world.channel(message.channel_id)
        self.world.require_permission(channel, user_id, "pin_messages")
        _require_active(channel)
        if (message.pinned_at is not None) == pinned:
            return
        if pinned and len(self.world.pinned_messages(channel.id)) >= MAX_PINS:
            raise DiscordError(400, MAX_PINS_REACHED, f"Maximum number of pins reached ({MAX_PINS})")
        message.pinned_at = utcnow() if pinned else None
        if not self._bot_sees(channel):
            return
        latest = self.world.pinned_messages(channel.id)
        data = {
            "channel_id": str(channel.id),
            "last_pin_timestamp": payloads.iso(latest[0].pinned_at) if latest else None,
        }
        if channel.guild_id is not None:
            data["guild_id"] = str(channel.guild_id)
        self.gateway.dispatch(
            "CHANNEL_PINS_UPDATE", data, intent=GUILDS if channel.guild_id else DIRECT_MESSAGES
        )

    # -- reactions ------------------------------------------------------------------------------------

    def add_reaction(self, message: Message, user_id: int, emoji: str) -> None:
        """Add `emoji` for `user_id`; adding one that is already there changes nothing, as on Discord.

        Needs Read Message History, and Add Reactions unless someone already reacted with that emoji.
        """
        channel = self.world.channel(message.channel_id)
        self.world.require_permission(channel, user_id, "read_message_history")
        if not message.reactions.get(emoji):
            self.world.require_permission(channel, user_id, "add_reactions")
        _require_active(channel)
        users = message.reactions.setdefault(emoji, [])
        if user_id in users:
            return
        users.append(user_id)
        message.reaction_log.append(ReactionEvent(utcnow(), user_id, emoji, added=True))
        data = self._reaction_event(message, user_id, emoji) | {"message_author_id": str(message.author_id)}
        if message.guild_id is not None:  # DM reactions carry no member, as on Discord
            data["member"] = payloads.member(self.world, self.world.guilds[message.guild_id].members[user_id])
        self._dispatch_reaction("MESSAGE_REACTION_ADD", message, data)

    def remove_reaction(self, message: Message, user_id: int, emoji: str, by_id: int | None = None) -> None:
        """`by_id` (by default the reactor) removes `user_id`'s `emoji`; others' need Manage Messages."""
        channel = self.world.channel(message.channel_id)
        by_id = user_id if by_id is None else by_id
        self.world.require_permission(channel, by_id, "view_channel")
        if by_id != user_id:
            self._require_moderator(channel, by_id)
        _require_active(channel)
        users = message.reactions.get(emoji, [])
        if user_id not in users:
            return
        users.remove(user_id)
        message.reaction_log.append(ReactionEvent(utcnow(), user_id, emoji, added=False))
        self._dispatch_reaction(
            "MESSAGE_REACTION_REMOVE", message, self._reaction_event(message, user_id, emoji)
        )

    def clear_reactions(self, message: Message, by_id: int, emoji: str | None = None) -> None:
        """A moderator removes every reaction, or every reaction with `emoji` (Manage Messages)."""
        channel = self.world.channel(message.channel_id)
        self._require_moderator(channel, by_id)
        _require_active(channel)
        emojis = list(message.reactions) if emoji is None else [emoji]
        for key in emojis:
            for user_id in message.reactions.pop(key, []):
                message.reaction_log.append(ReactionEvent(utcnow(), user_id, key, added=False))
        data = {"channel_id": str(message.channel_id), "message_id": str(message.id)}
        if message.guild_id is not None:
            data["guild_id"] = str(message.guild_id)
        if emoji is None:
            self._dispatch_reaction("MESSAGE_REACTION_REMOVE_ALL", message, data)
        else:
            self._dispatch_reaction(
                "MESSAGE_REACTION_REMOVE_EMOJI", message, data | {"emoji": payloads.emoji(emoji)}
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
        self.world.require_permission(
            parent, owner_id, "create_private_threads" if private else "create_public_threads"
        )
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
        if self._bot_sees(thread):
            data = payloads.channel(self.world, thread, newly_created=True)
            self.gateway.dispatch("THREAD_CREATE", data, intent=GUILDS)
        return thread

    def set_thread_archived(self, thread: Channel, *, archived: bool, locked: bool) -> None:
        """Archive or unarchive (and lock or unlock) a thread; the bot gets THREAD_UPDATE."""
        if not thread.is_thread:
            raise ValueError(f"channel {thread.id} is not a thread")
        thread.archived, thread.locked, thread.archive_timestamp = archived, locked, utcnow()
        if self._bot_sees(thread):
            self.gateway.dispatch("THREAD_UPDATE", payloads.channel(self.world, thread), intent=GUILDS)

    def set_permission_overwrite(self, channel: Channel, overwrite: Overwrite) -> None:
        """Put a role's or member's overwrite on a guild channel; the bot gets CHANNEL_UPDATE."""
        if channel.guild_id is None or channel.is_thread:
            raise ValueError(
                f"channel {channel.id} takes no overwrites: only guild channels do (threads use the parent's)"
            )
        channel.overwrites[overwrite.id] = overwrite
        self.gateway.dispatch("CHANNEL_UPDATE", payloads.channel(self.world, channel), intent=GUILDS)

    def open_dm(self, user_id: int) -> Channel:
        """The DM channel between the bot and a user (Discord sends bots no event for it)."""
        self.world.user(user_id)
        return self.world.dm_channel(user_id) or self.world.add_channel(DM, "", recipient_id=user_id)

    # -- helpers --------------------------------------------------------------------------------------

    def _dispatch_message(self, event: str, message: Message) -> None:
        if not self._bot_sees(self.world.channel(message.channel_id)):
            return
        data = payloads.message(self.world, self.base_url, message)
        self.gateway.dispatch(event, data, intent=self._intent(message, GUILD_MESSAGES), message=True)

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

    def _permitted_body(
        self, channel: Channel, author_id: int, body: dict[str, Any], files: list[Attachment]
    ) -> dict[str, Any]:
        """What `author_id` may post here (Create Message's limitations); embeds they may not post drop."""
        self.world.require_permission(
            channel, author_id, "send_messages_in_threads" if channel.is_thread else "send_messages"
        )
        reference = body.get("message_reference") or {}
        is_reply = bool(reference) and reference.get("type", 0) == 0
        if is_reply and not self.world.has_permission(channel, author_id, "read_message_history"):
            raise DiscordError(
                403, REPLY_WITHOUT_HISTORY, "Cannot reply without permission to read message history"
            )
        if files:
            self.world.require_permission(channel, author_id, "attach_files")
        stripped = self._without_forbidden_embeds(channel, author_id, body)
        nothing_left = not (
            stripped.get("content") or stripped.get("components") or stripped.get("sticker_ids") or files
        )
        if stripped is not body and nothing_left:  # an embed-only message is refused (issue #2601)
            raise missing_permissions()
        return stripped

    def _without_forbidden_embeds(
        self, channel: Channel, author_id: int, body: dict[str, Any]
    ) -> dict[str, Any]:
        """Without Embed Links the embeds are dropped. The docs only say links are not embedded; this is what
        bots meet (discord-api-docs issues #2601, #5648; interaction responses are exempt)."""
        if not body.get("embeds") or self.world.has_permission(channel, author_id, "embed_links"):
            return body
        return body | {"embeds": []}

    def _require_open_thread(self, channel: Channel, user_id: int, *, sending: bool = False) -> None:
        """Locked threads refuse anyone without Manage Threads; archived ones refuse edits, and refuse new
        messages only when also locked (https://discord.com/developers/docs/topics/threads)."""
        if not channel.is_thread:
            return
        if channel.locked and not self.world.has_permission(channel, user_id, "manage_threads"):
            raise DiscordError(403, THREAD_LOCKED, "Thread is locked")
        if channel.archived and (channel.locked or not sending):
            raise DiscordError(400, THREAD_ARCHIVED, "Thread is archived")

    def _require_moderator(self, channel: Channel, user_id: int) -> None:
        if channel.guild_id is None:
            raise DiscordError(403, CANNOT_EXECUTE_IN_DM, "Cannot execute action on a DM channel")
        self.world.require_permission(channel, user_id, "manage_messages")

    def _bot_sees(self, channel: Channel) -> bool:
        """Events from a channel reach the bot only while it may view it."""
        return self.world.can_view(channel, self.world.bot.id)

    def _dispatch_reaction(self, event: str, message: Message, data: dict[str, Any]) -> None:
        if self._bot_sees(self.world.channel(message.channel_id)):
            self.gateway.dispatch(event, data, intent=self._intent(message, GUILD_MESSAGE_REACTIONS))

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
        channel = self.world.channel(message.channel_id)
        if not self.world.has_permission(channel, message.author_id, "mention_everyone"):
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
            raise missing_access()


def _require_active(channel: Channel) -> None:
    """Nobody reacts in an archived thread (https://discord.com/developers/docs/topics/threads)."""
    if channel.archived:
        raise DiscordError(400, THREAD_ARCHIVED, "Thread is archived")
