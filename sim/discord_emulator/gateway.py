"""The gateway websocket: HELLO, IDENTIFY/READY, heartbeats, RESUME with replay, and numbered dispatches."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
import zlib
from collections.abc import Callable
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
MESSAGE_CONTENT = 1 << 15
AUTHENTICATION_FAILED = 4004


@dataclass
class Dispatch:
    """One numbered event sent (or queued) to one session; `delivered` counts socket writes."""

    seq: int
    session_id: str
    event: str
    data: dict[str, Any]
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

    async def close(self, code: int) -> None:
        self.stop_writing()
        with contextlib.suppress(ConnectionError):
            await self.ws.close(code=code)
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
    seq: int = 0
    events: list[Dispatch] = field(default_factory=list)
    connection: Connection | None = None
    invalidated: bool = False


class Gateway:
    """Sessions and their numbered event streams; events for a disconnected session wait for its RESUME."""

    def __init__(self, world: World, token: str, on_change: Callable[[], None], heartbeat_ms: int) -> None:
        self.world = world
        self.token = token
        self.base_url = ""
        self.heartbeat_ms = heartbeat_ms
        self.sessions: dict[str, Session] = {}
        self.dispatches: list[Dispatch] = []
        self.connections: list[Connection] = []
        self.door = asyncio.Event()  # cleared, new connections wait outside: a network that is down
        self.door.set()
        self._on_change = on_change

    def live_sessions(self) -> list[Session]:
        return [s for s in self.sessions.values() if not s.invalidated]

    def dispatch(
        self, event: str, data: dict[str, Any], *, intent: int | None, needs_content_intent: bool = False
    ) -> None:
        """Send an event to every live session that asked for it; disconnected ones get it on RESUME."""
        for session in self.live_sessions():
            if intent is not None and not session.intents & intent:
                continue
            if needs_content_intent and not session.intents & MESSAGE_CONTENT:
                self._emit(session, event, payloads.strip_content(data))
            else:
                self._emit(session, event, data)

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
        if data.get("token") != self.token:
            await conn.close(AUTHENTICATION_FAILED)
            return
        session = Session(id=secrets.token_hex(16), intents=int(data.get("intents", 0)))
        self.sessions[session.id] = session
        self._attach(conn, session)
        guilds = [g for g in self.world.guilds.values() if self.world.bot.id in g.members]
        resume_url = self.base_url.replace("http://", "ws://") + "/"
        self._emit(session, "READY", payloads.ready(self.world, session.id, resume_url, guilds))
        all_members = bool(session.intents & GUILD_MEMBERS)
        for guild in guilds:
            self._emit(
                session, "GUILD_CREATE", payloads.guild_create(self.world, guild, all_members=all_members)
            )

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
        record = Dispatch(session.seq, session.id, event, data)
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
