"""The WebSocket I/O layer (server/connection.py) on websockets' sans-I/O
protocol: what it must do that websockets.asyncio used to do for us."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from websockets.client import ClientProtocol
from websockets.exceptions import InvalidStatus
from websockets.frames import Close, Frame, Opcode
from websockets.protocol import State
from websockets.uri import parse_uri

import hubbub.server as server_package
from hubbub.protocol import codec, frames
from hubbub.protocol.client import Client, open_client
from hubbub.protocol.errors import CloseCode
from tests.conftest import RunningServer, ServerFactory
from tests.helpers import assert_serving, closed_with

SERVER_DIR = str(Path(server_package.__file__).parent)


def runs_server_code(task: asyncio.Task[Any]) -> bool:
    """Whether any coroutine in the task's await chain is Hubbub server code."""
    coro: Any = task.get_coro()
    while coro is not None:
        code = getattr(coro, "cr_code", None) or getattr(coro, "gi_code", None)
        if code is not None and code.co_filename.startswith(SERVER_DIR):
            return True
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return False


async def test_fragmented_text_message_is_served(server: RunningServer) -> None:
    client = await server.user()
    waiter = asyncio.ensure_future(client.reply_to("frag"))
    await asyncio.sleep(0)
    await client.ws.send(iter(['{"type":"pi', 'ng","id"', ':"frag"}']))
    reply = await asyncio.wait_for(waiter, 10)
    assert isinstance(reply, frames.ResultFrame) and reply.id == "frag"


async def test_invalid_utf8_closes_1007_and_spares_neighbours(server: RunningServer) -> None:
    victim = await server.user()
    bystander = await server.user()
    await victim.ws.send(b'{"type":"ping","id":"\xff\xfe"}', text=True)
    assert await closed_with(victim) == CloseCode.INVALID_DATA
    await assert_serving(bystander)


async def test_client_ping_is_answered(server: RunningServer) -> None:
    client = await server.user()
    pong = await client.ws.ping(b"are you there")
    latency = await asyncio.wait_for(pong, 5)
    assert latency >= 0
    await assert_serving(client)


async def test_silent_tcp_connection_is_dropped_after_handshake_timeout(make_server: ServerFactory) -> None:
    server = await make_server(handshake_timeout_seconds=0.3)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.app.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never the rest
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server
    writer.close()
    await assert_serving(await server.user())


async def test_pipelined_requests_are_answered_in_order(make_server: ServerFactory) -> None:
    """More frames than a connection queues before it stops reading (the read
    side pauses and resumes): every one is answered, in order."""
    server = await make_server(read_ahead_bytes=4096)  # 16 small frames
    client = await server.user()
    ids = [f"p{i}" for i in range(60)]
    waiters = [asyncio.ensure_future(client.reply_to(i)) for i in ids]
    await asyncio.sleep(0)
    for request_id in ids:
        await client.send_raw(codec.encode(frames.Ping(id=request_id)).decode())
    replies = await asyncio.wait_for(asyncio.gather(*waiters), 10)
    assert [r.id for r in replies] == ids


async def test_idle_connections_hold_no_task(server: RunningServer) -> None:
    """An open, authenticated, idle connection costs memory only: no task of its own."""

    def server_tasks() -> int:
        return sum(1 for t in asyncio.all_tasks() if runs_server_code(t))

    before = server_tasks()  # the server's own (keepalive and the like)
    clients: list[Client] = [await server.user() for _ in range(5)]
    for client in clients:
        await assert_serving(client)

    async def settle() -> None:
        # Each connection's request worker ends once its requests are served.
        while server_tasks() > before:  # noqa: ASYNC110 - no event marks a task's end
            await asyncio.sleep(0.01)

    await asyncio.wait_for(settle(), 5)
    assert len(server.app.sessions) == 5


async def test_connection_limit_refuses_with_503_until_one_leaves(make_server: ServerFactory) -> None:
    server = await make_server(max_connections=2)
    first = await server.user()
    second = await server.user()
    with pytest.raises(InvalidStatus) as info:
        async with open_client(server.url):
            pass
    assert info.value.response.status_code == 503
    assert info.value.response.headers["Server"] == "hubbub"
    await assert_serving(first)
    await first.close()

    async def first_gone() -> None:
        while len(server.app.sessions) > 1:  # noqa: ASYNC110 - no event marks a session's end
            await asyncio.sleep(0.01)

    await asyncio.wait_for(first_gone(), 5)
    await assert_serving(await server.user())
    await assert_serving(second)


