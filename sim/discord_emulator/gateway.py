"""The gateway websocket: HELLO, IDENTIFY/READY, heartbeats, RESUME with replay, and numbered dispatches.

Strict where Discord documents a refusal (https://discord.com/developers/docs/events/gateway): privileged
intents the application was not granted, unknown intent bits, invalid shards and shards holding too many
guilds close the socket with Discord's close code; guild events reach only the shard that owns the guild.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import secrets
import time
import zlib
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from . import payloads
from .state import Guild, World

log = logging.getLogger(__name__)

# Gateway opcodes and intents (https://discord.com/developers/docs/topics/gateway).
DISPATCH, HEARTBEAT, IDENTIFY, PRESENCE, RESUME, RECONNECT, REQUEST_MEMBERS = 0, 1, 2, 3, 6, 7, 8
INVALID_SESSION, HELLO, HEARTBEAT_ACK = 9, 10, 11
ACK_DELAY_S = 0.05
GUILDS, GUILD_MEMBERS = 1 << 0, 1 << 1
GUILD_MESSAGES, GUILD_MESSAGE_REACTIONS = 1 << 9, 1 << 10
DIRECT_MESSAGES, DIRECT_MESSAGE_REACTIONS = 1 << 12, 1 << 13
GUILD_PRESENCES, MESSAGE_CONTENT = 1 << 8, 1 << 15
PRIVILEGED_INTENTS = {
    "GUILD_MEMBERS": GUILD_MEMBERS,
    "GUILD_PRESENCES": GUILD_PRESENCES,
    "MESSAGE_CONTENT": MESSAGE_CONTENT,
}
ALL_PRIVILEGED_INTENTS = GUILD_MEMBERS | GUILD_PRESENCES | MESSAGE_CONTENT
# Every intent the docs list: bits 0-16, 20, 21, 24 and 25 (discord.Intents.all() is the same set).
KNOWN_INTENTS = (1 << 17) - 1 | 1 << 20 | 1 << 21 | 1 << 24 | 1 << 25
# Close codes (https://discord.com/developers/docs/topics/opcodes-and-status-codes#gateway-close-event-codes).
AUTHENTICATION_FAILED, INVALID_SHARD, SHARDING_REQUIRED = 4004, 4010, 4011
INVALID_INTENTS, DISALLOWED_INTENTS = 4013, 4014
MAX_GUILDS_PER_SHARD = 2500  # "Each shard can only support a maximum of 2500 guilds" (gateway#sharding)
GUILDS_PER_RECOMMENDED_SHARD = 1000  # GET /gateway/bot recommends one shard per 1000 guilds
SESSION_START_LIMIT = 1000  # IDENTIFYs per 24 hours, across all shards (gateway#identifying)
GUILD_OBJECT_EVENTS = ("GUILD_CREATE", "GUILD_UPDATE", "GUILD_DELETE")  # their guild is `id`, not `guild_id`


@dataclass
class Dispatch:
    """One numbered event sent (or queued) to one session; `delivered` counts socket writes."""

    seq: int
    session_id: str
    event: str
    data: dict[str, Any]
    shard: tuple[int, int] | None = None  # the session's [shard_id, num_shards]; None when it sent none
    at: float = field(default_factory=time.monotonic)
    delivered: int = 0

    def frame(self) -> dict[str, Any]:
        return {"op": DISPATCH, "s": self.seq, "t": self.event, "d": self.data}


def _compressor(kind: str | None) -> Callable[[bytes], bytes] | None:
    """The transport compression discord.py asked for in `?compress=`: one stream for the whole connection."""
    if kind is None:
        return None
    if kind == "zlib-stream":
        stream = zlib.compressobj()
        # discord.py decodes only once a frame ends with the Z_SYNC_FLUSH marker: flush after every payload.
        return lambda data: stream.compress(data) + stream.flush(zlib.Z_SYNC_FLUSH)
    if kind == "zstd-stream":
        import zstandard  # discord.py only asks for zstd when it could import zstandard itself

        zstd = zstandard.ZstdCompressor().compressobj()
        return lambda data: zstd.compress(data) + zstd.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
    raise ValueError(f"unsupported gateway compression {kind!r}")


class Connection:
    """One websocket; a single writer task keeps frames in order, which the compression stream needs."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        compress: Callable[[bytes], bytes] | None,
        on_written: Callable[[], None],
    ) -> None:
        self.ws = ws
        self.session: Session | None = None
        self.dropped = False  # closed by the emulator, so the session stays resumable
        self._compress = compress
        self._on_written = on_written
        self._outbox: asyncio.Queue[tuple[dict[str, Any], Dispatch | None] | None] = asyncio.Queue()
        self._writer = asyncio.create_task(self._write_loop())

    def send(self, frame: dict[str, Any], record: Dispatch | None = None) -> None:
        self._outbox.put_nowait((frame, record))

    def stop_writing(self) -> None:
        self._outbox.put_nowait(None)

    async def close(self, code: int, reason: str = "") -> None:
        self.stop_writing()
        with contextlib.suppress(ConnectionError):
            await self.ws.close(code=code, message=reason.encode())
        self._writer.cancel()

    async def _write_loop(self) -> None:
        while (item := await self._outbox.get()) is not None:
            frame, record = item
            text = json.dumps(frame)
            try:
                if self._compress is None:
                    await self.ws.send_str(text)
                else:
                    await self.ws.send_bytes(self._compress(text.encode()))
            except ConnectionError:
                return  # the event stays in its session's log and is replayed on RESUME
            if record is not None:
                record.delivered += 1
                self._on_written()


