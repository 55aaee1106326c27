"""One client on one connection: who it is, what it may see, and its life
from the hello to the teardown.

A session is the client's identity and state: its connection id and address,
the user it authenticated as (``authenticate``, from the register, login and
auth handlers), the conversations routed to it, the authentication deadline,
and the teardown when its connection is gone (unrouting, presence). It writes
to its connection only through the ``Transport`` interface
(server/transport.py); the connection (server/connection.py) owns the socket.
Its requests are served by its ``Dispatcher`` (server/dispatch.py).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
from collections.abc import Callable, Sequence
from importlib.metadata import version
from typing import TYPE_CHECKING

from websockets.http11 import Request

from hubbub.protocol import codec
from hubbub.protocol.errors import CloseCode, ErrorCode
from hubbub.protocol.frames import PROTOCOL_VERSION, Hello, Limits
from hubbub.server import logs
from hubbub.server.client_address import client_address
from hubbub.server.dispatch import Dispatcher
from hubbub.server.errors import ApiError
from hubbub.server.handlers import on_offline, on_online
from hubbub.server.ratelimit import TokenBucket
from hubbub.server.send_order import SendOrder
from hubbub.server.services import Services
from hubbub.storage.errors import StoreUnavailable
from hubbub.storage.records import UserRecord

if TYPE_CHECKING:
    from hubbub.server.connection import Connection

_connection_ids = itertools.count(1)
SERVER_NAME = f"hubbub/{version('hubbub')}"
"""The hello frame's ``server``: this distribution's version, from its installed metadata."""
PRESENCE_RETRY_SECONDS = (0.5, 2.0, 5.0, 15.0)
"""Waits before each new attempt at an "online" announcement that failed on a store."""


@functools.lru_cache(maxsize=8)
def hello_frame(
    max_frame_bytes: int, max_message_chars: int, requests_per_second: float, request_burst: int, auth_timeout_ms: int
) -> bytes:
    """The hello frame, the same bytes for every connection of a server: encoded
    and framed once (a storm greets thousands at once), not once per connection."""
    hello = Hello(
        protocol=PROTOCOL_VERSION,
        server=SERVER_NAME,
        limits=Limits(
            max_frame_bytes=max_frame_bytes,
            max_message_chars=max_message_chars,
            requests_per_second=requests_per_second,
            request_burst=request_burst,
            auth_timeout_ms=auth_timeout_ms,
        ),
    )
    return codec.websocket_text_frame(codec.encode(hello))


class Session:
    # Slots: thousands of idle connections each carry one of these.
    __slots__ = (
        "_announcing",
        "_auth_left",
        "_auth_timeout",
        "_auth_timer",
        "_authenticating",
        "_finishing",
        "_on_finished",
        "_presence_retry",
        "_typing_limit",
        "address",
        "conn",
        "conn_id",
        "conversations",
        "requests",
        "send_order",
        "services",
        "user",
        "user_id",
    )

    def __init__(
        self,
        services: Services,
        conn: Connection,
        request: Request,
        on_finished: Callable[[Session], None],
        *,
        auth_timeout: float,
    ) -> None:
        self.services = services
        self.conn = conn
        self.conn_id = next(_connection_ids)
        self.user: UserRecord | None = None
        self.user_id = 0
        self.conversations: set[int] = set()
        self.address = client_address(conn.remote_address(), request.headers, services.trusted_proxies)
        self.requests = Dispatcher(services, self, conn, auth_clock=self)
        self._on_finished = on_finished
        self._auth_timeout = auth_timeout
        """Seconds an unauthenticated connection is kept (``auth_timeout_seconds``)."""
        self._auth_timer: asyncio.TimerHandle | None = None
        self._authenticating = False
        """An authentication request of this connection is being served (counted by ``services.auth_first``)."""
        self._auth_left: float | None = None
        """Seconds the deadline had left when an authentication request was taken up (held while it is served)."""
        self._finishing: asyncio.Task[None] | None = None  # held: the loop keeps only weak references
        self._announcing: asyncio.Task[None] | None = None  # the first "online" announcement; held, as below
        self._presence_retry: asyncio.Task[None] | None = None  # held: the loop keeps only weak references
        self._typing_limit: TokenBucket | None = None  # made on first use: most connections never type
        self.send_order = SendOrder()

    @property
    def typing_limit(self) -> TokenBucket:
        """This connection's ``typing`` rate limit (``typing_per_second``, ``typing_burst``)."""
        if self._typing_limit is None:
            config = self.services.typing
            self._typing_limit = TokenBucket(config.typing_per_second, config.typing_burst)
        return self._typing_limit

    def refresh_user(self, user: UserRecord) -> None:
        """The user's record as just stored by a request of this connection (profile, token generation)."""
        if self.user is not None and self.user.id == user.id:
            self.user = user

    def end_session_before(self, generation: int, *, disabled: bool = False) -> bool:
        if self.user is None or self.user.token_generation >= generation:
            return False
        code, reason = (
            (CloseCode.ACCOUNT_DISABLED, "account disabled")
            if disabled
            else (
                CloseCode.SESSION_ENDED,
                "session ended",
            )
        )
        # On the next loop turn: when this connection made the request that ended
        # its sessions (session.end_all), its reply is queued by then, and goes first.
        asyncio.get_running_loop().call_soon(self.conn.close, code, reason)
        return True

    @property
    def outbound(self) -> Connection:
        """The writer the registry's fan-out calls directly (read when a conversation is routed here, not per frame)."""
        return self.conn

    def send_payload(self, payload: bytes, frame_type: str) -> None:
        self.services.metrics.frames_out_by[frame_type].inc()
        self.conn.send_frame(codec.websocket_text_frame(payload))

    def close(self, code: int, reason: str) -> None:
        """Close from the server's side after the frames already queued."""
        self.conn.close(code, reason)

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        """The connection is open: greet the client and start its authentication clock."""
        limits = self.services.limits
        self.services.metrics.connections.inc()
        logs.info("connect", conn_id=self.conn_id, address=self.address)
        self.services.metrics.frames_out_by["hello"].inc()
        self.conn.send_frame(
            hello_frame(
                limits.max_frame_bytes,
                limits.max_message_chars,
                limits.rate_per_second,
                limits.rate_burst,
                int(self._auth_timeout * 1000),
            )
        )
        self._auth_timer = asyncio.get_running_loop().call_later(self._auth_timeout, self._auth_expired)

    def received(self, raw: str | bytes) -> None:
        """A message from the client (its connection reassembled and decoded it).
        An authenticated client's may wait while a storm authenticates (server/auth_first.py)."""
        if self.user is None or self.services.auth_first.admit(self, raw):
            self.requests.received(raw)

    def serve(self, raw: str | bytes) -> None:
        """A request that waited behind a storm's authentications, to the dispatcher now."""
        self.requests.received(raw)

    def connection_lost(self) -> None:
        self.services.auth_first.forget(self)
        if self._auth_timer is not None:
            self._auth_timer.cancel()
        if self._presence_retry is not None:
            self._presence_retry.cancel()
            self._presence_retry = None
        self._finishing = asyncio.get_running_loop().create_task(self._finish())

    async def _finish(self) -> None:
        try:
            await self.requests.finish()
            await self._teardown()
        finally:
            self._on_finished(self)

    def hold_auth_deadline(self) -> None:
        """An authentication request of this unauthenticated connection is
        taken up: its serving does not count against the deadline (the
        deadline measures the client's delay in asking, not the server's in
        answering). One that is taken up after the deadline does not stop it."""
        if not self._authenticating:
            self._authenticating = True
            self.services.auth_first.started()
        timer = self._auth_timer
        if timer is None or self._auth_left is not None:
            return
        left = timer.when() - asyncio.get_running_loop().time()
        if left <= 0:
            return  # due: it closes the connection at its turn
        timer.cancel()
        self._auth_timer = None
        self._auth_left = left

    def release_auth_deadline(self) -> None:
        """That request is answered: if it did not authenticate, the deadline
        runs on with the time it had left (a failed attempt gains nothing)."""
        if self._authenticating:
            self._authenticating = False
            self.services.auth_first.finished()
        left = self._auth_left
        if left is None:
            return
        self._auth_left = None
        if self.user is None and not self.conn.is_closing():
            self._auth_timer = asyncio.get_running_loop().call_later(left, self._auth_expired)

    def _auth_expired(self) -> None:
        if self.user is None and not self.conn.is_closing():
            logs.info("auth_timeout", conn_id=self.conn_id)
            self.close(CloseCode.AUTH_TIMEOUT, "authentication timeout")

    async def _teardown(self) -> None:
        self.services.metrics.connections.dec()
        logs.info(
            "disconnect",
            conn_id=self.conn_id,
            user_id=self.user_id or None,
            code=self.conn.close_code,
        )
        if self.user is None:
            return
        self.services.metrics.authenticated.dec()
        self.services.registry.remove(self)
        if self._announcing is not None:
            await self._announcing  # the "online" goes out before the "offline", never after it
        if await self.services.presence.disconnected(self.user_id):
            try:
                await on_offline(self.services, self.user_id)
            except StoreUnavailable as exc:
                logs.warning("presence_offline_failed", user_id=self.user_id, error=str(exc))

    def _check_connection_limit(self, user_id: int) -> None:
        limit = self.services.limits.max_connections_per_user
        if self.services.registry.connections_of(user_id) >= limit:
            raise ApiError(ErrorCode.RATE_LIMITED, f"at most {limit} connections per user")

    async def authenticate(self, user: UserRecord, conversation_ids: Sequence[int] | None = None) -> None:
        """Make this connection the user's: route their conversations here
        (``conversation_ids`` when the caller read them with the user, as ``auth``
        does; otherwise read here, in a batch with other connections')."""
        if self.user is not None:
            if self.user.id == user.id:
                self.user = user  # as stored now: a workspace role changed since applies from here
                return
            raise ApiError(ErrorCode.FORBIDDEN, "this connection is authenticated as another user")
        self._check_connection_limit(user.id)
        if conversation_ids is None:
            found = (await self.services.directory.sessions_of([user.id])).get(user.id)
            conversation_ids = found.conversation_ids if found is not None else ()
        conversation_ids = list(conversation_ids)
        # Checked again: other connections of the user may have authenticated during an await.
        self._check_connection_limit(user.id)
        self.user = user
        self.user_id = user.id
        if self._auth_timer is not None:
            self._auth_timer.cancel()
            self._auth_timer = None
        self.services.metrics.authenticated.inc()
        limits = self.services.limits
        if limits.catchup_burst:
            # Catching up after a reconnect (history pages, resent sends) must not
            # be throttled into failure by the ordinary burst; once per connection.
            self.requests.bucket.grant(limits.catchup_burst, limits.catchup_window_seconds)
        self.services.registry.add(self, conversation_ids)
        logs.info("auth", conn_id=self.conn_id, user_id=user.id)
        # From here on the login has succeeded: presence is a consequence of it,
        # and a store failure in it must not answer `unavailable` to a login
        # that took effect (the connection is registered and would stay so).
        try:
            came_online = await self.services.presence.connected(user.id)
        except Exception as exc:  # the presence store's own heartbeat re-records connections
            logs.warning("presence_online_failed", conn_id=self.conn_id, user_id=user.id, error=repr(exc))
            return
        if came_online:
            # Announced from a task of its own, after the reply: its audience is a
            # store read (member_counts) which, in a reconnect storm, waits its
            # turn among the storm's batched reads, and held this client's `auth`
            # reply for as long (BENCHMARKS.md, "storm-ready2"). The connection is
            # counted online already (above), so presence.query sees it at once.
            announce = self._announce_online(conversation_ids)
            self._announcing = asyncio.get_running_loop().create_task(announce)

    async def _announce_online(self, conversation_ids: list[int]) -> None:
        """The "online" event to whoever shares a conversation with the user. The
        teardown waits for it before the "offline"; a failure is repaired later
        while the connection lasts."""
        try:
            await on_online(self.services, self.user_id, conversation_ids)
        except Exception as exc:
            logs.warning("presence_online_failed", conn_id=self.conn_id, user_id=self.user_id, error=repr(exc))
            if self._finishing is None:  # gone already: its "offline" follows, nothing to repair
                retry = self._announce_online_later(conversation_ids)
                self._presence_retry = asyncio.get_running_loop().create_task(retry)
        finally:
            self._announcing = None

    async def _announce_online_later(self, conversation_ids: list[int]) -> None:
        """Repair a failed "online" announcement while this connection lasts
        (cancelled when it ends, so it never follows the user's "offline")."""
        for delay in PRESENCE_RETRY_SECONDS:
            await asyncio.sleep(delay)
            try:
                await on_online(self.services, self.user_id, conversation_ids)
            except Exception as exc:
                logs.warning("presence_online_failed", conn_id=self.conn_id, user_id=self.user_id, error=repr(exc))
            else:
                logs.info("presence_online_repaired", conn_id=self.conn_id, user_id=self.user_id)
                break
        self._presence_retry = None
