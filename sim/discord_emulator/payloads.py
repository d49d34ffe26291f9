"""The JSON shapes of Discord API v10 objects, built from the world as discord.py reads them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from .state import (
    DM,
    Attachment,
    Channel,
    Guild,
    Interaction,
    Member,
    Message,
    Overwrite,
    Role,
    User,
    World,
)

ATTACHMENT_SIZE_LIMIT = 10 * 1024 * 1024


def iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def user(u: User) -> dict[str, Any]:
    return {
        "id": str(u.id),
        "username": u.name,
        "global_name": None if u.bot else u.name,
        "discriminator": "0",
        "avatar": None,
        "bot": u.bot,
        "system": False,
        "public_flags": 0,
    }


def member(
    world: World, m: Member, *, with_user: bool = True, with_permissions: bool = False
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "roles": [str(r) for r in m.role_ids],
        "joined_at": iso(m.joined_at),
        "nick": m.nick,
        "avatar": None,
        "premium_since": None,
        "deaf": False,
        "mute": False,
        "pending": False,
        "flags": 0,
        "communication_disabled_until": None,
    }
    if with_user:
        data["user"] = user(world.users[m.user_id])
    if with_permissions:  # only interactions carry the member's computed permissions
        data["permissions"] = str(world.permissions(m.guild_id, m.user_id))
    return data


def role(r: Role) -> dict[str, Any]:
    return {
        "id": str(r.id),
        "name": r.name,
        "permissions": str(r.permissions),
        "position": r.position,
        "color": 0,
        "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
        "hoist": False,
        "managed": r.managed,
        "mentionable": False,
        "icon": None,
        "unicode_emoji": None,
        "flags": 0,
    }


def overwrite(o: Overwrite) -> dict[str, Any]:
    return {"id": str(o.id), "type": o.type, "allow": str(o.allow), "deny": str(o.deny)}


def channel(world: World, c: Channel, *, newly_created: bool = False) -> dict[str, Any]:
    """A guild channel, thread or DM channel."""
    if c.type == DM:
        return {
            "id": str(c.id),
            "type": DM,
            "last_message_id": _opt_id(c.last_message_id),
            "recipients": [user(world.users[c.recipient_id])] if c.recipient_id else [],
            "flags": 0,
        }
    data: dict[str, Any] = {
        "id": str(c.id),
        "type": c.type,
        "guild_id": str(c.guild_id),
        "name": c.name,
        "position": c.position,
        "permission_overwrites": [overwrite(o) for o in c.overwrites.values()],
        "parent_id": _opt_id(c.parent_id),
        "topic": None,
        "nsfw": False,
        "last_message_id": _opt_id(c.last_message_id),
        "rate_limit_per_user": 0,
        "flags": 0,
    }
    if c.is_thread:
        count = len(world.channel_messages(c.id))
        data |= {
            "owner_id": str(c.owner_id),
            "message_count": count,
            "total_message_sent": count,
            "member_count": 2,
            "thread_metadata": {
                "archived": c.archived,
                "auto_archive_duration": c.auto_archive_duration,
                "archive_timestamp": iso(c.archive_timestamp),
                "locked": c.locked,
                "create_timestamp": iso(c.created_at),
            },
        }
        if newly_created:
            data["newly_created"] = True
    return data


def guild_create(world: World, g: Guild, *, all_members: bool) -> dict[str, Any]:
    """GUILD_CREATE: the whole guild; without the members intent only the bot's own member, as on Discord."""
    members = [m for m in g.members.values() if all_members or m.user_id == world.bot.id]
    channels = [world.channels[c] for c in g.channel_ids]
    # Only active threads: archived ones are not synced up front (docs: topics/threads).
    threads = [c for c in world.channels.values() if c.guild_id == g.id and c.is_thread and not c.archived]
    return {
        "id": str(g.id),
        "name": g.name,
        "owner_id": str(g.owner_id),
        "unavailable": False,
        "large": False,
        "member_count": len(g.members),
        "joined_at": iso(g.members[world.bot.id].joined_at),
        "roles": [role(world.roles[r]) for r in g.role_ids],
        "members": [member(world, m) for m in members],
        "channels": [channel(world, c) for c in channels],
        "threads": [channel(world, t) for t in threads],
        "presences": [],
        "voice_states": [],
        "emojis": [],
        "stickers": [],
        "features": [],
        "stage_instances": [],
        "guild_scheduled_events": [],
        "soundboard_sounds": [],
        "icon": None,
        "banner": None,
        "splash": None,
        "discovery_splash": None,
        "description": None,
        "system_channel_id": None,
        "rules_channel_id": None,
        "public_updates_channel_id": None,
        "afk_channel_id": None,
        "afk_timeout": 300,
        "preferred_locale": "en-US",
        "verification_level": 0,
        "default_message_notifications": 0,
        "explicit_content_filter": 0,
        "mfa_level": 0,
        "nsfw_level": 0,
        "premium_tier": 0,
        "premium_progress_bar_enabled": False,
        "application_id": None,
    }


