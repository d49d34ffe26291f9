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
CANNOT_EDIT_OTHERS_MESSAGE = 50005
EMPTY_MESSAGE = 50006
INVALID_FORM_BODY = 50035
ALREADY_ACKNOWLEDGED = 40060


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


def invalid_form(path: str, code: str, message: str) -> DiscordError:
    """A 400 "Invalid Form Body" naming the offending field, like `content` or `embeds.0.description`."""
    errors: dict[str, Any] = {"_errors": [{"code": code, "message": message}]}
    for part in reversed(path.split(".")):
        errors = {part: errors}
    return DiscordError(400, INVALID_FORM_BODY, "Invalid Form Body", errors)
