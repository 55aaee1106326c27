"""Start-up failures an operator can act on: which store, at which address
(password redacted), what went wrong and what to do, as one ``startup_failed``
JSON line; ``hubbub serve`` and ``hubbub migrate`` then exit 2.

Nothing here runs on the happy path except the Redis ping (the only store
that is otherwise connected lazily): a failure is explained after the fact,
from the exception and, where it could be one of two PostgreSQL DSNs, by
asking the primary again.
"""

from __future__ import annotations

import re
import socket
import sqlite3
import ssl
import traceback
from dataclasses import dataclass

from hubbub.server import logs
from hubbub.server.config import RedisConfig
from hubbub.storage.config import StorageConfig
from hubbub.storage.errors import StoreUnavailable

EXIT_CODE = 2


@dataclass(frozen=True)
class StartupFailure(Exception):
    store: str
    address: str
    error: str
    hint: str

    def log(self) -> None:
        logs.error("startup_failed", store=self.store, address=self.address, error=self.error, hint=self.hint)


_PASSWORD_PARAM = re.compile(r"(?i)((?:^|[?&\s])password=)[^&\s]*")


def redact(url: str) -> str:
    """``url`` with the password of its user info and any ``password=``
    parameter replaced by ``***``; works on multi-host URLs too."""
    scheme, sep, rest = url.partition("://")
    if sep:
        netloc_end = len(rest)
        for stop in "/?#":
            index = rest.find(stop)
            if index != -1:
                netloc_end = min(netloc_end, index)
        netloc, tail = rest[:netloc_end], rest[netloc_end:]
        if "@" in netloc:
            userinfo, host = netloc.rsplit("@", 1)
            if ":" in userinfo:
                userinfo = userinfo.split(":", 1)[0] + ":***"
            netloc = f"{userinfo}@{host}"
        url = f"{scheme}://{netloc}{tail}"
    return _PASSWORD_PARAM.sub(r"\1***", url)


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and what caused it, outermost first."""
    found: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in found:
        found.append(current)
        current = current.__cause__ or current.__context__
    return found


def _raised_in(exc: BaseException, package: str) -> bool:
    """Whether any frame of ``exc``'s chain is in ``package``'s sources."""
    marker = f"/{package}/"
    for link in _chain(exc):
        if type(link).__module__.split(".")[0] == package:
            return True
        if any(marker in frame.filename for frame in traceback.extract_tb(link.__traceback__)):
            return True
    return False


def _refused(exc: BaseException) -> bool:
    return any(isinstance(link, ConnectionRefusedError) or "refused" in str(link).lower() for link in _chain(exc))


def _timed_out(exc: BaseException) -> bool:
    return any(isinstance(link, TimeoutError) for link in _chain(exc))


def postgres_failure(exc: BaseException, dsn: str, setting: str) -> StartupFailure:
    import asyncpg

    address = redact(dsn)
    links = _chain(exc)
    cause = next((link for link in links if isinstance(link, asyncpg.PostgresError)), links[-1])
    text = str(cause) or type(cause).__name__
    if isinstance(cause, asyncpg.InvalidCatalogNameError):
        hint = f"create the database (createdb, or CREATE DATABASE) or correct the database name in {setting}"
    elif isinstance(cause, asyncpg.InvalidPasswordError):
        hint = f"correct the password in {setting}"
    elif isinstance(cause, asyncpg.InvalidAuthorizationSpecificationError):
        hint = (
            f"correct the role (user name) in {setting}, or create it (CREATE ROLE ... LOGIN); "
            "check that pg_hba.conf lets it in from this host"
        )
    elif isinstance(cause, asyncpg.InsufficientPrivilegeError):
        hint = (
            "give the role the rights the migrations need (CREATE on the database), or run "
            "`hubbub migrate` as a role that has them and set HUBBUB_AUTO_MIGRATE=false"
        )
    elif isinstance(cause, asyncpg.TooManyConnectionsError):
        hint = "raise the server's max_connections, or lower HUBBUB_POSTGRES_POOL_MAX (per replica)"
    elif isinstance(cause, asyncpg.CannotConnectNowError):
        hint = "PostgreSQL is starting or shutting down: start again once it accepts connections"
    elif isinstance(cause, asyncpg.PostgresError):
        hint = "PostgreSQL refused a statement at start-up (a migration?): fix what the error names, then start again"
    elif _refused(exc):
        text = "connection refused: nothing accepts connections at that host and port"
        hint = f"start PostgreSQL, or correct the host and port in {setting}"
    elif any(isinstance(link, socket.gaierror) for link in links):
        text = f"cannot resolve the host name: {cause}"
        hint = f"correct the host in {setting}"
    elif _timed_out(exc):
        text = "no answer in time (a firewall, a wrong address, or the server is overloaded)"
        hint = f"check the host and port in {setting} and that this machine may reach them"
    elif any(isinstance(link, ssl.SSLError) for link in links):
        hint = f"check the TLS options (sslmode, sslrootcert) in {setting}"
    else:
        hint = f"check {setting} and that PostgreSQL is up and reachable from here"
    return StartupFailure("postgres", address, text, hint)


def mongo_failure(exc: BaseException, url: str) -> StartupFailure:
    from pymongo.errors import ConfigurationError, OperationFailure

    links = _chain(exc)
    cause = next((link for link in links if type(link).__module__.startswith("pymongo")), links[-1])
    text = str(cause.detail if isinstance(cause, StoreUnavailable) else cause) or type(cause).__name__
    # pymongo appends its timeouts and the whole topology description.
    text = text.split(" (configured timeouts")[0].split(", Timeout:")[0]
    if isinstance(cause, ConfigurationError):
        hint = "correct HUBBUB_MONGO_URL (mongodb://host:port/?replicaSet=... or mongodb+srv://...)"
    elif isinstance(cause, OperationFailure) and cause.code == 18:
        hint = "correct the user and password (and authSource) in HUBBUB_MONGO_URL"
    elif _refused(exc) or "connect call failed" in text.lower():
        hint = "start MongoDB, or correct the hosts and ports in HUBBUB_MONGO_URL"
    else:
        hint = (
            "check that MongoDB is up and reachable from here; HUBBUB_MONGO_URL's hosts, port and "
            "replicaSet; and HUBBUB_STORAGE_TIMEOUT_SECONDS"
        )
    return StartupFailure("mongo", redact(url), text, hint)


def redis_failure(exc: BaseException, url: str) -> StartupFailure:
    from redis.exceptions import AuthenticationError, ResponseError

    links = _chain(exc)
    text = str(exc) or type(exc).__name__
    if isinstance(exc, ValueError):
        hint = "correct HUBBUB_REDIS_URL (redis://host:port/db, or rediss:// for TLS)"
    elif any(isinstance(link, AuthenticationError) for link in links) or (
        isinstance(exc, ResponseError) and ("NOAUTH" in text or "WRONGPASS" in text)
    ):
        hint = "correct the user and password in HUBBUB_REDIS_URL"
    elif _refused(exc):
        hint = "start Redis, or correct the host and port in HUBBUB_REDIS_URL (empty runs a single instance)"
    else:
        hint = "check that Redis is up and reachable from here, and HUBBUB_REDIS_URL"
    return StartupFailure("redis", redact(url), text, hint)


async def check_redis(url: str, timeout: float, *, cluster: bool = False) -> None:
    """One PING: routing and presence otherwise connect lazily, and a wrong
    URL would only show as warnings after the server said it was listening.
    A node of a Redis Cluster must be configured as one (HUBBUB_REDIS_CLUSTER),
    or every command of another slot fails with MOVED."""
    if cluster:
        await check_redis_cluster(url, timeout)
        return
    import redis.asyncio as redis
    from redis.exceptions import ResponseError

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    except ValueError as exc:
        raise redis_failure(exc, url) from exc
    try:
        await client.ping()
        try:
            enabled = str((await client.info("cluster")).get("cluster_enabled", "0"))
        except ResponseError:
            enabled = "0"  # INFO refused (some managed Redis): nothing to tell
    except Exception as exc:
        raise redis_failure(exc, url) from exc
    finally:
        await client.aclose()
    if enabled == "1":
        raise StartupFailure(
            "redis",
            redact(url),
            "this Redis is a node of a Redis Cluster",
            "set HUBBUB_REDIS_CLUSTER=true (or point HUBBUB_REDIS_URL at a single Redis)",
        )


async def check_redis_cluster(url: str, timeout: float) -> None:
    """The cluster's slot map read through the node of ``url``, and a PING of every master."""
    from redis.asyncio.cluster import RedisCluster
    from redis.exceptions import RedisClusterException

    try:
        client = RedisCluster.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    except (ValueError, RedisClusterException) as exc:
        raise redis_failure(exc, url) from exc
    try:
        await client.initialize()
        await client.ping(target_nodes=RedisCluster.PRIMARIES)
    except RedisClusterException as exc:
        text = str(exc) or type(exc).__name__
        raise StartupFailure(
            "redis",
            redact(url),
            text,
            "HUBBUB_REDIS_CLUSTER=true needs HUBBUB_REDIS_URL to be a node of a healthy Redis Cluster"
            " (or set it to false for a single Redis)",
        ) from exc
    except Exception as exc:
        raise redis_failure(exc, url) from exc
    finally:
        await client.aclose()


