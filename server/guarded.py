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
the longest a request's store calls wait, together. Only the time spent
waiting on a store is spent: the handler's own work between two calls, and
the loop turns it waits for on a loaded server, are not the store's (in a
reconnect storm on PostgreSQL those alone outlived a catch-up request's 5 s
while every store call answered fast: BENCHMARKS.md, "Reconnect storms,
sixth pass"). The budget belongs to the task that opened it: tasks a
request starts (gap fills, presence repairs) inherit the context variable
but not the budget.
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


class RequestBudget:
    """What one request has left of its store budget: mutated in place by each
    store call it makes, so a call costs no ``ContextVar.set``."""

    __slots__ = ("remaining", "task")

    def __init__(self, task: asyncio.Task[Any] | None, remaining: float) -> None:
        self.task = task
        self.remaining = remaining
        """Seconds the request's store calls may still wait, together."""


_request_budget: ContextVar[RequestBudget | None] = ContextVar("hubbub_request_store_budget", default=None)


class request_budget:  # named as the function it replaced: ``with request_budget(seconds):``
    """All store calls of the request the current task serves wait ``seconds`` at most, together.

    A class rather than a ``contextlib.contextmanager``: it is entered once per
    request, and a generator-based manager costs a generator, its frame and
    two resumptions each time (BENCHMARKS.md, "The send path's CPU")."""

    __slots__ = ("_seconds", "_token")

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds

    def __enter__(self) -> None:
        self._token = _request_budget.set(RequestBudget(asyncio.current_task(), self._seconds))

    def __exit__(self, *exc: object) -> None:
        _request_budget.reset(self._token)


def current_request_budget() -> RequestBudget | None:
    """The current task's request budget; None outside a request (or in a task a
    request started). A caller that waits on a store takes its wait off ``remaining``."""
    budget = _request_budget.get()
    if budget is None or budget.task is not asyncio.current_task():
        return None
    return budget


_BOUNDED_BY_STORE = frozenset({"append"})
"""Ops that take a ``deadline`` (a loop time) and stop waiting at it
themselves: MessageLog.append, whose group commit bounds every waiting append
with one timer (storage/batching.py) where an ``asyncio.timeout`` here was a
timer, a context manager and five Python calls per send (BENCHMARKS.md,
"The send path on PostgreSQL")."""


async def within_request_budget(awaitable: Awaitable[T], store: str, op: str) -> T:
    """``awaitable`` bounded by what the current task's request has left of its
    store budget, the wait spent from it; unbounded outside a request. For a
    call that waits on a batch made by another task (server/lookups.py), which
    the budget, being the request task's, does not bound."""
    budget = current_request_budget()
    if budget is None:
        return await awaitable
    loop = asyncio.get_running_loop()
    start = loop.time()
    try:
        async with asyncio.timeout_at(start + budget.remaining):
            return await awaitable
    except TimeoutError:
        raise budget_spent(store, op) from None
    finally:
        budget.remaining -= loop.time() - start


def sharing_budget(awaitable: Awaitable[T]) -> Awaitable[T]:
    """``awaitable``, to be awaited in a task of its own (``asyncio.gather``), with
    the store budget of the request whose task calls this: a handler's concurrent
    reads (``message.history``'s page and head) are bounded by it as its own
    calls are, not left unbounded as a task the request starts is. Each gets its
    own copy (what one gives back is not the other's); the request keeps what
    the one that spent most left, as they waited at the same time."""
    budget = current_request_budget()
    if budget is None:
        return awaitable
    return _within(awaitable, budget)


async def _within(awaitable: Awaitable[T], shared: RequestBudget) -> T:
    own = RequestBudget(asyncio.current_task(), shared.remaining)
    token = _request_budget.set(own)
    try:
        return await awaitable
    finally:
        _request_budget.reset(token)
        shared.remaining = min(shared.remaining, own.remaining)


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

        timeout = self._timeout

        @functools.wraps(attr)
        async def call(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            budget = current_request_budget()
            # The call's own timeout, or what the request has left of its budget when less.
            wait = timeout if budget is None or budget.remaining > timeout else budget.remaining
            # A child span of the request's (server/tracing.py); one attribute read when off.
            span = tracing.start_store_span(self.name, op) if tracing.enabled else None
            failure: str | None = None
            try:
                deadline = asyncio.get_running_loop().time() + wait
                if bounds_itself:  # its TimeoutError is met below, as the timeout's
                    return await method(*args, deadline=deadline, **kwargs)
                async with asyncio.timeout_at(deadline):
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
                elapsed = time.perf_counter() - start
                histogram.observe(elapsed)
                if budget is not None:
                    budget.remaining -= elapsed
                if span is not None:
                    tracing.end_store_span(span, failure)

        setattr(self, op, call)  # cache: __getattr__ runs once per op
        return call


def guarded(store: T, metrics: Metrics, timeout: float) -> T:
    """``store`` with every coroutine method bounded by ``timeout`` and measured."""
    return cast(T, _Guarded(store, metrics, timeout))
