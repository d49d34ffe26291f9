"""`DiscordEmulator`: the server on 127.0.0.1 and the API that simulated people and tests drive it with."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Collection, Coroutine, Sequence
from datetime import timedelta
from typing import Any, TypeVar

from aiohttp import web

from .gateway import (
    GUILDS_PER_RECOMMENDED_SHARD,
    MAX_GUILDS_PER_SHARD,
    Dispatch,
    Gateway,
    privileged_intent_bits,
    shard_of,
)
from .interactions import TOKEN_LIFETIME_S, Interactions
from .ratelimits import RateLimitInjection, RateLimits
from .rest import RestApi, RestCall
from .service import DiscordService
from .state import (
    DISCORD_EPOCH_MS,
    GUILD_TEXT,
    MEMBER_OVERWRITE,
    ROLE_OVERWRITE,
    Attachment,
    Channel,
    Guild,
    HasId,
    Interaction,
    Member,
    Message,
    Overwrite,
    Role,
    User,
    World,
    ident,
    permission_bits,
)

T = TypeVar("T")
MODAL_MIN_OPEN_S = 0.5  # the least time between a modal opening and its submission
Ref = int | HasId


class DiscordEmulator:
    """A local Discord: start it, point discord.py at `base_url`, then act as the community around the bot."""

    def __init__(
        self,
        *,
        bot_name: str = "gradschool",
        token: str | None = None,
        heartbeat_interval_ms: int = 41250,
        interaction_deadline: float = 3.0,
        rate_limit: tuple[int, float] = (50, 1.0),
        privileged_intents: Collection[str] | None = None,
        max_guilds_per_shard: int = MAX_GUILDS_PER_SHARD,
        guilds_per_recommended_shard: int = GUILDS_PER_RECOMMENDED_SHARD,
        route_limits: dict[str, tuple[int, float]] | None = None,
        network_delay_s: float = 0.0,
        old_message_edits: int = 3,
    ) -> None:
        """`privileged_intents`: those enabled for the application in the Developer Portal, of GUILD_MEMBERS,
        GUILD_PRESENCES and MESSAGE_CONTENT; None enables all three, as for a configured bot. An IDENTIFY
        asking for one not enabled is closed with 4014 "Disallowed intent(s)".

        `max_guilds_per_shard`: Discord's 2500; a session that would hold more guilds is closed with 4011
        "Sharding required". `guilds_per_recommended_shard`: GET /gateway/bot's `shards` is one per this
        many guilds (Discord: 1000). Both small make a handful of guilds need sharding.

        `rate_limit`: (requests, seconds) of every route's bucket, per channel/guild/webhook; `route_limits`
        gives "METHOD /route/template" keys their own, over DEFAULT_ROUTE_LIMITS (message create and edit:
        5 per 5 s per channel). `network_delay_s` (also an attribute) is waited before every REST response.
        `old_message_edits`: edits per hour and channel to messages older than an hour before Discord's 429
        with code 30046.
        """
        self.token = token or secrets.token_urlsafe(32)
        self.world = World(bot_name)
        self._changed = asyncio.Event()
        self.gateway = Gateway(
            self.world,
            self.token,
            self._notify,
            heartbeat_interval_ms,
            granted_intents=privileged_intent_bits(privileged_intents),
            max_guilds_per_shard=max_guilds_per_shard,
            guilds_per_recommended_shard=guilds_per_recommended_shard,
        )
        self.service = DiscordService(self.world, self.gateway, old_message_edits)
        self.interactions = Interactions(self.service, interaction_deadline)
        limits = RateLimits(*rate_limit, route_limits=route_limits)
        self.rest = RestApi(self.service, self.interactions, self.token, limits, network_delay_s)
        self.rest.on_change = self._notify
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def network_delay_s(self) -> float:
        """Seconds waited before every REST response; set it to slow the network down mid-test."""
        return self.rest.network_delay_s

    @network_delay_s.setter
    def network_delay_s(self, seconds: float) -> None:
        self.rest.network_delay_s = seconds

    @property
    def bot_user(self) -> User:
        return self.world.bot

    @property
    def application_id(self) -> int:
        return self.world.application_id

    async def start(self) -> None:
        """Listen on a free port of 127.0.0.1 (never another interface)."""
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.gateway.base_url = self.base_url
        self._loop = asyncio.get_running_loop()
        self._runner = web.AppRunner(self.rest.build_app(self.gateway.handle), handle_signals=False)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()

    async def stop(self) -> None:
        await self.gateway.close_all()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> DiscordEmulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def start_in_thread(self) -> None:
        """Run in a background thread with its own loop, for synchronous callers; use `call` to drive it."""
        loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=loop.run_forever, name="discord-emulator", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.start(), loop).result(timeout=10)

    def stop_thread(self) -> None:
        """Stop what `start_in_thread` started."""
        loop = self._loop
        if loop is None or self._thread is None:
            return
        asyncio.run_coroutine_threadsafe(self.stop(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(timeout=10)
        loop.close()
        self._thread = self._loop = None

    def call(self, coroutine: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        """Run one driving coroutine on the emulator's thread, from a synchronous caller."""
        if self._loop is None:
            raise RuntimeError("start_in_thread() first")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    # -- building the community -----------------------------------------------------------------------

    async def add_user(self, name: str, *, bot: bool = False) -> User:
        return self.world.add_user(name, bot=bot)

    async def add_guild(self, name: str, *, owner: Ref | None = None) -> Guild:
        """A guild with the bot in it (a connected bot gets GUILD_CREATE)."""
        owner_id = ident(owner) if owner is not None else self.world.owner.id
        return self.service.add_guild(name, owner_id)

    async def add_guild_on_shard(
        self, name: str, shard_id: int, num_shards: int, *, owner: Ref | None = None
    ) -> Guild:
        """`add_guild`, with an id that Discord's formula (guild_id >> 22) % num_shards routes to `shard_id`.

        Guild ids are snowflakes of the current millisecond, so guilds made in a burst all share one
        shard; this starts the id up to `num_shards` milliseconds later, which no one can tell apart.
        """
        if not 0 <= shard_id < num_shards:
            raise ValueError(f"shard {shard_id} of {num_shards}: needs 0 <= shard_id < num_shards")
        snowflakes = self.world.snowflakes
        # One millisecond of margin, so the clock ticking before the id is drawn cannot overtake the aim.
        millis = max(int(time.time() * 1000) - DISCORD_EPOCH_MS, snowflakes._last >> 22) + 1
        millis += (shard_id - millis) % num_shards
        snowflakes._last = millis << 22  # Snowflakes.next() hands out the next id after its last
        guild = await self.add_guild(name, owner=owner)
        if shard_of(guild.id, num_shards) != shard_id:
            raise RuntimeError(f"guild {guild.id} landed off shard {shard_id} of {num_shards}")
        return guild

    async def add_channel(self, guild: Ref, name: str, *, channel_type: int = GUILD_TEXT) -> Channel:
        return self.service.add_channel(self.world.guild(ident(guild)), name, channel_type)

    async def add_role(self, guild: Ref, name: str, permissions: int | str | list[str] = 0) -> Role:
        return self.service.add_role(self.world.guild(ident(guild)), name, permission_bits(permissions))

    async def add_member(
        self,
        guild: Ref,
        user: Ref,
        *,
        roles: Sequence[Ref] = (),
        permissions: int | str | list[str] | None = None,
    ) -> Member:
        """Make a user a member; `permissions=["manage_guild"]` gives them a role carrying exactly those."""
        target = self.world.guild(ident(guild))
        role_ids = [ident(r) for r in roles]
        if permissions is not None:
            name = f"{self.world.user(ident(user)).name} permissions"
            role_ids.append(self.service.add_role(target, name, permission_bits(permissions)).id)
        return self.service.add_member(target, ident(user), role_ids)

    async def set_permission_overwrite(
        self,
        channel: Ref,
        target: Ref | Member,
        *,
        allow: int | str | list[str] = 0,
        deny: int | str | list[str] = 0,
    ) -> None:
        """Put a channel's overwrite for a role (a Guild stands for its @everyone role) or a member (a User
        or Member); `allow`/`deny` take discord.py permission names or a bit field. The bot gets
        CHANNEL_UPDATE."""
        where = self.world.channel(ident(channel))
        target_id = target.user_id if isinstance(target, Member) else ident(target)
        role = self.world.roles.get(target_id)
        if role is not None and role.guild_id != where.guild_id:
            raise ValueError(f"role {role.name!r} is not in the guild of channel {where.id}")
        if role is None and (where.guild_id is None or self.world.member(where.guild_id, target_id) is None):
            raise ValueError(f"{target_id} is neither a role nor a member of the guild of channel {where.id}")
        kind = ROLE_OVERWRITE if role is not None else MEMBER_OVERWRITE
        overwrite = Overwrite(target_id, kind, permission_bits(allow), permission_bits(deny))
        self.service.set_permission_overwrite(where, overwrite)

    async def set_command_permission(
        self, guild: Ref, name: str, target: Ref, *, allowed: bool, command_type: int = 1
    ) -> None:
        """A server admin allows or denies a synced command to a user, a role or (a Guild) @everyone in
        Server Settings > Integrations; it overrides default_member_permissions (a user's choice wins over
        their roles', any allowing role over the others, roles over @everyone)."""
        guild_id = ident(guild)
        command = self.world.find_command(guild_id, name, command_type)
        self.interactions.set_command_permission(guild_id, command, ident(target), allowed)

    # -- what people do -------------------------------------------------------------------------------

    async def send_message(
        self,
        channel: Ref,
        author: Ref,
        content: str = "",
        *,
        reply_to: Ref | None = None,
        mentions_bot: bool = False,
        mentions: Sequence[Ref] = (),
        attachments: Sequence[tuple[str, bytes]] = (),
        ping_reply: bool = True,
    ) -> Message:
        """Post as a person; mentions go into the content as `<@id>`, which is how Discord finds them."""
        channel_id, author_id = ident(channel), ident(author)
        self.service.check_member(self.world.channel(channel_id), author_id)
        targets = ([self.world.bot.id] if mentions_bot else []) + [ident(m) for m in mentions]
        prefix = " ".join(f"<@{t}>" for t in targets if f"<@{t}>" not in content)
        body: dict[str, Any] = {"content": f"{prefix} {content}".strip() if prefix else content}
        if reply_to is not None:
            body["message_reference"] = {"message_id": ident(reply_to)}
            body["allowed_mentions"] = {"parse": ["users"], "replied_user": ping_reply}
        files = [Attachment(self.world.snowflakes.next(), name, data) for name, data in attachments]
        return self.service.post_message(channel_id, author_id, body, files)

    async def edit_message(self, message: Ref, content: str) -> Message:
        """The author edits their message."""
        target = self._message(message)
        return self.service.edit_own_message(
            target.channel_id, target.id, target.author_id, {"content": content}, []
        )

    async def delete_message(self, message: Ref, *, by: Ref | None = None) -> None:
        target = self._message(message)
        self.service.delete_message(target, ident(by) if by is not None else target.author_id)

    async def pin_message(self, user: Ref, message: Ref) -> None:
        """`user` pins a message (they need Pin Messages in its channel)."""
        self.service.set_pinned(self._message(message), ident(user), pinned=True)

    async def unpin_message(self, user: Ref, message: Ref) -> None:
        self.service.set_pinned(self._message(message), ident(user), pinned=False)

    async def add_reaction(self, user: Ref, channel: Ref, message: Ref, emoji: str) -> None:
        self.service.add_reaction(self.world.message(ident(channel), ident(message)), ident(user), emoji)

    async def remove_reaction(self, user: Ref, channel: Ref, message: Ref, emoji: str) -> None:
        self.service.remove_reaction(self.world.message(ident(channel), ident(message)), ident(user), emoji)

    async def clear_reactions(self, message: Ref, *, by: Ref, emoji: str | None = None) -> None:
        """A moderator (Manage Messages) removes every reaction, or every `emoji` one: the bot gets
        MESSAGE_REACTION_REMOVE_ALL or MESSAGE_REACTION_REMOVE_EMOJI."""
        self.service.clear_reactions(self._message(message), ident(by), emoji)

    async def backdate_message(self, message: Ref, seconds: float) -> None:
        """Make a message `seconds` older: its timestamp, revisions and edit time move back. Its id keeps
        the time it was really sent (discord.py's `Message.created_at` reads the id)."""
        target = self._message(message)
        shift = timedelta(seconds=seconds)
        target.created_at -= shift
        target.edited_at = target.edited_at - shift if target.edited_at else None
        for revision in target.revisions:
            revision.at -= shift

    async def archive_thread(self, thread: Ref, *, locked: bool = False) -> None:
        """A moderator archives (and, with `locked`, locks) a thread; the bot gets THREAD_UPDATE. A message
        sent there unarchives it unless it is locked; edits and reactions get 400 "Thread is archived"."""
        self.service.set_thread_archived(self.world.channel(ident(thread)), archived=True, locked=locked)

    async def unarchive_thread(self, thread: Ref, *, locked: bool = False) -> None:
        """A moderator unarchives a thread, leaving it locked with `locked`; the bot gets THREAD_UPDATE."""
        self.service.set_thread_archived(self.world.channel(ident(thread)), archived=False, locked=locked)

    async def open_dm(self, user: Ref) -> Channel:
        return self.service.open_dm(ident(user))

    async def create_thread(
        self, channel: Ref, owner: Ref, name: str, *, message: Ref | None = None
    ) -> Channel:
        message_id = ident(message) if message is not None else None
        return self.service.create_thread(ident(channel), ident(owner), name, message_id=message_id)

    async def invoke_slash(
        self,
        user: Ref,
        guild: Ref | None,
        channel: Ref,
        name: str,
        options: dict[str, Any] | None = None,
        subcommand: str | None = None,
        *,
        raw_options: list[dict[str, Any]] | None = None,
    ) -> Interaction:
        """Run a synced slash command; `subcommand` is "sub" or "group sub".

        `raw_options` (Discord's `options` payload) bypasses the command's schema, as a stale client would.
        """
        if (ident(guild) if guild is not None else None) != self.world.channel(ident(channel)).guild_id:
            raise ValueError(f"channel {ident(channel)} is not in guild {guild}")
        return self.interactions.invoke_slash(
            ident(user), ident(channel), name, options or {}, subcommand, raw_options
        )

    async def invoke_message_command(self, user: Ref, channel: Ref, message: Ref, name: str) -> Interaction:
        return self.interactions.invoke_message_command(ident(user), ident(channel), ident(message), name)

    async def click_component(
        self,
        user: Ref,
        message: Ref,
        custom_id: str,
        values: list[str] | None = None,
        *,
        forged: bool = False,
    ) -> Interaction:
        """A click on a bot message's component; only its recipient can click an ephemeral message, unless
        the click is `forged` (a hostile client's)."""
        return self.interactions.click_component(
            ident(user), self._message(message), custom_id, values, forged=forged
        )

    async def submit_modal(self, interaction: Interaction, values: dict[str, Any]) -> Interaction:
        """Submit the modal the bot opened, no sooner than a person could: MODAL_MIN_OPEN_S after it opened.

        discord.py registers an open modal only once the HTTP response to its callback is back, so a
        submission sent the instant the callback arrives can outrun it and is dropped unanswered (seen under
        CI load: a correction whose form never answered). Nobody reads and fills in a form that fast.
        """
        if interaction.modal_opened_at is not None:
            await asyncio.sleep(interaction.modal_opened_at + MODAL_MIN_OPEN_S - time.monotonic())
        return self.interactions.submit_modal(interaction, values)

    # -- faults ---------------------------------------------------------------------------------------

    async def drop_connection(self, code: int = 4000) -> int:
        """Close the bot's socket(s) like a network fault; events from now on wait for its RESUME."""
        return await self.gateway.drop_connection(code)

    @contextlib.asynccontextmanager
    async def disconnected(self, code: int = 4000) -> AsyncIterator[None]:
        """Drop the bot's socket and hold its reconnect until the block ends: what happens inside is missed
        live and must come back through RESUME."""
        self.gateway.door.clear()
        try:
            await self.gateway.drop_connection(code)
            yield
        finally:
            self.gateway.door.set()

    async def redeliver(self, event: str, predicate: Callable[[dict[str, Any]], bool] | None = None) -> None:
        """Deliver the latest `event` (matching `predicate` on its data) to the bot a second time."""
        matching = (d for d in reversed(self.gateway.dispatches) if d.event == event)
        record = next(d for d in matching if predicate is None or predicate(d.data))
        self.gateway.redeliver(record)

    async def invalidate_session(self) -> None:
        """Forget the bot's session; its RESUME gets INVALID_SESSION and it must IDENTIFY afresh."""
        await self.gateway.invalidate_sessions()

    def inject_rate_limit(
        self, route: str, *, times: int = 1, retry_after: float = 0.05, is_global: bool = False
    ):
        """Answer the next `times` calls whose "METHOD /template" contains `route` with a 429."""
        self.rest.limits.injections.append(RateLimitInjection(route, times, retry_after, is_global))

    def expire_interaction_token(self, interaction: Interaction) -> None:
        """Age an interaction past its token's 15 minutes: its follow-ups, edits and deletes get 401
        "Invalid Webhook Token" (50027), as they would a quarter of an hour later."""
        interaction.created_at -= TOKEN_LIFETIME_S

    # -- reading the world ----------------------------------------------------------------------------

    @property
    def rest_calls(self) -> list[RestCall]:
        return self.rest.calls

    @property
    def unknown_routes(self) -> list[RestCall]:
        return [c for c in self.rest.calls if c.route == "?"]

    @property
    def dispatches(self) -> list[Dispatch]:
        return self.gateway.dispatches

    def messages(self, channel: Ref, *, include_deleted: bool = False) -> list[Message]:
        """A channel's messages, oldest first, each with its revisions and reactions."""
        return self.world.channel_messages(ident(channel), include_deleted=include_deleted)

    def bot_messages(self, channel: Ref) -> list[Message]:
        return [m for m in self.messages(channel) if m.author_id == self.world.bot.id]

    def message(self, message: Ref) -> Message:
        return self._message(message)

    def commands(self, guild: Ref | None = None) -> list[dict[str, Any]]:
        """The commands the bot synced, globally or to one guild."""
        return self.world.commands(ident(guild) if guild is not None else None)

    def interaction_messages(self, interaction: Interaction) -> list[Message]:
        """The original response and follow-ups, as the person who invoked sees them now."""
        ids = ([interaction.original_id] if interaction.original_id else []) + interaction.followup_ids
        return [m for m in (self.world.messages[i] for i in ids) if m.deleted_at is None]

    # -- waiting --------------------------------------------------------------------------------------

    async def wait_for(self, condition: Callable[[], T | None], timeout: float = 5.0, *, what: str = "") -> T:
        """Re-check `condition` after every change (REST call, dispatch, connection) until it is truthy."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    changed = self._changed
                    if result := condition():
                        return result
                    await changed.wait()
        except TimeoutError:
            raise TimeoutError(f"waited {timeout}s for {what or condition}") from None

    async def wait_for_bot_message(
        self,
        channel: Ref,
        predicate: Callable[[Message], bool] | None = None,
        *,
        after: Ref | None = None,
        timeout: float = 5.0,
    ) -> Message:
        """The first bot message in the channel (newer than `after`) matching `predicate`."""
        after_id = ident(after) if after is not None else 0

        def found() -> Message | None:
            return next(
                (
                    m
                    for m in self.bot_messages(channel)
                    if m.id > after_id and (predicate is None or predicate(m))
                ),
                None,
            )

        return await self.wait_for(found, timeout, what=f"a bot message in channel {ident(channel)}")

    async def wait_for_interaction_response(
        self, interaction: Interaction, timeout: float = 5.0, *, quiet: float = 0.0
    ) -> list[Message]:
        """The response messages once not "thinking"; with `quiet`, once they also stop changing."""

        def answered() -> list[Message] | None:
            messages = self.interaction_messages(interaction)
            return messages if messages and not messages[0].loading else None

        messages = await self.wait_for(answered, timeout, what=f"a response to interaction {interaction.id}")
        while quiet:
            before = self._fingerprint(interaction)
            await asyncio.sleep(quiet)
            if self._fingerprint(interaction) == before:
                return self.interaction_messages(interaction)
        return messages

    async def wait_for_modal(self, interaction: Interaction, timeout: float = 5.0) -> dict[str, Any]:
        return await self.wait_for(
            lambda: interaction.modal, timeout, what=f"a modal for interaction {interaction.id}"
        )

    async def wait_for_dispatch(
        self, event: str, predicate: Callable[[Dispatch], bool] | None = None, *, timeout: float = 5.0
    ) -> Dispatch:
        def found() -> Dispatch | None:
            return next(
                (d for d in self.dispatches if d.event == event and (predicate is None or predicate(d))), None
            )

        return await self.wait_for(found, timeout, what=f"a {event} dispatch")

    async def wait_until_connected(self, timeout: float = 10.0) -> None:
        """Until a bot session has a live socket and every event so far was written to it."""

        def connected() -> bool:
            sessions = [s for s in self.gateway.live_sessions() if s.connection is not None]
            return bool(sessions) and all(d.delivered for s in sessions for d in s.events)

        await self.wait_for(connected, timeout, what="a connected bot")

    # -- helpers --------------------------------------------------------------------------------------

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _message(self, message: Ref) -> Message:
        found = self.world.messages.get(ident(message))
        if found is None:
            raise LookupError(f"no message {ident(message)}")
        return found

    def _fingerprint(self, interaction: Interaction) -> list[tuple[int, int]]:
        return [(m.id, len(m.revisions)) for m in self.interaction_messages(interaction)]