def _failed_to_connect(exc: BaseException) -> bool:
    """Whether ``exc`` comes from connecting (as opposed to a statement that failed)."""
    import asyncpg

    connect_errors = (
        OSError,
        TimeoutError,
        ssl.SSLError,
        asyncpg.InvalidCatalogNameError,
        asyncpg.InvalidAuthorizationSpecificationError,
        asyncpg.TooManyConnectionsError,
        asyncpg.CannotConnectNowError,
    )
    return any(isinstance(link, connect_errors) for link in _chain(exc))


async def _postgres_answers(dsn: str, timeout: float) -> bool:
    import asyncpg

    try:
        conn = await asyncpg.connect(dsn, timeout=timeout)
    except Exception:
        return False
    await conn.close()
    return True


async def explain(exc: BaseException, storage: StorageConfig, redis: RedisConfig) -> StartupFailure | None:
    """The store and address behind an exception raised while opening the
    stores, or None when it is no store's (a bug: the caller re-raises)."""
    if isinstance(exc, StartupFailure):
        return exc
    store = exc.store if isinstance(exc, StoreUnavailable) else ""
    if store == "postgres" or (not store and _raised_in(exc, "asyncpg")):
        dsn, setting = storage.postgres_dsn, "HUBBUB_POSTGRES_DSN"
        # Two DSNs and a failure to connect: the replica's, if the primary answers.
        if (
            storage.postgres_replica_dsn
            and _failed_to_connect(exc)
            and await _postgres_answers(dsn, storage.storage_timeout_seconds)
        ):
            dsn, setting = storage.postgres_replica_dsn, "HUBBUB_POSTGRES_REPLICA_DSN"
        return postgres_failure(exc, dsn, setting)
    if store == "mongo" or (not store and _raised_in(exc, "pymongo")):
        return mongo_failure(exc, storage.mongo_url)
    if not store and _raised_in(exc, "redis"):
        return redis_failure(exc, redis.redis_url)
    if store == "sqlite" or (not store and (isinstance(exc, sqlite3.Error) or _raised_in(exc, "aiosqlite"))):
        return StartupFailure(
            "sqlite", storage.data_dir, str(exc), "check that HUBBUB_DATA_DIR is a writable directory for this user"
        )
    if isinstance(exc, OSError) and exc.filename is not None:
        return StartupFailure(
            "data_dir", str(exc.filename), str(exc), "check that HUBBUB_DATA_DIR is a writable directory for this user"
        )
    return None
