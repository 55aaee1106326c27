"""WebSocket keepalive for every connection from one task.

websockets can ping each connection from a task of its own, but a task, its
coroutine and its timer cost over a kilobyte per idle connection. One loop
here pings every connection each ``interval`` and drops (close 1011) a
connection whose previous ping is still unanswered after ``timeout``. A dead
peer is therefore dropped within interval + timeout.

One connection's keepalive raising costs that connection's ping only, and
any other failure of a round is logged, counted and followed by the next
(storage/supervision.py): a dead keepalive task would leave every dead
peer connected for good.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection
from typing import Protocol

from hubbub.storage.supervision import FailureHook, SupervisedTask, report

PINGS_PER_TURN = 256
"""Connections pinged before yielding to the event loop."""


class Pingable(Protocol):
    def keepalive(self, now: float, timeout: float) -> None:
        """Ping, or drop the connection when its last ping is unanswered after ``timeout``
        (server/connection.py)."""


class Keepalive:
    def __init__(
        self,
        connections: Callable[[], Collection[Pingable]],
        interval: float,
        timeout: float,
        on_failure: FailureHook | None = None,
    ) -> None:
        self._connections = connections
        self._interval = interval
        self._timeout = timeout
        self._on_failure = on_failure
        self._task = SupervisedTask("keepalive", self._round, on_failure)

    def start(self) -> None:
        self._task.start()

    async def stop(self) -> None:
        await self._task.stop()

    async def _round(self) -> None:
        await asyncio.sleep(self._interval)
        now = asyncio.get_running_loop().time()
        failed = 0
        first: Exception | None = None
        for index, connection in enumerate(list(self._connections())):
            try:
                connection.keepalive(now, self._timeout)
            except Exception as exc:
                failed += 1
                first = first or exc
            if index % PINGS_PER_TURN == PINGS_PER_TURN - 1:
                await asyncio.sleep(0)
        if first is not None:
            # One line per round, however many connections failed in it.
            report("keepalive", first, self._on_failure, connections=failed)
