"""The WebSocket I/O layer: one asyncio.Protocol per TCP connection, on
websockets' sans-I/O ``ServerProtocol``.

websockets.asyncio gives every connection a handler task, a message queue,
futures and buffers: about 9 KB of the 12.6 KB an idle connection cost here.
This layer leaves everything that is protocol to websockets (HTTP parsing,
the handshake with its origin and subprotocol checks, framing, size limits,
ping answers, the closing handshake) and does only the I/O around it: bytes
from the transport into the protocol, its events to the session, its output
to the transport. An idle connection is this object, the websockets protocol,
the session and its dispatcher: no task, no future, no queue. The one
exception is the frame every request comes in (complete, masked, final,
text, within the size limit): server/inbound.py finds those in a chunk and
they skip websockets' Python parser; a chunk with any other frame goes to
websockets, which is only ever given whole frames (``data_received``).

The connection is the socket's only owner; the session above it sees it as a
``Transport`` (server/transport.py):

- **Outbound frames** (replies and events, complete WebSocket frames: server
  frames are unmasked, the same bytes for every recipient, framed once per
  event) are appended to a list and written with one transport.write per
  event-loop turn (server/outbound.py), so a burst of events costs one
  syscall per connection, not one per frame.
- **Slow consumers**: that list plus the transport's own buffer is bounded by
  ``outbound_buffer_bytes``; a connection past it is closed (4008) without
  ever making the fan-out wait for it.
- **Keepalive**: server/keepalive.py calls ``keepalive`` on every connection;
  a ping unanswered for ``ping_timeout_seconds`` closes it (1011).
- **Handshake**: the request is answered in the ``data_received`` that
  completes it (server/http.py's ``process_request`` answers at once), so a
  storm's handshakes cost no task each; only /readyz, which waits on the
  stores, is answered from a task.
- **Reading** is paused while /readyz waits and whenever the dispatcher's
  backlog asks for it, and resumed only when neither holds.
- **Close ordering**: whatever the protocol writes (a close frame, a pong)
  goes after the frames already queued, because ``_send_protocol_output``
  flushes them first; once a close has started, frames are dropped.
"""

from __future__ import annotations

import asyncio
import http
import itertools
import logging
import socket
import sys
import time
import weakref
from collections.abc import Awaitable
from typing import Protocol, cast

from websockets.exceptions import (
    InvalidHandshake,
    InvalidMessage,
    InvalidMethod,
    InvalidOrigin,
    InvalidProtocol,
    InvalidUpgrade,
    NegotiationError,
    SecurityError,
)
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.server import ServerProtocol

from hubbub.protocol.errors import CloseCode
from hubbub.server import logs
from hubbub.server.config import ConnectionConfig
from hubbub.server.inbound import scan
from hubbub.server.metrics import Metrics
from hubbub.server.outbound import flusher_of

try:
    from websockets.speedups import apply_mask
except ImportError:  # websockets built without its C extension (its own fallback)
    from websockets.utils import apply_mask

SERVER_HEADER = "hubbub"
LOGGER = logging.getLogger("websockets.server")


_ping_numbers = itertools.count(1)

# The enum members the per-frame paths compare with, looked up once: on Python 3.11 each
# ``State.OPEN`` is a class attribute lookup through EnumType costing several times a
# global's (BENCHMARKS.md, "Per delivery").
_CONNECTING = State.CONNECTING
_OPEN = State.OPEN
_TEXT = Opcode.TEXT
_BINARY = Opcode.BINARY
_CONT = Opcode.CONT
_PONG = Opcode.PONG


class Client(Protocol):
    """What a connection tells the client on top of it (server/session.py)."""

    @property
    def conn_id(self) -> int: ...
    @property
    def user_id(self) -> int:
        """0 until authenticated."""

    def received(self, raw: str | bytes) -> None:
        """A complete text (decoded) or binary message."""

    def connection_lost(self) -> None: ...


class Host(Protocol):
    """What a connection needs from the server that accepted it."""

    @property
    def serving(self) -> bool: ...
    @property
    def connection_config(self) -> ConnectionConfig:
        """Every connection's timers, buffers and socket options."""

    @property
    def metrics(self) -> Metrics: ...
    def new_protocol(self) -> ServerProtocol: ...
    def respond(self, request: Request) -> Response | Awaitable[Response] | None:
        """A response, None for the WebSocket handshake, or (/readyz) an awaitable of a response."""

    def open_session(self, connection: Connection, request: Request) -> Client: ...


