"""The REST API (v10) the bot calls, with Discord's rate-limit headers and JSON errors."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aiohttp import web

from . import payloads
from .errors import DiscordError, invalid_form, rate_limited_headers
from .interactions import Interactions
from .limits import MAX_PINS_PAGE, MAX_REQUEST_BYTES, request_too_large
from .ratelimits import RateLimitInjection, RateLimits
from .service import DiscordService
from .state import Attachment, Channel, Message, World

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
API = "/api/{version:v9|v10}"
BODY = web.RequestKey("body", object)  # the parsed request body, kept for the call log
MAJOR_PARAMETERS = ("channel_id", "guild_id", "application_id", "interaction_id", "token")


@dataclass
class RestCall:
    """One request the bot made; `route` is the template, e.g. `/channels/{channel_id}/messages`."""

    method: str
    route: str
    path: str
    status: int
    body: Any
    at: float = field(default_factory=time.monotonic)


class RestApi:
    """Route handlers; each turns a request into a call on the service or the interactions."""

    def __init__(
        self,
        service: DiscordService,
        interactions: Interactions,
        token: str,
        limits: RateLimits,
        network_delay_s: float = 0.0,
    ) -> None:
        self.service = service
        self.interactions = interactions
        self.world: World = service.world
        self.token = token
        self.limits = limits
        self.network_delay_s = network_delay_s  # added before every response, as a network's round trip
        self.calls: list[RestCall] = []
        self.on_change: Callable[[], None] = lambda: None
        known = {f"{method} {path}" for method, path, _ in self._routes()}
        if unknown := set(limits.route_limits) - known:
            raise ValueError(f"route_limits for routes the emulator does not have: {sorted(unknown)}")

    def build_app(self, gateway_handler: Handler) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=MAX_REQUEST_BYTES)
        app.router.add_get("/", gateway_handler)
        app.router.add_get("/attachments/{attachment_id}/{filename}", self.get_attachment)
        for method, path, handler in self._routes():
            app.router.add_route(method, API + path, handler)
        app.router.add_route("*", "/{tail:.*}", self.unknown_route)
        return app

    def _routes(self) -> list[tuple[str, str, Handler]]:
        message = "/channels/{channel_id}/messages/{message_id}"
        webhook_message = "/webhooks/{application_id}/{token}/messages/{message_id}"
        return [
            ("GET", "/gateway", self.get_gateway),
            ("GET", "/gateway/bot", self.get_gateway),
            ("GET", "/users/@me", self.get_me),
            ("POST", "/users/@me/channels", self.open_dm),
            ("GET", "/users/{user_id}", self.get_user),
            ("GET", "/oauth2/applications/@me", self.get_application),
            ("GET", "/applications/@me", self.get_application),
            ("GET", "/guilds/{guild_id}", self.get_guild),
            ("GET", "/guilds/{guild_id}/channels", self.get_guild_channels),
            ("GET", "/guilds/{guild_id}/members/{user_id}", self.get_member),
            ("GET", "/channels/{channel_id}", self.get_channel),
            ("GET", "/channels/{channel_id}/messages", self.get_history),
            ("GET", "/channels/{channel_id}/messages/pins", self.get_pins),
            ("POST", "/channels/{channel_id}/messages", self.post_message),
            ("GET", message, self.get_message),
            ("PATCH", message, self.edit_message),
            ("DELETE", message, self.delete_message),
            ("PUT", message + "/reactions/{emoji}/@me", self.add_own_reaction),
            ("DELETE", message + "/reactions/{emoji}/@me", self.remove_reaction),
            ("DELETE", message + "/reactions/{emoji}/{user_id}", self.remove_reaction),
            ("DELETE", message + "/reactions", self.clear_reactions),
            ("DELETE", message + "/reactions/{emoji}", self.clear_reactions),
            ("GET", message + "/reactions/{emoji}", self.get_reactors),
            ("POST", message + "/threads", self.create_thread),
            ("POST", "/channels/{channel_id}/threads", self.create_thread),
            ("PUT", "/channels/{channel_id}/thread-members/@me", self.no_content),
            ("POST", "/channels/{channel_id}/typing", self.no_content),
            ("GET", "/applications/{application_id}/commands", self.get_commands),
            ("PUT", "/applications/{application_id}/commands", self.put_commands),
            ("GET", "/applications/{application_id}/guilds/{guild_id}/commands", self.get_commands),
            ("PUT", "/applications/{application_id}/guilds/{guild_id}/commands", self.put_commands),
            ("POST", "/interactions/{interaction_id}/{token}/callback", self.interaction_callback),
            ("POST", "/webhooks/{application_id}/{token}", self.follow_up),
            ("GET", webhook_message, self.get_webhook_message),
            ("PATCH", webhook_message, self.edit_webhook_message),
            ("DELETE", webhook_message, self.delete_webhook_message),
        ]

    # -- middleware -----------------------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == "/" or request.path.startswith("/attachments/"):
            return await handler(request)
        route = _route_template(request, self.unknown_route)
        key = f"{request.method} {route}"
        major = "+".join(request.match_info.get(p, "") for p in MAJOR_PARAMETERS)
        bucket = self.limits.take(key, major)
        injected = self.limits.injected(key)
        response: web.StreamResponse
        if injected is not None or bucket.remaining < 0:
            response = _too_many_requests(injected, bucket.reset_after)
        else:
            response = await self._handle(request, handler, route)
        if response.status != 429 or injected is None:
            response.headers.update(bucket.headers())
        self.calls.append(RestCall(request.method, route, request.path, response.status, request.get(BODY)))
        self.on_change()
        if self.network_delay_s > 0:
            await asyncio.sleep(self.network_delay_s)
        return response

    async def _handle(self, request: web.Request, handler: Handler, route: str) -> web.StreamResponse:
        needs_bot_token = not route.startswith(("/webhooks/", "/interactions/")) and route != "?"
        if needs_bot_token and request.headers.get("Authorization") != f"Bot {self.token}":
            return _json({"message": "401: Unauthorized", "code": 0}, status=401)
        try:
            return await handler(request)
        except DiscordError as error:
            return _json(error.body(), status=error.status, headers=error.headers())
        except Exception as error:  # an emulator bug: a 500 would make discord.py retry for 25 s
            log.exception("discord emulator failed on %s %s", request.method, request.path)
            return _json({"message": f"emulator error: {error!r}", "code": 0}, status=400)

    async def unknown_route(self, request: web.Request) -> web.Response:
        log.warning(
            "discord emulator has no route for %s %s; add it to sim/discord_emulator/rest.py",
            request.method,
            request.path,
        )
        message = f"404: Not Found (the emulator has no route for {request.method} {request.path})"
        return _json({"message": message, "code": 0}, status=404)

    # -- users, application, guilds -------------------------------------------------------------------

    async def get_gateway(self, request: web.Request) -> web.Response:
        """GET /gateway is the URL alone; GET /gateway/bot adds the recommended shards and start limit."""
        url = self.service.base_url.replace("http://", "ws://")
        if not request.path.endswith("/gateway/bot"):
            return _json({"url": url})
        gateway = self.service.gateway
        limit = gateway.session_start_limit()
        return _json({"url": url, "shards": gateway.recommended_shards(), "session_start_limit": limit})

    async def get_me(self, request: web.Request) -> web.Response:
        return _json(payloads.user(self.world.bot))

    async def get_user(self, request: web.Request) -> web.Response:
        return _json(payloads.user(self.world.user(_id(request, "user_id"))))

    async def get_application(self, request: web.Request) -> web.Response:
        return _json(payloads.application(self.world))

    async def get_guild(self, request: web.Request) -> web.Response:
        guild = self.world.guild(_id(request, "guild_id"))
        data = payloads.guild_create(self.world, guild, all_members=False)
        return _json({k: v for k, v in data.items() if k not in ("members", "channels", "threads")})

    async def get_guild_channels(self, request: web.Request) -> web.Response:
        guild = self.world.guild(_id(request, "guild_id"))
        return _json([payloads.channel(self.world, self.world.channels[c]) for c in guild.channel_ids])

    async def get_member(self, request: web.Request) -> web.Response:
        member = self.world.member(_id(request, "guild_id"), _id(request, "user_id"))
        if member is None:
            raise DiscordError(404, 10007, "Unknown Member")
        return _json(payloads.member(self.world, member))

    async def open_dm(self, request: web.Request) -> web.Response:
        body, _ = await _read_body(request, self.world)
        return _json(payloads.channel(self.world, self.service.open_dm(int(body["recipient_id"]))))

    # -- channels and messages ------------------------------------------------------------------------

    async def get_channel(self, request: web.Request) -> web.Response:
        return _json(payloads.channel(self.world, self._channel(request)))

    async def get_history(self, request: web.Request) -> web.Response:
        """Newest first, like Discord; `after` picks the oldest `limit` messages after it.

        Without Read Message History the list is empty rather than refused, as the API docs say.
        """
        channel = self._channel(request)
        if not self.world.has_permission(channel, self.world.bot.id, "read_message_history"):
            return _json([])
        query = request.query
        limit = max(1, min(100, int(query.get("limit", 50))))
        messages = [m for m in self.world.channel_messages(channel.id) if not m.ephemeral]
        if "before" in query:
            messages = [m for m in messages if m.id < int(query["before"])][-limit:]
        elif "after" in query:
            messages = [m for m in messages if m.id > int(query["after"])][:limit]
        elif "around" in query:
            older = [m for m in messages if m.id <= int(query["around"])][-(limit // 2 + 1) :]
            messages = older + [m for m in messages if m.id > int(query["around"])][: limit - len(older)]
        else:
            messages = messages[-limit:]
        return _json([self._message(m) for m in reversed(messages)])

    async def get_pins(self, request: web.Request) -> web.Response:
        """Get Channel Pins: the latest pinned first, `limit` (1-50) at a time, pinned `before` a timestamp.

        Without Read Message History the list is empty rather than refused, as the API docs say.
        """
        channel = self._channel(request)
        query = request.query
        limit = int(query.get("limit", MAX_PINS_PAGE))
        if not 1 <= limit <= MAX_PINS_PAGE:
            raise invalid_form(
                "limit",
                "NUMBER_TYPE_MAX" if limit > 1 else "NUMBER_TYPE_MIN",
                f"limit must be 1-{MAX_PINS_PAGE}",
            )
        if not self.world.has_permission(channel, self.world.bot.id, "read_message_history"):
            return _json({"items": [], "has_more": False})
        pinned = self.world.pinned_messages(channel.id)
        if "before" in query:
            before = datetime.fromisoformat(query["before"])
            pinned = [m for m in pinned if m.pinned_at is not None and m.pinned_at < before]
        items = [
            {"pinned_at": payloads.iso(m.pinned_at), "message": self._message(m)} for m in pinned[:limit]
        ]
        return _json({"items": items, "has_more": len(pinned) > limit})

    async def post_message(self, request: web.Request) -> web.Response:
        body, files = await _read_body(request, self.world)
        message = self.service.post_message(_id(request, "channel_id"), self.world.bot.id, body, files)
        return _json(self._message(message))

    async def get_message(self, request: web.Request) -> web.Response:
        message = self._target(request)
        self.world.require_permission(
            self.world.channel(message.channel_id), self.world.bot.id, "read_message_history"
        )
        return _json(self._message(message))

    async def edit_message(self, request: web.Request) -> web.Response:
        body, files = await _read_body(request, self.world)
        channel_id, message_id = _id(request, "channel_id"), _id(request, "message_id")
        message = self.service.edit_own_message(channel_id, message_id, self.world.bot.id, body, files)
        return _json(self._message(message))

    async def delete_message(self, request: web.Request) -> web.Response:
        self.service.delete_message(self._target(request), self.world.bot.id)
        return web.Response(status=204)

    async def add_own_reaction(self, request: web.Request) -> web.Response:
        self.service.add_reaction(self._target(request), self.world.bot.id, request.match_info["emoji"])
        return web.Response(status=204)

    async def remove_reaction(self, request: web.Request) -> web.Response:
        message = self._target(request)
        user_id = _id(request, "user_id") if "user_id" in request.match_info else self.world.bot.id
        self.service.remove_reaction(message, user_id, request.match_info["emoji"], self.world.bot.id)
        return web.Response(status=204)

    async def clear_reactions(self, request: web.Request) -> web.Response:
        """Delete All Reactions, or All Reactions for one emoji (Manage Messages either way)."""
        message = self._target(request)
        self.service.clear_reactions(message, self.world.bot.id, request.match_info.get("emoji"))
        return web.Response(status=204)

    async def get_reactors(self, request: web.Request) -> web.Response:
        users = self._target(request).reactors(request.match_info["emoji"])
        after = int(request.query.get("after", 0))
        limit = int(request.query.get("limit", 25))
        chosen = sorted(u for u in users if u > after)[:limit]
        return _json([payloads.user(self.world.users[u]) for u in chosen])

    async def create_thread(self, request: web.Request) -> web.Response:
        body, _ = await _read_body(request, self.world)
        message_id = _id(request, "message_id") if "message_id" in request.match_info else None
        thread = self.service.create_thread(
            _id(request, "channel_id"),
            self.world.bot.id,
            body.get("name", ""),
            message_id=message_id,
            private=body.get("type") == 12,
        )
        return _json(payloads.channel(self.world, thread), status=201)

    async def no_content(self, request: web.Request) -> web.Response:
        self._channel(request)
        return web.Response(status=204)

    async def get_attachment(self, request: web.Request) -> web.Response:
        attachment = self.world.attachments.get(_id(request, "attachment_id"))
        if attachment is None:
            raise web.HTTPNotFound()
        return web.Response(body=attachment.data, content_type=attachment.content_type)

    # -- application commands and interactions --------------------------------------------------------

    async def get_commands(self, request: web.Request) -> web.Response:
        self._check_application(request)
        guild_id = _id(request, "guild_id") if "guild_id" in request.match_info else None
        return _json(self.world.commands(guild_id))

    async def put_commands(self, request: web.Request) -> web.Response:
        self._check_application(request)
        guild_id = _id(request, "guild_id") if "guild_id" in request.match_info else None
        body, _ = await _read_body(request, self.world)
        return _json(self.interactions.overwrite_commands(guild_id, body))

    async def interaction_callback(self, request: web.Request) -> web.Response:
        body, files = await _read_body(request, self.world)
        token = request.match_info["token"]
        response = self.interactions.callback(_id(request, "interaction_id"), token, body, files)
        if request.query.get("with_response") in ("1", "true", "True"):
            return _json(response)
        return web.Response(status=204)

    async def follow_up(self, request: web.Request) -> web.Response:
        body, files = await _read_body(request, self.world)
        token = request.match_info["token"]
        message = self.interactions.follow_up(_id(request, "application_id"), token, body, files)
        if request.query.get("wait") in ("1", "true", "True"):
            return _json(self._message(message))
        return web.Response(status=204)

    async def get_webhook_message(self, request: web.Request) -> web.Response:
        return _json(self._message(self._webhook_message(request)))

    async def edit_webhook_message(self, request: web.Request) -> web.Response:
        body, files = await _read_body(request, self.world)
        message = self.service.edit_message(self._webhook_message(request), body, files)
        return _json(self._message(message))

    async def delete_webhook_message(self, request: web.Request) -> web.Response:
        self.service.delete_message(self._webhook_message(request), self.world.bot.id, as_app=True)
        return web.Response(status=204)

    # -- helpers --------------------------------------------------------------------------------------

    def _message(self, message: Message) -> dict[str, Any]:
        return payloads.message(self.world, self.service.base_url, message)

    def _channel(self, request: web.Request) -> Channel:
        """The route's channel, which the bot must be able to see (Missing Access otherwise)."""
        channel = self.world.channel(_id(request, "channel_id"))
        self.world.require_permission(channel, self.world.bot.id, "view_channel")
        return channel

    def _target(self, request: web.Request) -> Message:
        return self.world.message(self._channel(request).id, _id(request, "message_id"))

    def _webhook_message(self, request: web.Request) -> Message:
        info = request.match_info
        return self.interactions.webhook_message(
            _id(request, "application_id"), info["token"], info["message_id"]
        )

    def _check_application(self, request: web.Request) -> None:
        if _id(request, "application_id") != self.world.application_id:
            raise DiscordError(403, 50001, "Missing Access")


