"""Start-up, serving and graceful shutdown of one Hubbub process."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import signal
import socket
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

import redis.asyncio as redis
from redis.asyncio.cluster import RedisCluster
from websockets.exceptions import NegotiationError as HandshakeNegotiationError
from websockets.http11 import Request
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

from hubbub.protocol.errors import CloseCode
from hubbub.protocol.frames import PROTOCOL_VERSION
from hubbub.server import logs, tracing
from hubbub.server.account_check import AccountCheck
from hubbub.server.auth import Passwords, Tokens, load_or_create_dev_secret
from hubbub.server.broker import Broker, InProcessBroker
from hubbub.server.config import ConnectionConfig, Settings
from hubbub.server.connection import LOGGER, Connection
from hubbub.server.guarded import guarded
from hubbub.server.http import Answer, ProcessRequest, make_process_request
from hubbub.server.keepalive import Keepalive
from hubbub.server.listings import PublicChannels
from hubbub.server.lookups import BatchProgress, coalesced, coalesced_log
from hubbub.server.loop_lag import LoopLagMonitor
from hubbub.server.metrics import Metrics
from hubbub.server.presence import LocalPresence, PresenceTracker
from hubbub.server.retention import RetentionPurge
from hubbub.server.retention_lock import NoLock, PostgresAdvisoryLock, PurgeLock, RedisLock
from hubbub.server.retention_policy import RetentionPolicy
from hubbub.server.services import Services
from hubbub.server.session import Session
from hubbub.server.startup import EXIT_CODE, StartupFailure, check_redis, explain
from hubbub.storage.factory import Stores, open_stores
from hubbub.storage.replica import reporting_replica
from hubbub.storage.supervision import counting_failures

SUPPORTED_SUBPROTOCOLS = (Subprotocol(PROTOCOL_VERSION),)


class NegotiationError(HandshakeNegotiationError):
    """A websockets NegotiationError, so the handshake fails with HTTP 400, not 500."""


def select_subprotocol(server_protocol: ServerProtocol, offered: Sequence[Subprotocol]) -> Subprotocol | None:
    """hubbub.v1 when offered; none offered means v1 too (any plain client works).

    Offering only versions this server does not speak fails the handshake
    (HTTP 400), so a v2-only client learns at once instead of misparsing.
    """
    for protocol in offered:
        if protocol in SUPPORTED_SUBPROTOCOLS:
            return protocol
    if offered:
        raise NegotiationError(f"unsupported subprotocols {', '.join(offered)}; this server speaks {PROTOCOL_VERSION}")
    return None


class App:
    """One running server: stores, services and the WebSocket listener (the ``Host``
    of every connection, see server/connection.py)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.sessions: set[Session] = set()
        self.services: Services | None = None
        self.server: asyncio.Server | None = None
        self.serving = False
        self._sessions_gone: asyncio.Event | None = None
        self._origins: list[re.Pattern[str] | None] | None = None
        self._respond: ProcessRequest | None = None
        self._stores: Stores | None = None
        self._keepalive: Keepalive | None = None
        self._loop_lag: LoopLagMonitor | None = None
        self.retention: RetentionPurge | None = None
        """The retention purge (server/retention.py), once started."""
        self._account_check: AccountCheck | None = None
        self._redis: redis.Redis | RedisCluster | None = None
        self.instance_id = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self._inflight: set[asyncio.Task[None]] = set()
        self._listened = False

    @property
    def port(self) -> int:
        if self.server is None:
            raise RuntimeError("the server is not listening")
        port: int = next(iter(self.server.sockets)).getsockname()[1]
        return port

    async def start(self) -> None:
        s = self.settings
        data_dir = Path(s.process.data_dir)
        secret = s.tokens.jwt_secret
        try:
            if not secret:
                secret = load_or_create_dev_secret(data_dir)
                logs.warning(
                    "dev_jwt_secret", path=str(data_dir / "jwt-secret"), hint="set HUBBUB_JWT_SECRET in production"
                )
            # The stores' flushers count their failures here, their replica routes their fallbacks.
            with counting_failures(self.metrics.task_failed), reporting_replica(self.metrics):
                self._stores = await open_stores(s.storage)
            if s.redis.redis_url:
                await check_redis(s.redis.redis_url, s.redis.storage_timeout_seconds, cluster=s.redis.redis_cluster)
        except Exception as exc:
            failure = await explain(exc, s.storage, s.redis)
            if failure is None:
                raise
            raise failure from exc
        directory, messages = self._stores.directory, self._stores.messages
        for reader in self._stores.pool_readers:
            self.metrics.pools.add(reader)
        loop = asyncio.get_running_loop()
        passwords = await loop.run_in_executor(None, Passwords, s.passwords)
        broker, presence = self._routing()
        broker = tracing.traced(broker, self.instance_id)
        timeout = s.storage.storage_timeout_seconds
        # The batches of server/lookups.py and server/listings.py serve hundreds of
        # requests each: bounded by lookup_batch_timeout_seconds, not one request's.
        batch_timeout = s.storage.lookup_batch_timeout_seconds
        batch_directory = guarded(directory, self.metrics, batch_timeout)
        batch_messages = guarded(messages, self.metrics, batch_timeout)
        # One per store (one when both are PostgreSQL): a request waiting on a batch is
        # refused only once its store answered none of its batches for its whole budget.
        self._loop_lag = LoopLagMonitor(self.metrics.event_loop_lag, self.metrics.task_failed)
        progress = {name: BatchProgress(self._loop_lag) for name in (directory.name, messages.name)}
        retention = RetentionPolicy(s.retention)
        services = self.services = Services(
            limits=s.limits,
            trusted_proxies=s.http.proxy_networks,
            presence_max_members=s.presence.presence_max_members,
            typing=s.typing,
            message_limits=s.messages,
            profile_limits=s.profiles,
            directory=coalesced(
                guarded(directory, self.metrics, timeout), batches=batch_directory, progress=progress[directory.name]
            ),
            messages=coalesced_log(
                guarded(messages, self.metrics, timeout), batches=batch_messages, progress=progress[messages.name]
            ),
            broker=broker,
            presence=presence,
            passwords=passwords,
            tokens=Tokens(secret, s.tokens.jwt_issuer, s.tokens.jwt_audience, s.tokens.jwt_ttl_seconds),
            metrics=self.metrics,
            instance_id=self.instance_id,
            presence_batch_seconds=s.presence.presence_batch_seconds,
            retention=retention,
            public_channels=PublicChannels(batch_directory, batch_messages, retention, progress[directory.name]),
        )
        await services.start()
        self.retention = RetentionPurge(
            services.directory, services.messages, services.retention, s.retention, self._purge_lock(), self.metrics
        )
        self.retention.start()
        self._keepalive = Keepalive(
            lambda: [session.conn for session in self.sessions],
            s.connection.ping_interval_seconds,
            s.connection.ping_timeout_seconds,
            self.metrics.task_failed,
        )
        self._keepalive.start()
        self._loop_lag.start()
        self._account_check = AccountCheck(
            services.directory,
            services.registry,
            interval=s.admin.account_check_seconds,
            lookback=s.admin.account_check_lookback_seconds,
            on_failure=self.metrics.task_failed,
        )
        self._account_check.start()
        http = s.http
        self._origins = http.origins
        self._respond = make_process_request(services, http, lambda: len(self.sessions))
        self.serving = True
        self.server = await loop.create_server(
            lambda: Connection(self),
            http.host,
            http.port,
            # A connect storm must queue, not have SYNs dropped into TCP's
            # 1-3-7 s retry schedule (asyncio's default backlog is 100).
            backlog=http.listen_backlog,
        )
        self._listened = True
        logs.info(
            "listening",
            host=http.host,
            port=self.port,
            accounts=directory.name,
            messages=messages.name,
            profile=s.process.profile,
            instance=self.instance_id,
            routing=("redis-cluster" if s.redis.redis_cluster else "redis") if s.redis.redis_url else "in-process",
        )

    def _purge_lock(self) -> PurgeLock:
        """One purging instance at a time: PostgreSQL's advisory lock when the
        directory is there, else Redis's when configured, else none (server/retention_lock.py)."""
        s = self.settings
        stores = self._stores
        if stores is not None and stores.postgres_pools is not None and stores.directory.name == "postgres":
            return PostgresAdvisoryLock(stores.postgres_pools.primary, s.storage.storage_timeout_seconds)
        if self._redis is not None:
            return RedisLock(self._redis, f"{s.redis.redis_prefix}:retention:lock", s.retention.retention_lock_seconds)
        return NoLock()

    def _routing(self) -> tuple[Broker, PresenceTracker]:
        """In-process routing alone, or Redis routing and presence across instances."""
        config = self.settings.redis
        if not config.redis_url:
            return InProcessBroker(self.metrics), LocalPresence()
        from hubbub.server.broker_redis import RedisBroker
        from hubbub.server.pool_metrics import redis_usage
        from hubbub.server.presence_redis import RedisPresence
        from hubbub.server.redis_client import cluster_client, pooled_client

        broker: Broker
        if config.redis_cluster:
            from hubbub.server.broker_redis_cluster import RedisClusterBroker

            broker = RedisClusterBroker(config, self.instance_id, self.metrics)
            self._redis = cluster_client(config)
            # Every presence key in one slot (a hash tag), commands bounded here: the pool does not wait.
            key_prefix, gate = f"{{{config.redis_prefix}}}", asyncio.Semaphore(config.redis_pool_max)
        else:
            broker = RedisBroker(config, self.instance_id, self.metrics)
            redis_client = self._redis = pooled_client(config)
            self.metrics.pools.add(lambda: redis_usage(redis_client, "presence"))
            key_prefix, gate = config.redis_prefix, None
        presence_config = self.settings.presence
        presence = RedisPresence(
            self._redis,
            key_prefix,
            self.instance_id,
            heartbeat_seconds=presence_config.presence_heartbeat_seconds,
            ttl_seconds=presence_config.presence_ttl_seconds,
            on_failure=self.metrics.task_failed,
            gate=gate,
        )
        return broker, presence

    # -- Host (server/connection.py) -----------------------------------------

    @property
    def connection_config(self) -> ConnectionConfig:
        return self.settings.connection

    def new_protocol(self) -> ServerProtocol:
        return ServerProtocol(
            origins=self._origins,
            select_subprotocol=select_subprotocol,
            extensions=None,  # no per-message deflate: it costs CPU and memory per connection
            max_size=self.settings.limits.hard_frame_bytes,
            logger=LOGGER,
        )

    def respond(self, request: Request) -> Answer:
        if self._respond is None:
            raise RuntimeError("a request before start-up finished")
        return self._respond(request)

    def open_session(self, connection: Connection, request: Request) -> Session:
        if self.services is None:
            raise RuntimeError("a connection before start-up finished")
        session = Session(
            self.services,
            connection,
            request,
            self._session_finished,
            auth_timeout=self.settings.connection.auth_timeout_seconds,
        )
        self.sessions.add(session)
        session.start()
        return session

    def _session_finished(self, session: Session) -> None:
        self.sessions.discard(session)
        if not self.sessions and self._sessions_gone is not None:
            self._sessions_gone.set()

    async def stop(self, code: int = CloseCode.GOING_AWAY, reason: str = "server shutting down") -> None:
        """Stop accepting, close every connection with ``code``, wait for handlers, close stores."""
        if self.retention is not None:
            await self._bounded("retention", self.retention.stop())
            self.retention = None
        if self._keepalive is not None:
            await self._keepalive.stop()
        if self._loop_lag is not None:
            await self._loop_lag.stop()
        if self._account_check is not None:
            await self._account_check.stop()
        self.serving = False
        if self.server is not None:
            self.server.close()
            self._sessions_gone = asyncio.Event()
            # Each close frame goes after what is already queued for that connection.
            for session in list(self.sessions):
                session.close(code, reason)
            try:
                async with asyncio.timeout(self.settings.process.shutdown_grace_seconds):
                    if self.sessions:
                        await self._sessions_gone.wait()
                    await self.server.wait_closed()
            except TimeoutError:
                logs.warning("shutdown_timeout", open_connections=len(self.sessions))
            self.server = None
        if self.services is not None:
            await self._bounded("services", self.services.close())
        self.metrics.pools.clear()
        if self._redis is not None:
            await self._bounded("redis", self._redis.aclose())
            self._redis = None
        if self._stores is not None:
            await self._bounded("stores", self._stores.close())
            self._stores = None
        if self._listened:  # after a failed start-up, startup_failed is the only line
            logs.info("stopped")

    async def _bounded(self, step: str, closing: Coroutine[Any, Any, None]) -> None:
        """One step of the shutdown, given the shutdown grace at most: a
        component that never finishes closing (a driver stuck on a dead
        connection) must not keep the process from exiting."""
        try:
            async with asyncio.timeout(self.settings.process.shutdown_grace_seconds):
                await closing
        except TimeoutError:
            logs.warning("shutdown_step_timeout", step=step)


async def run(settings: Settings) -> int:
    """Serve until SIGTERM or SIGINT, then shut down gracefully; the exit code."""
    loop = asyncio.get_running_loop()
    stop: asyncio.Future[CloseCode] = loop.create_future()

    def on_signal(code: CloseCode) -> None:
        if not stop.done():
            stop.set_result(code)

    # Installed before start-up, so a signal at any point after it is a graceful stop.
    # SIGTERM is what orchestrators send on redeploy: 1012 tells clients to reconnect.
    loop.add_signal_handler(signal.SIGTERM, on_signal, CloseCode.SERVICE_RESTART)
    loop.add_signal_handler(signal.SIGINT, on_signal, CloseCode.GOING_AWAY)
    app = App(settings)
    try:
        await app.start()
    except StartupFailure as failure:
        failure.log()
        await app.stop()
        return EXIT_CODE
    code = await stop
    logs.info("shutdown", close_code=int(code))
    await app.stop(code, "server restarting" if code == CloseCode.SERVICE_RESTART else "server shutting down")
    return 0