def refusal_reason(exc: BaseException | None) -> str:
    """The metric label of a handshake websockets refused, from its exception."""
    if isinstance(exc, InvalidOrigin):
        return "origin"
    if isinstance(exc, NegotiationError):
        return "subprotocol"
    if isinstance(exc, InvalidUpgrade | InvalidMethod):
        return "not_websocket"  # plain HTTP to the WebSocket port
    if exc is None or isinstance(exc, SecurityError | InvalidMessage | InvalidProtocol):
        return "malformed_http"  # not HTTP (a TLS hello), headers too large, not HTTP/1.1
    if isinstance(exc, InvalidHandshake):
        return "bad_handshake"
    return "internal_error"


def request_ends(data: bytes) -> tuple[int, ...]:
    r"""Offsets in ``data`` after which an HTTP request arriving in pieces
    may end, in order: at most two, so a request is fed to the protocol in
    at most three pieces and bytes after it are never fed with it.

    A request ends with the ``\n`` of its first empty line (websockets
    reads it line by line and needs CRLF). Within ``data`` that is the first
    ``\n\r\n``; across a boundary with the data before, a chunk starting
    with ``\n`` or ``\r\n`` may complete it.
    """
    first = 1 if data[:1] == b"\n" else 2 if data[:2] == b"\r\n" else 0
    blank = data.find(b"\n\r\n") + 3
    return tuple(end for end in (first, blank if blank >= 3 else 0) if end)


class RefusalLog:
    """Refused handshakes: every one counted, logged at most once per reason
    per ``interval`` with the number left unlogged since, so a flood of bad
    clients cannot flood the log."""

    def __init__(self, metrics: Metrics, interval: float) -> None:
        self._metrics = metrics
        self._interval = interval
        self._next_line: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def refused(self, reason: str, **fields: object) -> None:
        self._metrics.handshakes_refused_by[reason].inc()
        now = time.monotonic()
        if now < self._next_line.get(reason, 0.0):
            self._suppressed[reason] = self._suppressed.get(reason, 0) + 1
            return
        self._next_line[reason] = now + self._interval
        logs.warning("handshake_refused", reason=reason, suppressed=self._suppressed.pop(reason, 0), **fields)


_refusal_logs: weakref.WeakKeyDictionary[Host, RefusalLog] = weakref.WeakKeyDictionary()


def refusal_log(host: Host) -> RefusalLog:
    """The host's refusal log (one per server: tests run several in a process)."""
    log = _refusal_logs.get(host)
    if log is None:
        log = _refusal_logs[host] = RefusalLog(host.metrics, host.connection_config.refused_handshake_log_seconds)
    return log


