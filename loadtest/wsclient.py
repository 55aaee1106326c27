"""A minimal RFC 6455 WebSocket client on ``asyncio.Protocol``, built to be cheap per frame.

The opening handshake is written and checked by hand. Server frames are never
masked, so a frame boundary is found from its header alone: ``FrameReader``
walks a buffer header to header and hands each text frame to ``on_text`` as
``(buffer, start, end)``, without copying or decoding it; subclasses decide
what to do with the bytes (the load generator looks for a few keys with
``bytes.find``). Client frames are masked, as RFC 6455 requires of clients.

Supported: text frames (fragmented ones are reassembled), ping (answered with
pong), close (echoed, then the connection is closed). Not supported, because
no server under test uses them: extensions (compression), binary payloads
(they are handed to ``on_control`` as opcode 2 and ignored).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import random
import struct
from collections.abc import Callable
from typing import TypeVar, cast
from urllib.parse import urlsplit

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
MAX_HANDSHAKE_BYTES = 16384

Buffer = bytes | bytearray
C = TypeVar("C", bound="WsClient")


class ProtocolError(Exception):
    """The peer broke RFC 6455 (or the handshake failed)."""


def mask_payload(payload: bytes, key: bytes) -> bytes:
    """XOR ``payload`` with the 4-byte masking ``key`` repeated (RFC 6455 5.3)."""
    n = len(payload)
    if n == 0:
        return b""
    repeated = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(n, "big")


def client_frame(payload: bytes, opcode: int = OP_TEXT, key: bytes | None = None) -> bytes:
    """One complete, final, masked client frame."""
    if key is None:
        # The masking key only has to be unpredictable to scripts in a browser
        # (it defeats proxy cache poisoning); this fast PRNG is enough here.
        key = random.randbytes(4)
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    return header + key + mask_payload(payload, key)


def server_frame(payload: bytes, opcode: int = OP_TEXT, fin: bool = True) -> bytes:
    """An unmasked frame as a server sends it (for tests and the parser benchmark)."""
    n = len(payload)
    b0 = (0x80 if fin else 0) | opcode
    if n < 126:
        header = struct.pack("!BB", b0, n)
    elif n < 65536:
        header = struct.pack("!BBH", b0, 126, n)
    else:
        header = struct.pack("!BBQ", b0, 127, n)
    return header + payload


class FrameReader:
    """Incremental parser of unmasked server frames.

    ``feed`` takes whatever the socket delivered; complete frames are handed
    on, a partial one waits in a buffer for the next ``feed``. Subclasses
    override ``on_text`` (the hot path: no copy, no decoding) and
    ``on_control``.
    """

    def __init__(self) -> None:
        self._pending = bytearray()
        self._fragments: bytearray | None = None

    def on_text(self, buf: Buffer, start: int, end: int) -> None:
        """A complete text message is ``buf[start:end]`` (valid only during the call)."""

    def on_control(self, opcode: int, payload: bytes) -> None:
        """A ping, pong, close or binary frame."""

    def feed(self, data: bytes) -> None:
        pending = self._pending
        buf: Buffer
        if pending:
            pending += data
            buf = pending
        else:
            buf = data
        n = len(buf)
        pos = 0
        while n - pos >= 2:
            b0 = buf[pos]
            length = buf[pos + 1]
            if length & 0x80:
                raise ProtocolError("a server frame is masked")
            head = 2
            if length == 126:
                if n - pos < 4:
                    break
                length = (buf[pos + 2] << 8) | buf[pos + 3]
                head = 4
            elif length == 127:
                if n - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                head = 10
            start = pos + head
            end = start + length
            if end > n:
                break
            if b0 == 0x81:  # FIN + text: the hot path
                self.on_text(buf, start, end)
            else:
                self._other(b0, buf, start, end)
            pos = end
        if buf is pending:
            del pending[:pos]
        elif pos < n:
            pending += buf[pos:]

    def _other(self, b0: int, buf: Buffer, start: int, end: int) -> None:
        if b0 & 0x70:
            raise ProtocolError("reserved bits set (no extension was negotiated)")
        fin = bool(b0 & 0x80)
        opcode = b0 & 0x0F
        if opcode >= 0x8:
            if not fin or end - start > 125:
                raise ProtocolError("fragmented or oversized control frame")
            self.on_control(opcode, bytes(buf[start:end]))
        elif opcode in (OP_TEXT, OP_BINARY):
            if self._fragments is not None:
                raise ProtocolError("new data frame inside a fragmented message")
            if fin:  # a final binary frame (a final text frame took the hot path)
                self.on_control(opcode, bytes(buf[start:end]))
            else:
                self._fragments = bytearray(buf[start:end])
                self._fragment_opcode = opcode
        elif opcode == OP_CONT:
            if self._fragments is None:
                raise ProtocolError("continuation frame without a message")
            self._fragments += buf[start:end]
            if fin:
                message, self._fragments = self._fragments, None
                if self._fragment_opcode == OP_TEXT:
                    self.on_text(message, 0, len(message))
                else:
                    self.on_control(OP_BINARY, bytes(message))
        else:
            raise ProtocolError(f"unknown opcode {opcode}")


class WsClient(asyncio.Protocol, FrameReader):
    """One client connection. ``opened`` resolves after a valid 101 response;
    ``closed`` resolves (with the close code, or 1006) when the TCP connection ends."""

    def __init__(self, host: str, port: int, resource: str, subprotocol: str | None = None) -> None:
        FrameReader.__init__(self)
        self.host = host
        self.port = port
        self.resource = resource
        self.subprotocol = subprotocol
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[int] = loop.create_future()
        self.close_code = 1006
        self._key = base64.b64encode(os.urandom(16))
        self._handshake: bytearray | None = bytearray()

    # -- asyncio.Protocol ----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it
        lines = [
            f"GET {self.resource} HTTP/1.1",
            f"Host: {self.host}:{self.port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {self._key.decode()}",
            "Sec-WebSocket-Version: 13",
        ]
        if self.subprotocol:
            lines.append(f"Sec-WebSocket-Protocol: {self.subprotocol}")
        self.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode())

    def data_received(self, data: bytes) -> None:
        if self._handshake is None:
            self.feed(data)
            return
        self._handshake += data
        head_end = self._handshake.find(b"\r\n\r\n")
        if head_end < 0:
            if len(self._handshake) > MAX_HANDSHAKE_BYTES:
                self._fail(ProtocolError("handshake response too long"))
            return
        head = bytes(self._handshake[:head_end]).decode("latin-1")
        rest = bytes(self._handshake[head_end + 4 :])
        self._handshake = None
        try:
            self._check_response(head)
        except ProtocolError as exc:
            self._fail(exc)
            return
        if not self.opened.done():
            self.opened.set_result(None)
        if rest:
            self.feed(rest)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"connection lost during handshake: {exc}"))
        if not self.closed.done():
            self.closed.set_result(self.close_code)
        self.on_closed()

    # -- WebSocket -----------------------------------------------------------

    def _check_response(self, head: str) -> None:
        status, *header_lines = head.split("\r\n")
        parts = status.split(" ", 2)
        if len(parts) < 2 or parts[1] != "101":
            raise ProtocolError(f"handshake refused: {status}")
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        expected = base64.b64encode(hashlib.sha1(self._key + GUID).digest()).decode()
        if headers.get("sec-websocket-accept") != expected:
            raise ProtocolError("bad Sec-WebSocket-Accept")
        if headers.get("sec-websocket-extensions"):
            raise ProtocolError("server negotiated an extension we did not offer")
        chosen = headers.get("sec-websocket-protocol")
        if chosen and chosen != self.subprotocol:
            raise ProtocolError(f"server chose subprotocol {chosen!r}")

    def _fail(self, exc: Exception) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc)
        if self.transport is not None:
            self.transport.abort()

    def send_text(self, payload: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(client_frame(payload))

    def on_control(self, opcode: int, payload: bytes) -> None:
        if opcode == OP_PING:
            if self.transport is not None and not self.transport.is_closing():
                self.transport.write(client_frame(payload, OP_PONG))
        elif opcode == OP_CLOSE:
            self.close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
            if self.transport is not None and not self.transport.is_closing():
                self.transport.write(client_frame(payload[:2], OP_CLOSE))
                self.transport.close()

    def on_closed(self) -> None:
        """Called once the TCP connection is gone."""

    def close(self, code: int = 1000) -> None:
        """Start a clean close: send a close frame and let the server end TCP."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(client_frame(struct.pack("!H", code), OP_CLOSE))

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


def split_url(url: str) -> tuple[str, int, str]:
    """(host, port, resource) of a ws:// URL."""
    parts = urlsplit(url)
    if parts.scheme != "ws":
        raise ValueError(f"only ws:// URLs are supported: {url}")
    host = parts.hostname or ""
    port = parts.port or 80
    resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return host, port, resource


async def connect(url: str, make: Callable[[str, int, str], C], timeout: float) -> C:
    """Open a connection with ``make(host, port, resource)`` and wait for the handshake."""
    host, port, resource = split_url(url)
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):
        _, proto = await loop.create_connection(lambda: make(host, port, resource), host, port)
        try:
            await proto.opened
        except BaseException:
            proto.abort()
            raise
    return proto
