"""Event-loop lag: how late a timer fires, measured by one cheap task.

Everything of a server runs on one event loop, so a handler that blocks it
(a CPU-heavy call, a synchronous driver, a large JSON encode) delays every
connection's frames at once, which the per-request histograms show only
spread over every op. This task sleeps ``LOOP_LAG_INTERVAL_SECONDS`` again
and again and observes how much later than asked it woke up in
``hubbub_event_loop_lag_seconds``: near 0 on a healthy loop, the length of
the stall on a blocked one.
"""

from __future__ import annotations

import asyncio

from prometheus_client import Histogram

from hubbub.storage.supervision import FailureHook, SupervisedTask

# A module constant, not a HUBBUB_* setting: the measurement costs one timer
# per interval whatever its value, and 0.5 s catches every stall long enough
# to matter to a chat client while adding nothing measurable to the loop.
LOOP_LAG_INTERVAL_SECONDS = 0.5
"""How often the loop's lag is measured."""

STALL_TICK_SECONDS = 0.02
"""How often the stall clock (``LoopLagMonitor.stalled``) looks, while a request
waits on a batch. A saturated loop runs every timer late by about one turn of
its ready queue, so a timer every 0.5 s sees only that one turn per 0.5 s: in
a PostgreSQL storm (turns of 0.1-0.5 s) it credited too little of the time the
loop spent on other work, and requests were refused for it (BENCHMARKS.md,
"After session 8's merges"). At 0.02 s it credits nearly every turn, for 50
cheap callbacks a second, and only while somebody waits (``watch``)."""


class LoopLagMonitor:
    def __init__(
        self, histogram: Histogram, on_failure: FailureHook | None = None, interval: float = LOOP_LAG_INTERVAL_SECONDS
    ) -> None:
        self._histogram = histogram
        self._interval = interval
        self._task = SupervisedTask("event_loop_lag", self.measure_once, on_failure)
        self._stalled = 0.0
        self._tick_due: float | None = None
        self._tick: asyncio.TimerHandle | None = None
        self._watchers = 0

    def stalled(self) -> float:
        """Seconds the stall clock's timer ran late, summed, up to now (the lateness
        of the tick due but not yet run included): time the server could not run
        anything else, given back to the requests waiting on a batch
        (server/lookups.py). It runs only between ``watch`` and ``unwatch``."""
        due = self._tick_due
        late = 0.0 if due is None else max(0.0, asyncio.get_running_loop().time() - due)
        return self._stalled + late

    def watch(self) -> None:
        """A request starts waiting on a batch: run the stall clock until it stops."""
        self._watchers += 1
        if self._tick is None:
            self._schedule_tick(asyncio.get_running_loop())

    def unwatch(self) -> None:
        self._watchers -= 1
        if self._watchers <= 0 and self._tick is not None:
            self._watchers = 0
            self._tick.cancel()
            self._tick = None
            self._tick_due = None

    def _schedule_tick(self, loop: asyncio.AbstractEventLoop) -> None:
        self._tick_due = loop.time() + STALL_TICK_SECONDS
        self._tick = loop.call_at(self._tick_due, self._ticked, loop)

    def _ticked(self, loop: asyncio.AbstractEventLoop) -> None:
        due = self._tick_due
        if due is not None:
            self._stalled += max(0.0, loop.time() - due)
        self._schedule_tick(loop)

    def start(self) -> None:
        self._task.start()

    async def stop(self) -> None:
        if self._tick is not None:
            self._tick.cancel()
            self._tick = None
            self._tick_due = None
        await self._task.stop()

    async def measure_once(self) -> None:
        """Sleep one interval and observe how late the loop woke up."""
        loop = asyncio.get_running_loop()
        asked = loop.time() + self._interval
        await asyncio.sleep(self._interval)
        self._histogram.observe(max(0.0, loop.time() - asked))
