"""Discord's size limits on a message (content, embeds, components, uploads) and on a modal."""

from __future__ import annotations

from typing import Any

from .errors import EMPTY_MESSAGE, REQUEST_TOO_LARGE, DiscordError, invalid_form
from .state import Attachment

# https://discord.com/developers/docs/resources/message#create-message-jsonform-params
MAX_CONTENT = 2000
MAX_PERSON_CONTENT = 4000  # people may have Nitro, which allows 4,000 characters; bots never more than 2,000
MAX_EMBEDS = 10
# https://discord.com/developers/docs/resources/message#embed-object-embed-limits
EMBED_TEXT_LIMITS = {"title": 256, "description": 4096, "footer.text": 2048, "author.name": 256}
MAX_EMBED_FIELDS, MAX_FIELD_NAME, MAX_FIELD_VALUE = 25, 256, 1024
MAX_EMBEDS_TEXT = 6000  # the sum over all of a message's embeds
# https://discord.com/developers/docs/components/reference (Action Row, Button, String Select, Label,
# Text Input, "Legacy Message Component Behavior" for the 5 rows; IS_COMPONENTS_V2 messages allow 40 in all)
MAX_ACTION_ROWS, MAX_ROW_BUTTONS, MAX_COMPONENTS_V2 = 5, 5, 40
MAX_CUSTOM_ID, MAX_BUTTON_LABEL = 100, 80
MAX_SELECT_OPTIONS, MAX_OPTION_TEXT, MAX_SELECT_PLACEHOLDER = 25, 100, 150
MAX_INPUT_LABEL, MAX_INPUT_TEXT, MAX_INPUT_PLACEHOLDER, MAX_LABEL_DESCRIPTION = 45, 4000, 100, 100
# https://discord.com/developers/docs/interactions/receiving-and-responding#interaction-response-object-modal
MAX_MODAL_TITLE, MAX_MODAL_COMPONENTS = 45, 5
# https://discord.com/developers/docs/reference#uploading-files: 10 MiB a file for bots and people without
# Nitro in servers without boosts; resources/message#create-message: 25 MiB a request. discord.py's
# Messageable.send documents "a maximum of 10" files.
MAX_FILES, MAX_FILE_BYTES, MAX_REQUEST_BYTES = 10, 10 * 1024 * 1024, 25 * 1024 * 1024
MAX_PINS, MAX_PINS_PAGE = 250, 50  # pins a channel holds; pins one Get Channel Pins call returns
IS_COMPONENTS_V2 = 1 << 15
ACTION_ROW, BUTTON, TEXT_INPUT, LABEL = 1, 2, 4, 18
SELECT_TYPES = (3, 5, 6, 7, 8)


def check_message(
    body: dict[str, Any], files: list[Attachment], *, content_limit: int, allow_empty: bool = False
) -> None:
    """Refuse a message body (after an edit: the message as it would be) the way Discord does."""
    content = body.get("content") or ""
    if len(content) > content_limit:
        raise invalid_form("content", "BASE_TYPE_MAX_LENGTH", f"Must be {content_limit} or fewer in length.")
    check_embeds(body.get("embeds") or [])
    check_components(body.get("components") or [], int(body.get("flags") or 0))
    if len(files) > MAX_FILES:
        raise invalid_form("attachments", "BASE_TYPE_MAX_LENGTH", f"Must be {MAX_FILES} or fewer in length.")
    if not (
        allow_empty
        or content
        or body.get("embeds")
        or files
        or body.get("components")
        or body.get("sticker_ids")
        or body.get("poll")
    ):
        raise DiscordError(400, EMPTY_MESSAGE, "Cannot send an empty message")


def check_uploads(files: list[Attachment]) -> None:
    """New uploads: each within the upload limit (413, code 40005, as Discord answers)."""
    if any(len(upload.data) > MAX_FILE_BYTES for upload in files):
        raise request_too_large()


def request_too_large() -> DiscordError:
    return DiscordError(413, REQUEST_TOO_LARGE, "Request entity too large")


def check_embeds(embeds: list[dict[str, Any]]) -> None:
    if len(embeds) > MAX_EMBEDS:
        raise invalid_form("embeds", "BASE_TYPE_MAX_LENGTH", f"Must be {MAX_EMBEDS} or fewer in length.")
    total = 0
    for index, embed in enumerate(embeds):
        for key, limit in EMBED_TEXT_LIMITS.items():
            outer, _, inner = key.partition(".")
            value = embed.get(outer)
            text = (value or {}).get(inner) if inner else value
            total += _max_length(f"embeds.{index}.{key}", text, limit)
        fields = embed.get("fields") or []
        if len(fields) > MAX_EMBED_FIELDS:
            raise invalid_form(
                f"embeds.{index}.fields",
                "BASE_TYPE_MAX_LENGTH",
                f"Must be {MAX_EMBED_FIELDS} or fewer in length.",
            )
        for number, field in enumerate(fields):
            total += _max_length(f"embeds.{index}.fields.{number}.name", field.get("name"), MAX_FIELD_NAME)
            total += _max_length(f"embeds.{index}.fields.{number}.value", field.get("value"), MAX_FIELD_VALUE)
    if total > MAX_EMBEDS_TEXT:
        raise invalid_form(
            "embeds", "BASE_TYPE_MAX_LENGTH", f"Embed size exceeds maximum size of {MAX_EMBEDS_TEXT}"
        )


