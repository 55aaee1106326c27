"""Every store call goes through here: bounded in time, timed, and failures
turned into StoreUnavailable, so a dead database gives a prompt `unavailable`
instead of a hung request.

The bound is the whole call, a backend's retries included: a read that
retries on a fresh connection shares the one budget. It holds because the
backends let go of a cancelled call at once (storage/postgres.py terminates
the connection instead of waiting for the server to confirm a cancel).

A request that makes several store calls shares one budget too: inside
``request_budget`` (server/dispatch.py opens it around every handler) each
call gets only what the request has left, so ``storage_timeout_seconds`` is
the longest a client waits on the store for one reply. The budget belongs to
the task that opened it: tasks a request starts (gap fills, presence
repairs) inherit the context variable but not the budget.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any, TypeVar, cast

from hubbub.server import tracing
from hubbub.server.metrics import Metrics
from hubbub.storage.errors import Conflict, StoreUnavailable, describe, is_store_fault

T = TypeVar("T")

_request_deadline: ContextVar[tuple[asyncio.Task[Any] | None, float] | None] = ContextVar(
    "hubbub_request_store_deadline", default=None
)
"""(the task serving a request, the loop time its store budget ends)."""


class request_budget:  # named as the function it replaced: ``with request_budget(seconds):``
    """All store calls of the request the current task serves wait ``seconds`` at most, together.

    A class rather than a ``contextlib.contextmanager``: it is entered once per
    request, and a generator-based manager costs a generator, its frame and
    two resumptions each time (BENCHMARKS.md, "The send path's CPU")."""

    __slots__ = ("_seconds", "_token")

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds

    def __enter__(self) -> None:
        loop = asyncio.get_running_loop()
        self._token = _request_deadline.set((asyncio.current_task(loop), loop.time() + self._seconds))

    def __exit__(self, *exc: object) -> None:
        _request_deadline.reset(self._token)


_BOUNDED_BY_STORE = frozenset({"append"})
"""Ops that take a ``deadline`` (a loop time) and stop waiting at it
themselves: MessageLog.append, whose group commit bounds every waiting append
with one timer (storage/batching.py) where an ``asyncio.timeout`` here was a
timer, a context manager and five Python calls per send (BENCHMARKS.md,
"The send path on PostgreSQL")."""


def _deadline(timeout: float) -> float:
    """The loop time ``timeout`` from now, or the current task's request budget's end when sooner."""
    end = asyncio.get_running_loop().time() + timeout
    budget = request_deadline()
    return end if budget is None or budget > end else budget


async def within_request_budget(awaitable: Awaitable[T], store: str, op: str) -> T:
    """``awaitable`` bounded by what the current task's request has left of its
    store budget; unbounded outside a request. For a call that waits on a
    batch made by another task (server/lookups.py), which the budget, being
    the request task's, does not bound."""
    deadline = request_deadline()
    if deadline is None:
        return await awaitable
    try:
        async with asyncio.timeout_at(deadline):
            return await awaitable
    except TimeoutError:
        raise budget_spent(store, op) from None


def request_deadline() -> float | None:
    """The loop time the current task's request store budget ends; None outside a request."""
    budget = _request_deadline.get()
    if budget is None or budget[0] is not asyncio.current_task():
        return None
    return budget[1]


def sharing_budget(awaitable: Awaitable[T]) -> Awaitable[T]:
    """``awaitable``, to be awaited in a task of its own (``asyncio.gather``), with
    the store budget of the request whose task calls this: a handler's concurrent
    reads (``message.history``'s page and head) are bounded by it as its own
    calls are, not left unbounded as a task the request starts is. Each gets its
    own copy: a move of one's deadline (``answered``) is not the other's."""
    deadline = request_deadline()
    if deadline is None:
        return awaitable
    return _within(awaitable, deadline)


async def _within(awaitable: Awaitable[T], deadline: float) -> T:
    token = _request_deadline.set((asyncio.current_task(), deadline))
    try:
        return await awaitable
    finally:
        _request_deadline.reset(token)


def move_request_deadline(deadline: float) -> None:
    """Move the current task's request budget to end at ``deadline`` (server/lookups.py
    ``answered``: the time a read waited behind batches that kept moving is not the store's)."""
    budget = _request_deadline.get()
    if budget is not None and budget[0] is asyncio.current_task():
        _request_deadline.set((budget[0], deadline))


def budget_spent(store: str, op: str) -> StoreUnavailable:
    """The error of a store call that outlived its request's budget (one wording for every such call)."""
    return StoreUnavailable(store, f"{op} timed out: the request's store budget is spent")


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
        # Cast once here, not per call: a typing subscription per call cost 1.7 us (BENCHMARKS.md).
        method = cast(Callable[..., Awaitable[Any]], attr)
        histogram = self._metrics.storage_latency.labels(self.name, op)
        errors = self._metrics.storage_errors.labels(self.name)
        bounds_itself = op in _BOUNDED_BY_STORE

        @functools.wraps(attr)
        async def call(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            # A child span of the request's (server/tracing.py); one attribute read when off.
            span = tracing.start_store_span(self.name, op) if tracing.enabled else None
            failure: str | None = None
            try:
                if bounds_itself:  # its TimeoutError is met below, as the timeout's
                    return await method(*args, deadline=_deadline(self._timeout), **kwargs)
                async with asyncio.timeout_at(_deadline(self._timeout)):
                    return await method(*args, **kwargs)
            except (Conflict, StoreUnavailable) as exc:
                if isinstance(exc, StoreUnavailable):
                    errors.inc()
                    failure = exc.detail
                raise
            except TimeoutError:
                errors.inc()
                failure = f"{op} timed out after {self._timeout:g}s"
                raise StoreUnavailable(self.name, failure) from None
            except Exception as exc:
                # OSError, or a driver's error a backend let through: a store
                # fault answers `unavailable`, never `internal`. Anything
                # else is a bug of ours and stays what it is.
                failure = f"{op}: {describe(exc)}"
                if not isinstance(exc, OSError) and not is_store_fault(exc):
                    raise
                errors.inc()
                raise StoreUnavailable(self.name, failure) from exc
            finally:
                histogram.observe(time.perf_counter() - start)
                if span is not None:
                    tracing.end_store_span(span, failure)

        setattr(self, op, call)  # cache: __getattr__ runs once per op
        return call


def guarded(store: T, metrics: Metrics, timeout: float) -> T:
    """``store`` with every coroutine method bounded by ``timeout`` and measured."""
    return cast(T, _Guarded(store, metrics, timeout))
