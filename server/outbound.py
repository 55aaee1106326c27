"""One flush per event-loop turn for every connection with queued frames.

Connections queue frames as events happen (server/connection.py); the first
frame of a turn puts the connection on this list, and a single callback at
the end of the turn writes each connection's frames with one
transport.write. One scheduled callback per turn, not one per connection: at
a thousand recipients per event the per-connection scheduling was a sizeable
share of the fan-out's CPU.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Protocol


class Flushable(Protocol):
    def flush(self) -> None: ...


class Flusher:
    def __init__(self) -> None:
        self.pending: list[Flushable] = []
        """The connections to flush at the end of this turn; its first entry schedules
        the flush (``add``; ``Connection.send_frame`` does the same inline)."""

    def add(self, connection: Flushable) -> None:
        pending = self.pending
        if not pending:
            self.schedule()
        pending.append(connection)

    def schedule(self) -> None:
        """The flush of this turn's ``pending``: call when adding its first entry."""
        asyncio.get_running_loop().call_soon(self._run)

    def _run(self) -> None:
        # A connection queued during these flushes goes on the new list, and its
        # first entry schedules the next turn's flush.
        pending, self.pending = self.pending, []
        for connection in pending:
            connection.flush()


_flushers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Flusher] = weakref.WeakKeyDictionary()


def flusher_of(loop: asyncio.AbstractEventLoop) -> Flusher:
    """The loop's flusher: a turn is the loop's, so all its connections share one
    (every server of the loop: tests run several in a process)."""
    flusher = _flushers.get(loop)
    if flusher is None:
        flusher = _flushers[loop] = Flusher()
    return flusher
