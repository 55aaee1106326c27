"""The WebSocket I/O layer: one asyncio.Protocol per TCP connection, on
websockets' sans-I/O ``ServerProtocol``.

websockets.asyncio gives every connection a handler task, a message queue,
futures and buffers: about 9 KB of the 12.6 KB an idle connection cost here.
This layer leaves everything that is protocol to websockets (HTTP parsing,
the handshake with its origin and subprotocol checks, framing, size limits,
ping answers, the closing handshake) and does only the I/O around it: bytes
from the transport into the protocol, its events to the session, its output
to the transport. An idle connection is this object, the websockets protocol
and the session: no task, no future, no queue. The session writes its own
frames straight to the transport (server frames are unmasked: the same bytes
for every recipient, framed once per event).
"""

from __future__ import annotations

import asyncio
import http
import logging
from collections.abc import Awaitable
from typing import Protocol, cast

from websockets.frames import CloseCode, Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.server import ServerProtocol

from server import logs

SERVER_HEADER = "hubbub"
LOGGER = logging.getLogger("websockets.server")


class SessionEnd(Protocol):
    """What a connection tells the session on top of it."""

    def received(self, raw: str | bytes) -> None: ...
    def pong(self, data: bytes) -> None: ...
    def flush(self) -> None: ...
    def connection_lost(self) -> None: ...


class Host(Protocol):
    """What a connection needs from the server that accepted it."""

    @property
    def serving(self) -> bool: ...
    def new_protocol(self) -> ServerProtocol: ...
    def respond(self, request: Request) -> Awaitable[Response | None]: ...
    def open_session(self, connection: Connection, request: Request) -> SessionEnd: ...


class Connection(asyncio.Protocol):
    __slots__ = (
        "_fragments",
        "_fragments_text",
        "_handshake_task",
        "_host",
        "_timer",
        "close_timeout",
        "session",
        "transport",
        "ws",
    )

    def __init__(self, host: Host, handshake_timeout: float, close_timeout: float) -> None:
        self._host = host
        self.close_timeout = close_timeout
        self.ws: ServerProtocol = host.new_protocol()
        self.session: SessionEnd | None = None
        self.transport: asyncio.Transport | None = None
        self._fragments: list[bytes] | None = None
        self._fragments_text = False
        self._handshake_task: asyncio.Task[None] | None = None  # held: the loop keeps only weak references
        # During the handshake: its deadline; after a close frame: the closing deadline.
        self._timer: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(handshake_timeout, self.abort)

    # -- asyncio.Protocol ---------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's does not subclass asyncio's

    def data_received(self, data: bytes) -> None:
        ws = self.ws
        ws.receive_data(data)
        events = ws.events_received()
        self._send_protocol_output()
        for index, event in enumerate(events):
            if isinstance(event, Frame):
                self._frame(event)
            elif isinstance(event, Request):
                # Frames sent before our answer (RFC 6455 says a client waits
                # for it; not every client does) wait for the session, and so
                # does the rest of the socket.
                assert self.transport is not None
                self.transport.pause_reading()
                early = [e for e in events[index + 1 :] if isinstance(e, Frame)]
                self._handshake_task = asyncio.get_running_loop().create_task(self._handshake(event, early))
                return

    def eof_received(self) -> bool | None:
        self.ws.receive_eof()
        self._send_protocol_output()
        return None  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.ws.receive_eof()  # idempotent; the protocol is now CLOSED
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.session is not None:
            self.session.connection_lost()

    # -- towards the peer ---------------------------------------------------

    def close(self, code: int, reason: str) -> None:
        """Start the closing handshake after everything already queued (see
        ``_send_protocol_output``); the connection is aborted if the peer does
        not finish it in ``close_timeout``."""
        if self.ws.state is State.OPEN:
            self.ws.send_close(code, reason)
            self._send_protocol_output()

    def ping(self, data: bytes) -> None:
        if self.ws.state is State.OPEN:
            self.ws.send_ping(data)
            self._send_protocol_output()

    def abort(self) -> None:
        self._timer = None
        if self.transport is not None:
            self.transport.abort()

    @property
    def close_code(self) -> int | None:
        return self.ws.close_code

    def remote_address(self) -> str | None:
        peer = self.transport.get_extra_info("peername") if self.transport is not None else None
        return str(peer[0]) if peer else None

    def _send_protocol_output(self) -> None:
        """Write what the protocol produced (handshake response, pong, close, EOF)."""
        writes = self.ws.data_to_send()
        if not writes or self.transport is None:
            return
        if self.session is not None:
            self.session.flush()  # frames already queued go before a close frame
        transport = self.transport
        for data in writes:
            if data:
                transport.write(data)
            elif transport.can_write_eof():
                transport.write_eof()
            else:
                transport.close()
        if self._timer is None and self.ws.close_expected():
            self._timer = asyncio.get_running_loop().call_later(self.close_timeout, self.abort)

    # -- from the peer ------------------------------------------------------

    def _frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        data = cast(bytes, frame.data)  # received frames carry bytes
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            if not frame.fin:
                self._fragments = [data]
                self._fragments_text = opcode is Opcode.TEXT
                return
            self._message(data, opcode is Opcode.TEXT)
        elif opcode is Opcode.CONT:
            fragments = self._fragments
            assert fragments is not None  # the protocol rejects a stray continuation
            fragments.append(data)
            if frame.fin:
                self._fragments = None
                self._message(b"".join(fragments), self._fragments_text)
        elif opcode is Opcode.PONG and self.session is not None:
            self.session.pong(data)

    def _message(self, data: bytes, text: bool) -> None:
        if self.session is None or self.ws.state is not State.OPEN:
            return
        if not text:
            self.session.received(data)
            return
        try:
            raw = data.decode()
        except UnicodeDecodeError as exc:
            self.ws.fail(CloseCode.INVALID_DATA, f"{exc.reason} at position {exc.start}")
            self._send_protocol_output()
            return
        self.session.received(raw)

    async def _handshake(self, request: Request, early: list[Frame]) -> None:
        try:
            await self._answer(request)
            for frame in early:
                self._frame(frame)
        finally:
            self._handshake_task = None
            if self.transport is not None and not self.transport.is_closing():
                self.transport.resume_reading()

    async def _answer(self, request: Request) -> None:
        ws = self.ws
        host = self._host
        try:
            response = await host.respond(request)
        except Exception:
            logs.error("http_request_failed", exc_info=True, path=request.path)
            response = ws.reject(http.HTTPStatus.INTERNAL_SERVER_ERROR, "internal error\n")
        if response is None:
            if host.serving:
                response = ws.accept(request)
            else:
                response = ws.reject(http.HTTPStatus.SERVICE_UNAVAILABLE, "Server is shutting down.\n")
        response.headers["Server"] = SERVER_HEADER
        if ws.state is not State.CONNECTING or self.transport is None or self.transport.is_closing():
            return  # the peer went away meanwhile
        ws.send_response(response)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._send_protocol_output()  # the response goes before the session's first frame
        if response.status_code == http.HTTPStatus.SWITCHING_PROTOCOLS:
            self.session = host.open_session(self, request)
        # websockets' parser keeps the request for the connection's lifetime;
        # its headers (a couple of KB) are not needed again.
        request.headers.clear()
