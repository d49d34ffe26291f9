"""Rate limits: per-route buckets with honest X-RateLimit-* headers, forced 429s, and the cap on old edits."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

from .errors import OLD_MESSAGE_EDITS, RateLimitedError
from .state import Message, utcnow

# Discord does not publish its per-route limits; these are conservative guesses at the per-channel buckets
# a chatty bot meets first, stricter than the 50 per second every other route gets here.
DEFAULT_ROUTE_LIMITS: dict[str, tuple[int, float]] = {
    "POST /channels/{channel_id}/messages": (5, 5.0),
    "PATCH /channels/{channel_id}/messages/{message_id}": (5, 5.0),
}
OLD_MESSAGE_AGE_S = 3600.0  # edits to messages older than this count against OldMessageEdits
OLD_EDITS_WINDOW_S = 3600.0


@dataclass
class RateLimitInjection:
    route: str  # a substring of "METHOD /route/template"
    times: int
    retry_after: float
    is_global: bool


@dataclass
class Bucket:
    """One request's share of a bucket: what its X-RateLimit-* headers say."""

    id: str
    limit: int
    remaining: int  # -1 once the request went over the limit
    reset_after: float

    def headers(self) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(max(self.remaining, 0)),
            "X-RateLimit-Reset": f"{time.time() + self.reset_after:.3f}",
            "X-RateLimit-Reset-After": f"{self.reset_after:.3f}",
            "X-RateLimit-Bucket": self.id,
        }


class RateLimits:
    """Per-bucket windows like Discord's, so discord.py's limiter sees honest headers; plus forced 429s.

    A bucket is one "METHOD /route/template" and its major parameters (the channel, guild or webhook);
    `route_limits` gives some routes their own (limit, window) instead of the generic one.
    """

    def __init__(
        self, limit: int, window: float, route_limits: dict[str, tuple[int, float]] | None = None
    ) -> None:
        self.limit = limit
        self.window = window
        self.route_limits = DEFAULT_ROUTE_LIMITS | (route_limits or {})
        for key, (count, seconds) in [("generic", (limit, window)), *self.route_limits.items()]:
            if count < 1 or seconds <= 0:
                raise ValueError(f"rate limit {key!r} must allow at least 1 request per positive window")
        self.injections: list[RateLimitInjection] = []
        self._windows: dict[str, tuple[float, int]] = {}  # bucket:major -> (reset time, used)

    def injected(self, key: str) -> RateLimitInjection | None:
        for injection in self.injections:
            if injection.times > 0 and injection.route in key:
                injection.times -= 1
                return injection
        return None

    def take(self, key: str, major: str) -> Bucket:
        """Use one request of the bucket of `key` ("METHOD /template") for these major parameters."""
        limit, window = self.route_limits.get(key, (self.limit, self.window))
        bucket_id = hashlib.sha1(key.encode()).hexdigest()[:16]
        now = time.time()
        reset, used = self._windows.get(f"{bucket_id}:{major}", (now + window, 0))
        if now >= reset:
            reset, used = now + window, 0
        self._windows[f"{bucket_id}:{major}"] = (reset, used + 1)
        return Bucket(bucket_id, limit, limit - used - 1, reset - now)


class OldMessageEdits:
    """Discord's cap on edits to messages older than an hour: `per_hour` per channel, then a 429 (30046)."""

    def __init__(self, per_hour: int) -> None:
        if per_hour < 0:
            raise ValueError("old_message_edits must be 0 or more")
        self.per_hour = per_hour
        self._windows: dict[int, tuple[float, int]] = {}  # channel -> (window end, edits so far)

    def take(self, message: Message) -> None:
        """Count an edit of `message`; raise the 429 once its channel used up the hour's old-message edits."""
        if (utcnow() - message.created_at).total_seconds() <= OLD_MESSAGE_AGE_S:
            return
        now = time.time()
        end, used = self._windows.get(message.channel_id, (now + OLD_EDITS_WINDOW_S, 0))
        if now >= end:
            end, used = now + OLD_EDITS_WINDOW_S, 0
        if used >= self.per_hour:
            raise RateLimitedError(
                OLD_MESSAGE_EDITS,
                "Maximum number of edits to messages older than 1 hour reached. Try again later",
                round(end - now, 3),
            )
        self._windows[message.channel_id] = (end, used + 1)
