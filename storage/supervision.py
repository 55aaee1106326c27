"""Background tasks that survive their own failures.

Every long-lived task of a process (presence heartbeat, broker subscriber,
publisher and probe, keepalive, catch-up, group-commit flushers) runs its
work in iterations. An exception the task has no handling for (a bug, a
driver error nobody mapped) must end that iteration only, never the task:
a dead heartbeat gets a live instance reaped by the others, a dead
publisher silently stops routing, a dead flusher leaves sends hanging.
So each failure is logged as one JSON line (event ``task_failed``, with the
task's name and the traceback), counted through a hook (the server counts
``hubbub_task_failures_total{task}``) and the task goes on, after a pause
that grows while the failures repeat so that a persistent one cannot spin.

Expected outages (Redis or a database unreachable) keep their own handling,
warnings and metrics (``hubbub_broker_healthy``, ``hubbub_storage_errors``);
this is for everything else.

It lives in ``storage/`` because storage's flushers need it and storage
must not import ``server/``; the server passes its metric as a hook.
Storage objects are built by ``open_stores`` without a handle on the
server's metrics, so they take the hook that is current while they are
constructed (``counting_failures``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator
from contextvars import ContextVar
from typing import Any

FailureHook = Callable[[str], None]
"""Called with a task's name after one of its iterations failed (and was logged)."""

FAILURE_BACKOFF_SECONDS = 0.1
"""Pause after a failed iteration; doubles with each further consecutive failure."""
FAILURE_BACKOFF_MAX_SECONDS = 5.0
"""The longest pause between failing iterations."""

# The server's own logger, by name (server/logs.py configures its JSON handler):
# these are Hubbub's events, with Hubbub's fields, not a library's free text.
_logger = logging.getLogger("hubbub")
_hook: ContextVar[FailureHook | None] = ContextVar("hubbub_task_failure_hook", default=None)


@contextlib.contextmanager
def counting_failures(hook: FailureHook) -> Iterator[None]:
    """Storage objects constructed inside this block report their task failures to ``hook``."""
    token = _hook.set(hook)
    try:
        yield
    finally:
        _hook.reset(token)


def current_hook() -> FailureHook | None:
    """The hook of the enclosing ``counting_failures`` block, if any."""
    return _hook.get()


def report(task: str, exc: BaseException, hook: FailureHook | None, **fields: Any) -> None:
    """Log one failure of ``task`` as one JSON line and count it."""
    _logger.error(
        "task_failed",
        exc_info=(type(exc), exc, exc.__traceback__),
        extra={"fields": {"task": task, "error": f"{type(exc).__name__}: {exc}", **fields}},
    )
    if hook is not None:
        hook(task)


def backoff(consecutive_failures: int) -> float:
    """The pause after the n-th failure in a row."""
    doublings = min(max(0, consecutive_failures - 1), 32)
    return min(FAILURE_BACKOFF_MAX_SECONDS, FAILURE_BACKOFF_SECONDS * float(2**doublings))


async def supervise(
    task: str,
    iteration: Callable[[], Awaitable[None]],
    hook: FailureHook | None,
    *,
    running: Callable[[], bool] = lambda: True,
) -> None:
    """Run ``iteration`` again and again while ``running()``; a failure of one is
    reported and followed by a growing pause, never the end of the task.
    Cancellation (shutdown) still ends it."""
    consecutive = 0
    while running():
        try:
            await iteration()
        except Exception as exc:
            consecutive += 1
            report(task, exc, hook, consecutive=consecutive)
            if cancel_swallowed():
                raise asyncio.CancelledError from exc
            await asyncio.sleep(backoff(consecutive))
        else:
            consecutive = 0


def cancel_swallowed() -> bool:
    """True when this task was asked to stop but the iteration turned the
    cancellation into an ordinary error (a driver that catches CancelledError
    mid-read and raises a connection error instead): the task must still end,
    or a shutdown waiting for it waits forever."""
    current = asyncio.current_task()
    return current is not None and current.cancelling() > 0


class SupervisedTask:
    """One long-lived task running ``supervise(name, iteration, hook)``, started
    and stopped by its owner (the keepalive, the loop-lag monitor, the account
    check, the retention purge): the one start and stop they share."""

    def __init__(self, name: str, iteration: Callable[[], Awaitable[None]], hook: FailureHook | None) -> None:
        self._name = name
        self._iteration = iteration
        self._hook = hook
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(supervise(self._name, self._iteration, self._hook))

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
