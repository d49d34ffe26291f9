"""Application commands and interactions: syncing, invoking as a person would, and the bot's responses."""

from __future__ import annotations

import re
import secrets
import time
from typing import Any

from . import payloads
from .errors import (
    ALREADY_ACKNOWLEDGED,
    INVALID_WEBHOOK_TOKEN,
    UNKNOWN_INTERACTION,
    UNKNOWN_MESSAGE,
    UNKNOWN_WEBHOOK,
    CommandUnavailable,
    DiscordError,
    invalid_form,
)
from .limits import check_modal
from .service import DiscordService
from .state import (
    ADMINISTRATOR,
    ALL_PERMISSIONS,
    EPHEMERAL,
    LOADING,
    Attachment,
    Channel,
    Interaction,
    Message,
)

# Interaction types and callback types (https://discord.com/developers/docs/interactions/receiving-and-responding).
APPLICATION_COMMAND, MESSAGE_COMPONENT, MODAL_SUBMIT = 2, 3, 5
REPLY, DEFERRED_REPLY, DEFERRED_UPDATE, UPDATE, AUTOCOMPLETE_RESULT, MODAL = 4, 5, 6, 7, 8, 9
CHAT_INPUT, USER_COMMAND, MESSAGE_COMMAND = 1, 2, 3
SUB_COMMAND, SUB_COMMAND_GROUP, USER_OPTION, CHANNEL_OPTION, ROLE_OPTION = 1, 2, 6, 7, 8
ATTACHMENT_OPTION = 11
FILE_TYPE_GROUPS = {
    "image": (".png", ".gif", ".jpg", ".jpeg", ".jfif", ".webp", ".avif"),
    "video": (".mp4", ".mov", ".qt", ".webm"),
    "audio": (".mp3", ".m4a", ".wav", ".ogg", ".opus", ".flac"),
}
COMMAND_NAME = re.compile(r"^[-_\w]{1,32}$")
SELECT_TYPES = (3, 5, 6, 7, 8)
SCALARS = {3: str, 4: int, 5: bool, 10: float}
MAX_STRING_OPTION = 6000  # the longest a string option may be, whatever its max_length
# Interaction context and installation types (interactions/receiving-and-responding#interaction-object-
# interaction-context-types, resources/application#application-object-application-integration-types).
GUILD_CONTEXT, BOT_DM_CONTEXT, PRIVATE_CHANNEL_CONTEXT = 0, 1, 2
GUILD_INSTALL, USER_INSTALL = 0, 1
TOKEN_LIFETIME_S = 15 * 60  # interaction tokens (follow-ups, edits, deletes) last 15 minutes