class Connection(asyncio.Protocol):
    # Slots: thousands of idle connections each carry one of these.
    __slots__ = (
        "_closing",
        "_flusher",
        "_fragments",
        "_fragments_text",
        "_handshake_task",
        "_host",
        "_inbound",
        "_inbound_limit",
        "_limit",
        "_open",
        "_out",
        "_out_bytes",
        "_ping_payload",
        "_ping_sent",
        "_reading_paused",
        "_timer",
        "_writing_paused",
        "close_timeout",
        "protocol",
        "session",
        "transport",
    )

    def __init__(self, host: Host) -> None:
        loop = asyncio.get_running_loop()
        config = host.connection_config
        self._host = host
        self.close_timeout = config.close_timeout_seconds
        self.protocol: ServerProtocol = host.new_protocol()
        """websockets' sans-I/O protocol: bytes in, events and bytes out; it never touches the socket."""
        self.session: Client | None = None
        self.transport: asyncio.Transport | None = None
        self._fragments: list[bytes] | None = None
        self._inbound = bytearray()
        """While open, the start of a frame still arriving (server/inbound.py): websockets
        is given whole frames only, so it sits at a frame boundary whenever requests skip it."""
        sizes = [s for s in (self.protocol.max_message_size, self.protocol.max_fragment_size) if s is not None]
        self._inbound_limit = min(sizes, default=sys.maxsize)
        """The largest payload websockets would take in one frame; a larger one goes to it (1009)."""
        self._fragments_text = False
        self._handshake_task: asyncio.Task[None] | None = None  # held: the loop keeps only weak references
        # During the handshake: its deadline; after a close frame: the closing deadline.
        self._timer: asyncio.TimerHandle | None = loop.call_later(config.handshake_timeout_seconds, self.abort)
        self._flusher = flusher_of(loop)
        self._limit = config.outbound_buffer_bytes
        self._out: list[bytes] = []
        self._out_bytes = 0
        self._closing = False
        """A close started here, or the connection is lost: frames are dropped."""
        self._open = False
        """``protocol.state is State.OPEN``, copied after every protocol call that can change
        it (``_send_protocol_output``, ``connection_lost``): ``flush`` reads it once per
        delivery, where websockets' ``state`` property was a Python call each time."""
        self._writing_paused = False
        """The transport's buffer went past ``outbound_buffer_bytes`` (``pause_writing``) and
        has not drained since: only then can ``flush`` find a slow consumer."""
        self._reading_paused = False
        """The client asked for reading to stop (its backlog); the handshake pauses it too."""
        self._ping_payload: bytes | None = None
        self._ping_sent = 0.0

    # -- asyncio.Protocol ---------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's does not subclass asyncio's
        # pause_writing comes (within write(), synchronously) once the transport holds more
        # than the limit: the one case in which flush must look at the buffer's size.
        self.transport.set_write_buffer_limits(high=self._limit)
        size = self._host.connection_config.socket_send_buffer_bytes
        if size:
            # Bounds what the kernel holds for a slow reader beyond outbound_buffer_bytes
            # (autotuned, it grows to net.ipv4.tcp_wmem's maximum, megabytes).
            sock = transport.get_extra_info("socket")
            if sock is not None:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
                except OSError as exc:
                    logs.warning("socket_send_buffer_failed", error=str(exc))

    def data_received(self, data: bytes) -> None:
        protocol = self.protocol
        if not self._open and protocol.state is _CONNECTING:
            self._handshake_data(data)
            return
        buffer = self._inbound
        if not self._open or protocol.debug:
            # Closing: websockets discards, or waits for the close frame; it sat at a
            # frame boundary when the connection stopped being open, and takes it all.
            # (At debug level websockets logs every frame: it parses them all.)
            if buffer:
                data = bytes(buffer) + data
                buffer.clear()
            self._to_protocol(data)
            return
        if buffer:
            buffer += data  # a bytearray: a large request arriving in pieces is not copied again per piece
        chunk = buffer if buffer else data
        spans, end, requests_only = scan(chunk, self._inbound_limit)
        if requests_only and self._fragments is None:
            # Requests without websockets' parser (server/inbound.py).
            for key, start, stop in spans:
                if not self._message(apply_mask(chunk[start:stop], chunk[key:start]), True):
                    # No longer open (1007, or the session closed): what follows goes to
                    # websockets, which drops it or finishes the closing handshake, as before.
                    rest = bytes(chunk[stop:])
                    buffer.clear()
                    if rest:
                        self._to_protocol(rest)
                    return
            whole = b""
        else:
            whole = bytes(chunk[:end]) if chunk is buffer or end < len(chunk) else data
        # The start of a frame still arriving waits here: websockets is given whole frames.
        if chunk is buffer:
            del buffer[:end]
        elif end < len(chunk):
            buffer += chunk[end:]
        if whole:
            self._to_protocol(whole)

    def _to_protocol(self, data: bytes) -> None:
        """Bytes for websockets' parser: its events to the session, its output to the peer."""
        protocol = self.protocol
        protocol.receive_data(data)
        events = protocol.events_received()
        self._send_protocol_output()
        for event in events:
            self._frame(cast(Frame, event))  # once open, the protocol's events are frames

    def _handshake_data(self, data: bytes) -> None:
        """data_received before the handshake is answered: the HTTP request
        only, and a request websockets refuses before it is one (not HTTP,
        headers too large) is counted and logged.

        Bytes after the request (frames a client sent without waiting for
        the 101; RFC 6455 says it should wait, not every client does) are
        not given to the protocol before the response is: it would answer a
        ping, or end the stream after a close frame, before the 101 is
        written: they are given to it after the response (for /readyz, after
        its task's, with the rest of the socket).
        """
        protocol = self.protocol
        failed = protocol.handshake_exc is not None
        request: Request | None = None
        start = 0
        for end in (*request_ends(data), len(data)):
            if end <= start:
                continue
            protocol.receive_data(data if start == 0 and end == len(data) else data[start:end])
            start = end
            request = next((e for e in protocol.events_received() if isinstance(e, Request)), None)
            if request is not None:
                break
        if not failed and protocol.handshake_exc is not None:
            self._refused(refusal_reason(protocol.handshake_exc), None, protocol.handshake_exc)
        self._send_protocol_output()  # a refusal websockets made by itself
        if request is None:
            return
        if self.transport is None:
            raise RuntimeError("data received before the connection was made")
        try:
            answer = self._host.respond(request)
        except Exception:
            logs.error("http_request_failed", exc_info=True, path=request.path)
            answer = protocol.reject(http.HTTPStatus.INTERNAL_SERVER_ERROR, "internal error\n")
        if answer is None or isinstance(answer, Response):
            # Answered now, in this call: a storm's handshakes cost no task, no
            # pause and resume of reading, no extra loop turn each.
            self._answer(request, answer)
            early = data[start:]
            if early and self.protocol.state is _OPEN:
                self.data_received(early)  # after the 101: pongs, a close's echo and EOF follow it
            return
        # Only /readyz waits (on its stores): reading stops until it is answered.
        self.transport.pause_reading()
        self._handshake_task = asyncio.get_running_loop().create_task(self._handshake(request, answer, data[start:]))

    def _refused(self, reason: str, status: int | None, exc: BaseException | None, path: str | None = None) -> None:
        refusal_log(self._host).refused(
            reason, status=status, address=self.remote_address(), path=path, detail=str(exc) if exc else None
        )

    def eof_received(self) -> bool | None:
        if self._inbound:
            # A request cut short: websockets sees it, and its end of stream (1006), as before.
            self.protocol.receive_data(bytes(self._inbound))
            self._inbound.clear()
        self.protocol.receive_eof()
        self._send_protocol_output()
        return None  # the transport closes itself

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self.protocol.receive_eof()  # idempotent; the protocol is now CLOSED
        self._open = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.session is not None:
            self.session.connection_lost()

    # -- towards the peer (Transport, server/transport.py) -------------------

    def send_frame(self, frame: bytes) -> None:
        """Queue a complete WebSocket frame; written at the end of this loop turn.

        The slow-consumer cut (4008) looks at what waited before this frame:
        here, what this turn already queued; in ``flush``, what the client
        left unread from earlier turns. A frame is never refused for its own
        size, so one reply larger than ``outbound_buffer_bytes`` (a history
        page of 4-byte characters is 1.6 MB) reaches a client that reads.
        """
        if self._closing:
            return
        out = self._out
        if not out:
            # The turn's first frame (an empty list is a flushed one): the flush is due.
            # Flusher.add, inline: a Python call less per delivery (BENCHMARKS.md,
            # "Two instances, third pass").
            pending = self._flusher.pending
            if not pending:
                self._flusher.schedule()
            pending.append(self)
        elif self._out_bytes > self._limit:
            self._slow_consumer()
            return
        out.append(frame)
        self._out_bytes += len(frame)

    def flush(self) -> None:
        """Write everything queued in one transport.write (server/outbound.py
        calls it once per loop turn; ``_send_protocol_output`` before its own writes)."""
        out = self._out
        transport = self.transport
        if not out or self._closing or transport is None:
            return
        if not self._open:
            # Closing handshake started: data frames may no longer follow.
            out.clear()
            self._out_bytes = 0
            return
        transport.write(b"".join(out))  # (one frame: join returns it, no copy)
        out.clear()
        if self._writing_paused and transport.get_write_buffer_size() - self._out_bytes > self._limit:
            # More than the limit is still unsent from earlier turns: the client is not reading.
            self._slow_consumer()
        self._out_bytes = 0

    def _slow_consumer(self) -> None:
        self._out.clear()
        self._out_bytes = 0
        self._host.metrics.slow_consumers.inc()
        session = self.session
        logs.warning(
            "slow_consumer",
            conn_id=session.conn_id if session else None,
            user_id=session.user_id or None if session else None,
        )
        self.close(CloseCode.SLOW_CONSUMER, "slow consumer")

    def close(self, code: int, reason: str) -> None:
        """Start the closing handshake after every frame already queued; the
        connection is aborted if the peer does not finish it in ``close_timeout``."""
        if self._closing:
            return
        self.flush()
        self._closing = True
        if self.protocol.state is State.OPEN:
            self.protocol.send_close(code, reason)
            self._send_protocol_output()

    def is_closing(self) -> bool:
        return self._closing or self.protocol.state is not State.OPEN

    def pause_reading(self) -> None:
        self._reading_paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        self._reading_paused = False
        transport = self.transport
        if transport is not None and self._handshake_task is None and not transport.is_closing():
            transport.resume_reading()

    def keepalive(self, now: float, timeout: float) -> None:
        """Ping, or close the connection (1011) when the last ping went
        unanswered for ``timeout`` (server/keepalive.py calls this)."""
        if self._closing or self.protocol.state is not State.OPEN:
            return
        if self._ping_payload is not None:
            if now - self._ping_sent > timeout:
                session = self.session
                logs.info(
                    "keepalive_timeout",
                    conn_id=session.conn_id if session else None,
                    user_id=session.user_id or None if session else None,
                )
                self.close(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")
            return
        self._ping_sent = now
        self._ping_payload = next(_ping_numbers).to_bytes(8, "big")
        self.protocol.send_ping(self._ping_payload)
        self._send_protocol_output()

    def abort(self) -> None:
        self._timer = None
        if self.protocol.state is State.CONNECTING and self.protocol.handshake_exc is None:
            self._refused("handshake_timeout", None, None)
        if self.transport is not None:
            self.transport.abort()

    @property
    def close_code(self) -> int | None:
        return self.protocol.close_code

    def remote_address(self) -> str | None:
        peer = self.transport.get_extra_info("peername") if self.transport is not None else None
        return str(peer[0]) if peer else None

    def _send_protocol_output(self) -> None:
        """Write what the protocol produced (handshake response, pong, ping, close, EOF)."""
        # Every call that can change the protocol's state is followed by this one.
        self._open = self.protocol.state is _OPEN
        writes = self.protocol.data_to_send()
        if not writes or self.transport is None:
            return
        self.flush()  # frames already queued go before a close frame
        transport = self.transport
        for data in writes:
            if data:
                transport.write(data)
            elif transport.can_write_eof():
                transport.write_eof()
            else:
                transport.close()
        if self._timer is None and self.protocol.close_expected():
            self._timer = asyncio.get_running_loop().call_later(self.close_timeout, self.abort)

    # -- from the peer ------------------------------------------------------

    def _frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        data = cast(bytes, frame.data)  # received frames carry bytes
        if opcode is _TEXT or opcode is _BINARY:
            if not frame.fin:
                self._fragments = [data]
                self._fragments_text = opcode is _TEXT
                return
            self._message(data, opcode is _TEXT)
        elif opcode is _CONT:
            fragments = self._fragments
            if fragments is None:
                raise RuntimeError("a continuation frame with nothing to continue")  # websockets rejects it first
            fragments.append(data)
            if frame.fin:
                self._fragments = None
                self._message(b"".join(fragments), self._fragments_text)
        elif opcode is _PONG and data == self._ping_payload:
            self._ping_payload = None

    def _message(self, data: bytes, text: bool) -> bool:
        """Hand a message to the session; False once the connection is no longer open."""
        if self.session is None or not self._open:
            return self._open
        if not text:
            self.session.received(data)
            return self._open
        try:
            raw = data.decode()
        except UnicodeDecodeError as exc:
            self.protocol.fail(CloseCode.INVALID_DATA, f"{exc.reason} at position {exc.start}")
            self._send_protocol_output()
            return False
        self.session.received(raw)
        return self._open

    async def _handshake(self, request: Request, answer: Awaitable[Response], early: bytes) -> None:
        try:
            try:
                response = await answer
            except Exception:
                logs.error("http_request_failed", exc_info=True, path=request.path)
                response = self.protocol.reject(http.HTTPStatus.INTERNAL_SERVER_ERROR, "internal error\n")
            self._answer(request, response)
            if early and self.protocol.state is State.OPEN:
                # After the 101 (and the session's start): pongs, a close's echo and EOF follow it.
                self.data_received(early)
        finally:
            self._handshake_task = None
            if self.transport is not None and not self.transport.is_closing() and not self._reading_paused:
                self.transport.resume_reading()

    def _answer(self, request: Request, response: Response | None) -> None:
        """Send ``host.respond``'s answer, or (None) the handshake's, and open the session after a 101."""
        protocol = self.protocol
        host = self._host
        reason: str | None = None
        if response is None:
            if host.serving:
                response = protocol.accept(request)
                if response.status_code != http.HTTPStatus.SWITCHING_PROTOCOLS:
                    reason = refusal_reason(protocol.handshake_exc)
            else:
                response = protocol.reject(http.HTTPStatus.SERVICE_UNAVAILABLE, "Server is shutting down.\n")
                reason = "shutting_down"
        elif response.status_code == http.HTTPStatus.SERVICE_UNAVAILABLE and request.path.split("?", 1)[0] != "/readyz":
            reason = "connection_limit"  # the one 503 of server/http.py that is not /readyz's
        elif response.status_code == http.HTTPStatus.INTERNAL_SERVER_ERROR:
            reason = "internal_error"
        if reason is not None:
            self._refused(reason, response.status_code, protocol.handshake_exc, request.path)
        response.headers["Server"] = SERVER_HEADER
        if protocol.state is not State.CONNECTING or self.transport is None or self.transport.is_closing():
            return  # the peer went away meanwhile
        protocol.send_response(response)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._send_protocol_output()  # the response goes before the session's first frame
        if response.status_code == http.HTTPStatus.SWITCHING_PROTOCOLS:
            self.session = host.open_session(self, request)
        # websockets' parser keeps the request for the connection's lifetime;
        # its headers (a couple of KB) are not needed again.
        request.headers.clear()
