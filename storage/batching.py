"""Group commit per conversation, for the message logs that talk to a
database server (PostgreSQL, MongoDB).

Appends to one conversation that arrive while its previous batch is being
stored wait and go together in the next batch, in submission order. A
conversation has one batch in flight at a time, so concurrent appends are
stored in the order they were submitted (which is what lets a connection
pipeline its sends: ``MessageLog.ordered_appends``), and a busy
conversation pays one round trip per batch instead of one per message. A
lone append waits for nothing: it is a batch of one at once.

A batch that fails fails its waiting appends (they answer ``unavailable``)
and the flusher goes on with the next batch; a failure other than the store
being unavailable is also logged and counted (storage/supervision.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from storage import supervision
from storage.errors import StoreUnavailable
from storage.records import MessageRecord, NewMessage

Stored = tuple[MessageRecord, bool]
"""An append's outcome: the record and whether it was a duplicate of an earlier send."""

StoreBatch = Callable[[list[NewMessage]], Awaitable[list[Stored | BaseException]]]
"""Stores messages of one conversation in order; one outcome or error per message.
Raising fails the whole batch."""


class ConversationBatches:
    def __init__(self, store: str, store_batch: StoreBatch, max_batch: int = 256) -> None:
        self._store = store
        self._store_batch = store_batch
        self.max_batch = max_batch
        self._pending: dict[int, list[tuple[NewMessage, asyncio.Future[Stored]]]] = {}
        self._flushers: dict[int, asyncio.Task[None]] = {}
        self._on_failure = supervision.current_hook()

    async def append(self, message: NewMessage) -> Stored:
        cid = message.conversation_id
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Stored] = loop.create_future()
        self._pending.setdefault(cid, []).append((message, future))
        if cid not in self._flushers:
            self._flushers[cid] = loop.create_task(self._flush(cid))
        return await future

    async def close(self) -> None:
        """Wait for the batches being stored."""
        await asyncio.gather(*self._flushers.values(), return_exceptions=True)

    async def _flush(self, cid: int) -> None:
        try:
            while pending := self._pending.get(cid):
                batch = pending[: self.max_batch]
                del pending[: self.max_batch]
                try:
                    outcomes = await self._store_batch([m for m, _ in batch])
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
            del self._flushers[cid]
            if not self._pending.get(cid):
                self._pending.pop(cid, None)


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