@dataclass
class Session:
    id: str
    intents: int
    shard: tuple[int, int] | None = None  # as IDENTIFY sent it; RESUME carries neither intents nor shard
    seq: int = 0
    events: list[Dispatch] = field(default_factory=list)
    connection: Connection | None = None
    invalidated: bool = False

    def receives(self, guild_id: int | None) -> bool:
        """Whether a guild's events (None: a guildless event, such as a DM) reach this session's shard."""
        shard_id, num_shards = self.shard or (0, 1)
        return shard_id == (0 if guild_id is None else shard_of(guild_id, num_shards))


def shard_of(guild_id: int, num_shards: int) -> int:
    """Discord's sharding formula; events without a guild go to shard 0."""
    return (guild_id >> 22) % num_shards


def privileged_intent_bits(names: Collection[str] | None) -> int:
    """The intent bits of privileged intent names (GUILD_MEMBERS, ...); None grants all three."""
    if names is None:
        return ALL_PRIVILEGED_INTENTS
    unknown = set(names) - PRIVILEGED_INTENTS.keys()
    if unknown:
        raise ValueError(
            f"unknown privileged intents {sorted(unknown)}; choose from {sorted(PRIVILEGED_INTENTS)}"
        )
    return sum(PRIVILEGED_INTENTS[name] for name in set(names))


