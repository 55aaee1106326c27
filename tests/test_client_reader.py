"""protocol/client.py's reader against a hostile server: a frame nested
deeper than any stack closes the connection (1002) instead of killing the
reader with the socket left open (a real websockets server, real sockets)."""

from __future__ import annotations

import asyncio

import pytest
from websockets.asyncio.server import ServerConnection, serve

from hubbub.protocol.client import open_client
from hubbub.protocol.errors import CloseCode

DEEP = 100_000


async def answers_deep_json(ws: ServerConnection) -> None:
    await ws.recv()  # the request
    await ws.send('{"type":"result","id":"r1","result":' + "[" * DEEP + "]" * DEEP + "}")
    await ws.wait_closed()


async def test_a_frame_nested_too_deep_closes_the_connection_with_1002() -> None:
    async with serve(answers_deep_json, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        async with open_client(f"ws://127.0.0.1:{port}/") as client:
            with pytest.raises(ConnectionError):
                await client.call("ping")
            await asyncio.wait_for(client.ws.wait_closed(), 10)
            assert client.ws.close_code == CloseCode.PROTOCOL_ERROR
            assert "nested deeper than 32 levels" in (client.ws.close_reason or "")
