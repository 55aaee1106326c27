"""server.connection.Connection without sockets: a fake asyncio transport
below it, websockets' own client protocol on the far end, a fake client on top.

The connection is the socket's only owner: these check the promises that
depend on that: one write per loop turn, queued frames before the close
frame, the slow-consumer cut, keepalive pings, the handshake answered in the
call that brought it (or, for a response that waits, from a task with reading
paused), and that pause and the client's backlog composing.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from websockets.client import ClientProtocol
from websockets.datastructures import Headers
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from hubbub.protocol.codec import websocket_text_frame
from hubbub.protocol.errors import CloseCode
from hubbub.server.config import Settings
from hubbub.server.connection import Connection, request_ends
from hubbub.server.metrics import Metrics


class FakeTransport:
    """What asyncio gives a protocol, recording writes and reading state."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self._reading = True
        self.closing = False
        self.buffered = 0
        """What get_write_buffer_size reports: the bytes the kernel did not take."""
        self.protocol: Connection | None = None
        """Told of flow control (pause_writing) as asyncio's transports tell theirs."""
        self.high = 64 * 1024
        self.writing_paused = False

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.high = 64 * 1024 if high is None else high

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        # As asyncio's and uvloop's transports do, within write(): past the high-water mark, pause.
        if self.buffered > self.high and not self.writing_paused and self.protocol is not None:
            self.writing_paused = True
            self.protocol.pause_writing()

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def pause_reading(self) -> None:
        self._reading = False

    def resume_reading(self) -> None:
        self._reading = True

    def is_reading(self) -> bool:
        return self._reading

    def is_closing(self) -> bool:
        return self.closing

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("192.0.2.1", 40000) if name == "peername" else default

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.closing = True

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True


class FakeClient:
    conn_id = 1
    user_id = 0

    def __init__(self) -> None:
        self.messages: list[str | bytes] = []
        self.lost = False

    def received(self, raw: str | bytes) -> None:
        self.messages.append(raw)

    def connection_lost(self) -> None:
        self.lost = True


class FakeHost:
    serving = True

    def __init__(self, **settings: Any) -> None:
        self.connection_config = Settings(socket_send_buffer_bytes=0, **settings).connection
        self.metrics = Metrics()
        self.clients: list[FakeClient] = []
        self.waiting: asyncio.Future[Response] | None = None
        """Set by a test: the answer is this future (as /readyz's, which waits on the stores)."""

    def new_protocol(self) -> ServerProtocol:
        return ServerProtocol()

    def respond(self, request: Request) -> Response | asyncio.Future[Response] | None:
        return self.waiting

    def open_session(self, connection: Connection, request: Request) -> FakeClient:
        client = FakeClient()
        self.clients.append(client)
        return client


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


class Peer:
    """The far end: websockets' client protocol reading what the connection wrote."""

    def __init__(self, connection: Connection, transport: FakeTransport) -> None:
        self.connection = connection
        self.transport = transport
        transport.protocol = connection
        self.protocol = ClientProtocol(parse_uri("ws://127.0.0.1/"))
        self._read = 0

    def send(self, data: bytes) -> None:
        self.connection.data_received(data)

    def send_text(self, text: str) -> None:
        self.protocol.send_text(text.encode())
        self.send(b"".join(self.protocol.data_to_send()))

    def frames(self) -> list[Frame]:
        """The frames written since the last call."""
        new = self.transport.writes[self._read :]
        self._read = len(self.transport.writes)
        self.protocol.receive_data(b"".join(new))
        return [e for e in self.protocol.events_received() if isinstance(e, Frame)]


async def open_connection(**settings: Any) -> tuple[Connection, FakeTransport, Peer, FakeHost]:
    host = FakeHost(**settings)
    connection = Connection(host)  # the default timeouts: 10 s for the handshake, 5 s for the close
    transport = FakeTransport()
    connection.connection_made(transport)  # type: ignore[arg-type]
    peer = Peer(connection, transport)
    peer.protocol.send_request(peer.protocol.connect())
    peer.send(b"".join(peer.protocol.data_to_send()))
    # Answered in that call: no task, reading never paused.
    assert transport.writes[0].startswith(b"HTTP/1.1 101 ") and transport.is_reading()
    assert peer.frames() == [] and peer.protocol.state is State.OPEN
    return connection, transport, peer, host


