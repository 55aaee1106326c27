"""One connection's requests: admission, dispatch to the handlers, pipelined
sends and replies in request order.

A ``Dispatcher`` is fed the connection's messages (``received``) and writes
its replies to the connection's ``Transport`` (server/transport.py); it
touches no socket, so tests/unit/test_dispatch.py drives it with raw frames,
a fake transport and fake handlers, as websockets' tests drive its protocol.

- **Inbound queue and backpressure**: messages are served one at a time in
  arrival order by a task that exists only while there is something to
  serve. Past ``read_ahead_bytes`` of unserved requests the transport stops
  reading (TCP pushes back on the client) until half of them are served.
- **Admission**: binary, oversized and rate-limited frames, frames that do
  not decode, and requests other than PRE_AUTH_TYPES before the session is
  authenticated are answered with an error without reaching a handler.
- **Pipelining**: ``message.send`` runs concurrently (up to
  ``max_inflight_sends``) when the message log stores concurrent appends in
  submission order; any other request first waits for the sends before it.
- **Ordered replies**: every reply, including an admission error, leaves in
  request order.
- **Auth deadline**: while a ``register``, ``login`` or ``auth`` of an
  unauthenticated connection is served, its ``AuthClock`` (the session's
  authentication deadline) is held, and released once it is answered.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Mapping
from typing import Protocol

from hubbub.protocol import codec
from hubbub.protocol.errors import ErrorCode
from hubbub.protocol.frames import PRE_AUTH_TYPES, AnyRequest, RequestId
from hubbub.server import logs, tracing
from hubbub.server.errors import ApiError
from hubbub.server.guarded import request_budget
from hubbub.server.handlers import HANDLERS, Handler
from hubbub.server.handlers.context import Caller
from hubbub.server.ratelimit import TokenBucket
from hubbub.server.services import Services
from hubbub.server.transport import Transport
from hubbub.storage.errors import StoreUnavailable

READ_FRAME_COST = 256
"""Bytes a queued frame counts against ``read_ahead_bytes`` at least (its objects' overhead)."""
AUTH_TYPES = PRE_AUTH_TYPES - {"ping"}
"""The requests that authenticate a connection: their serving holds its deadline."""


class AuthClock(Protocol):
    """The authentication deadline of a connection (server/session.py's Session)."""

    def hold_auth_deadline(self) -> None:
        """An authentication request is taken up: its serving does not count."""

    def release_auth_deadline(self) -> None:
        """That request is answered: the deadline runs on if it did not authenticate."""


class _Pipeline:
    """The ``message.send`` requests in flight and the replies waiting for the ones before them."""

    __slots__ = ("replies", "tasks")

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[None]] = set()
        self.replies: deque[list[bytes]] = deque()
        """One slot per request in order; a slot holds its reply once there is one."""


