"""How full each store's connection pools are, for hubbub_pool_* (server/pool_metrics.py).

Each backend's pool is read the way its driver allows:

- asyncpg (storage/postgres.py): ``get_size``, ``get_idle_size`` and
  ``get_max_size`` are public; who waits for a connection is not, so
  ``counted_acquire`` counts the tasks inside ``Pool.acquire``;
- pymongo: nothing to read, but the driver's connection-pool (CMAP) events
  tell everything: ``MongoPoolEvents`` keeps per-server counts of them.

Reading is cheap (a few integers) and happens only on a scrape.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import asyncpg
from asyncpg.pool import PoolAcquireContext, PoolConnectionProxy
from pymongo import monitoring


@dataclass(frozen=True, slots=True)
class PoolUsage:
    """One pool at one moment."""

    store: str
    """``postgres``, ``mongo`` or ``redis``."""
    pool: str
    """Which pool of that store: ``primary``/``replica``, a MongoDB server's address, ``presence``."""
    open: int
    """Connections open, idle or in use."""
    in_use: int
    """Connections lent out to a call right now."""
    waiting: int
    """Calls waiting for a connection (all in use, or one being opened)."""
    max_size: int
    """The most connections the pool opens."""


PoolReader = Callable[[], Iterable[PoolUsage]]
"""What a store registers: its pools' usage, read at each scrape."""


# -- asyncpg --------------------------------------------------------------------

_waiting: dict[int, int] = {}
"""By ``id(pool)`` (asyncpg's Pool takes no weak reference): the tasks inside its
``acquire``. An entry exists only while some wait, so a closed pool leaves none."""


class counted_acquire:  # lower case: used as ``async with counted_acquire(pool)``, like ``pool.acquire()``
    """``pool.acquire()``, counting the tasks that wait in it."""

    __slots__ = ("_acquiring", "_pool")

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._acquiring: PoolAcquireContext = pool.acquire()

    async def __aenter__(self) -> PoolConnectionProxy[Any]:
        key = id(self._pool)
        _waiting[key] = _waiting.get(key, 0) + 1
        try:
            return await self._acquiring.__aenter__()
        finally:
            if (left := _waiting[key] - 1) > 0:
                _waiting[key] = left
            else:
                del _waiting[key]

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._acquiring.__aexit__(exc_type, exc, tb)


def asyncpg_usage(pool: asyncpg.Pool, name: str) -> PoolUsage:
    size = pool.get_size()
    in_use = size - pool.get_idle_size()
    return PoolUsage("postgres", name, size, in_use, _waiting.get(id(pool), 0), pool.get_max_size())


# -- pymongo --------------------------------------------------------------------


class _ServerPool:
    __slots__ = ("checked_in", "checked_out", "checkout_failed", "checkouts_started", "closed", "created", "max_size")

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self.created = self.closed = 0
        self.checkouts_started = self.checked_out = self.checkout_failed = self.checked_in = 0


class MongoPoolEvents(monitoring.ConnectionPoolListener):
    """pymongo's connection-pool events, counted per server (pymongo keeps a
    pool per server address); passed to the client as an event listener."""

    def __init__(self) -> None:
        self._pools: dict[str, _ServerPool] = {}

    def _pool(self, address: tuple[str, int | None]) -> _ServerPool:
        key = f"{address[0]}:{address[1]}"
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = _ServerPool(100)  # pymongo's default maxPoolSize
        return pool

    def usage(self) -> list[PoolUsage]:
        return [
            PoolUsage(
                "mongo",
                address,
                p.created - p.closed,
                p.checked_out - p.checked_in,
                p.checkouts_started - p.checked_out - p.checkout_failed,
                p.max_size,
            )
            for address, p in sorted(self._pools.items())
        ]

    def pool_created(self, event: monitoring.PoolCreatedEvent) -> None:
        key = f"{event.address[0]}:{event.address[1]}"
        max_size = event.options.get("maxPoolSize")
        self._pools[key] = _ServerPool(int(max_size) if max_size else 100)

    def pool_ready(self, event: monitoring.PoolReadyEvent) -> None:
        pass

    def pool_cleared(self, event: monitoring.PoolClearedEvent) -> None:
        pass  # its connections are closed one by one, each with its own event

    def pool_closed(self, event: monitoring.PoolClosedEvent) -> None:
        self._pools.pop(f"{event.address[0]}:{event.address[1]}", None)

    def connection_created(self, event: monitoring.ConnectionCreatedEvent) -> None:
        self._pool(event.address).created += 1

    def connection_ready(self, event: monitoring.ConnectionReadyEvent) -> None:
        pass

    def connection_closed(self, event: monitoring.ConnectionClosedEvent) -> None:
        self._pool(event.address).closed += 1

    def connection_check_out_started(self, event: monitoring.ConnectionCheckOutStartedEvent) -> None:
        self._pool(event.address).checkouts_started += 1

    def connection_check_out_failed(self, event: monitoring.ConnectionCheckOutFailedEvent) -> None:
        self._pool(event.address).checkout_failed += 1

    def connection_checked_out(self, event: monitoring.ConnectionCheckedOutEvent) -> None:
        self._pool(event.address).checked_out += 1

    def connection_checked_in(self, event: monitoring.ConnectionCheckedInEvent) -> None:
        self._pool(event.address).checked_in += 1
