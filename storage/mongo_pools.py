"""pymongo's connection-pool (CMAP) events, counted into ``PoolUsage``
(storage/pool_usage.py): pymongo has no pool statistics to read, so
MongoMessageLog.open passes a ``MongoPoolEvents`` to its client as an event
listener, and hubbub_pool_* reads its counts at each scrape."""

from __future__ import annotations

from pymongo import monitoring

from hubbub.storage.pool_usage import PoolUsage


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