def attachment(base_url: str, a: Attachment) -> dict[str, Any]:
    url = f"{base_url}/attachments/{a.id}/{a.filename}"
    return {
        "id": str(a.id),
        "filename": a.filename,
        "size": len(a.data),
        "url": url,
        "proxy_url": url,
        "content_type": a.content_type,
        "description": a.description,
    }


def emoji(key: str) -> dict[str, Any]:
    """`👍` is a unicode emoji; `name:id` is a custom one."""
    name, _, emoji_id = key.partition(":")
    return {"id": emoji_id or None, "name": name} | ({"animated": False} if emoji_id else {})


def reactions(world: World, m: Message) -> list[dict[str, Any]]:
    return [
        {
            "emoji": emoji(key),
            "count": len(users),
            "count_details": {"burst": 0, "normal": len(users)},
            "me": world.bot.id in users,
            "me_burst": False,
            "burst_colors": [],
        }
        for key, users in m.reactions.items()
        if users
    ]


def message(world: World, base_url: str, m: Message, *, with_reference: bool = True) -> dict[str, Any]:
    """A message as the bot sees it (`me` on reactions is the bot)."""
    data: dict[str, Any] = {
        "id": str(m.id),
        "channel_id": str(m.channel_id),
        "author": user(world.users[m.author_id]),
        "content": m.content,
        "timestamp": iso(m.created_at),
        "edited_timestamp": iso(m.edited_at),
        "tts": False,
        "mention_everyone": m.mention_everyone,
        "mentions": [_mention(world, m, uid) for uid in m.mention_ids],
        "mention_roles": [str(r) for r in m.mention_role_ids],
        "attachments": [attachment(base_url, a) for a in m.attachments],
        "embeds": m.embeds,
        "components": m.components,
        "reactions": reactions(world, m),
        "pinned": m.pinned_at is not None,
        "type": m.type,
        "flags": m.flags,
    }
    if m.guild_id is not None:
        data["guild_id"] = str(m.guild_id)
        author = world.member(m.guild_id, m.author_id)
        if author is not None and m.webhook_id is None:
            data["member"] = member(world, author, with_user=False)
    if m.nonce is not None:
        data["nonce"] = m.nonce
    if m.webhook_id is not None:
        data["webhook_id"] = data["application_id"] = str(m.webhook_id)
    if m.interaction_id is not None:
        data["interaction_metadata"] = _interaction_metadata(world, world.interactions[m.interaction_id])
    if m.reference_id is not None and with_reference:
        data["message_reference"] = _reference(world, m.reference_id)
        referenced = world.messages.get(m.reference_id)
        data["referenced_message"] = None  # what Discord sends once the replied-to message is gone
        if referenced is not None and referenced.deleted_at is None:
            data["referenced_message"] = message(world, base_url, referenced, with_reference=False)
    return data


def strip_content(data: dict[str, Any]) -> dict[str, Any]:
    """What a bot without the MESSAGE_CONTENT intent receives."""
    return data | {"content": "", "embeds": [], "attachments": [], "components": []}


