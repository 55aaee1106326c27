"""A client that never reads is cut as a slow consumer (4008) once
`outbound_buffer_bytes` plus the bounded kernel buffers fill, not held open
until the keepalive notices (server/connection.py)."""

from __future__ import annotations

import asyncio
import socket

from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.uri import parse_uri

from tests.conftest import RunningServer, ServerFactory, unique_name
from tests.helpers import assert_serving

SMALL = 4096
TEXT = "x" * 1000
MAX_MESSAGES = 200
"""About 230 KB of events; with the buffers bounded, the cut comes after a few dozen."""


async def authenticated_non_reader(server: RunningServer, token: str) -> tuple[socket.socket, asyncio.StreamWriter]:
    """A raw connection that authenticates, then never reads again; its own receive buffer is small."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL)  # before connect: it sets the window
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.app.port))
    reader, writer = await asyncio.open_connection(sock=sock)
    client = ClientProtocol(parse_uri(server.url))
    client.send_request(client.connect())
    auth = Frame(Opcode.TEXT, f'{{"type":"auth","id":"a","token":"{token}"}}'.encode())
    for data in client.data_to_send():
        writer.write(data)
    await writer.drain()

    async def authenticated() -> None:
        texts: list[bytes] = []
        while not any(b'"id":"a"' in t for t in texts):
            data = await reader.read(65536)
            assert data, "the server closed the connection"
            client.receive_data(data)
            if client.state is State.OPEN and not texts:
                texts.append(b"")  # the 101 arrived: authenticate
                writer.write(auth.serialize(mask=True, extensions=[]))
                await writer.drain()
            texts.extend(bytes(e.data) for e in client.events_received() if isinstance(e, Frame))

    await asyncio.wait_for(authenticated(), 10)
    return sock, writer


async def test_non_reading_client_is_cut_with_4008(make_server: ServerFactory) -> None:
    server = await make_server(
        outbound_buffer_bytes=SMALL,
        socket_send_buffer_bytes=SMALL,
        ping_interval_seconds=600,  # the keepalive must not be what closes it
        close_timeout_seconds=0.5,
    )
    sender = await server.user()
    reader_name = unique_name("sloth")
    sloth = await server.user(reader_name)
    channel = (await sender.call("channel.create", name=unique_name("firehose"))).conversation
    await sloth.call("channel.join", channel_id=channel.id)
    assert sloth.token is not None
    sock, writer = await authenticated_non_reader(server, sloth.token)
    await sloth.close()  # only the non-reader is left to receive

    def cut() -> float:
        return server.app.metrics.registry.get_sample_value("hubbub_slow_consumer_disconnects_total") or 0.0

    sent = 0
    while cut() == 0 and sent < MAX_MESSAGES:
        await sender.call("message.send", conversation_id=channel.id, text=TEXT, client_msg_id=f"m{sent}")
        sent += 1
    assert cut() == 1, f"not cut after {sent} messages ({sent * len(TEXT)} bytes)"
    await assert_serving(sender)
    writer.close()
    sock.close()


async def test_one_reply_larger_than_the_outbound_buffer_reaches_a_client_that_reads(
    make_server: ServerFactory,
) -> None:
    # A full history page of 4-byte characters is 1.6 MB with the defaults, over
    # the 1 MiB buffer: the cut is for a client that does not read, not for a big reply.
    server = await make_server(outbound_buffer_bytes=65536)
    alice = await server.user()
    room = (await alice.call("channel.create", name=unique_name("big"))).conversation
    wide = "\U0001f600" * 4000  # 16,000 UTF-8 bytes
    for n in range(8):
        await alice.call("message.send", conversation_id=room.id, text=wide, client_msg_id=f"w{n}")
    page = await alice.call("message.history", conversation_id=room.id, limit=8)
    assert [m.text for m in page.messages] == [wide] * 8  # 128 KB in one reply, twice the buffer
    await assert_serving(alice)
    assert server.app.metrics.registry.get_sample_value("hubbub_slow_consumer_disconnects_total") == 0
