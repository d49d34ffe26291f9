"""Personal data out of training text: emails, phone numbers, Discord mentions and URLs that carry tokens."""

from __future__ import annotations

import re

_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
# Discord mentions: users <@123>, <@!123>, roles <@&123>, channels <#123>.
_MENTION = re.compile(r"<(?:@[!&]?|#)\d{15,21}>")
# A URL whose query or fragment carries a credential-looking parameter, or an invite/webhook secret path.
_SECRET_URL = re.compile(
    r"https?://\S*?(?:[?&#](?:token|access_token|key|api_key|apikey|secret|sig|signature|auth|code|password)=|"
    r"/api/webhooks/)\S*",
    re.IGNORECASE,
)
# Phone numbers: an optional +country code, then 9 to 15 digits with spaces, dots, dashes or brackets between.
_PHONE = re.compile(r"(?<![\w/])\+?\(?\d{1,4}\)?(?:[\s.-]?\(?\d{2,4}\)?){2,5}(?![\w/])")


def scrub(text: str) -> str:
    """Replace personal data in `text` with placeholders like [email]; other text is left as it is."""
    text = _SECRET_URL.sub("[url]", text)
    text = _EMAIL.sub("[email]", text)
    text = _MENTION.sub("[mention]", text)
    return _PHONE.sub(_phone_or_number, text)


def _phone_or_number(match: re.Match[str]) -> str:
    # Years, prices and short counts also match the shape; only 9+ digits look like a phone number.
    digits = sum(char.isdigit() for char in match.group())
    return "[phone]" if 9 <= digits <= 15 else match.group()