def interaction(world: World, base_url: str, i: Interaction) -> dict[str, Any]:
    """INTERACTION_CREATE's payload."""
    c = world.channels[i.channel_id]
    data: dict[str, Any] = {
        "id": str(i.id),
        "application_id": str(world.application_id),
        "type": i.type,
        "data": i.data,
        "token": i.token,
        "version": 1,
        "channel_id": str(c.id),
        "channel": channel(world, c),
        "locale": "en-US",
        "entitlements": [],
        "attachment_size_limit": ATTACHMENT_SIZE_LIMIT,
    }
    if i.guild_id is None:
        data |= {"user": user(world.users[i.user_id]), "context": 1, "app_permissions": "0"}
        data["authorizing_integration_owners"] = {"1": str(i.user_id)}
    else:
        m = world.guilds[i.guild_id].members[i.user_id]
        data |= {"guild_id": str(i.guild_id), "guild_locale": "en-US", "context": 0}
        data["guild"] = {"id": str(i.guild_id), "locale": "en-US", "features": []}
        # Both are the permissions in the interaction's channel, overwrites applied.
        data["member"] = member(world, m) | {"permissions": str(world.channel_permissions(c, i.user_id))}
        data["app_permissions"] = str(world.channel_permissions(c, world.bot.id))
        data["authorizing_integration_owners"] = {"0": str(i.guild_id)}
    if i.message_id is not None:
        data["message"] = message(world, base_url, world.messages[i.message_id])
    return data


def ready(world: World, session_id: str, resume_url: str, guilds: list[Guild]) -> dict[str, Any]:
    bot = user(world.bot) | {"verified": True, "mfa_enabled": False, "flags": 0, "email": None}
    return {
        "v": 10,
        "user": bot,
        "guilds": [{"id": str(g.id), "unavailable": True} for g in guilds],
        "session_id": session_id,
        "session_type": "normal",
        "resume_gateway_url": resume_url,
        "application": {"id": str(world.application_id), "flags": 0},
        "private_channels": [],
        "presences": [],
        "relationships": [],
        "guild_join_requests": [],
        "geo_ordered_rtc_regions": [],
        "user_settings": {},
        "_trace": ["discord-emulator"],
    }


def application(world: World) -> dict[str, Any]:
    return {
        "id": str(world.application_id),
        "name": world.bot.name,
        "icon": None,
        "description": "",
        "summary": "",
        "type": None,
        "bot_public": True,
        "bot_require_code_grant": False,
        "verify_key": "0" * 64,
        "owner": user(world.owner),
        "team": None,
        "flags": 0,
        "bot": user(world.bot),
        "rpc_origins": [],
        "interactions_endpoint_url": None,
        "redirect_uris": [],
        "tags": [],
    }


def _opt_id(value: int | None) -> str | None:
    return None if value is None else str(value)


def _mention(world: World, m: Message, user_id: int) -> dict[str, Any]:
    data = user(world.users[user_id])
    mentioned = world.member(m.guild_id, user_id) if m.guild_id is not None else None
    if mentioned is not None:
        data["member"] = member(world, mentioned, with_user=False)
    return data


def _reference(world: World, message_id: int) -> dict[str, Any]:
    referenced = world.messages.get(message_id)
    data: dict[str, Any] = {"type": 0, "message_id": str(message_id)}
    if referenced is not None:
        data["channel_id"] = str(referenced.channel_id)
        if referenced.guild_id is not None:
            data["guild_id"] = str(referenced.guild_id)
    return data


def _interaction_metadata(world: World, i: Interaction) -> dict[str, Any]:
    owners = {"0": str(i.guild_id)} if i.guild_id is not None else {"1": str(i.user_id)}
    data = {
        "id": str(i.id),
        "type": i.type,
        "user": user(world.users[i.user_id]),
        "authorizing_integration_owners": owners,
    }
    if i.original_id is not None:
        data["original_response_message_id"] = str(i.original_id)
    return data
