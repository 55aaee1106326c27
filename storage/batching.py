"""Group commit: the one batching of message appends, for every message log.

Appends are grouped by a key, and a key's appends are stored in submission
order: PostgreSQL and MongoDB key them by conversation
(``by_conversation``), SQLite, whose one file serialises every write anyway,
puts them all under one key (``one_group``). A batch (one flush) takes what
is waiting, **across keys**, oldest key first, up to ``max_batch`` messages,
and is stored by one call of the store's ``store_batch``: one transaction
(PostgreSQL, SQLite), one ``insert_many`` (MongoDB), whatever the number of
conversations in it. So 100 busy conversations cost one commit per flush, not
100.

Order: a key is in at most one batch in flight at a time. Appends of a key
whose batch is being stored wait and go in a later batch, so concurrent
appends of one key are stored in the order they were submitted (which is
what lets a connection pipeline its sends: ``MessageLog.ordered_appends``).
Up to ``max_flights`` batches are in flight at once, each with other keys
(PostgreSQL: on other pooled connections): a burst of more than
``max_batch`` is stored as several batches side by side. SQLite, with one
key, has one in flight. A lone append
waits for nothing: a flight takes it on the event loop's next turn, with
whatever else was submitted in that turn.

An append given a ``deadline`` (a loop time) stops waiting then, with
TimeoutError, whether its batch is still waiting or being stored (its
message may still be stored: a resend of it is a duplicate). One timer per
group commit bounds every waiting append, at the earliest deadline, instead
of an ``asyncio.timeout`` per append (BENCHMARKS.md, "The send path on
PostgreSQL"): deadlines are kept in a heap, and the appends answered before
theirs come are dropped from it as they reach its top.

A batch that fails fails its waiting appends (they answer ``unavailable``),
exactly those, and the flight goes on with the next batch; a failure other
than the store being unavailable is also logged and counted
(storage/supervision.py).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Awaitable, Callable, Hashable, Sequence

from hubbub.storage import supervision
from hubbub.storage.errors import StoreUnavailable
from hubbub.storage.records import Appended, NewMessage

Stored = Appended
"""An append's outcome (storage.records.Appended)."""

StoreBatch = Callable[[list[NewMessage]], Awaitable[Sequence[Stored | BaseException]]]
"""Stores one batch, each key's messages in order; one outcome or error per
message. Raising fails the whole batch. A batch may hold several keys."""

GroupKey = Callable[[NewMessage], Hashable]
"""The key of an append: appends of one key are stored in submission order, one batch of them at a time."""

_Waiting = tuple[NewMessage, "asyncio.Future[Stored]"]
_Deadline = tuple[float, int, "asyncio.Future[Stored]"]
"""(loop time, arrival number, the append's future): the arrival number orders equal deadlines."""


def by_conversation(message: NewMessage) -> Hashable:
    """One key per conversation: a conversation's appends keep their order."""
    return message.conversation_id


def one_group(message: NewMessage) -> Hashable:
    """Every append under one key: one batch in flight, all appends in submission order."""
    return None