def check_components(components: list[dict[str, Any]], flags: int) -> None:
    """Legacy messages: up to 5 action rows of up to 5 buttons or one select; V2 messages: 40 in all."""
    if flags & IS_COMPONENTS_V2:
        if _count(components) > MAX_COMPONENTS_V2:
            raise invalid_form(
                "components", "BASE_TYPE_MAX_LENGTH", f"Must be {MAX_COMPONENTS_V2} or fewer in length."
            )
    elif len(components) > MAX_ACTION_ROWS:
        raise invalid_form(
            "components", "BASE_TYPE_MAX_LENGTH", f"Must be {MAX_ACTION_ROWS} or fewer in length."
        )
    custom_ids: list[str] = []
    for index, row in enumerate(components):
        path = f"components.{index}"
        if row.get("type") == ACTION_ROW:
            _check_row(path, row.get("components") or [])
        elif not flags & IS_COMPONENTS_V2:
            raise invalid_form(
                f"{path}.type", "UNION_TYPE_CHOICES", "Only action rows may hold legacy components."
            )
        _check_interactive(path, row, custom_ids)
    if len(custom_ids) != len(set(custom_ids)):
        raise invalid_form(
            "components", "COMPONENT_CUSTOM_ID_DUPLICATED", "Component custom id cannot be duplicated"
        )


def check_modal(data: dict[str, Any]) -> None:
    """A modal's title, custom_id, 1 to 5 top-level components and its inputs' limits."""
    _length("data.custom_id", data.get("custom_id"), 1, MAX_CUSTOM_ID)
    _length("data.title", data.get("title"), 1, MAX_MODAL_TITLE)
    components = data.get("components") or []
    if not 1 <= len(components) <= MAX_MODAL_COMPONENTS:
        raise invalid_form(
            "data.components",
            "BASE_TYPE_BAD_LENGTH",
            f"Must be between 1 and {MAX_MODAL_COMPONENTS} in length.",
        )
    for index, component in enumerate(components):
        _check_interactive(f"data.components.{index}", component, [])


def _check_row(path: str, children: list[dict[str, Any]]) -> None:
    selects = [c for c in children if c.get("type") in SELECT_TYPES]
    if selects and len(children) > 1:
        raise invalid_form(
            f"{path}.components",
            "COMPONENT_LAYOUT_WIDTH_EXCEEDED",
            "A select menu fills its action row alone.",
        )
    if len(children) > MAX_ROW_BUTTONS:
        raise invalid_form(
            f"{path}.components", "BASE_TYPE_MAX_LENGTH", f"Must be {MAX_ROW_BUTTONS} or fewer in length."
        )


def _check_interactive(path: str, component: dict[str, Any], custom_ids: list[str]) -> None:
    """The text limits of one component and of everything nested in it; collects custom_ids."""
    kind = component.get("type")
    if "custom_id" in component:
        custom_ids.append(component["custom_id"])
        _length(f"{path}.custom_id", component["custom_id"], 1, MAX_CUSTOM_ID)
    if kind == BUTTON:
        _max_length(f"{path}.label", component.get("label"), MAX_BUTTON_LABEL)
    elif kind in SELECT_TYPES:
        _max_length(f"{path}.placeholder", component.get("placeholder"), MAX_SELECT_PLACEHOLDER)
        _check_options(path, component)
    elif kind == TEXT_INPUT:
        _check_text_input(path, component)
    elif kind == LABEL:
        _length(f"{path}.label", component.get("label"), 1, MAX_INPUT_LABEL)
        _max_length(f"{path}.description", component.get("description"), MAX_LABEL_DESCRIPTION)
    for index, child in enumerate(component.get("components") or []):
        _check_interactive(f"{path}.components.{index}", child, custom_ids)
    if isinstance(component.get("component"), dict):
        _check_interactive(f"{path}.component", component["component"], custom_ids)


def _check_options(path: str, select: dict[str, Any]) -> None:
    if select.get("type") != 3:
        return
    options = select.get("options") or []
    if not 1 <= len(options) <= MAX_SELECT_OPTIONS:
        raise invalid_form(
            f"{path}.options",
            "BASE_TYPE_BAD_LENGTH",
            f"Must be between 1 and {MAX_SELECT_OPTIONS} in length.",
        )
    for index, option in enumerate(options):
        for key in ("label", "value"):
            _length(f"{path}.options.{index}.{key}", option.get(key), 1, MAX_OPTION_TEXT)
        _max_length(f"{path}.options.{index}.description", option.get("description"), MAX_OPTION_TEXT)


def _check_text_input(path: str, text_input: dict[str, Any]) -> None:
    _max_length(f"{path}.label", text_input.get("label"), MAX_INPUT_LABEL)
    _max_length(f"{path}.placeholder", text_input.get("placeholder"), MAX_INPUT_PLACEHOLDER)
    _max_length(f"{path}.value", text_input.get("value"), MAX_INPUT_TEXT)
    for key, least in (("min_length", 0), ("max_length", 1)):
        value = text_input.get(key)
        if value is not None and not least <= value <= MAX_INPUT_TEXT:
            raise invalid_form(
                f"{path}.{key}",
                "NUMBER_TYPE_MAX",
                f"int value should be between {least} and {MAX_INPUT_TEXT}.",
            )


def _count(components: list[dict[str, Any]]) -> int:
    nested = (
        (c.get("components") or []) + ([c["component"]] if isinstance(c.get("component"), dict) else [])
        for c in components
    )
    return len(components) + sum(_count(children) for children in nested)


def _max_length(path: str, text: str | None, limit: int) -> int:
    """Refuse text over `limit` characters (Discord trims surrounding whitespace first); its length."""
    length = len((text or "").strip())
    if length > limit:
        raise invalid_form(path, "BASE_TYPE_MAX_LENGTH", f"Must be {limit} or fewer in length.")
    return length


def _length(path: str, text: str | None, least: int, limit: int) -> None:
    if not least <= len(text or "") <= limit:
        raise invalid_form(path, "BASE_TYPE_BAD_LENGTH", f"Must be between {least} and {limit} in length.")