def text(payload: bytes) -> bytes:
    return websocket_text_frame(payload)


async def test_frames_of_one_turn_are_written_together_at_its_end() -> None:
    connection, transport, peer, _ = await open_connection()
    writes = len(transport.writes)
    for n in range(3):
        connection.send_frame(text(b'{"n":%d}' % n))
    assert len(transport.writes) == writes  # nothing during the turn
    await settle()
    assert len(transport.writes) == writes + 1
    assert [bytes(f.data) for f in peer.frames()] == [b'{"n":0}', b'{"n":1}', b'{"n":2}']


async def test_frames_queued_before_a_close_go_before_the_close_frame_and_none_after() -> None:
    connection, _transport, peer, _ = await open_connection()
    connection.send_frame(text(b"first"))
    connection.send_frame(text(b"second"))
    connection.close(CloseCode.GOING_AWAY, "bye")
    connection.send_frame(text(b"too late"))
    await settle()
    frames = peer.frames()
    assert [(f.opcode, bytes(f.data)) for f in frames[:2]] == [(Opcode.TEXT, b"first"), (Opcode.TEXT, b"second")]
    assert [f.opcode for f in frames[2:]] == [Opcode.CLOSE]
    assert connection.is_closing()


async def test_a_ping_from_the_peer_is_answered_after_the_frames_queued_before_it() -> None:
    connection, _transport, peer, _ = await open_connection()
    connection.send_frame(text(b"queued"))
    peer.protocol.send_ping(b"there?")
    peer.send(b"".join(peer.protocol.data_to_send()))
    assert [(f.opcode, bytes(f.data)) for f in peer.frames()] == [(Opcode.TEXT, b"queued"), (Opcode.PONG, b"there?")]


async def test_past_the_outbound_buffer_the_connection_is_cut_as_a_slow_consumer() -> None:
    connection, _transport, peer, host = await open_connection(outbound_buffer_bytes=1000)
    connection.send_frame(text(b"x" * 600))
    connection.send_frame(text(b"y" * 600))  # 1,200 queued: over the limit
    connection.send_frame(text(b"z"))
    await settle()
    frames = peer.frames()
    assert [f.opcode for f in frames] == [Opcode.CLOSE]  # the backlog is dropped, not written
    assert peer.protocol.close_rcvd is not None and peer.protocol.close_rcvd.code == CloseCode.SLOW_CONSUMER
    assert host.metrics.registry.get_sample_value("hubbub_slow_consumer_disconnects_total") == 1


async def test_one_frame_larger_than_the_outbound_buffer_is_written_not_cut() -> None:
    connection, transport, peer, host = await open_connection(outbound_buffer_bytes=1000)
    connection.send_frame(text(b"h" * 5000))  # one reply, five times the limit
    await settle()
    transport.buffered = 900  # some of it still unsent when the next turn comes: under the limit
    connection.send_frame(text(b"next"))
    await settle()
    assert [(f.opcode, len(f.data)) for f in peer.frames()] == [(Opcode.TEXT, 5000), (Opcode.TEXT, 4)]
    assert host.metrics.registry.get_sample_value("hubbub_slow_consumer_disconnects_total") in (None, 0)


async def test_what_earlier_turns_left_unsent_counts_against_the_outbound_buffer() -> None:
    connection, transport, peer, _host = await open_connection(outbound_buffer_bytes=1000)
    frame = text(b"x")
    transport.buffered = 1001 + len(frame)  # 1,001 left unsent from earlier turns, then this turn's frame
    connection.send_frame(frame)
    await settle()
    assert [f.opcode for f in peer.frames()] == [Opcode.TEXT, Opcode.CLOSE]
    assert peer.protocol.close_rcvd is not None and peer.protocol.close_rcvd.code == CloseCode.SLOW_CONSUMER


