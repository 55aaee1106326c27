"""The lock that lets one instance of a cluster purge at a time (server/retention.py).

- PostgreSQL directory: a session advisory lock (``pg_try_advisory_lock``) on
  a connection held for the pass. The database frees it when that
  connection ends, so a process that dies mid-pass frees it too.
- Redis configured (and no PostgreSQL directory): ``SET key token NX PX``,
  with a lifetime (``HUBBUB_RETENTION_LOCK_SECONDS``); the pass stops after
  half of it, and the lock is released by a compare-and-delete script, so an
  instance never frees a lock another took after its own expired.
- Neither (single-process SQLite): no lock. SQLite's one writer serialises
  purge steps anyway, and purging is idempotent.

A lock that cannot be taken because its store is down raises
StoreUnavailable: the pass is skipped and tried again at the next interval.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Protocol

from hubbub.storage.errors import StoreUnavailable

if TYPE_CHECKING:  # only the instances that configure them import the drivers
    import asyncpg
    import redis.asyncio as redis
    from redis.asyncio.cluster import RedisCluster

RETENTION_LOCK_ID = 0x68756262_00000015
"""The advisory lock key of the purge ("hubb", issue 15); the migration lock uses another."""

_RELEASE_SCRIPT = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"


class PurgeLock(Protocol):
    name: str
    """Which lock this is, for the log line of a pass: ``postgres``, ``redis`` or ``none``."""

    async def acquire(self) -> bool:
        """True when this instance now holds the lock; False when another does."""

    async def release(self) -> None: ...


class NoLock:
    name = "none"

    async def acquire(self) -> bool:
        return True

    async def release(self) -> None:
        return None


class PostgresAdvisoryLock:
    name = "postgres"

    def __init__(self, pool: asyncpg.Pool, timeout: float) -> None:
        self._pool = pool
        self._timeout = timeout
        self._conn: asyncpg.pool.PoolConnectionProxy[asyncpg.Record] | None = None

    async def acquire(self) -> bool:
        import asyncpg

        try:
            conn = await self._pool.acquire(timeout=self._timeout)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreUnavailable("postgres", f"retention lock: {exc}") from exc
        try:
            held = bool(
                await conn.fetchval("SELECT pg_try_advisory_lock($1)", RETENTION_LOCK_ID, timeout=self._timeout)
            )
        except BaseException as exc:
            conn.terminate()
            await self._pool.release(conn)
            if isinstance(exc, Exception):
                raise StoreUnavailable("postgres", f"retention lock: {exc}") from exc
            raise
        if not held:
            await self._pool.release(conn)
            return False
        self._conn = conn
        return True

    async def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            await conn.fetchval("SELECT pg_advisory_unlock($1)", RETENTION_LOCK_ID, timeout=self._timeout)
        except BaseException:
            conn.terminate()  # the session ends, and the lock with it
            raise
        finally:
            await self._pool.release(conn)


class RedisLock:
    name = "redis"

    def __init__(self, client: redis.Redis | RedisCluster, key: str, lifetime_seconds: float) -> None:
        self._client = client
        self.key = key
        self._lifetime_ms = max(1, int(lifetime_seconds * 1000))
        self._token: str | None = None

    async def acquire(self) -> bool:
        import redis.exceptions

        token = secrets.token_hex(16)
        try:
            taken = await self._client.set(self.key, token, nx=True, px=self._lifetime_ms)
        except redis.exceptions.RedisError as exc:
            raise StoreUnavailable("redis", f"retention lock: {exc}") from exc
        if not taken:
            return False
        self._token = token
        return True

    async def release(self) -> None:
        import redis.exceptions

        token, self._token = self._token, None
        if token is None:
            return
        try:
            await self._client.eval(_RELEASE_SCRIPT, 1, self.key, token)
        except redis.exceptions.RedisError as exc:
            # Left to its lifetime: the next pass anywhere waits that long at most.
            raise StoreUnavailable("redis", f"retention unlock: {exc}") from exc