class Dispatcher:
    # Slots: thousands of idle connections each carry one of these.
    __slots__ = (
        "_auth_clock",
        "_caller",
        "_handlers",
        "_pipeline",
        "_pipelining",
        "_queue",
        "_queued_bytes",
        "_reading_paused",
        "_services",
        "_transport",
        "_worker",
        "bucket",
    )

    def __init__(
        self,
        services: Services,
        caller: Caller,
        transport: Transport,
        handlers: Mapping[str, Handler] = HANDLERS,
        *,
        auth_clock: AuthClock | None = None,
    ) -> None:
        self._services = services
        self._auth_clock = auth_clock
        self._caller = caller
        """Who is asking (server/session.py's Session): handed to the handlers, read for the logs."""
        self._transport = transport
        self._handlers = handlers
        limits = services.limits
        self.bucket = TokenBucket(limits.rate_per_second, limits.rate_burst)
        """The request rate limit; the session grants it a catch-up allowance on authentication."""
        self._pipelining = services.messages.ordered_appends
        # Created while there is something to hold: an idle connection has none of them.
        self._queue: deque[str | bytes] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._pipeline: _Pipeline | None = None
        self._queued_bytes = 0
        self._reading_paused = False

    # -- the inbound queue ----------------------------------------------------

    def received(self, raw: str | bytes) -> None:
        """A message from the client: served after the ones before it."""
        cost = max(len(raw), READ_FRAME_COST)
        queue = self._queue
        if queue is None:
            queue = self._queue = deque((raw,))
            self._queued_bytes = cost
            self._worker = asyncio.get_running_loop().create_task(self._serve(queue))
            return
        queue.append(raw)
        self._queued_bytes += cost
        if self._queued_bytes > self._services.limits.read_ahead_bytes and not self._reading_paused:
            # Stop reading until the backlog is served: TCP pushes back on the
            # client. Not sooner: while the socket is not read, the client's
            # pings and close frame are not seen either (a close waiting behind
            # a slow store's backlog was answered only after it, or never).
            self._reading_paused = True
            self._transport.pause_reading()

    async def _serve(self, queue: deque[str | bytes]) -> None:
        resume_at = self._services.limits.read_ahead_bytes // 2
        try:
            while queue:
                raw = queue.popleft()
                self._queued_bytes -= max(len(raw), READ_FRAME_COST)
                if self._reading_paused and self._queued_bytes <= resume_at:
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
        self._transport.resume_reading()

    async def finish(self) -> None:
        """The connection is gone: serve the requests already received (their
        replies go nowhere) and store and announce the sends already accepted."""
        if self._worker is not None:
            await asyncio.gather(self._worker, return_exceptions=True)
        await self._drain()

    # -- dispatch -------------------------------------------------------------

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
            pipeline = self._pipeline
            if pipeline is None:
                pipeline = self._pipeline = _Pipeline()
            elif len(pipeline.tasks) >= self._services.limits.max_inflight_sends:
                await asyncio.wait(pipeline.tasks, return_when=asyncio.FIRST_COMPLETED)
            slot: list[bytes] = []
            pipeline.replies.append(slot)
            task = asyncio.get_running_loop().create_task(self._execute_into(op, request, slot, pipeline))
            pipeline.tasks.add(task)
            task.add_done_callback(pipeline.tasks.discard)
            return
        await self._drain()
        clock = self._auth_clock
        if clock is None or op not in AUTH_TYPES or self._caller.user is not None:
            self._send_reply(await self._execute(op, request))
            return
        clock.hold_auth_deadline()
        try:
            reply = await self._execute(op, request)
        finally:
            clock.release_auth_deadline()
        self._send_reply(reply)

    def _admit(self, raw: str | bytes) -> tuple[AnyRequest, str] | None:
        """The request and its op, or None after replying with an error."""
        metrics = self._services.metrics
        if isinstance(raw, bytes):
            metrics.frames_in_by["binary"].inc()
            self._refuse(None, ErrorCode.BAD_REQUEST, "binary frames are not supported: send JSON text frames")
            return None
        max_bytes = self._services.limits.max_frame_bytes
        if len(raw) > max_bytes or (len(raw) * 4 > max_bytes and len(raw.encode()) > max_bytes):
            metrics.frames_in_by["oversized"].inc()
            self._refuse(codec.recover_request_id(raw), ErrorCode.TOO_LARGE, f"frame larger than {max_bytes} bytes")
            return None
        if not self.bucket.take():
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
        if not isinstance(op, str):
            raise TypeError(f"{type(request).__name__} is not tagged with its request type")
        metrics.frames_in_by[op].inc()
        if self._caller.user is None and op not in PRE_AUTH_TYPES:
            self._refuse(request.id, ErrorCode.UNAUTHORIZED, "authenticate first (register, login or auth)")
            return None
        return request, op

    async def _execute(self, op: str, request: AnyRequest) -> bytes:
        """Run the handler; the encoded reply (result or error)."""
        if tracing.enabled:
            return await self._execute_traced(op, request)
        payload, _ = await self._run_handler(op, request)
        return payload

    async def _execute_traced(self, op: str, request: AnyRequest) -> bytes:
        """``_execute`` inside the request's span (server/tracing.py): its store
        calls and publishes are its children."""
        caller = self._caller
        with tracing.request_span(
            op,
            instance=self._services.instance_id,
            conn_id=caller.conn_id,
            user_id=caller.user_id,
            conversation_id=_conversation_of(request),
        ) as span:
            payload, failure = await self._run_handler(op, request)
            tracing.request_outcome(span, caller.user_id, failure.value if failure else None)
        return payload

    async def _run_handler(self, op: str, request: AnyRequest) -> tuple[bytes, ErrorCode | None]:
        """The encoded reply, and the error code it carries (None: a result)."""
        services = self._services
        caller = self._caller
        start = time.perf_counter()
        failure: ErrorCode | None = None
        try:
            with request_budget(services.limits.storage_timeout_seconds):
                result = await self._handlers[op](services, caller, request)
            # Encoded here so that an encoding fault is an error reply, not a dropped connection.
            payload = codec.encode_result(request.id, result)
        except ApiError as exc:
            failure = exc.code
            payload = self._error_payload(request.id, exc.code, exc.message)
        except StoreUnavailable as exc:
            failure = ErrorCode.UNAVAILABLE
            logs.warning("store_unavailable", op=op, conn_id=caller.conn_id, store=exc.store, error=exc.detail)
            payload = self._error_payload(request.id, ErrorCode.UNAVAILABLE, f"{exc.store} is unavailable; retry later")
        except Exception:
            failure = ErrorCode.INTERNAL
            logs.error("internal_error", exc_info=True, op=op, conn_id=caller.conn_id, request_id=request.id)
            payload = self._error_payload(request.id, ErrorCode.INTERNAL, "internal error")
        latency = time.perf_counter() - start
        services.metrics.request_latency_by[op].observe(latency)
        level = logging.INFO if failure else logging.DEBUG
        if logs.enabled(level):  # the fields are built only for a line that is written
            logs.log(
                level,
                "request_failed" if failure else "request",
                op=op,
                request_id=request.id,
                conn_id=caller.conn_id,
                user_id=caller.user_id or None,
                conversation_id=_conversation_of(request),
                code=failure.value if failure else None,
                latency_ms=round(latency * 1000, 3),
            )
        return payload, failure

    async def _execute_into(self, op: str, request: AnyRequest, slot: list[bytes], pipeline: _Pipeline) -> None:
        slot.append(await self._execute(op, request))
        # Replies leave in request order: everything done at the head goes now.
        replies = pipeline.replies
        while replies and replies[0]:
            self._send_reply(replies.popleft()[0])

    async def _drain(self) -> None:
        """Wait for the sends in flight (their replies are sent as they complete)."""
        pipeline = self._pipeline
        if pipeline is not None and pipeline.tasks:
            await asyncio.gather(*pipeline.tasks, return_exceptions=True)
        # Pipelining state is dropped when idle: most connections never send.
        self._pipeline = None

    # -- replies --------------------------------------------------------------

    def _send_reply(self, payload: bytes) -> None:
        # The frame type for metrics: error replies start with their tag.
        frame_type = "error" if payload.startswith(b'{"type":"error"') else "result"
        self._services.metrics.frames_out_by[frame_type].inc()
        self._transport.send_frame(codec.websocket_text_frame(payload))

    def _error_payload(self, request_id: RequestId | None, code: ErrorCode, message: str) -> bytes:
        self._services.metrics.errors_by[code.value].inc()
        return codec.encode_error(request_id, code, message)

    def _refuse(self, request_id: RequestId | None, code: ErrorCode, message: str) -> None:
        """An error decided before dispatch; queued behind in-flight sends' replies."""
        payload = self._error_payload(request_id, code, message)
        pipeline = self._pipeline
        if pipeline is not None and pipeline.replies:
            pipeline.replies.append([payload])
        else:
            self._send_reply(payload)


def _conversation_of(request: AnyRequest) -> int | None:
    """The conversation a request is about, for its log line and span (None: not about one)."""
    conversation: int | None = getattr(request, "conversation_id", None) or getattr(request, "channel_id", None)
    return conversation
