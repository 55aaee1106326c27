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


class LoopLagMonitor:
    def __init__(
        self, histogram: Histogram, on_failure: FailureHook | None = None, interval: float = LOOP_LAG_INTERVAL_SECONDS
    ) -> None:
        self._histogram = histogram
        self._interval = interval
        self._task = SupervisedTask("event_loop_lag", self.measure_once, on_failure)
        self._stalled = 0.0
        self._due: float | None = None

    def stalled(self) -> float:
        """Seconds the loop has woken this timer late, summed, up to now (the lateness
        of the timer due but not yet run included): time the server could not run
        anything, given back to the requests waiting on a batch (server/lookups.py)."""
        due = self._due
        late = 0.0 if due is None else max(0.0, asyncio.get_running_loop().time() - due)
        return self._stalled + late

    def start(self) -> None:
        self._task.start()

    async def stop(self) -> None:
        await self._task.stop()

    async def measure_once(self) -> None:
        """Sleep one interval and observe how late the loop woke up."""
        loop = asyncio.get_running_loop()
        self._due = asked = loop.time() + self._interval
        try:
            await asyncio.sleep(self._interval)
        finally:
            self._due = None
        late = max(0.0, loop.time() - asked)
        self._stalled += late
        self._histogram.observe(late)
