"""hubbub_pool_*: the connection pools of the stores and of Redis, read at each scrape.

A custom collector, not gauges kept up to date: the drivers own the
numbers (storage/pool_usage.py says how each is read), and reading them
when Prometheus asks costs nothing between scrapes. Every family is
exposed even with no pool to report (a SQLite server without Redis), so
that a dashboard's query finds the name and the doc test finds its row.
"""

from __future__ import annotations

from collections.abc import Iterator

import redis.asyncio as redis
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from hubbub.server import logs
from hubbub.server.redis_client import CountingBlockingConnectionPool
from hubbub.storage.pool_usage import PoolReader, PoolUsage

LABELS = ["store", "pool"]
FAMILIES = (
    ("hubbub_pool_connections", "Connections a pool holds open (idle or in use), by store and pool.", "open"),
    ("hubbub_pool_connections_in_use", "Connections of a pool lent to a call right now.", "in_use"),
    ("hubbub_pool_waiting", "Calls waiting for a connection of a pool (all in use, or one opening).", "waiting"),
    ("hubbub_pool_max_connections", "The most connections a pool opens (its configured size).", "max_size"),
)


def redis_usage(client: redis.Redis, pool_name: str) -> list[PoolUsage]:
    """A redis-py client's pool: idle and in use from ``get_connection_count``,
    waiting from server/redis_client.py's counting pool."""
    pool = getattr(client, "connection_pool", None)
    if pool is None:  # a client without one pool (a cluster client keeps one per node)
        return []
    idle = in_use = 0
    for count, attributes in pool.get_connection_count():
        if attributes.get("db.client.connection.state") == "used":
            in_use += count
        else:
            idle += count
    waiting = pool.waiting if isinstance(pool, CountingBlockingConnectionPool) else 0
    return [PoolUsage("redis", pool_name, idle + in_use, in_use, waiting, int(pool.max_connections))]


class PoolCollector(Collector):
    """The hubbub_pool_* families of whatever pools were added (App.start adds them)."""

    def __init__(self) -> None:
        self._readers: list[PoolReader] = []

    def add(self, reader: PoolReader) -> None:
        self._readers.append(reader)

    def clear(self) -> None:
        """The pools are closed: nothing more to read."""
        self._readers = []

    def usage(self) -> list[PoolUsage]:
        usage: list[PoolUsage] = []
        for reader in self._readers:
            try:
                usage.extend(reader())
            except Exception as exc:  # a scrape must not fail for one pool's driver
                logs.warning("pool_metrics_failed", error=f"{type(exc).__name__}: {exc}")
        return usage

    def collect(self) -> Iterator[GaugeMetricFamily]:
        usage = self.usage()
        for name, documentation, field in FAMILIES:
            family = GaugeMetricFamily(name, documentation, labels=LABELS)
            for pool in usage:
                family.add_metric([pool.store, pool.pool], getattr(pool, field))
            yield family
