"""Where a read that tolerates lag goes: the read replica, or the primary while the replica fails.

A backend with a read replica (storage/postgres.py) sends the reads that may
be a moment stale (browsing public channels, searching users) to the replica
and everything else to the primary (docs/storage.md, "Read replica"). A
replica that fails must not fail those reads: they are a convenience of the
primary's load, not a second dependency. So a failed replica read (a store
fault, or no answer within ``timeout_seconds``) is logged once as
``replica_unavailable``, answered from the primary, and for
``retry_seconds`` the replica is left alone (every such read goes straight
to the primary, at no cost of a doomed attempt); then the next read tries it
again, and its success is logged as ``replica_recovered``.

It knows nothing of PostgreSQL: the backend passes each read as two thunks,
one per server. It lives in ``storage/`` and must not import ``server/``;
the server's metrics come in as a ``ReplicaReport`` hook, taken (like the
task-failure hook of storage/supervision.py) from the enclosing
``reporting_replica`` block when the stores are opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from contextvars import ContextVar
from typing import Protocol, TypeVar

from hubbub.storage.errors import StoreUnavailable, describe

T = TypeVar("T")

# The server's own logger, by name (server/logs.py configures its JSON handler).
_logger = logging.getLogger("hubbub")


class ReplicaReport(Protocol):
    """What the server counts of the replica routing (server/metrics.py)."""

    def replica_healthy(self, healthy: bool) -> None:
        """The replica started (True) or stopped (False) serving the lag-tolerant reads."""

    def replica_fallback(self) -> None:
        """One lag-tolerant read was served by the primary because the replica failed or rests."""


_report: ContextVar[ReplicaReport | None] = ContextVar("hubbub_replica_report", default=None)


@contextlib.contextmanager
def reporting_replica(report: ReplicaReport) -> Iterator[None]:
    """Replica routes constructed inside this block report to ``report``."""
    token = _report.set(report)
    try:
        yield
    finally:
        _report.reset(token)


class ReplicaRoute:
    """The lag-tolerant reads of one backend: on the replica while it answers, else on the primary."""

    def __init__(
        self,
        store: str,
        *,
        timeout_seconds: float,
        retry_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.timeout_seconds = timeout_seconds
        self.retry_seconds = retry_seconds
        self._clock = clock
        self._resting_until: float | None = None
        """When the replica failed: the clock time from which it is tried again."""
        self._report = _report.get()
        if self._report is not None:
            self._report.replica_healthy(True)

    @property
    def healthy(self) -> bool:
        """False from a failed replica read until a replica read succeeds again."""
        return self._resting_until is None

    async def read(self, on_replica: Callable[[], Awaitable[T]], on_primary: Callable[[], Awaitable[T]]) -> T:
        """``on_replica()``, or ``on_primary()`` when the replica fails or is resting after a failure."""
        resting_until = self._resting_until
        if resting_until is None or self._clock() >= resting_until:
            try:
                # Bounded apart from the request's own budget: a replica that
                # hangs must leave the primary time to answer.
                async with asyncio.timeout(self.timeout_seconds):
                    result = await on_replica()
            except (StoreUnavailable, TimeoutError) as exc:
                self._failed(exc)
            else:
                if self._resting_until is not None:
                    self._recovered()
                return result
        if self._report is not None:
            self._report.replica_fallback()
        return await on_primary()

    def _failed(self, exc: BaseException) -> None:
        first = self._resting_until is None
        self._resting_until = self._clock() + self.retry_seconds
        if first:
            error = f"no answer in {self.timeout_seconds}s" if isinstance(exc, TimeoutError) else describe(exc)
            _logger.warning(
                "replica_unavailable",
                extra={
                    "fields": {
                        "store": self.store,
                        "error": error,
                        "retry_seconds": self.retry_seconds,
                        "hint": "lag-tolerant reads go to the primary until the replica answers again",
                    }
                },
            )
            if self._report is not None:
                self._report.replica_healthy(False)

    def _recovered(self) -> None:
        self._resting_until = None
        _logger.info("replica_recovered", extra={"fields": {"store": self.store}})
        if self._report is not None:
            self._report.replica_healthy(True)
