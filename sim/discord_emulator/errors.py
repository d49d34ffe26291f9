"""Discord's JSON errors, raised anywhere in the emulator and turned into responses at the REST edge."""

from __future__ import annotations

from typing import Any

# JSON error codes (https://discord.com/developers/docs/topics/opcodes-and-status-codes#json).
UNKNOWN_CHANNEL = 10003
UNKNOWN_GUILD = 10004
UNKNOWN_MESSAGE = 10008
UNKNOWN_USER = 10013
UNKNOWN_WEBHOOK = 10015
UNKNOWN_INTERACTION = 10062
MISSING_ACCESS = 50001
CANNOT_EXECUTE_IN_DM = 50003
CANNOT_EDIT_OTHERS_MESSAGE = 50005
EMPTY_MESSAGE = 50006
MISSING_PERMISSIONS = 50013
INVALID_WEBHOOK_TOKEN = 50027
INVALID_FORM_BODY = 50035
THREAD_ARCHIVED = 50083
OLD_MESSAGE_EDITS = 30046
MAX_PINS_REACHED = 30003
REQUEST_TOO_LARGE = 40005
ALREADY_ACKNOWLEDGED = 40060
REPLY_WITHOUT_HISTORY = 160002
THREAD_LOCKED = 160005


class DiscordError(Exception):
    """An API error with the HTTP status and the JSON body Discord would send."""

    def __init__(self, status: int, code: int, message: str, errors: dict[str, Any] | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.errors = errors

    def body(self) -> dict[str, Any]:
        """The JSON error body."""
        body: dict[str, Any] = {"message": self.message, "code": self.code}
        if self.errors is not None:
            body["errors"] = self.errors
        return body

    def headers(self) -> dict[str, str]:
        return {}


class RateLimitedError(DiscordError):
    """A 429 that no bucket explains (like 30046), with `retry_after` and the headers of Discord's 429s."""

    def __init__(self, code: int, message: str, retry_after: float) -> None:
        super().__init__(429, code, message)
        self.retry_after = retry_after

    def body(self) -> dict[str, Any]:
        return super().body() | {"retry_after": self.retry_after, "global": False}

    def headers(self) -> dict[str, str]:
        return rate_limited_headers(self.retry_after, is_global=False)


class CommandUnavailable(LookupError):
    """A person tried a command that Discord's client would not offer them there (contexts, installs,
    default_member_permissions, an archived thread)."""


def missing_permissions() -> DiscordError:
    return DiscordError(403, MISSING_PERMISSIONS, "Missing Permissions")


def missing_access() -> DiscordError:
    return DiscordError(403, MISSING_ACCESS, "Missing Access")


def rate_limited_headers(retry_after: float, *, is_global: bool) -> dict[str, str]:
    """The headers of a 429; discord.py only waits out (rather than raises) one that carries `Via`."""
    headers = {
        "Via": "1.1 google",
        "Retry-After": f"{retry_after:.3f}",
        "X-RateLimit-Scope": "global" if is_global else "user",
    }
    if is_global:
        headers["X-RateLimit-Global"] = "true"
    return headers


def invalid_form(path: str, code: str, message: str) -> DiscordError:
    """A 400 "Invalid Form Body" naming the offending field, like `content` or `embeds.0.description`."""
    errors: dict[str, Any] = {"_errors": [{"code": code, "message": message}]}
    for part in reversed(path.split(".")):
        errors = {part: errors}
    return DiscordError(400, INVALID_FORM_BODY, "Invalid Form Body", errors)