class Interactions:
    """Commands the bot synced, interactions people start, and what the bot answers to them."""

    def __init__(self, service: DiscordService, response_deadline: float) -> None:
        self.service = service
        self.world = service.world
        self.response_deadline = response_deadline  # Discord forgets an interaction not answered within 3 s
        self._by_token: dict[str, Interaction] = {}

    # -- commands -------------------------------------------------------------------------------------

    def overwrite_commands(
        self, guild_id: int | None, commands: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """Bulk overwrite, keeping the ids of commands that keep their name and type."""
        old = {(c["name"], c.get("type", CHAT_INPUT)): c["id"] for c in self.world.commands(guild_id)}
        seen: set[tuple[str, int]] = set()
        stored = []
        for index, command in enumerate(commands):
            key = (command.get("name", ""), command.get("type", CHAT_INPUT))
            _validate_command(index, command, duplicate=key in seen)
            seen.add(key)
            stored.append(self._stored_command(command, old.get(key), guild_id))
        if guild_id is None:
            self.world.global_commands = stored
        else:
            self.world.guild_commands[guild_id] = stored
        return stored

    def _stored_command(
        self, command: dict[str, Any], command_id: str | None, guild_id: int | None
    ) -> dict[str, Any]:
        """A command as Discord echoes it back: defaults filled in, ids assigned."""
        defaults = {
            "description": "",
            "options": [],
            "default_member_permissions": None,
            "nsfw": False,
            "contexts": None,
            "integration_types": [0],
        }
        assigned = {
            "id": command_id or str(self.world.snowflakes.next()),
            "application_id": str(self.world.application_id),
            "version": str(self.world.snowflakes.next()),
            "type": command.get("type", CHAT_INPUT),
        }
        if guild_id is not None:
            assigned["guild_id"] = str(guild_id)
        stored = defaults | command | assigned
        if stored["integration_types"] is None:  # the app's own installation contexts: servers here
            stored["integration_types"] = [GUILD_INSTALL]
        permissions = stored["default_member_permissions"]
        if permissions is not None:  # Discord takes a number or a string and echoes a string
            stored["default_member_permissions"] = str(int(permissions))
        return stored

    # -- what people do -------------------------------------------------------------------------------

    def invoke_slash(
        self,
        user_id: int,
        channel_id: int,
        name: str,
        options: dict[str, Any],
        subcommand: str | None,
        raw_options: list[dict[str, Any]] | None = None,
    ) -> Interaction:
        """A person runs `/name [subcommand] option:value ...` from the command picker.

        `raw_options` are sent as they are, unchecked against the command: what a client with a stale copy
        of the command (options since renamed, retyped or removed) sends.
        """
        channel = self.world.channel(channel_id)
        guild_id = channel.guild_id
        command = self.world.find_command(guild_id, name, CHAT_INPUT)
        self._check_offered(command, user_id, channel)
        resolved: dict[str, dict[str, Any]] = {}
        if raw_options is not None:
            built = raw_options
        else:
            built = self._command_options(command, options, subcommand, guild_id, resolved)
        data = _command_data(command) | {"options": built}
        if resolved:
            data["resolved"] = resolved
        return self._create(APPLICATION_COMMAND, user_id, channel_id, data)

    def invoke_message_command(
        self, user_id: int, channel_id: int, message_id: int, name: str
    ) -> Interaction:
        """A person picks Apps > `name` on a message."""
        channel = self.world.channel(channel_id)
        command = self.world.find_command(channel.guild_id, name, MESSAGE_COMMAND)
        self._check_offered(command, user_id, channel)
        target = payloads.message(
            self.world, self.service.base_url, self.world.message(channel_id, message_id)
        )
        data = _command_data(command) | {
            "target_id": str(message_id),
            "resolved": {"messages": {str(message_id): target}},
        }
        return self._create(APPLICATION_COMMAND, user_id, channel_id, data)

    def click_component(
        self,
        user_id: int,
        message: Message,
        custom_id: str,
        values: list[str] | None,
        *,
        forged: bool = False,
    ) -> Interaction:
        """A person clicks a button (or picks from a select menu) on a bot message; `forged`: a hostile client
        sends the click for a message its user was never shown."""
        if message.ephemeral and message.interaction_id is not None and not forged:
            # only the person an ephemeral message answered ever sees it, so nobody else can click it
            shown_to = self.world.interactions[message.interaction_id].user_id
            if shown_to != user_id:
                raise PermissionError(f"ephemeral message {message.id} is shown only to user {shown_to}")
        component = _find_component(message.components, custom_id)
        if component is None:
            raise LookupError(f"message {message.id} has no component with custom_id {custom_id!r}")
        data: dict[str, Any] = {"custom_id": custom_id, "component_type": component["type"]}
        if component["type"] in SELECT_TYPES:
            data["values"] = values or []
        return self._create(MESSAGE_COMPONENT, user_id, message.channel_id, data, message_id=message.id)

    def submit_modal(self, opened: Interaction, values: dict[str, str | list[str]]) -> Interaction:
        """A person fills in the modal the bot opened and presses Submit."""
        if opened.modal is None:
            raise LookupError(f"the bot opened no modal in answer to interaction {opened.id}")
        used: set[str] = set()
        components = _fill_modal(opened.modal["components"], values, used)
        if unknown := set(values) - used:
            raise LookupError(f"the modal has no inputs {sorted(unknown)}")
        data = {"custom_id": opened.modal["custom_id"], "components": components}
        return self._create(
            MODAL_SUBMIT, opened.user_id, opened.channel_id, data, message_id=opened.message_id
        )

    # -- what the bot answers -------------------------------------------------------------------------

    def callback(
        self, interaction_id: int, token: str, body: dict[str, Any], files: list[Attachment]
    ) -> dict:
        """POST /interactions/{id}/{token}/callback: the one initial response."""
        record = self.world.interactions.get(interaction_id)
        if record is None or record.token != token:
            raise DiscordError(404, UNKNOWN_INTERACTION, "Unknown interaction")
        if record.acknowledged:
            raise DiscordError(400, ALREADY_ACKNOWLEDGED, "Interaction has already been acknowledged.")
        if time.monotonic() - record.created_at > self.response_deadline:
            raise DiscordError(404, UNKNOWN_INTERACTION, "Unknown interaction")
        kind, data = int(body.get("type", 0)), body.get("data") or {}
        message = self._apply_callback(record, kind, data, files)
        record.callback_types.append(kind)
        response: dict[str, Any] = {
            "interaction": {
                "id": str(record.id),
                "type": record.type,
                "response_message_id": str(message.id) if message else None,
                "response_message_loading": kind == DEFERRED_REPLY,
                "response_message_ephemeral": bool(message and message.ephemeral),
            }
        }
        if message is not None:
            response["resource"] = {
                "type": kind,
                "message": payloads.message(self.world, self.service.base_url, message),
            }
        return response

    def follow_up(
        self, application_id: int, token: str, body: dict[str, Any], files: list[Attachment]
    ) -> Message:
        """POST /webhooks/{app}/{token}; the first follow-up after a deferral fills the "thinking" message."""
        record = self._record(application_id, token)
        if not record.acknowledged:
            raise DiscordError(404, UNKNOWN_WEBHOOK, "Unknown Webhook")
        original = self.world.messages.get(record.original_id) if record.original_id else None
        if original is not None and original.loading:
            return self.service.edit_message(original, body, files)
        message = self._post(record, body, files)
        record.followup_ids.append(message.id)
        return message

    def webhook_message(self, application_id: int, token: str, message_ref: str) -> Message:
        """The interaction's `@original` response or one of its follow-ups."""
        record = self._record(application_id, token)
        message_id = record.original_id if message_ref == "@original" else int(message_ref)
        if message_id is None or message_id not in [record.original_id, *record.followup_ids]:
            raise DiscordError(404, UNKNOWN_MESSAGE, "Unknown Message")
        message = self.world.messages[message_id]
        if message.deleted_at is not None:
            raise DiscordError(404, UNKNOWN_MESSAGE, "Unknown Message")
        return message

    # -- helpers --------------------------------------------------------------------------------------

    def _apply_callback(
        self, record: Interaction, kind: int, data: dict[str, Any], files: list[Attachment]
    ) -> Message | None:
        if kind == REPLY:
            return self._post(record, data, files, original=True)
        if kind == DEFERRED_REPLY:
            flags = LOADING | (int(data.get("flags") or 0) & EPHEMERAL)
            return self._post(record, {"flags": flags}, [], original=True, allow_empty=True)
        if kind in (UPDATE, DEFERRED_UPDATE) and record.message_id is not None:
            record.original_id = record.message_id  # @original is now the message the component is on
            if kind == DEFERRED_UPDATE:
                return None
            return self.service.edit_message(self.world.messages[record.message_id], data, files)
        if kind == AUTOCOMPLETE_RESULT:
            record.choices = data.get("choices") or []
            return None
        if kind == MODAL and record.type != MODAL_SUBMIT:
            check_modal(data)
            record.modal, record.modal_opened_at = data, time.monotonic()
            return None
        raise invalid_form("type", "INTERACTION_RESPONSE_TYPE_INVALID", f"Invalid response type {kind} here.")

    def _post(
        self, record: Interaction, body: dict[str, Any], files: list[Attachment], **kwargs: Any
    ) -> Message:
        original = kwargs.pop("original", False)
        message = self.service.post_message(
            record.channel_id,
            self.world.bot.id,
            body,
            files,
            webhook_id=self.world.application_id,
            interaction_id=record.id,
            **kwargs,
        )
        if original:
            record.original_id = message.id
        return message

    def _check_offered(self, command: dict[str, Any], user_id: int, channel: Channel) -> None:
        """Discord's client offers a command only where its contexts, installs and permissions allow."""
        context = GUILD_CONTEXT if channel.guild_id is not None else BOT_DM_CONTEXT
        where = "a server" if context == GUILD_CONTEXT else "a DM with the bot"

        def unavailable(why: str) -> CommandUnavailable:
            user = self.world.user(user_id).name
            return CommandUnavailable(
                f"Discord does not offer /{command['name']} to {user} in {where}: {why}"
            )

        self.service.check_member(channel, user_id)
        if "guild_id" not in command:
            contexts = command.get("contexts")
            if contexts is None:
                contexts = [GUILD_CONTEXT] + ([BOT_DM_CONTEXT] if command.get("dm_permission", True) else [])
            if context not in contexts:
                raise unavailable(f"its contexts are {contexts}")
            if GUILD_INSTALL not in command["integration_types"]:
                raise unavailable("it is for user installs only; the emulator's app is installed to servers")
        if channel.guild_id is None:
            return
        if channel.archived:
            raise unavailable("the thread is archived")
        if not self.world.can_view(channel, user_id):
            raise unavailable("they cannot see the channel")
        if not self.world.has_permission(channel, user_id, "use_application_commands"):
            raise unavailable("they lack Use Application Commands in the channel")
        bits = self.world.channel_permissions(channel, user_id)
        if bits & ADMINISTRATOR:  # "Members with the Administrator permission can use all commands."
            return
        granted = self._command_override(command, user_id, channel.guild_id)
        if granted is not None:
            if not granted:
                raise unavailable("a server admin turned it off for them")
            return
        needed = command.get("default_member_permissions")
        if needed is not None and (int(needed) == 0 or int(needed) & bits != int(needed)):
            raise unavailable(f"they lack its default_member_permissions {needed}")

    def set_command_permission(
        self, guild_id: int, command: dict[str, Any], target_id: int, allowed: bool
    ) -> None:
        self.world.command_permissions.setdefault((guild_id, command["id"]), {})[target_id] = allowed

    def _command_override(self, command: dict[str, Any], user_id: int, guild_id: int) -> bool | None:
        """A server admin's choice for this member: theirs, else their roles' (any allow wins), else
        @everyone's; None when there is none and default_member_permissions decides."""
        overrides = self.world.command_permissions.get((guild_id, command["id"]), {})
        if user_id in overrides:
            return overrides[user_id]
        member = self.world.member(guild_id, user_id)
        by_roles = [overrides[r] for r in (member.role_ids if member else []) if r in overrides]
        if by_roles:
            return any(by_roles)
        return overrides.get(guild_id)

    def _record(self, application_id: int, token: str) -> Interaction:
        record = self._by_token.get(token)
        if record is None or application_id != self.world.application_id:
            raise DiscordError(404, UNKNOWN_WEBHOOK, "Unknown Webhook")
        if time.monotonic() - record.created_at > TOKEN_LIFETIME_S:
            raise DiscordError(401, INVALID_WEBHOOK_TOKEN, "Invalid Webhook Token")
        return record

    def _create(
        self, kind: int, user_id: int, channel_id: int, data: dict[str, Any], message_id: int | None = None
    ) -> Interaction:
        channel = self.world.channel(channel_id)
        self.world.require_permission(channel, user_id, "view_channel")
        record = Interaction(
            id=self.world.snowflakes.next(),
            token=secrets.token_urlsafe(48),
            type=kind,
            user_id=user_id,
            channel_id=channel.id,
            guild_id=channel.guild_id,
            data=data,
            message_id=message_id,
        )
        self.world.interactions[record.id] = record
        self._by_token[record.token] = record
        data = payloads.interaction(self.world, self.service.base_url, record)
        self.service.gateway.dispatch("INTERACTION_CREATE", data, intent=None)
        return record

    def _command_options(
        self,
        command: dict[str, Any],
        given: dict[str, Any],
        subcommand: str | None,
        guild_id: int | None,
        resolved: dict[str, dict[str, Any]],
    ) -> list[dict[str, Any]]:
        """The `options` tree Discord sends: subcommand groups wrapping subcommands wrapping values."""
        schema = command.get("options") or []
        path: list[dict[str, Any]] = []
        for part in (subcommand or "").split():
            spec = next(
                (o for o in schema if o["name"] == part and o["type"] in (SUB_COMMAND, SUB_COMMAND_GROUP)),
                None,
            )
            if spec is None:
                raise LookupError(f"/{command['name']} has no subcommand {part!r}")
            path.append(spec)
            schema = spec.get("options") or []
        if any(o["type"] in (SUB_COMMAND, SUB_COMMAND_GROUP) for o in schema):
            raise LookupError(f"/{command['name']} needs a subcommand, one of {[o['name'] for o in schema]}")
        built = [
            self._option_value(_option_spec(schema, name), value, guild_id, resolved)
            for name, value in given.items()
        ]
        missing = [o["name"] for o in schema if o.get("required") and o["name"] not in given]
        if missing:
            raise LookupError(f"/{command['name']} needs options {missing}")
        for spec in reversed(path):
            built = [{"name": spec["name"], "type": spec["type"], "options": built}]
        return built

    def _option_value(
        self, spec: dict[str, Any], value: Any, guild_id: int | None, resolved: dict[str, dict[str, Any]]
    ) -> dict[str, Any]:
        kind = spec["type"]
        if kind in SCALARS:
            value = SCALARS[kind](value)
            choices = [c["value"] for c in spec.get("choices") or []]
            if choices and value not in choices:
                raise ValueError(f"option {spec['name']!r} must be one of {choices}, not {value!r}")
            _check_bounds(spec, value)
            return {"name": spec["name"], "type": kind, "value": value}
        if kind == ATTACHMENT_OPTION:
            value = self._upload(spec, value)
        snowflake = value if isinstance(value, int) else value.id
        self._resolve(kind, snowflake, guild_id, resolved)
        if kind == CHANNEL_OPTION:
            _check_channel_option(spec, self.world.channel(snowflake), guild_id)
        return {"name": spec["name"], "type": kind, "value": str(snowflake)}

    def _upload(self, spec: dict[str, Any], value: Attachment | tuple[str, bytes]) -> Attachment:
        """The file a person picks for an attachment option, uploaded as Discord's client does first.

        The client offers only files of the option's `file_types` (matched on the extension) and within the
        upload limit it was told (`attachment_size_limit`).
        """
        upload = value if isinstance(value, Attachment) else Attachment(self.world.snowflakes.next(), *value)
        if len(upload.data) > payloads.ATTACHMENT_SIZE_LIMIT:
            raise ValueError(
                f"{upload.filename} is {len(upload.data)} bytes; uploads are limited to "
                f"{payloads.ATTACHMENT_SIZE_LIMIT}"
            )
        wanted = spec.get("file_types")
        if wanted and not _file_type_matches(upload, wanted):
            raise ValueError(
                f"option {spec['name']!r} takes only files of types {wanted}, not {upload.filename}"
            )
        self.world.attachments[upload.id] = upload
        return upload

    def _resolve(
        self, kind: int, snowflake: int, guild_id: int | None, resolved: dict[str, dict[str, Any]]
    ) -> None:
        """Fill `resolved` the way Discord does for user, channel and role options."""
        key = str(snowflake)
        if kind == USER_OPTION:
            resolved.setdefault("users", {})[key] = payloads.user(self.world.user(snowflake))
            member = self.world.member(guild_id, snowflake) if guild_id is not None else None
            if member is not None:
                data = payloads.member(self.world, member, with_user=False, with_permissions=True)
                resolved.setdefault("members", {})[key] = data
        elif kind == CHANNEL_OPTION:
            channel = payloads.channel(self.world, self.world.channel(snowflake))
            resolved.setdefault("channels", {})[key] = channel | {"permissions": str(1 << 10)}
        elif kind == ROLE_OPTION:
            resolved.setdefault("roles", {})[key] = payloads.role(self.world.roles[snowflake])
        elif kind == ATTACHMENT_OPTION:  # what a command's option uploads lasts a while: ephemeral
            upload = payloads.attachment(self.service.base_url, self.world.attachments[snowflake])
            resolved.setdefault("attachments", {})[key] = upload | {"ephemeral": True}
        else:
            raise ValueError(f"option type {kind} is not supported by the emulator")


def _validate_command(index: int, command: dict[str, Any], *, duplicate: bool) -> None:
    """The checks Discord makes on a bulk overwrite that a bot is most likely to trip."""
    name, kind = command.get("name", ""), command.get("type", CHAT_INPUT)
    if kind == CHAT_INPUT and (not COMMAND_NAME.match(name) or name != name.lower()):
        raise invalid_form(
            f"{index}.name", "APPLICATION_COMMAND_INVALID_NAME", f"Command name {name!r} is invalid"
        )
    if kind == CHAT_INPUT and not 1 <= len(command.get("description", "")) <= 100:
        raise invalid_form(
            f"{index}.description", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length."
        )
    if not 1 <= len(name) <= 32:
        raise invalid_form(f"{index}.name", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 32 in length.")
    if duplicate:
        raise invalid_form(
            f"{index}.name", "APPLICATION_COMMANDS_DUPLICATE_NAME", f"Duplicate command {name!r}"
        )
    _validate_access(index, command)
    options = command.get("options") or []
    required = [
        bool(o.get("required")) for o in options if o.get("type") not in (SUB_COMMAND, SUB_COMMAND_GROUP)
    ]
    if required != sorted(required, reverse=True):
        raise invalid_form(
            f"{index}.options", "APPLICATION_COMMAND_OPTIONS_REQUIRED_INVALID", "Required options first"
        )


def _validate_access(index: int, command: dict[str, Any]) -> None:
    """`default_member_permissions` (a permission integer, as a string or a number), `contexts`,
    `integration_types` and the deprecated `dm_permission`, checked as Discord checks them."""
    permissions = command.get("default_member_permissions")
    if permissions is not None:
        text = str(permissions)
        if isinstance(permissions, bool) or not text.isdigit() or int(text) & ~ALL_PERMISSIONS:
            raise invalid_form(
                f"{index}.default_member_permissions",
                "NUMBER_TYPE_COERCE",
                f"Value {permissions!r} is not a permission integer.",
            )
    allowed = {
        "contexts": (GUILD_CONTEXT, BOT_DM_CONTEXT, PRIVATE_CHANNEL_CONTEXT),
        "integration_types": (GUILD_INSTALL, USER_INSTALL),
    }
    for key, values in allowed.items():
        given = command.get(key)
        if given is None:
            continue
        if not isinstance(given, list):
            raise invalid_form(
                f"{index}.{key}", "LIST_TYPE_CONVERT", "Only iterables may be used in a ListType"
            )
        for number, value in enumerate(given):
            if isinstance(value, bool) or value not in values:
                raise invalid_form(
                    f"{index}.{key}.{number}",
                    "ENUM_TYPE_COERCE",
                    f"Value {value!r} is not a valid enum value.",
                )
        if len(set(given)) != len(given):
            raise invalid_form(
                f"{index}.{key}", "SET_TYPE_ALREADY_CONTAINS_VALUE", "The set contains duplicates."
            )
    if command.get("dm_permission") not in (None, True, False):
        raise invalid_form(f"{index}.dm_permission", "BASE_TYPE_BOOLEAN", "Must be either true or false.")


def _check_bounds(spec: dict[str, Any], value: Any) -> None:
    """The client takes only numbers within the option's min/max_value and text within its min/max_length
    (6,000 characters at most)."""
    low, high = spec.get("min_value"), spec.get("max_value")
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    if is_number and ((low is not None and value < low) or (high is not None and value > high)):
        raise ValueError(f"option {spec['name']!r} must be within [{low}, {high}], not {value!r}")
    if isinstance(value, str):
        shortest, longest = spec.get("min_length", 0), spec.get("max_length", MAX_STRING_OPTION)
        if not shortest <= len(value) <= longest:
            raise ValueError(
                f"option {spec['name']!r} takes {shortest} to {longest} characters, not {len(value)}"
            )


def _check_channel_option(spec: dict[str, Any], channel: Channel, guild_id: int | None) -> None:
    """The picker lists only the server's own channels, and of those only the option's `channel_types`."""
    if channel.guild_id is None or channel.guild_id != guild_id:
        raise ValueError(f"option {spec['name']!r} lists the server's channels only, not {channel.id}")
    types = spec.get("channel_types")
    if types and channel.type not in types:
        raise ValueError(f"option {spec['name']!r} takes channels of types {types}, not type {channel.type}")


def _file_type_matches(upload: Attachment, file_types: list[str]) -> bool:
    """Discord's file type filter: on the extension alone, a dot-prefixed one or a group's
    (https://discord.com/developers/docs/reference#file-type-filtering)."""
    extension = "." + upload.filename.rpartition(".")[2].lower() if "." in upload.filename else ""
    return any(extension in FILE_TYPE_GROUPS.get(kind, (kind.lower(),)) for kind in file_types)


def _command_data(command: dict[str, Any]) -> dict[str, Any]:
    data = {"id": command["id"], "name": command["name"], "type": command.get("type", CHAT_INPUT)}
    if "guild_id" in command:
        data["guild_id"] = command["guild_id"]
    return data


def _option_spec(schema: list[dict[str, Any]], name: str) -> dict[str, Any]:
    spec = next((o for o in schema if o["name"] == name), None)
    if spec is None:
        raise LookupError(f"no option {name!r}; the command has {[o['name'] for o in schema]}")
    return spec


def _find_component(components: list[dict[str, Any]], custom_id: str) -> dict[str, Any] | None:
    for component in components:
        if component.get("custom_id") == custom_id:
            return component
        nested = component.get("components") or ([component["component"]] if "component" in component else [])
        if found := _find_component(nested, custom_id):
            return found
    return None


def _fill_modal(
    components: list[dict[str, Any]], values: dict[str, Any], used: set[str]
) -> list[dict[str, Any]]:
    """The submitted components: the modal's layout with each input's value filled in."""
    filled = []
    for component in components:
        kind = component["type"]
        if kind == 1:
            filled.append({"type": 1, "components": _fill_modal(component["components"], values, used)})
        elif kind == 18:  # a label wraps exactly one input
            filled.append({"type": 18, "component": _fill_modal([component["component"]], values, used)[0]})
        elif "custom_id" in component:
            filled.append(_fill_input(component, values, used))
    return filled


def _fill_input(component: dict[str, Any], values: dict[str, Any], used: set[str]) -> dict[str, Any]:
    custom_id = component["custom_id"]
    value = values.get(custom_id)
    if value is not None:
        used.add(custom_id)
    if component["type"] in SELECT_TYPES:
        return {"type": component["type"], "custom_id": custom_id, "values": list(value or [])}
    text = str(value or "")
    if component.get("required", True) and not text:
        raise ValueError(f"the modal's input {custom_id!r} is required")
    if len(text) > component.get("max_length", 4000):
        raise ValueError(
            f"the modal's input {custom_id!r} allows at most {component.get('max_length')} characters"
        )
    return {"type": component["type"], "custom_id": custom_id, "value": text}
