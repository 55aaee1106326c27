"""Every store call goes through here: bounded in time, timed, and failures
turned into StoreUnavailable, so a dead database gives a prompt `unavailable`
instead of a hung request.

The bound is the whole call, a backend's retries included: a read that
retries on a fresh connection shares the one budget. It holds because the
backends let go of a cancelled call at once (storage/postgres.py terminates
the connection instead of waiting for the server to confirm a cancel).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

from server.metrics import Metrics
from storage.errors import Conflict, StoreUnavailable, describe, is_store_fault

T = TypeVar("T")


class _Guarded:
    def __init__(self, store: Any, metrics: Metrics, timeout: float) -> None:
        self._store = store
        self._metrics = metrics
        self._timeout = timeout
        self.name: str = store.name

    def __getattr__(self, op: str) -> Any:
        attr = getattr(self._store, op)
        if not callable(attr) or not asyncio.iscoroutinefunction(attr):
            return attr
        histogram = self._metrics.storage_latency.labels(self.name, op)
        errors = self._metrics.storage_errors.labels(self.name)

        @functools.wraps(attr)
        async def call(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                async with asyncio.timeout(self._timeout):
                    return await cast(Callable[..., Awaitable[Any]], attr)(*args, **kwargs)
            except (Conflict, StoreUnavailable) as exc:
                if isinstance(exc, StoreUnavailable):
                    errors.inc()
                raise
            except TimeoutError:
                errors.inc()
                raise StoreUnavailable(self.name, f"{op} timed out after {self._timeout:g}s") from None
            except Exception as exc:
                # OSError, or a driver's error a backend let through: a store
                # fault answers `unavailable`, never `internal`. Anything
                # else is a bug of ours and stays what it is.
                if not isinstance(exc, OSError) and not is_store_fault(exc):
                    raise
                errors.inc()
                raise StoreUnavailable(self.name, f"{op}: {describe(exc)}") from exc
            finally:
                histogram.observe(time.perf_counter() - start)

        setattr(self, op, call)  # cache: __getattr__ runs once per op
        return call


def guarded(store: T, metrics: Metrics, timeout: float) -> T:
    """``store`` with every coroutine method bounded by ``timeout`` and measured."""
    return cast(T, _Guarded(store, metrics, timeout))
