"""One connection's pipelined sends reach the message log in request order.

server/dispatch.py runs a connection's ``message.send`` requests
concurrently when the log stores concurrent appends in submission order
(``MessageLog.ordered_appends``), so their seqs follow request order only
if the handlers call ``append`` in that order. A send that awaits something
first (the store read of ``access.writable_conversation``, a mention or
thread lookup) can resume after a later one that did not wait as long:
each send takes a turn when it starts, before its first await, and waits
for the turn before it to be handed to the log before it hands over its
own. Only the hand-over is ordered, not the store's work: the appends
still commit together.
"""

from __future__ import annotations

import asyncio


class SendTurn:
    """One send's place in its connection's order."""

    __slots__ = ("_before", "_mine")

    def __init__(self, before: asyncio.Future[None] | None, mine: asyncio.Future[None]) -> None:
        self._before = before
        self._mine = mine

    def ready(self) -> bool:
        """Whether every earlier send was handed over already: then ``wait`` need not be awaited."""
        return self._before is None or self._before.done()

    async def wait(self) -> None:
        """Return once every earlier send of the connection was handed to the log or gave up."""
        if self._before is not None and not self._before.done():
            # wait(), not await: a cancelled waiter must not cancel its predecessor's marker.
            await asyncio.wait((self._before,))

    def release(self) -> None:
        """Let the next send go: call it just before handing this one to the log (the next
        resumes only once this one suspends, which is after the log has taken it) and on
        every way out (idempotent)."""
        if self._mine.done():
            return
        if self._before is None or self._before.done():
            self._mine.set_result(None)
        else:  # given up before its turn (cancelled): the next still waits for the earlier ones
            self._before.add_done_callback(self._pass_on)

    def _pass_on(self, _before: asyncio.Future[None]) -> None:
        if not self._mine.done():
            self._mine.set_result(None)


class SendOrder:
    """The turns of one connection's sends (``Caller.send_order``)."""

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last: asyncio.Future[None] | None = None

    def reserve(self) -> SendTurn:
        """The next turn: call it before the send's first await."""
        mine: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        turn = SendTurn(self._last, mine)
        self._last = mine
        return turn
