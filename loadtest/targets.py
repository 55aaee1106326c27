"""The protocols the generator speaks: Hubbub's, and the tiny one of the reference peers.

Each target knows how to set a run up (rooms, accounts), how to make a fresh
connection ready (authenticate, join), how to encode a send and read its ack,
and how to handle every frame that is not a delivery.

The peers' protocol (loadtest/peers/README.md), JSON over WebSocket:

* ``{"type":"join","id":N,"room":"R"}`` -> ``{"type":"result","id":N}``
* ``{"type":"send","id":N,"room":"R","conversation_id":C,"seq":S,"text":"T"}``
  -> every member of R (the sender too) gets
  ``{"type":"message.new","message":{"conversation_id":C,"seq":S,"text":"T"}}``,
  then the sender gets ``{"type":"result","id":N}``.

Over Socket.IO the same as events with acknowledgements: ``emit("join", R, ack)``,
``emit("send", {room, conversation_id, seq, text}, ack)`` and the broadcast event
``message.new`` ``{conversation_id, seq, text}``. The peers keep no sequence of
their own, so the publisher numbers its messages: one ``conversation_id`` per
(room, publisher).
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec

from hubbub.loadtest.conn import Conn
from hubbub.loadtest.scenarios import ConnSpec, Plan, Room, Scenario
from hubbub.loadtest.wsclient import Buffer, connect
from hubbub.protocol import frames
from hubbub.protocol.client import open_client

PASSWORD = "loadtest-password"
REGISTER_CONCURRENCY = 32
CALL_TIMEOUT_S = 60.0
RESULT_PREFIX = b'{"type":"result"'
ERROR_PREFIX = b'{"type":"error"'


class SetupError(RuntimeError):
    """The target refused part of the set-up (registration, auth, join)."""


class _Reply(msgspec.Struct):
    type: str
    id: int | str | None = None
    result: msgspec.Raw = msgspec.Raw()
    error: msgspec.Raw = msgspec.Raw()


class _ErrorBody(msgspec.Struct):
    code: str
    message: str = ""


class _MessageRef(msgspec.Struct):
    conversation_id: int
    seq: int


class _Ack(msgspec.Struct):
    message: _MessageRef


class _Session(msgspec.Struct):
    token: str


_reply_decoder = msgspec.json.Decoder(_Reply)
_error_decoder = msgspec.json.Decoder(_ErrorBody)
_ack_decoder = msgspec.json.Decoder(_Ack)
_session_decoder = msgspec.json.Decoder(_Session)


def error_code(body: bytes) -> str:
    """The ``code`` of an error body, or the body itself when it is not one."""
    try:
        return _error_decoder.decode(body).code
    except (msgspec.DecodeError, msgspec.ValidationError):
        return body.decode(errors="replace")[:80] or "error"


@dataclass
class SetupInfo:
    seconds: float = 0.0
    users_registered: int = 0
    notes: list[str] = field(default_factory=list)


class Target(ABC):
    name: str
    subprotocol: str | None = None
    delivery_prefix: bytes = b'{"type":"message.new"'
    history: bool = False
    """Whether --history-reads is supported."""

    def connection_url(self, base: str) -> str:
        return base

    def factory(self, latencies: array[int] | None, counting: bool) -> Callable[[str, int, str], Conn]:
        def make(host: str, port: int, resource: str) -> Conn:
            return Conn(host, port, resource, self, latencies, counting)

        return make

    async def open(self, url: str, latencies: array[int] | None, counting: bool, timeout: float) -> Conn:
        return await connect(self.connection_url(url), self.factory(latencies, counting), timeout)

    @abstractmethod
    async def setup(self, plan: Plan, scenario: Scenario) -> SetupInfo:
        """Create rooms (and accounts); fill in Room.key, Room.streams and User.token."""

    @abstractmethod
    async def ready(self, conn: Conn, spec: ConnSpec, plan: Plan) -> None:
        """Make a freshly connected connection ready to receive (authenticate, join)."""

    @abstractmethod
    def encode_send(self, request_id: int, room: Room, publisher: int, seq: int, text: bytes) -> bytes:
        """A send request (``seq`` is the publisher's own number; ignored where the server numbers)."""

    def encode_history(self, request_id: int, room: Room) -> bytes:
        raise NotImplementedError

    def ack_ref(self, body: bytes) -> tuple[int, int] | None:
        """(conversation, seq) from an ack body when the server numbers messages, else None."""
        return None

    @abstractmethod
    def control(self, conn: Conn, buf: Buffer, start: int, end: int) -> None:
        """A frame that is not a delivery."""


def _json_control(conn: Conn, buf: Buffer, start: int, end: int) -> None:
    """Replies of Hubbub and of the JSON peers: result/error frames with an ``id``."""
    if buf.startswith(RESULT_PREFIX, start, end) or buf.startswith(ERROR_PREFIX, start, end):
        reply = _reply_decoder.decode(memoryview(buf)[start:end])
        if reply.id is not None:
            ok = reply.type == "result"
            conn.resolve(reply.id, ok, bytes(reply.result if ok else reply.error))
    else:
        conn.other_frames += 1


async def _call(conn: Conn, what: str, template: bytes, *args: bytes | int) -> bytes:
    """Send ``template % (request_id, *args)`` and return the result body; SetupError on an error."""
    request_id = conn.next_id()
    ok, body = await conn.call(template % (request_id, *args), request_id, CALL_TIMEOUT_S)
    if not ok:
        raise SetupError(f"{what}: {error_code(body)}: {body.decode(errors='replace')[:200]}")
    return body


SETUP_ATTEMPTS = 5
"""A set-up request that may be repeated (a join) and is answered ``unavailable`` is sent again, this often at most."""


async def _retried_call(conn: Conn, what: str, template: bytes, *args: bytes | int) -> bytes:
    """``_call``, sent again a second later while the answer is ``unavailable`` (a store busy with
    thousands of registrations on a loaded machine): for set-up requests that are safe to repeat."""
    for attempt in range(SETUP_ATTEMPTS):
        request_id = conn.next_id()
        ok, body = await conn.call(template % (request_id, *args), request_id, CALL_TIMEOUT_S)
        if ok:
            return body
        if error_code(body) != "unavailable" or attempt + 1 == SETUP_ATTEMPTS:
            raise SetupError(f"{what}: {error_code(body)}: {body.decode(errors='replace')[:200]}")
        await asyncio.sleep(1.0)
    raise AssertionError("unreachable")


class HubbubTarget(Target):
    name = "hubbub"
    subprotocol = frames.PROTOCOL_VERSION
    history = True

    def __init__(self, urls: list[str]) -> None:
        self.urls = urls
        self.login = False

    async def setup(self, plan: Plan, scenario: Scenario) -> SetupInfo:
        info = SetupInfo()
        self.login = scenario.login
        started = time.monotonic()
        async with open_client(self.urls[0]) as owner:
            hello = await owner.next_event(frames.Hello, timeout=CALL_TIMEOUT_S)
            await owner.register(f"lt{plan.run_id}o", PASSWORD)
            for room in plan.rooms:
                created = await owner.call("channel.create", timeout=CALL_TIMEOUT_S, name=room.name)
                room.channel_id = created.conversation.id
                room.streams = dict.fromkeys(room.publishers, created.conversation.id)
        info.notes.extend(self._check_limits(hello.limits, scenario))
        semaphore = asyncio.Semaphore(REGISTER_CONCURRENCY)

        async def register(index: int) -> None:
            user = plan.users[index]
            async with semaphore:
                conn = await self.open(self.urls[index % len(self.urls)], None, False, CALL_TIMEOUT_S)
                try:
                    name = user.name.encode()
                    body = await _call(
                        conn,
                        f"register {user.name}",
                        b'{"type":"register","id":%d,"username":"%s","password":"%s","display_name":"%s"}',
                        name,
                        PASSWORD.encode(),
                        name,
                    )
                    user.token = _session_decoder.decode(body).token
                    for k in user.rooms:
                        await _retried_call(
                            conn,
                            f"channel.join {plan.rooms[k].name}",
                            b'{"type":"channel.join","id":%d,"channel_id":%d}',
                            plan.rooms[k].channel_id,
                        )
                finally:
                    conn.close()
                    try:
                        await asyncio.wait_for(asyncio.shield(conn.closed), 5)
                    except TimeoutError:
                        conn.abort()

        await asyncio.gather(*(register(u.index) for u in plan.users))
        info.users_registered = len(plan.users)
        info.seconds = time.monotonic() - started
        return info

    @staticmethod
    def _check_limits(limits: frames.Limits, scenario: Scenario) -> list[str]:
        notes = []
        if scenario.sends and scenario.publishers:
            per_publisher = (10000.0 if scenario.max_rate else scenario.rate) / scenario.publishers
            if limits.requests_per_second < per_publisher:
                notes.append(
                    f"WARNING: the server allows {limits.requests_per_second:g} requests/s per connection "
                    f"(burst {limits.request_burst}); publishers will be rate limited: "
                    "raise HUBBUB_RATE_PER_SECOND / HUBBUB_RATE_BURST"
                )
        return notes

    async def ready(self, conn: Conn, spec: ConnSpec, plan: Plan) -> None:
        user = plan.users[spec.user]
        if self.login:
            template = b'{"type":"login","id":%d,"username":"%s","password":"%s"}'
            await _call(conn, "login", template, user.name.encode(), PASSWORD.encode())
        else:
            await _call(conn, "auth", b'{"type":"auth","id":%d,"token":"%s"}', user.token.encode())

    def encode_send(self, request_id: int, room: Room, publisher: int, seq: int, text: bytes) -> bytes:
        return b'{"type":"message.send","id":%d,"conversation_id":%d,"text":"%s","client_msg_id":"m%d"}' % (
            request_id,
            room.channel_id,
            text,
            request_id,
        )

    def encode_history(self, request_id: int, room: Room) -> bytes:
        return b'{"type":"message.history","id":%d,"conversation_id":%d,"limit":50}' % (request_id, room.channel_id)

    def ack_ref(self, body: bytes) -> tuple[int, int] | None:
        ack = _ack_decoder.decode(body).message
        return ack.conversation_id, ack.seq

    def control(self, conn: Conn, buf: Buffer, start: int, end: int) -> None:
        _json_control(conn, buf, start, end)


def _peer_streams(plan: Plan, scenario: Scenario) -> None:
    for room in plan.rooms:
        room.streams = {p: room.index * scenario.publishers + p + 1 for p in room.publishers}


class PeerJsonTarget(Target):
    """The ``ws`` and ``py-broadcast`` peers: plain JSON frames."""

    def __init__(self, name: str) -> None:
        self.name = name

    async def setup(self, plan: Plan, scenario: Scenario) -> SetupInfo:
        _peer_streams(plan, scenario)
        return SetupInfo()

    async def ready(self, conn: Conn, spec: ConnSpec, plan: Plan) -> None:
        for k in spec.rooms:
            await _call(conn, "join", b'{"type":"join","id":%d,"room":"%s"}', plan.rooms[k].name.encode())

    def encode_send(self, request_id: int, room: Room, publisher: int, seq: int, text: bytes) -> bytes:
        return b'{"type":"send","id":%d,"room":"%s","conversation_id":%d,"seq":%d,"text":"%s"}' % (
            request_id,
            room.name.encode(),
            room.streams[publisher],
            seq,
            text,
        )

    def control(self, conn: Conn, buf: Buffer, start: int, end: int) -> None:
        _json_control(conn, buf, start, end)


class SocketIoTarget(Target):
    """Socket.IO v4 over its WebSocket transport only: Engine.IO packets
    ``0`` open, ``2``/``3`` ping/pong; Socket.IO packets ``40`` connect,
    ``42[...]`` event, ``42<id>[...]`` event with ack, ``43<id>[...]`` ack."""

    delivery_prefix = b'42["message.new"'

    def __init__(self, name: str) -> None:
        self.name = name

    def connection_url(self, base: str) -> str:
        return base.rstrip("/") + "/socket.io/?EIO=4&transport=websocket"

    async def setup(self, plan: Plan, scenario: Scenario) -> SetupInfo:
        _peer_streams(plan, scenario)
        return SetupInfo()

    async def ready(self, conn: Conn, spec: ConnSpec, plan: Plan) -> None:
        async with asyncio.timeout(CALL_TIMEOUT_S):
            await conn.expect("open")
            connected = conn.expect("connect")
            conn.send_text(b"40")
            ok, body = await connected
        if not ok:
            raise SetupError(f"socket.io connect refused: {body.decode(errors='replace')[:200]}")
        for k in spec.rooms:
            await _call(conn, "join", b'42%d["join","%s"]', plan.rooms[k].name.encode())

    def encode_send(self, request_id: int, room: Room, publisher: int, seq: int, text: bytes) -> bytes:
        return b'42%d["send",{"room":"%s","conversation_id":%d,"seq":%d,"text":"%s"}]' % (
            request_id,
            room.name.encode(),
            room.streams[publisher],
            seq,
            text,
        )

    def control(self, conn: Conn, buf: Buffer, start: int, end: int) -> None:
        payload = bytes(buf[start:end])
        if payload == b"2":
            conn.send_text(b"3")
        elif payload.startswith(b"43"):
            bracket = payload.find(b"[")
            conn.resolve(int(payload[2:bracket]), True, payload[bracket:])
        elif payload.startswith(b"40"):
            conn.resolve("connect", True, payload[2:])
        elif payload.startswith(b"44"):
            conn.resolve("connect", False, payload[2:])
        elif payload.startswith(b"0"):
            conn.resolve("open", True, payload[1:])
        elif payload.startswith(b"1"):
            conn.abort()
        else:
            conn.other_frames += 1


TARGETS = ("hubbub", "ws", "socketio", "socketio-redis", "py-broadcast")


def make_target(name: str, urls: list[str]) -> Target:
    if name == "hubbub":
        return HubbubTarget(urls)
    if name in ("ws", "py-broadcast"):
        return PeerJsonTarget(name)
    if name in ("socketio", "socketio-redis"):
        return SocketIoTarget(name)
    raise ValueError(f"unknown target {name!r}; choose from {', '.join(TARGETS)}")
