"""Fan-out under back-pressure: a slow consumer is cut off (4008) without
holding back anyone else."""

from __future__ import annotations

import asyncio
import re
import socket
import time

from hubbub.protocol import frames
from hubbub.protocol.client import Client
from hubbub.protocol.errors import CloseCode
from tests.conftest import RunningServer, ServerFactory, http_get, unique_name
from tests.helpers import next_presence_of

SLOW_METRIC = "hubbub_slow_consumer_disconnects_total"


def uid(client: Client) -> int:
    assert client.user is not None
    return client.user.id


def metric_value(exposition: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", exposition, re.MULTILINE)
    assert match, f"{name} missing from /metrics"
    return float(match.group(1))


async def wait_for_metric(server: RunningServer, name: str, value: float, deadline_seconds: float = 15) -> None:
    """Poll /metrics (in a thread: the server runs on this loop) until ``name`` reaches ``value``."""
    deadline = time.monotonic() + deadline_seconds
    while True:
        status, body = await asyncio.to_thread(http_get, server.http_url + "/metrics")
        assert status == 200
        current = metric_value(body, name)
        if current >= value:
            assert current == value
            return
        assert time.monotonic() < deadline, f"{name} stayed at {current}"
        await asyncio.sleep(0.02)


def small_buffer_socket(server: RunningServer) -> socket.socket:
    """A connected TCP socket with a small receive buffer, so that a client
    that stops reading pushes back on the server quickly."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.app.port))
    sock.setblocking(False)
    return sock


async def test_slow_consumer_is_disconnected_and_others_keep_up(make_server: ServerFactory) -> None:
    server = await make_server(outbound_buffer_bytes=65536, max_message_chars=16000)
    sender = await server.user()
    fast = await server.user()
    slow_client = await server.client(sock=small_buffer_socket(server))
    await slow_client.register(unique_name("slow"), "correct horse")
    room = (await sender.call("channel.create", name="firehose")).conversation.id
    for member in (fast, slow_client):
        await member.call("channel.join", channel_id=room)
    for member in (sender, fast, slow_client):
        await member.call("ping")
        member.drain_events()

    # The slow client stops reading: its socket fills, then the server's buffer.
    slow_client.ws.transport.pause_reading()

    count = 200
    text = "x" * 15000

    async def send_all() -> list[int]:
        seqs = []
        for n in range(count):
            ack = await sender.call("message.send", conversation_id=room, text=f"{n:04d}{text}", client_msg_id=str(n))
            seqs.append(ack.message.seq)
        return seqs

    async def receive_all(client: Client) -> list[int]:
        received = []
        for n in range(count):
            event = await client.next_event(frames.MessageNew)
            assert event.message.text.startswith(f"{n:04d}")
            received.append(event.message.seq)
        return received

    acked, fast_got, sender_got = await asyncio.gather(send_all(), receive_all(fast), receive_all(sender))
    assert acked == list(range(1, count + 1))
    assert fast_got == acked
    assert sender_got == acked

    await wait_for_metric(server, SLOW_METRIC, 1)
    # Let the slow client read again: it gets what was buffered, then the close.
    slow_client.ws.transport.resume_reading()
    async with asyncio.timeout(10):
        await slow_client.ws.wait_closed()
    assert slow_client.ws.close_code == CloseCode.SLOW_CONSUMER
    received = [e.message.seq for e in slow_client.drain_events() if isinstance(e, frames.MessageNew)]
    assert received == list(range(1, len(received) + 1))  # a prefix, in order
    assert len(received) < count

    # The server keeps serving: the others still talk, newcomers connect.
    ack = await sender.call("message.send", conversation_id=room, text="still here", client_msg_id="after")
    assert (await fast.next_event(frames.MessageNew)).message.id == ack.message.id
    newcomer = await server.user()
    await newcomer.call("channel.join", channel_id=room)
    history = await newcomer.call("message.history", conversation_id=room, limit=1)
    assert history.messages[0].text == "still here"
    status, body = await asyncio.to_thread(http_get, server.http_url + "/metrics")
    assert status == 200
    assert metric_value(body, SLOW_METRIC) == 1


async def test_slow_consumer_that_never_reads_again_is_dropped(make_server: ServerFactory) -> None:
    """Closing politely needs the peer to read up to the close frame; one that
    never does must still be dropped once the close timeout passes, rather than
    hold its connection, its routing and its presence forever."""
    server = await make_server(outbound_buffer_bytes=65536, max_message_chars=16000)
    sender = await server.user()
    watcher = await server.user()
    stuck = await server.client(sock=small_buffer_socket(server))
    await stuck.register(unique_name("stuck"), "correct horse")
    room = (await sender.call("channel.create", name="firehose")).conversation.id
    for member in (watcher, stuck):
        await member.call("channel.join", channel_id=room)
    (stuck_session,) = [s for s in server.app.sessions if s.user_id == uid(stuck)]
    stuck_session.conn.close_timeout = 0.5  # the production default is 5s; keep the test quick
    stuck.ws.transport.pause_reading()

    text = "y" * 15000
    for n in range(200):
        await sender.call("message.send", conversation_id=room, text=f"{n:04d}{text}", client_msg_id=str(n))
    await wait_for_metric(server, SLOW_METRIC, 1)

    # Its peers hear that it went offline: the server let go of the connection.
    change = await next_presence_of(watcher, uid(stuck))
    assert change.status == "offline"
    assert stuck_session not in server.app.sessions
    presence = await watcher.call("presence.query", user_ids=[uid(stuck)])
    assert presence.presence[0].status == "offline"
    ack = await sender.call("message.send", conversation_id=room, text="next", client_msg_id="next")
    while (await watcher.next_event(frames.MessageNew)).message.id != ack.message.id:
        pass

    # The client finds its connection gone, without a close frame it never read.
    stuck.ws.transport.resume_reading()
    async with asyncio.timeout(10):
        await stuck.ws.wait_closed()
    assert stuck.ws.close_code == 1006  # abnormal closure: no close frame arrived
