"""One flush per event-loop turn for every connection with queued frames.

Sessions queue frames as events happen; the first frame of a turn puts the
session on this list, and a single callback at the end of the turn writes
each session's frames with one transport.write. One scheduled callback per
turn, not one per connection: at a thousand recipients per event the
per-connection scheduling was a sizeable share of the fan-out's CPU.
"""

from __future__ import annotations

import asyncio
from typing import Protocol


class Flushable(Protocol):
    def flush(self) -> None: ...


class Flusher:
    def __init__(self) -> None:
        self._pending: list[Flushable] = []
        self._scheduled = False

    def add(self, session: Flushable) -> None:
        self._pending.append(session)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._run)

    def _run(self) -> None:
        pending, self._pending = self._pending, []
        self._scheduled = False
        for session in pending:
            session.flush()
