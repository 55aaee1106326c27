"""One WebSocket connection: its read loop, request dispatch, and outbound buffer.

Outbound frames (replies and events) are appended to a per-connection list
and written with one transport.write per event-loop turn, so a burst of
events costs one syscall per connection, not one per frame. The list plus
the transport's own buffer is bounded by ``outbound_buffer_bytes``; a
connection that exceeds it is closed as a slow consumer (4008) without ever
making the fan-out wait for it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable

from websockets.http11 import Request
from websockets.protocol import State

from protocol import codec
from protocol.errors import CloseCode, ErrorCode
from protocol.frames import PRE_AUTH_TYPES, PROTOCOL_VERSION, AnyRequest, Hello, Limits, RequestId
from server import logs
from server.client_address import client_address
from server.connection import Connection
from server.errors import ApiError
from server.guarded import request_budget
from server.handlers import HANDLERS, on_offline, on_online
from server.hub import Hub
from server.ratelimit import TokenBucket
from storage.errors import StoreUnavailable
from storage.records import UserRecord

_connection_ids = itertools.count(1)
_ping_numbers = itertools.count(1)
SERVER_NAME = "hubbub/0.1.0"
PRESENCE_RETRY_SECONDS = (0.5, 2.0, 5.0, 15.0)
"""Waits before each new attempt at an "online" announcement that failed on a store."""
READ_FRAME_COST = 256
"""Bytes a queued frame counts against ``read_ahead_bytes`` at least (its objects' overhead)."""


class Session:
    # Slots: thousands of idle connections each carry one of these.
    __slots__ = (
        "_auth_timer",
        "_bucket",
        "_closing",
        "_finishing",
        "_flush_scheduled",
        "_flusher",
        "_inflight",
        "_limit",
        "_loop",
        "_on_finished",
        "_out",
        "_out_bytes",
        "_ping_payload",
        "_ping_sent",
        "_pipelining",
        "_presence_retry",
        "_protocol",
        "_queue",
        "_queued_bytes",
        "_read_ahead",
        "_reading_paused",
        "_replies",
        "_transport",
        "_worker",
        "address",
        "conn",
        "conn_id",
        "conversations",
        "hub",
        "user",
        "user_id",
    )

    def __init__(self, hub: Hub, conn: Connection, request: Request, on_finished: Callable[[Session], None]) -> None:
        self.hub = hub
        self.conn = conn
        self.conn_id = next(_connection_ids)
        self.user: UserRecord | None = None
        self.user_id = 0
        self.conversations: set[int] = set()
        self.address = client_address(conn.remote_address(), request.headers, hub.trusted_proxies)
        self._on_finished = on_finished
        self._loop = asyncio.get_running_loop()
        assert conn.transport is not None
        self._transport = conn.transport
        self._protocol = conn.ws
        self._flusher = hub.flusher
        self._out: list[bytes] = []
        self._out_bytes = 0
        self._flush_scheduled = False
        self._closing = False
        self._limit = hub.settings.outbound_buffer_bytes
        self._bucket = TokenBucket(hub.settings.rate_per_second, hub.settings.rate_burst)
        self._auth_timer: asyncio.TimerHandle | None = None
        self._ping_payload: bytes | None = None
        self._ping_sent = 0.0
        # Created while there is something to hold: an idle connection has none of them.
        self._queue: deque[str | bytes] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._finishing: asyncio.Task[None] | None = None  # held: the loop keeps only weak references
        self._queued_bytes = 0
        self._read_ahead = hub.settings.read_ahead_bytes
        self._reading_paused = False
        self._inflight: set[asyncio.Task[None]] | None = None
        self._replies: deque[list[bytes]] | None = None
        self._pipelining = hub.messages.ordered_appends
        self._presence_retry: asyncio.Task[None] | None = None  # held: the loop keeps only weak references

    # -- outbound -----------------------------------------------------------

    def send_frame(self, frame: bytes) -> None:
        if self._closing:
            return
        self._out.append(frame)
        self._out_bytes += len(frame)
        if self._out_bytes > self._limit:
            self._slow_consumer()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            self._flusher.add(self)

    def flush(self) -> None:
        """Write everything queued in one transport.write (called once per loop turn)."""
        self._flush_scheduled = False
        if self._closing or not self._out:
            return
        if self._protocol.state is not State.OPEN:
            # Closing handshake started: data frames may no longer follow.
            self._out.clear()
            self._out_bytes = 0
            return
        out = self._out
        self._transport.write(out[0] if len(out) == 1 else b"".join(out))
        self._out = []
        self._out_bytes = 0
        if self._transport.get_write_buffer_size() > self._limit:
            self._slow_consumer()

    def _slow_consumer(self) -> None:
        self._out.clear()
        self._out_bytes = 0
        self.hub.metrics.slow_consumers.inc()
        logs.warning("slow_consumer", conn_id=self.conn_id, user_id=self.user_id or None)
        self.close(CloseCode.SLOW_CONSUMER, "slow consumer")

    def close(self, code: int, reason: str) -> None:
        """Close from the server's side after what is queued; the connection
        aborts the TCP connection if the peer does not answer within its close timeout."""
        if self._closing:
            return
        self.flush()
        self._closing = True
        self.conn.close(code, reason)

    def send_payload(self, payload: bytes, frame_type: str) -> None:
        self.hub.metrics.frames_out_by[frame_type].inc()
        self.send_frame(codec.websocket_text_frame(payload))

    # -- lifecycle ----------------------------------------------------------

    def keepalive(self, now: float, timeout: float) -> None:
        """Ping, or drop the connection when the last ping went unanswered (see server/keepalive.py)."""
        if self._closing or self._protocol.state is not State.OPEN:
            return
        if self._ping_payload is not None:
            if now - self._ping_sent > timeout:
                logs.info("keepalive_timeout", conn_id=self.conn_id, user_id=self.user_id or None)
                self.close(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")
            return
        self._ping_sent = now
        self._ping_payload = next(_ping_numbers).to_bytes(8, "big")
        self.conn.ping(self._ping_payload)

    def pong(self, data: bytes) -> None:
        if data == self._ping_payload:
            self._ping_payload = None

    def start(self) -> None:
        """The connection is open: greet the client and start its authentication clock."""
        s = self.hub.settings
        self.hub.metrics.connections.inc()
        logs.info("connect", conn_id=self.conn_id, address=self.address)
        hello = Hello(
            protocol=PROTOCOL_VERSION,
            server=SERVER_NAME,
            limits=Limits(
                max_frame_bytes=s.max_frame_bytes,
                max_message_chars=s.max_message_chars,
                requests_per_second=s.rate_per_second,
                request_burst=s.rate_burst,
                auth_timeout_ms=int(s.auth_timeout_seconds * 1000),
            ),
        )
        self.send_payload(codec.encode(hello), "hello")
        self._auth_timer = self._loop.call_later(s.auth_timeout_seconds, self._auth_expired)

    def received(self, raw: str | bytes) -> None:
        """A message from the client: served in arrival order by a task that
        exists only while there is something to serve."""
        queue = self._queue
        if queue is None:
            self._queue = deque((raw,))
            self._queued_bytes = max(len(raw), READ_FRAME_COST)
            self._worker = self._loop.create_task(self._serve_queue())
            return
        queue.append(raw)
        self._queued_bytes += max(len(raw), READ_FRAME_COST)
        if self._queued_bytes > self._read_ahead and not self._reading_paused:
            # Stop reading until the backlog is served: TCP pushes back on the
            # client. Not sooner: while the socket is not read, the client's
            # pings and close frame are not seen either (a close waiting behind
            # a slow store's backlog was answered only after it, or never).
            self._reading_paused = True
            self._transport.pause_reading()

    async def _serve_queue(self) -> None:
        queue = self._queue
        assert queue is not None
        try:
            while queue:
                raw = queue.popleft()
                self._queued_bytes -= max(len(raw), READ_FRAME_COST)
                if self._reading_paused and self._queued_bytes <= self._read_ahead // 2:
                    self._resume_reading()
                await self._handle(raw)
        finally:
            self._queue = None
            self._queued_bytes = 0
            self._worker = None
            if self._reading_paused:
                self._resume_reading()

    def _resume_reading(self) -> None:
        self._reading_paused = False
        if not self._transport.is_closing():
            self._transport.resume_reading()

    def connection_lost(self) -> None:
        self._closing = True
        if self._auth_timer is not None:
            self._auth_timer.cancel()
        if self._presence_retry is not None:
            self._presence_retry.cancel()
            self._presence_retry = None
        self._finishing = self._loop.create_task(self._finish())

    async def _finish(self) -> None:
        try:
            if self._worker is not None:
                # Requests already received are served (their replies go nowhere).
                await asyncio.gather(self._worker, return_exceptions=True)
            await self._drain_inflight()  # sends already accepted are stored and announced
            await self._teardown()
        finally:
            self._on_finished(self)

    def _auth_expired(self) -> None:
        if self.user is None and not self._closing:
            logs.info("auth_timeout", conn_id=self.conn_id)
            self.close(CloseCode.AUTH_TIMEOUT, "authentication timeout")

    async def _teardown(self) -> None:
        self.hub.metrics.connections.dec()
        logs.info(
            "disconnect",
            conn_id=self.conn_id,
            user_id=self.user_id or None,
            code=self.conn.close_code,
        )
        if self.user is None:
            return
        self.hub.metrics.authenticated.dec()
        self.hub.registry.remove(self)
        if await self.hub.presence.disconnected(self.user_id):
            try:
                await on_offline(self.hub, self.user_id)
            except StoreUnavailable as exc:
                logs.warning("presence_offline_failed", user_id=self.user_id, error=str(exc))

    def _check_connection_limit(self, user_id: int) -> None:
        limit = self.hub.settings.max_connections_per_user
        if self.hub.registry.connections_of(user_id) >= limit:
            raise ApiError(ErrorCode.RATE_LIMITED, f"at most {limit} connections per user")

    async def authenticate(self, user: UserRecord) -> None:
        """Make this connection the user's: route their conversations here."""
        if self.user is not None:
            if self.user.id == user.id:
                return
            raise ApiError(ErrorCode.FORBIDDEN, "this connection is authenticated as another user")
        self._check_connection_limit(user.id)
        conversation_ids = [c.id for c in await self.hub.directory.conversations_of(user.id)]
        # Checked again: other connections of the user may have authenticated during the await.
        self._check_connection_limit(user.id)
        self.user = user
        self.user_id = user.id
        if self._auth_timer is not None:
            self._auth_timer.cancel()
            self._auth_timer = None
        self.hub.metrics.authenticated.inc()
        s = self.hub.settings
        if s.catchup_burst:
            # Catching up after a reconnect (history pages, resent sends) must not
            # be throttled into failure by the ordinary burst; once per connection.
            self._bucket.grant(s.catchup_burst, s.catchup_window_seconds)
        self.hub.registry.add(self, conversation_ids)
        logs.info("auth", conn_id=self.conn_id, user_id=user.id)
        # From here on the login has succeeded: presence is a consequence of it,
        # and a store failure in it must not answer `unavailable` to a login
        # that took effect (the connection is registered and would stay so).
        try:
            came_online = await self.hub.presence.connected(user.id)
        except Exception as exc:  # the presence store's own heartbeat re-records connections
            logs.warning("presence_online_failed", conn_id=self.conn_id, user_id=user.id, error=repr(exc))
            return
        if came_online:
            try:
                await on_online(self.hub, user.id, conversation_ids)
            except Exception as exc:
                logs.warning("presence_online_failed", conn_id=self.conn_id, user_id=user.id, error=repr(exc))
                self._presence_retry = self._loop.create_task(self._announce_online_later(conversation_ids))

    async def _announce_online_later(self, conversation_ids: list[int]) -> None:
        """Repair a failed "online" announcement while this connection lasts
        (cancelled when it ends, so it never follows the user's "offline")."""
        for delay in PRESENCE_RETRY_SECONDS:
            await asyncio.sleep(delay)
            try:
                await on_online(self.hub, self.user_id, conversation_ids)
            except Exception as exc:
                logs.warning("presence_online_failed", conn_id=self.conn_id, user_id=self.user_id, error=repr(exc))
            else:
                logs.info("presence_online_repaired", conn_id=self.conn_id, user_id=self.user_id)
                break
        self._presence_retry = None

    # -- requests -----------------------------------------------------------

    async def _handle(self, raw: str | bytes) -> None:
        """Serve one frame. Replies leave in request order.

        ``message.send`` is pipelined when the message log stores concurrent
        appends in submission order (every store's group commit does): up to
        ``max_inflight_sends`` of a connection's sends are stored together,
        instead of one fsync each. Any other frame first waits for the sends
        before it, so it sees their effects, as if all ran one at a time.
        """
        admitted = self._admit(raw)
        if admitted is None:
            return
        request, op = admitted
        if op == "message.send" and self._pipelining:
            inflight = self._inflight
            if inflight is None:
                inflight = self._inflight = set()
                self._replies = deque()
            elif len(inflight) >= self.hub.settings.max_inflight_sends:
                await asyncio.wait(inflight, return_when=asyncio.FIRST_COMPLETED)
            slot: list[bytes] = []
            assert self._replies is not None
            self._replies.append(slot)
            task = self._loop.create_task(self._execute_into(op, request, slot))
            inflight.add(task)
            task.add_done_callback(inflight.discard)
            return
        await self._drain_inflight()
        self._send_reply(await self._execute(op, request))

    def _admit(self, raw: str | bytes) -> tuple[AnyRequest, str] | None:
        """The request and its op, or None after replying with an error."""
        metrics = self.hub.metrics
        if isinstance(raw, bytes):
            metrics.frames_in_by["binary"].inc()
            self._refuse(None, ErrorCode.BAD_REQUEST, "binary frames are not supported: send JSON text frames")
            return None
        max_bytes = self.hub.settings.max_frame_bytes
        if len(raw) > max_bytes or (len(raw) * 4 > max_bytes and len(raw.encode()) > max_bytes):
            metrics.frames_in_by["oversized"].inc()
            self._refuse(codec.recover_request_id(raw), ErrorCode.TOO_LARGE, f"frame larger than {max_bytes} bytes")
            return None
        if not self._bucket.take():
            metrics.frames_in_by["rate_limited"].inc()
            self._refuse(codec.recover_request_id(raw), ErrorCode.RATE_LIMITED, "too many requests; slow down")
            return None
        try:
            request = codec.decode_request(raw)
        except codec.FrameError as exc:
            metrics.frames_in_by["invalid"].inc()
            self._refuse(exc.request_id, exc.code, exc.message)
            return None
        op = request.__struct_config__.tag
        assert isinstance(op, str)
        metrics.frames_in_by[op].inc()
        if self.user is None and op not in PRE_AUTH_TYPES:
            self._refuse(request.id, ErrorCode.UNAUTHORIZED, "authenticate first (register, login or auth)")
            return None
        return request, op

    async def _execute(self, op: str, request: AnyRequest) -> bytes:
        """Run the handler; the encoded reply (result or error)."""
        metrics = self.hub.metrics
        start = time.perf_counter()
        failure: ErrorCode | None = None
        try:
            with request_budget(self.hub.settings.storage_timeout_seconds):
                result = await HANDLERS[op](self.hub, self, request)
            # Encoded here so that an encoding fault is an error reply, not a dropped connection.
            payload = codec.encode_result(request.id, result)
        except ApiError as exc:
            failure = exc.code
            payload = self._error_payload(request.id, exc.code, exc.message)
        except StoreUnavailable as exc:
            failure = ErrorCode.UNAVAILABLE
            logs.warning("store_unavailable", op=op, conn_id=self.conn_id, store=exc.store, error=exc.detail)
            payload = self._error_payload(request.id, ErrorCode.UNAVAILABLE, f"{exc.store} is unavailable; retry later")
        except Exception:
            failure = ErrorCode.INTERNAL
            logs.error("internal_error", exc_info=True, op=op, conn_id=self.conn_id, request_id=request.id)
            payload = self._error_payload(request.id, ErrorCode.INTERNAL, "internal error")
        latency = time.perf_counter() - start
        metrics.request_latency_by[op].observe(latency)
        logs.log(
            logging.INFO if failure else logging.DEBUG,
            "request_failed" if failure else "request",
            op=op,
            request_id=request.id,
            conn_id=self.conn_id,
            user_id=self.user_id or None,
            conversation_id=getattr(request, "conversation_id", None) or getattr(request, "channel_id", None),
            code=failure.value if failure else None,
            latency_ms=round(latency * 1000, 3),
        )
        return payload

    async def _execute_into(self, op: str, request: AnyRequest, slot: list[bytes]) -> None:
        slot.append(await self._execute(op, request))
        # Replies leave in request order: everything done at the head goes now.
        replies = self._replies
        assert replies is not None
        while replies and replies[0]:
            self._send_reply(replies.popleft()[0])

    async def _drain_inflight(self) -> None:
        if self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)
        # Pipelining state is dropped when idle: most connections never send.
        self._inflight = None
        self._replies = None

    def _send_reply(self, payload: bytes) -> None:
        # The frame type for metrics: error replies start with their tag.
        self.send_payload(payload, "error" if payload.startswith(b'{"type":"error"') else "result")

    def _error_payload(self, request_id: RequestId | None, code: ErrorCode, message: str) -> bytes:
        self.hub.metrics.errors_by[code.value].inc()
        return codec.encode_error(request_id, code, message)

    def _refuse(self, request_id: RequestId | None, code: ErrorCode, message: str) -> None:
        """An error decided before dispatch; queued behind in-flight sends' replies."""
        payload = self._error_payload(request_id, code, message)
        if self._replies:
            self._replies.append([payload])
        else:
            self._send_reply(payload)