class GroupCommit:
    def __init__(
        self,
        store: str,
        store_batch: StoreBatch,
        *,
        key: GroupKey = by_conversation,
        max_batch: int = 256,
        max_flights: int = 2,
    ) -> None:
        self._store = store
        self._store_batch = store_batch
        self._key = key
        self.max_batch = max_batch
        self.max_flights = max_flights
        self._pending: dict[Hashable, list[_Waiting]] = {}
        """The appends not yet taken, per key; the dict's order is the order keys started waiting."""
        self._busy: set[Hashable] = set()
        """Keys with a batch in flight: none of their appends is taken until it is stored."""
        self._flights: set[asyncio.Task[None]] = set()
        self._starting = 0
        """Flights created that have not taken their first batch yet: they will take what waits now."""
        self._on_failure = supervision.current_hook()
        self.flushes = 0
        """Batches stored (or failed) so far: what the round-trip tests divide by."""
        self._deadlines: list[_Deadline] = []
        """The deadlines of appends that may still be waiting, a heap (the earliest first)."""
        self._arrivals = itertools.count()
        self._expiry: asyncio.TimerHandle | None = None
        """The one timer: at the earliest deadline in the heap when it was set, or before."""

    async def append(self, message: NewMessage, deadline: float | None = None) -> Stored:
        """``message`` stored; TimeoutError at ``deadline`` (a loop time) if it is not by then."""
        key = self._key(message)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Stored] = loop.create_future()
        if deadline is not None:
            if deadline <= loop.time():
                raise TimeoutError
            self._bound(loop, deadline, future)
        self._pending.setdefault(key, []).append((message, future))
        # A busy key is taken by a flight when its batch is done; a starting
        # flight takes this one; otherwise a new flight, if one may start.
        if key not in self._busy:
            self._launch()
        return await future

    def _bound(self, loop: asyncio.AbstractEventLoop, deadline: float, future: asyncio.Future[Stored]) -> None:
        deadlines = self._deadlines
        while deadlines and deadlines[0][2].done():  # answered: each is popped once
            heapq.heappop(deadlines)
        heapq.heappush(deadlines, (deadline, next(self._arrivals), future))
        expiry = self._expiry
        if expiry is None or deadline < expiry.when():
            # Deadlines mostly come in order (a request's budget starts when it
            # arrives): the timer is set again only for an earlier one.
            if expiry is not None:
                expiry.cancel()
            self._expiry = loop.call_at(deadline, self._expire)

    def _expire(self) -> None:
        """The timer: every append past its deadline answers TimeoutError; the timer is set for the next deadline."""
        self._expiry = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        deadlines = self._deadlines
        while deadlines and (deadlines[0][2].done() or deadlines[0][0] <= now):
            _, _, future = heapq.heappop(deadlines)
            if not future.done():
                future.set_exception(TimeoutError())
        if deadlines:
            self._expiry = loop.call_at(deadlines[0][0], self._expire)

    def _launch(self) -> None:
        """A new flight, unless one is starting (it will take what waits) or the most are in flight."""
        if self._starting or len(self._flights) >= self.max_flights:
            return
        self._starting += 1
        task = asyncio.get_running_loop().create_task(self._fly())
        self._flights.add(task)
        task.add_done_callback(self._flights.discard)

    async def close(self) -> None:
        """Wait for the batches being stored (and the flights they started)."""
        while self._flights:
            await asyncio.gather(*self._flights, return_exceptions=True)
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None

    def _take(self) -> tuple[list[_Waiting], list[Hashable]]:
        """The next batch: what waits, oldest key first, skipping busy keys, up to ``max_batch``."""
        batch: list[_Waiting] = []
        keys: list[Hashable] = []
        for key in list(self._pending):
            if key in self._busy:
                continue
            waiting = self._pending.pop(key)
            room = self.max_batch - len(batch)
            batch.extend(waiting[:room])
            keys.append(key)
            if len(waiting) > room:
                self._pending[key] = waiting[room:]  # the rest waits for this batch, at the back
                break
            if len(batch) >= self.max_batch:
                break
        self._busy.update(keys)
        return batch, keys

    async def _fly(self) -> None:
        first = True
        while True:
            batch, keys = self._take()
            if first:
                self._starting -= 1
                first = False
            if not batch:
                return
            if any(key not in self._busy for key in self._pending):
                self._launch()  # more than one batch waits (a burst over max_batch): store them side by side
            try:
                await self._store_one(batch)
            finally:
                self._busy.difference_update(keys)
                self.flushes += 1

    async def _store_one(self, batch: list[_Waiting]) -> None:
        try:
            outcomes = await self._store_batch([m for m, _ in batch])
            if len(outcomes) != len(batch):
                raise ValueError(f"{len(outcomes)} outcomes for a batch of {len(batch)}")
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                if future.done():
                    continue  # its caller gave up (timed out, or cancelled)
                if isinstance(outcome, BaseException):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)
        except Exception as exc:
            fail_batch(self._store, [f for _, f in batch], exc, self._on_failure)


def fail_batch(
    store: str, futures: list[asyncio.Future[Stored]], exc: Exception, on_failure: supervision.FailureHook | None
) -> None:
    """Answer every append of a failed batch still waiting with StoreUnavailable.

    The store being unavailable is what every request already reports (and the
    server counts as a storage error); anything else is unexpected: logged and
    counted as a failure of the group commit as well.
    """
    if isinstance(exc, StoreUnavailable):
        error = exc
    else:
        supervision.report("group_commit", exc, on_failure, store=store, messages=len(futures))
        error = StoreUnavailable(store, f"storing the batch failed: {type(exc).__name__}")
    for future in futures:
        if not future.done():
            future.set_exception(error)
