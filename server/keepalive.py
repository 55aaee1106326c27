"""WebSocket keepalive for every connection from one task.

websockets can ping each connection from a task of its own, but a task, its
coroutine and its timer cost over a kilobyte per idle connection. One loop
here pings every connection each ``interval`` and drops (close 1011) a
connection whose previous ping is still unanswered after ``timeout``. A dead
peer is therefore dropped within interval + timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection
from typing import Protocol

PINGS_PER_TURN = 256
"""Connections pinged before yielding to the event loop."""


class Pingable(Protocol):
    def keepalive(self, now: float, timeout: float) -> None: ...


class Keepalive:
    def __init__(self, connections: Callable[[], Collection[Pingable]], interval: float, timeout: float) -> None:
        self._connections = connections
        self._interval = interval
        self._timeout = timeout
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._interval)
            now = loop.time()
            for index, connection in enumerate(list(self._connections())):
                connection.keepalive(now, self._timeout)
                if index % PINGS_PER_TURN == PINGS_PER_TURN - 1:
                    await asyncio.sleep(0)