class Gateway:
    """Sessions and their numbered event streams; events for a disconnected session wait for its RESUME.

    `granted_intents`: the privileged intent bits enabled for the application in the Developer Portal.
    `max_guilds_per_shard`: a session that would hold more guilds is closed with 4011 "Sharding required".
    `guilds_per_recommended_shard`: GET /gateway/bot recommends one shard per this many guilds.
    """

    def __init__(
        self,
        world: World,
        token: str,
        on_change: Callable[[], None],
        heartbeat_ms: int,
        *,
        granted_intents: int = ALL_PRIVILEGED_INTENTS,
        max_guilds_per_shard: int = MAX_GUILDS_PER_SHARD,
        guilds_per_recommended_shard: int = GUILDS_PER_RECOMMENDED_SHARD,
    ) -> None:
        self.world = world
        self.token = token
        self.base_url = ""
        self.heartbeat_ms = heartbeat_ms
        self.granted_intents = granted_intents
        self.max_guilds_per_shard = max_guilds_per_shard
        self.guilds_per_recommended_shard = guilds_per_recommended_shard
        self.sessions: dict[str, Session] = {}
        self.dispatches: list[Dispatch] = []
        self.connections: list[Connection] = []
        self.door = asyncio.Event()  # cleared, new connections wait outside: a network that is down
        self.door.set()
        self._on_change = on_change

    def live_sessions(self) -> list[Session]:
        return [s for s in self.sessions.values() if not s.invalidated]

    def recommended_shards(self) -> int:
        """GET /gateway/bot's `shards`: one per `guilds_per_recommended_shard` guilds, at least one."""
        return max(1, math.ceil(len(self._bot_guilds()) / self.guilds_per_recommended_shard))

    def session_start_limit(self) -> dict[str, int]:
        """GET /gateway/bot's `session_start_limit`; every session started so far used one IDENTIFY."""
        remaining = max(0, SESSION_START_LIMIT - len(self.sessions))
        return {"total": SESSION_START_LIMIT, "remaining": remaining, "reset_after": 0, "max_concurrency": 1}

    def dispatch(
        self, event: str, data: dict[str, Any], *, intent: int | None, message: bool = False
    ) -> None:
        """Send an event to every live session that asked for it and whose shard owns its guild (DMs and
        other guildless events: shard 0); disconnected ones get it on RESUME.

        `message`: `data` is a message, whose content a session without MESSAGE_CONTENT sees only where
        Discord exempts it (`_content_exempt`); a `referenced_message` in it is judged on its own.
        """
        guild_id = data.get("id") if event in GUILD_OBJECT_EVENTS else data.get("guild_id")
        for session in self.live_sessions():
            if intent is not None and not session.intents & intent:
                continue
            if not session.receives(None if guild_id is None else int(guild_id)):
                continue
            if session.intents & MESSAGE_CONTENT:
                self._emit(session, event, data)
            else:
                self._emit(session, event, self._without_content(data) if message else data)

    def redeliver(self, record: Dispatch) -> None:
        """Send a delivered event again under a new seq: Discord's gateway is at-least-once."""
        session = self.sessions.get(record.session_id)
        if session is not None and not session.invalidated:
            self._emit(session, record.event, record.data)

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        """The websocket endpoint discord.py connects to (`/?v=10&encoding=json&compress=zlib-stream`)."""
        await self.door.wait()
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        conn = Connection(ws, _compressor(request.query.get("compress")), self._on_change)
        self.connections.append(conn)
        conn.send({"op": HELLO, "d": {"heartbeat_interval": self.heartbeat_ms}})
        async for msg in ws:
            if msg.type is WSMsgType.TEXT:
                await self._receive(conn, json.loads(msg.data))
        self._on_closed(conn, ws.close_code)
        return ws

    async def drop_connection(self, code: int = 4000) -> int:
        """Close every bot socket as a network fault would; the sessions stay resumable. Returns how many."""
        live = [c for c in self.connections if not c.ws.closed]
        for conn in live:
            self._detach(conn)
            conn.dropped = True
            await conn.close(code)
        return len(live)

    async def invalidate_sessions(self) -> None:
        """Forget every session, so the bot's next RESUME gets INVALID_SESSION and it must IDENTIFY again."""
        for session in self.live_sessions():
            session.invalidated = True
        await self.drop_connection(4000)

    def announce_guild(self, guild: Guild) -> None:
        """GUILD_CREATE for a guild the bot joined while connected; the member list depends on each intent."""
        for session in self.live_sessions():
            if not session.receives(guild.id):
                continue
            all_members = bool(session.intents & GUILD_MEMBERS)
            self._emit(
                session, "GUILD_CREATE", payloads.guild_create(self.world, guild, all_members=all_members)
            )

    def send_reconnect(self) -> None:
        """Ask connected bots to reconnect (opcode 7), as Discord does before moving a session."""
        for session in self.live_sessions():
            if session.connection is not None:
                session.connection.send({"op": RECONNECT, "d": None})

    async def close_all(self) -> None:
        for conn in self.connections:
            if not conn.ws.closed:
                await conn.close(1001)

    async def _receive(self, conn: Connection, payload: dict[str, Any]) -> None:
        op, data = payload.get("op"), payload.get("d") or {}
        if op == HEARTBEAT:
            # After a round trip's worth, as over a network: discord.py's keep-alive thread notes the send
            # time only once the send returns, and an instant ACK beats it ("websocket is 41.3s behind").
            asyncio.get_running_loop().call_later(ACK_DELAY_S, conn.send, {"op": HEARTBEAT_ACK, "d": None})
        elif op == IDENTIFY:
            await self._identify(conn, data)
        elif op == RESUME:
            await self._resume(conn, data)
        elif op == REQUEST_MEMBERS and conn.session is not None:
            self._send_member_chunk(conn.session, data)
        elif op != PRESENCE:
            log.warning("gateway: ignoring opcode %s from the bot: %s", op, payload)

    async def _identify(self, conn: Connection, data: dict[str, Any]) -> None:
        refusal = self._refusal(data)
        if refusal is not None:
            await conn.close(*refusal)
            return
        shard = (data["shard"][0], data["shard"][1]) if "shard" in data else None
        session = Session(id=secrets.token_hex(16), intents=data["intents"], shard=shard)
        self.sessions[session.id] = session
        self._attach(conn, session)
        guilds = [g for g in self._bot_guilds() if session.receives(g.id)]
        resume_url = self.base_url.replace("http://", "ws://") + "/"
        ready = payloads.ready(self.world, session.id, resume_url, guilds)
        if shard is not None:
            ready["shard"] = list(shard)
        self._emit(session, "READY", ready)
        all_members = bool(session.intents & GUILD_MEMBERS)
        for guild in guilds:
            self._emit(
                session, "GUILD_CREATE", payloads.guild_create(self.world, guild, all_members=all_members)
            )

    def _refusal(self, data: dict[str, Any]) -> tuple[int, str] | None:
        """The close code and reason Discord answers this IDENTIFY with, or None to accept it."""
        if data.get("token") != self.token:
            return AUTHENTICATION_FAILED, "Authentication failed."
        intents = data.get("intents")
        if not isinstance(intents, int) or intents & ~KNOWN_INTENTS:
            return INVALID_INTENTS, "Invalid intent(s)."
        if intents & ALL_PRIVILEGED_INTENTS & ~self.granted_intents:
            return DISALLOWED_INTENTS, "Disallowed intent(s)."
        shard = data.get("shard", [0, 1])
        if not (
            isinstance(shard, list)
            and len(shard) == 2
            and all(isinstance(n, int) for n in shard)
            and 0 <= shard[0] < shard[1]
        ):
            return INVALID_SHARD, "Invalid shard."
        if sum(shard_of(g.id, shard[1]) == shard[0] for g in self._bot_guilds()) > self.max_guilds_per_shard:
            return SHARDING_REQUIRED, "Sharding required."
        return None

    def _without_content(self, data: dict[str, Any]) -> dict[str, Any]:
        """What a session without MESSAGE_CONTENT receives of a message, and of the message it replies to."""
        if not self._content_exempt(data):
            data = payloads.strip_content(data)
        referenced = data.get("referenced_message")
        if referenced and not self._content_exempt(referenced):
            data = data | {"referenced_message": payloads.strip_content(referenced)}
        return data

    def _content_exempt(self, message: dict[str, Any]) -> bool:
        """Exempt from the content intent as on Discord: the bot's own messages, DMs, those mentioning it."""
        bot_id = str(self.world.bot.id)
        return (
            "guild_id" not in message
            or message["author"]["id"] == bot_id
            or any(u["id"] == bot_id for u in message["mentions"])
        )

    def _bot_guilds(self) -> list[Guild]:
        return [g for g in self.world.guilds.values() if self.world.bot.id in g.members]

    async def _resume(self, conn: Connection, data: dict[str, Any]) -> None:
        session = self.sessions.get(data.get("session_id", ""))
        if session is None or session.invalidated or data.get("token") != self.token:
            conn.send({"op": INVALID_SESSION, "d": False})
            return
        if session.connection is not None:  # a half-dead socket we had not noticed yet
            old = session.connection
            self._detach(old)
            old.dropped = True
            await old.close(4000)
        self._attach(conn, session)
        since = data.get("seq") or 0
        for record in session.events:
            if record.seq > since:
                conn.send(record.frame(), record)
        conn.send({"op": DISPATCH, "s": session.seq, "t": "RESUMED", "d": {"_trace": ["discord-emulator"]}})
        self._on_change()

    def _send_member_chunk(self, session: Session, data: dict[str, Any]) -> None:
        guild = self.world.guild(int(data["guild_id"]))
        wanted = {int(u) for u in data.get("user_ids") or []}
        members = [m for m in guild.members.values() if not wanted or m.user_id in wanted]
        chunk = {
            "guild_id": str(guild.id),
            "members": [payloads.member(self.world, m) for m in members],
            "chunk_index": 0,
            "chunk_count": 1,
            "not_found": [],
        }
        if data.get("nonce"):
            chunk["nonce"] = data["nonce"]
        self._emit(session, "GUILD_MEMBERS_CHUNK", chunk)

    def _emit(self, session: Session, event: str, data: dict[str, Any]) -> None:
        session.seq += 1
        record = Dispatch(session.seq, session.id, event, data, session.shard)
        session.events.append(record)
        self.dispatches.append(record)
        if session.connection is not None:
            session.connection.send(record.frame(), record)
        self._on_change()

    def _attach(self, conn: Connection, session: Session) -> None:
        conn.session = session
        session.connection = conn

    def _detach(self, conn: Connection) -> None:
        if conn.session is not None and conn.session.connection is conn:
            conn.session.connection = None

    def _on_closed(self, conn: Connection, code: int | None) -> None:
        session = conn.session
        conn.stop_writing()
        self._detach(conn)
        self.connections.remove(conn)
        # A client that closes with 1000/1001 ends its session for good; any other close may RESUME.
        if session is not None and not conn.dropped and code in (1000, 1001):
            session.invalidated = True
        self._on_change()
