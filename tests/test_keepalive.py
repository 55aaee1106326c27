"""Keepalive: the server pings every connection and drops the ones that do not answer."""

from __future__ import annotations

import asyncio
import base64
import os
import struct

from hubbub.protocol.errors import CloseCode
from tests.conftest import ServerFactory
from tests.helpers import assert_serving

INTERVAL = 0.2


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One unmasked server frame: (opcode, payload)."""
    head = await reader.readexactly(2)
    length = head[1] & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", await reader.readexactly(2))
    elif length == 127:
        (length,) = struct.unpack("!Q", await reader.readexactly(8))
    return head[0] & 0x0F, await reader.readexactly(length)


async def test_silent_peer_is_pinged_then_dropped_with_1011(make_server: ServerFactory) -> None:
    server = await make_server(ping_interval_seconds=INTERVAL, ping_timeout_seconds=INTERVAL)
    answering = await server.client()  # the websockets client answers pings by itself

    # A peer that completes the handshake, then never answers anything.
    reader, writer = await asyncio.open_connection("127.0.0.1", server.app.port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        f"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    assert b" 101 " in await reader.readuntil(b"\r\n\r\n")
    try:
        opcodes = []
        async with asyncio.timeout(10):
            while True:
                opcode, payload = await read_frame(reader)
                opcodes.append(opcode)
                if opcode == 0x8:  # close
                    break
        assert opcodes[0] == 0x1  # hello
        assert 0x9 in opcodes  # pinged
        assert struct.unpack("!H", payload[:2])[0] == CloseCode.INTERNAL_ERROR
        assert payload[2:] == b"keepalive ping timeout"
    finally:
        writer.close()

    # Meanwhile the answering client, pinged just as often, is still served.
    await assert_serving(answering)
    assert answering.ws.close_code is None