def _id(request: web.Request, name: str) -> int:
    raw = request.match_info[name]
    if not raw.isdigit():
        raise DiscordError(404, 0, f"404: Not Found ({name} {raw!r} is not a snowflake)")
    return int(raw)


def _route_template(request: web.Request, unknown: Handler) -> str:
    """The route without its API version prefix; "?" when the emulator has no such route."""
    resource = request.match_info.route.resource
    if resource is None or request.match_info.route.handler == unknown:
        return "?"
    return resource.canonical.removeprefix("/api/{version}")


async def _read_body(request: web.Request, world: World) -> tuple[Any, list[Attachment]]:
    """JSON, or multipart/form-data with `payload_json` plus `files[n]`, as discord.py sends uploads."""
    files: list[Attachment] = []
    try:
        if request.content_type == "multipart/form-data":
            form = await request.post()
            body = json.loads(str(form.get("payload_json") or "{}"))
            for value in form.values():
                if isinstance(value, web.FileField):
                    files.append(Attachment(world.snowflakes.next(), value.filename, value.file.read()))
        else:
            text = await request.text()
            body = json.loads(text) if text else {}
    except web.HTTPRequestEntityTooLarge:
        raise request_too_large() from None
    request[BODY] = body
    return body, files


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """JSON with a bare `application/json` content type: discord.py parses a body only on that exact value."""
    return web.Response(
        body=json.dumps(data).encode(), status=status, headers=headers, content_type="application/json"
    )


def _too_many_requests(injection: RateLimitInjection | None, reset_after: float) -> web.Response:
    """A 429 as Discord sends it; discord.py only retries one that carries a `Via` header."""
    retry_after = injection.retry_after if injection else reset_after
    is_global = bool(injection and injection.is_global)
    body = {
        "message": "You are being rate limited.",
        "retry_after": retry_after,
        "global": is_global,
        "code": 0,
    }
    return _json(body, status=429, headers=rate_limited_headers(retry_after, is_global=is_global))
