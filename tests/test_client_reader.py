"""protocol/client.py's reader against a hostile or newer server (a real
websockets server, real sockets): a frame nested deeper than any stack closes
the connection (1002) instead of killing the reader with the socket left
open; an event of a type the client does not know is skipped."""

from __future__ import annotations

import asyncio

import pytest
from websockets.asyncio.server import ServerConnection, serve

from hubbub.protocol import frames
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


NEWER_EVENT = '{"type":"message.forwarded","message":{"id":"m9"},"to":[1,2]}'
KNOWN_EVENT = '{"type":"member.left","conversation_id":1,"user_id":2}'


async def answers_after_newer_events(ws: ServerConnection) -> None:
    """Events of a type the client does not know, before and between known frames, as a newer server sends."""
    await ws.recv()  # the ping
    await ws.send(NEWER_EVENT)
    await ws.send(KNOWN_EVENT)
    await ws.send(NEWER_EVENT)
    await ws.send('{"type":"result","id":"r1","result":{"ts":1767261600041}}')
    await ws.wait_closed()


async def test_events_of_unknown_types_are_skipped_and_known_ones_still_read() -> None:
    async with serve(answers_after_newer_events, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        async with open_client(f"ws://127.0.0.1:{port}/") as client:
            pong = await client.call("ping")
            assert pong == frames.Pong(ts=1767261600041)
            assert client.drain_events() == [frames.MemberLeft(conversation_id=1, user_id=2)]
            assert client.skipped_events == {"message.forwarded": 2}
            assert client.ws.close_code is None


@pytest.mark.parametrize(
    "frame",
    ['{"type":"member.left","conversation_id":"one","user_id":2}', '{"conversation_id":1}', '{"type":7}'],
    ids=["known-type-broken", "no-type", "type-not-a-string"],
)
async def test_a_known_frame_broken_or_a_frame_without_a_type_still_closes_1002(frame: str) -> None:
    async def answer(ws: ServerConnection) -> None:
        await ws.recv()
        await ws.send(frame)
        await ws.wait_closed()

    async with serve(answer, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        async with open_client(f"ws://127.0.0.1:{port}/") as client:
            with pytest.raises(ConnectionError):
                await client.call("ping")
            await asyncio.wait_for(client.ws.wait_closed(), 10)
            assert client.ws.close_code == CloseCode.PROTOCOL_ERROR
            assert client.skipped_events == {}
