"""Every closing handshake a client starts is completed promptly, whatever
else the server is doing for that connection or its neighbours."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from hubbub.protocol.client import open_client
from tests.conftest import RunningServer, unique_name

BACKLOG = 32
"""Requests a test client leaves waiting; more than the server used to read ahead (16 frames)."""
CLIENT_CLOSE_TIMEOUT = 3.0
"""The client's wait for the server's close frame; a close that needs most of it was not answered."""


async def short_connection(server: RunningServer, channel_id: int, join: bool) -> tuple[int | None, float]:
    """register, (channel.join), close: the close code the client saw and how long the close took."""
    async with open_client(server.url, close_timeout=CLIENT_CLOSE_TIMEOUT) as client:
        await client.next_event()  # hello
        await client.register(unique_name("short"), "correct horse")
        if join:
            await client.call("channel.join", channel_id=channel_id)
        started = time.monotonic()
        await client.close()
        return client.ws.close_code, time.monotonic() - started


@pytest.mark.parametrize("concurrency", [8, 16, 32])
async def test_concurrent_short_connections_complete_their_close(server: RunningServer, concurrency: int) -> None:
    owner = await server.user()
    channel = (await owner.call("channel.create", name=unique_name("busy"))).conversation
    for _ in range(3):  # the defect showed on some rounds only
        outcomes = await asyncio.gather(*(short_connection(server, channel.id, join=True) for _ in range(concurrency)))
        codes = [code for code, _ in outcomes]
        slowest = max(elapsed for _, elapsed in outcomes)
        assert codes == [1000] * concurrency, codes
        assert slowest < CLIENT_CLOSE_TIMEOUT / 2, f"a close took {slowest:.2f} s"


async def test_close_is_answered_while_requests_wait_on_a_store(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client with more requests queued than the server serves at once (a
    slow store holds them) still has its pings and its close answered at
    once, not after the backlog."""
    assert server.app.services is not None
    directory = server.app.services.directory
    store_answers = asyncio.Event()
    original = directory.public_channels

    async def held_public_channels() -> Any:
        await store_answers.wait()
        return await original()

    monkeypatch.setattr(directory, "public_channels", held_public_channels)
    async with open_client(server.url, close_timeout=CLIENT_CLOSE_TIMEOUT) as client:
        await client.next_event()  # hello
        await client.register(unique_name("backlog"), "correct horse")
        for index in range(BACKLOG):
            await client.send_raw(f'{{"type":"channel.list","id":"held-{index}"}}')
        # Its pong also says the requests before it were read.
        pong = await client.ws.ping(b"still there?")
        await asyncio.wait_for(pong, CLIENT_CLOSE_TIMEOUT / 2)
        started = time.monotonic()
        try:
            await client.close()
            elapsed = time.monotonic() - started
        finally:
            store_answers.set()
        assert client.ws.close_code == 1000
        assert elapsed < CLIENT_CLOSE_TIMEOUT / 2, f"the close took {elapsed:.2f} s"