async def test_frames_sent_with_the_handshake_request_are_served(server: RunningServer) -> None:
    """A client that does not wait for the 101 before its first frame (RFC 6455
    says it should) still has that frame served, after the hello."""
    client = ClientProtocol(parse_uri(server.url))
    client.send_request(client.connect())
    (request,) = client.data_to_send()
    ping = Frame(Opcode.TEXT, b'{"type":"ping","id":"early"}').serialize(mask=True, extensions=[])
    reader, writer = await asyncio.open_connection("127.0.0.1", server.app.port)
    writer.write(request + ping)  # one segment: the request and a frame
    await writer.drain()
    texts: list[str] = []

    async def read_two_messages() -> None:
        while len(texts) < 2:
            data = await reader.read(65536)
            assert data, "the server closed the connection"
            client.receive_data(data)
            texts.extend(bytes(e.data).decode() for e in client.events_received() if isinstance(e, Frame))

    await asyncio.wait_for(read_two_messages(), 10)
    writer.close()
    hello, reply = (codec.decode_server_frame(t) for t in texts)
    assert isinstance(hello, frames.Hello)
    assert isinstance(reply, frames.ResultFrame) and reply.id == "early"


async def read_to_eof(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.read(), 10)


@pytest.mark.parametrize("early", ["ping", "close"])
async def test_nothing_goes_before_the_101_when_frames_come_with_the_request(server: RunningServer, early: str) -> None:
    """A ping (or a close) sent in the same segment as the upgrade request is
    answered after the 101: its pong (the close's echo, then the end of the
    stream) never comes first."""
    client = ClientProtocol(parse_uri(server.url))
    client.send_request(client.connect())
    (request,) = client.data_to_send()
    frame = (
        Frame(Opcode.PING, b"early")
        if early == "ping"
        else Frame(Opcode.CLOSE, Close(CloseCode.NORMAL, "bye").serialize())
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", server.app.port)
    writer.write(request + frame.serialize(mask=True, extensions=[]))  # one segment: the request and the frame
    await writer.drain()
    received = b""
    events: list[Any] = []

    async def read_until(done: Any) -> None:
        nonlocal received
        while not done():
            data = await reader.read(65536)
            received += data
            if not data:
                client.receive_eof()
                return
            client.receive_data(data)
            events.extend(client.events_received())

    if early == "ping":
        await asyncio.wait_for(
            read_until(lambda: any(isinstance(e, Frame) and e.opcode is Opcode.PONG for e in events)), 10
        )
        writer.close()
    else:
        await asyncio.wait_for(read_until(lambda: False), 10)  # to the end of the stream
    assert received.startswith(b"HTTP/1.1 101 "), received[:40]
    assert client.handshake_exc is None
    frames_in_order = [e for e in events if isinstance(e, Frame)]
    if early == "ping":
        # The pong follows the response (the hello may come between them).
        assert frames_in_order[-1].opcode is Opcode.PONG and frames_in_order[-1].data == b"early"
    else:
        assert frames_in_order[-1].opcode is Opcode.CLOSE
        assert client.close_rcvd is not None and client.close_rcvd.code == CloseCode.NORMAL


@pytest.mark.parametrize(
    ("data", "answer"),
    [
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(64)), b""),  # a TLS hello on a plain port
        (b"NOT HTTP AT ALL\r\n\r\n", b""),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", b"HTTP/1.1 431 "),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"HTTP/1.1 426 "),  # plain HTTP, no upgrade
    ],
    ids=["tls-hello", "not-http", "huge-header", "no-upgrade"],
)
async def test_garbage_instead_of_a_handshake(server: RunningServer, data: bytes, answer: bytes) -> None:
    bystander = await server.user()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.app.port)
    writer.write(data)
    await writer.drain()
    received = await read_to_eof(reader)  # the server ends the stream
    writer.close()
    assert received.startswith(answer) if answer else received == b""
    await assert_serving(bystander)


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (b"\x81\x05hello", CloseCode.PROTOCOL_ERROR),  # a client frame without a mask
        (b"\x83\x80" + b"\x00\x00\x00\x00", CloseCode.PROTOCOL_ERROR),  # reserved opcode 3
        (b"\xc1\x80" + b"\x00\x00\x00\x00", CloseCode.PROTOCOL_ERROR),  # RSV1 without an extension
        (b"\x81\xff" + (2**62).to_bytes(8, "big") + b"\x00\x00\x00\x00", CloseCode.MESSAGE_TOO_BIG),
        (b"\x80\x80" + b"\x00\x00\x00\x00", CloseCode.PROTOCOL_ERROR),  # a continuation with nothing to continue
    ],
    ids=["unmasked", "reserved-opcode", "rsv1", "length-2-to-62", "stray-continuation"],
)
async def test_broken_frames_close_with_a_websocket_code(server: RunningServer, frame: bytes, code: int) -> None:
    bystander = await server.user()
    client = ClientProtocol(parse_uri(server.url))
    client.send_request(client.connect())
    (request,) = client.data_to_send()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.app.port)
    writer.write(request)
    await writer.drain()
    while client.state is State.CONNECTING:  # the 101
        client.receive_data(await asyncio.wait_for(reader.read(65536), 10))
    writer.write(frame)
    await writer.drain()
    client.receive_data(await read_to_eof(reader))
    client.receive_eof()
    writer.close()
    assert client.close_rcvd is not None and client.close_rcvd.code == code
    await assert_serving(bystander)