async def test_the_buffer_is_looked_at_only_once_the_transport_paused_writing() -> None:
    """flush asks the transport for its buffer's size only after pause_writing: the
    transport's high-water mark is the outbound limit, so below it nobody can be slow."""
    connection, transport, peer, _host = await open_connection(outbound_buffer_bytes=1000)
    assert transport.high == 1000
    asked: list[int] = []
    size = transport.get_write_buffer_size

    def counted() -> int:
        asked.append(size())
        return asked[-1]

    transport.get_write_buffer_size = counted  # type: ignore[method-assign]
    transport.buffered = 1000  # at the limit, not past it: no pause
    connection.send_frame(text(b"a"))
    await settle()
    assert asked == []
    transport.buffered = 1900  # past the limit: paused, and the size is looked at (900 from this turn's write)
    connection.send_frame(text(b"b" * 900))
    await settle()
    assert asked == [1900]
    assert [f.opcode for f in peer.frames()] == [Opcode.TEXT, Opcode.TEXT]  # 1,000 unsent before: not cut
    connection.resume_writing()  # drained
    transport.writing_paused = False
    transport.buffered = 0
    connection.send_frame(text(b"c"))
    await settle()
    assert asked == [1900]
    assert [f.opcode for f in peer.frames()] == [Opcode.TEXT]


async def test_keepalive_pings_and_closes_1011_when_a_ping_goes_unanswered() -> None:
    connection, _transport, peer, _ = await open_connection()
    connection.keepalive(now=100.0, timeout=5.0)
    (ping,) = peer.frames()
    assert ping.opcode is Opcode.PING
    # Answered: the next round pings again.
    peer.send(b"".join(peer.protocol.data_to_send()))  # the client protocol queued the pong
    connection.keepalive(now=120.0, timeout=5.0)
    (second,) = peer.frames()
    assert second.opcode is Opcode.PING and second.data != ping.data
    # Not answered: within the timeout nothing happens, past it the connection closes.
    peer.protocol.data_to_send()  # this pong is lost
    connection.keepalive(now=124.0, timeout=5.0)
    assert peer.frames() == []
    connection.keepalive(now=126.0, timeout=5.0)
    assert [f.opcode for f in peer.frames()] == [Opcode.CLOSE]
    assert peer.protocol.close_rcvd is not None and peer.protocol.close_rcvd.code == CloseCode.INTERNAL_ERROR


async def test_reading_paused_by_the_client_stays_paused_until_it_resumes() -> None:
    connection, transport, _, _ = await open_connection()
    connection.pause_reading()
    assert not transport.is_reading()
    connection.resume_reading()
    assert transport.is_reading()
    transport.closing = True
    connection.pause_reading()
    connection.resume_reading()
    assert not transport.is_reading()  # a closing transport is not read again


async def test_frames_sent_with_the_request_are_served_after_the_101() -> None:
    host = FakeHost()
    connection = Connection(host)  # the default timeouts: 10 s for the handshake, 5 s for the close
    transport = FakeTransport()
    connection.connection_made(transport)  # type: ignore[arg-type]
    peer = Peer(connection, transport)
    peer.protocol.send_request(peer.protocol.connect())
    request = b"".join(peer.protocol.data_to_send())
    early = Frame(Opcode.TEXT, b"early").serialize(mask=True, extensions=[])
    connection.data_received(request + early)
    (client,) = host.clients
    assert client.messages == ["early"]
    assert transport.writes[0].startswith(b"HTTP/1.1 101 ")
    connection.pause_reading()  # as a full backlog would
    await settle()
    assert not transport.is_reading()  # nothing of the handshake resumes it
    connection.resume_reading()
    assert transport.is_reading()


