"""How full each store's connection pools are, for hubbub_pool_* (server/pool_metrics.py).

Each backend's pool is read the way its driver allows:

- asyncpg (storage/postgres.py): ``get_size``, ``get_idle_size`` and
  ``get_max_size`` are public; who waits for a connection is not, so
  ``counted_acquire`` counts the tasks inside ``Pool.acquire``;
- pymongo: nothing to read, but the driver's connection-pool (CMAP) events
  tell everything: ``MongoPoolEvents`` (storage/mongo_pools.py) keeps
  per-server counts of them.

Reading is cheap (a few integers) and happens only on a scrape. No driver
is imported here: a server imports only the drivers of its backends.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncpg
    from asyncpg.pool import PoolAcquireContext, PoolConnectionProxy


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
