"""Group commit: the one batching of message appends, for every message log.

Appends are grouped by a key: PostgreSQL and MongoDB key them by
conversation (``by_conversation``), SQLite, whose one file serialises every
write anyway, puts them all under one key (``one_group``). Appends of one
key that arrive while its previous batch is being stored wait and go
together in the next batch, in submission order. A key has one batch in
flight at a time, so concurrent appends are stored in the order they were
submitted (which is what lets a connection pipeline its sends:
``MessageLog.ordered_appends``), and a busy key pays one commit (or round
trip) per batch instead of one per message. A lone append waits for
nothing: it is a batch of one at once.

A batch that fails fails its waiting appends (they answer ``unavailable``)
and the flusher goes on with the next batch; a failure other than the store
being unavailable is also logged and counted (storage/supervision.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Sequence

from hubbub.storage import supervision
from hubbub.storage.errors import StoreUnavailable
from hubbub.storage.records import Appended, NewMessage

Stored = Appended
"""An append's outcome (storage.records.Appended)."""

StoreBatch = Callable[[list[NewMessage]], Awaitable[Sequence[Stored | BaseException]]]
"""Stores one batch in order; one outcome or error per message. Raising fails the whole batch."""

GroupKey = Callable[[NewMessage], Hashable]
"""The group of an append: appends of one group are batched together, in order."""


def by_conversation(message: NewMessage) -> Hashable:
    """One group per conversation: a batch never spans two conversations."""
    return message.conversation_id


def one_group(message: NewMessage) -> Hashable:
    """Every append in one group: a batch takes whatever queued meanwhile."""
    return None


class GroupCommit:
    def __init__(
        self, store: str, store_batch: StoreBatch, *, key: GroupKey = by_conversation, max_batch: int = 256
    ) -> None:
        self._store = store
        self._store_batch = store_batch
        self._key = key
        self.max_batch = max_batch
        self._pending: dict[Hashable, list[tuple[NewMessage, asyncio.Future[Stored]]]] = {}
        self._flushers: dict[Hashable, asyncio.Task[None]] = {}
        self._on_failure = supervision.current_hook()

    async def append(self, message: NewMessage) -> Stored:
        key = self._key(message)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Stored] = loop.create_future()
        pending = self._pending.get(key)
        if pending is None:
            self._pending[key] = [(message, future)]
        else:
            pending.append((message, future))
        if key not in self._flushers:
            self._flushers[key] = loop.create_task(self._flush(key))
        return await future

    async def close(self) -> None:
        """Wait for the batches being stored."""
        await asyncio.gather(*self._flushers.values(), return_exceptions=True)

    async def _flush(self, key: Hashable) -> None:
        try:
            while pending := self._pending.get(key):
                batch = pending[: self.max_batch]
                del pending[: self.max_batch]
                try:
                    outcomes = await self._store_batch([m for m, _ in batch])
                    if len(outcomes) != len(batch):
                        raise ValueError(f"{len(outcomes)} outcomes for a batch of {len(batch)}")
                    for (_, future), outcome in zip(batch, outcomes, strict=True):
                        if future.done():
                            continue  # its caller gave up (timed out)
                        if isinstance(outcome, BaseException):
                            future.set_exception(outcome)
                        else:
                            future.set_result(outcome)
                except Exception as exc:
                    fail_batch(self._store, [f for _, f in batch], exc, self._on_failure)
        finally:
            del self._flushers[key]
            if not self._pending.get(key):
                self._pending.pop(key, None)


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
