"""What PROTOCOL.md promises where a client author used to have to guess, checked over real sockets.

Promises already tested elsewhere: ``too_large`` replies echo the id
(test_limits), a malformed request before authentication gets ``bad_request``
rather than ``unauthorized`` (test_malformed), ``GET`` without an upgrade gets
426 (test_connection), the same ``client_msg_id`` with another text returns the
original (test_messages), ids of frames nested too deep (test_codec_depth).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import msgspec
from websockets.client import ClientProtocol
from websockets.protocol import State
from websockets.uri import parse_uri

from hubbub.protocol import frames
from hubbub.protocol.client import Client
from hubbub.protocol.errors import ErrorCode
from tests.conftest import RunningServer, ServerFactory
from tests.processes import FAST_HASHING, running_server, server_env


async def reply(client: Client, data: str | bytes, request_id: frames.RequestId | None) -> frames.ErrorFrame:
    """Send ``data`` as is; its error reply (one with a null id when ``request_id`` is None)."""
    if request_id is None:
        await client.send_raw(data)
        return await asyncio.wait_for(client.orphan_errors.get(), 10)
    waiter = asyncio.ensure_future(client.reply_to(request_id))
    await asyncio.sleep(0)  # register the waiter before the reply can arrive
    await client.send_raw(data)
    answer = await waiter
    assert isinstance(answer, frames.ErrorFrame), answer
    return answer


async def test_what_counts_against_the_rate_limit(make_server: ServerFactory) -> None:
    """Every text frame within max_frame_bytes counts, valid or not; binary frames,
    oversized frames and WebSocket control frames do not."""
    server = await make_server(rate_per_second=0.001, rate_burst=3, max_frame_bytes=1024)
    client = await server.client()  # not authenticated: the limit applies before auth too
    for i in range(5):
        assert (await reply(client, b"binary", None)).error.code == ErrorCode.BAD_REQUEST
        oversized = msgspec.json.encode({"type": "ping", "id": f"big{i}", "pad": "x" * 2000}).decode()
        assert (await reply(client, oversized, f"big{i}")).error.code == ErrorCode.TOO_LARGE
        await asyncio.wait_for(await client.ws.ping(), 10)
    # The whole burst is still there: two invalid frames and a ping use it up...
    assert (await reply(client, '{"type":"ping","id":"bad1","x":1}', "bad1")).error.code == ErrorCode.BAD_REQUEST
    assert (await reply(client, "not json", None)).error.code == ErrorCode.BAD_REQUEST
    assert isinstance(await client.call("ping"), frames.Pong)
    # ...and the next frame, valid or not, finds the bucket empty.
    assert (await reply(client, '{"type":"ping","id":"over"}', "over")).error.code == ErrorCode.RATE_LIMITED
    assert (await reply(client, '{"type":"ping","id":"over2","x":1}', "over2")).error.code == ErrorCode.RATE_LIMITED


async def test_a_reply_larger_than_the_outbound_buffer_reaches_a_healthy_client(
    make_server: ServerFactory,
) -> None:
    """outbound_buffer_bytes bounds the unread backlog, not one frame (PROTOCOL.md, close codes)."""
    server = await make_server(outbound_buffer_bytes=4096)
    alice = await server.user()
    cid = (await alice.call("channel.create", name="big")).conversation.id
    for i in range(5):
        await alice.call("message.send", conversation_id=cid, text="x" * 1000, client_msg_id=f"m{i}")
    # One history page of five is larger than the buffer; alice reads at once, so it arrives.
    page = await alice.call("message.history", conversation_id=cid)
    assert sorted(m.client_msg_id for m in page.messages) == [f"m{i}" for i in range(5)]
    assert (await alice.call("ping")) is not None


async def _silent_client(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A WebSocket client that completes the handshake, then never reads or answers again."""
    protocol = ClientProtocol(parse_uri(f"ws://127.0.0.1:{port}/"))
    protocol.send_request(protocol.connect())
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.writelines(protocol.data_to_send())
    while protocol.state is State.CONNECTING:
        data = await asyncio.wait_for(reader.read(65536), 10)
        assert data
        protocol.receive_data(data)
    return reader, writer


async def _sigterm_exit_time(tmp_path: Path, close_timeout: float, grace: float) -> tuple[float, list[str]]:
    env = server_env(
        tmp_path / "data",
        {
            **FAST_HASHING,
            "HUBBUB_CLOSE_TIMEOUT_SECONDS": str(close_timeout),
            "HUBBUB_SHUTDOWN_GRACE_SECONDS": str(grace),
        },
    )
    async with running_server(tmp_path / "data", env) as server:
        url = await server.url()
        _, writer = await _silent_client(int(url.rsplit(":", 1)[1].strip("/")))
        started = time.monotonic()
        os.kill(server.proc.pid, signal.SIGTERM)
        assert await server.wait(60) == 0
        elapsed = time.monotonic() - started
        writer.close()
        return elapsed, [e["event"] for e in server.events]


async def test_sigterm_waits_for_a_silent_client_at_most_its_close_timeout(tmp_path: Path) -> None:
    elapsed, events = await _sigterm_exit_time(tmp_path, close_timeout=1.0, grace=30.0)
    assert 1.0 <= elapsed < 10.0, elapsed
    assert "shutdown_timeout" not in events


async def test_sigterm_waits_at_most_the_shutdown_grace(tmp_path: Path) -> None:
    elapsed, events = await _sigterm_exit_time(tmp_path, close_timeout=60.0, grace=1.0)
    assert 1.0 <= elapsed < 10.0, elapsed
    assert "shutdown_timeout" in events


async def test_the_malformed_request_before_auth_example(server: RunningServer) -> None:
    """PROTOCOL.md §4's example, word for word: bad_request first, unauthorized once it is well formed."""
    client = await server.client()
    error = await reply(client, '{"type": "channel.join", "id": "cj-0", "channel_id": "general"}', "cj-0")
    assert (error.error.code, error.error.message) == ("bad_request", "Expected `int`, got `str` - at `$.channel_id`")
    error = await reply(client, '{"type": "channel.join", "id": "cj-0b", "channel_id": 1}', "cj-0b")
    assert error.error.code == ErrorCode.UNAUTHORIZED