async def test_a_response_that_waits_is_sent_from_a_task_with_reading_paused_meanwhile() -> None:
    """/readyz waits on the stores: answered from a task, nothing read meanwhile."""
    host = FakeHost()
    host.waiting = asyncio.get_running_loop().create_future()
    connection = Connection(host)
    transport = FakeTransport()
    connection.connection_made(transport)  # type: ignore[arg-type]
    connection.data_received(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
    await settle()
    assert transport.writes == [] and not transport.is_reading()
    host.waiting.set_result(Response(200, "OK", Headers([("Content-Length", "6")]), b"ready\n"))
    await settle()
    assert transport.writes[0].startswith(b"HTTP/1.1 200 OK\r\n") and b"Server: hubbub" in transport.writes[0]
    assert host.clients == []  # no 101, no session


async def test_messages_reach_the_client_reassembled_and_decoded() -> None:
    connection, _transport, peer, host = await open_connection()
    peer.send_text("héllo")
    peer.protocol.send_text(b"frag", fin=False)
    peer.protocol.send_continuation(b"mented", fin=True)
    peer.protocol.send_binary(b"\x00\x01")
    peer.send(b"".join(peer.protocol.data_to_send()))
    (client,) = host.clients
    assert client.messages == ["héllo", "fragmented", b"\x00\x01"]
    connection.connection_lost(None)
    assert client.lost and connection.is_closing()


@pytest.mark.parametrize("cut", [None, 1, 2, 3, 4, 20], ids=lambda c: f"cut-{c}")
async def test_a_ping_behind_the_request_is_answered_after_the_101(cut: int | None) -> None:
    """However the request's last bytes are split from what came before, the
    ping in the same chunk as its end is not answered before the response."""
    host = FakeHost()
    connection = Connection(host)
    transport = FakeTransport()
    connection.connection_made(transport)  # type: ignore[arg-type]
    peer = Peer(connection, transport)
    peer.protocol.send_request(peer.protocol.connect())
    request = b"".join(peer.protocol.data_to_send())
    ping = Frame(Opcode.PING, b"early").serialize(mask=True, extensions=[])
    if cut is not None:
        connection.data_received(request[:-cut])
    connection.data_received(request[-cut:] + ping if cut is not None else request + ping)
    assert transport.writes[0].startswith(b"HTTP/1.1 101 ")  # nothing before the response
    assert [(f.opcode, f.data) for f in peer.frames()] == [(Opcode.PONG, b"early")]
    assert peer.protocol.state is State.OPEN and transport.is_reading()


@pytest.mark.parametrize(
    ("data", "ends"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\x89\x80", (27,)),
        (b"\r\n\x89\x80", (2,)),  # the empty line, after a chunk that ended a header line
        (b"\n\x89\x80", (1,)),  # its line feed, after a chunk that ended with its carriage return
        (b"\r\n\r\nrest", (2, 4)),  # a header line's end, then the empty line
        (b"Host: x\r\n", ()),
        (b"", ()),
    ],
)
def test_where_a_request_may_end_in_a_chunk(data: bytes, ends: tuple[int, ...]) -> None:
    assert request_ends(data) == ends


def _protocol_fed(connection: Connection) -> None:
    """The reference: every byte through websockets' own parser (the path the
    connection takes when websockets logs frames at debug level)."""
    connection.protocol.debug = True


def _mixed_stream(seed: int) -> tuple[bytes, list[str | bytes]]:
    """Client frames of every kind the server accepts, and the messages they make."""
    rng = random.Random(seed)
    client = ClientProtocol(parse_uri("ws://127.0.0.1/"))
    client.state = State.OPEN  # frames only: no handshake
    messages: list[str | bytes] = []
    for i in range(40):
        kind = rng.choice(["text", "text", "text", "long", "ping", "binary", "fragmented"])
        if kind == "text":
            payload = f"request {i} é".encode()
            client.send_text(payload)
            messages.append(payload.decode())
        elif kind == "long":
            payload = ("x" * rng.choice([126, 300, 70000])).encode()
            client.send_text(payload)
            messages.append(payload.decode())
        elif kind == "ping":
            client.send_ping(f"p{i}".encode())
        elif kind == "binary":
            client.send_binary(b"\x00" + bytes([i]))
            messages.append(b"\x00" + bytes([i]))
        else:
            client.send_text(b"frag", fin=False)
            client.send_continuation(f"ment {i}".encode(), fin=True)
            messages.append(f"fragment {i}")
    return b"".join(client.data_to_send()), messages


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("piece", [1, 3, 7, 64, 1500, 100_000])
async def test_requests_in_any_pieces_reach_the_client_as_through_websockets(seed: int, piece: int) -> None:
    """The receive path's own reader (server/inbound.py) against websockets' parser:
    the same messages in the same order, the same bytes written (pongs)."""
    stream, expected = _mixed_stream(seed)
    outcomes = []
    for reference in (False, True):
        connection, transport, _peer, host = await open_connection()
        if reference:
            _protocol_fed(connection)
        for at in range(0, len(stream), piece):
            connection.data_received(stream[at : at + piece])
        (client,) = host.clients
        outcomes.append((client.messages, transport.writes[1:]))
    assert outcomes[0][0] == expected
    assert outcomes[0] == outcomes[1]


async def test_a_request_over_the_size_limit_closes_1009_before_its_payload_arrives() -> None:
    connection, _transport, peer, host = await open_connection()
    peer.protocol.send_text(b"small")
    peer.protocol.send_text(b"x" * (2**20 + 1))  # websockets' default max_size, the FakeHost's
    data = b"".join(peer.protocol.data_to_send())
    connection.data_received(data[: len(data) // 2])
    (client,) = host.clients
    assert client.messages == []  # the chunk went to websockets, which failed it whole
    (close,) = peer.frames()
    assert close.opcode is Opcode.CLOSE and close.data[:2] == CloseCode.MESSAGE_TOO_BIG.to_bytes(2, "big")
    assert connection.is_closing()


async def test_an_unmasked_frame_closes_1002() -> None:
    connection, _transport, peer, host = await open_connection()
    connection.data_received(b"\x81\x02hi")
    (close,) = peer.frames()
    assert close.data[:2] == CloseCode.PROTOCOL_ERROR.to_bytes(2, "big") and host.clients[0].messages == []


async def test_invalid_utf8_closes_1007_and_drops_the_requests_after_it() -> None:
    connection, _transport, peer, host = await open_connection()
    peer.protocol.send_text(b"before")
    peer.protocol.send_text(b"\xff\xfe")
    peer.protocol.send_text(b"after")
    connection.data_received(b"".join(peer.protocol.data_to_send()))
    peer.protocol.send_text(b"later")
    later = b"".join(peer.protocol.data_to_send())
    assert host.clients[0].messages == ["before"]
    (close,) = peer.frames()
    assert close.data[:2] == CloseCode.INVALID_DATA.to_bytes(2, "big")
    connection.data_received(later)
    assert host.clients[0].messages == ["before"]


async def test_the_end_of_stream_inside_a_request_is_an_abnormal_closure() -> None:
    connection, _transport, peer, host = await open_connection()
    peer.protocol.send_text(b"cut short")
    data = b"".join(peer.protocol.data_to_send())
    connection.data_received(data[:-3])
    connection.eof_received()
    assert host.clients[0].messages == []
    assert connection.protocol.state is State.CLOSED and connection.protocol.close_code == 1006  # abnormal closure


async def test_a_close_by_the_session_mid_chunk_leaves_websockets_in_step_for_the_closing_handshake() -> None:
    connection, _transport, peer, host = await open_connection()
    (client,) = host.clients

    def received(raw: str | bytes) -> None:
        client.messages.append(raw)
        if raw == "bye":
            connection.close(1000, "bye")

    client.received = received  # type: ignore[method-assign]
    for text_ in ("first", "bye", "dropped", "x" * 300):
        peer.protocol.send_text(text_.encode())
    data = b"".join(peer.protocol.data_to_send())
    connection.data_received(data[:-100])  # the last request still arriving
    assert client.messages == ["first", "bye"]
    assert [f.opcode for f in peer.frames()] == [Opcode.CLOSE]
    connection.data_received(data[-100:])
    peer.send(b"".join(peer.protocol.data_to_send()))  # the peer's close reply, after the rest of that request
    assert client.messages == ["first", "bye"]
    # websockets parsed the rest of that request, then the close reply: the handshake is complete.
    assert connection.protocol.close_rcvd is not None and connection.protocol.close_rcvd.code == 1000
    assert connection.protocol.parser_exc is None
