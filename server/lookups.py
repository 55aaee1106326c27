"""Directory reads by key coalesced across connections: one store call for
the keys many requests ask at about the same time.

In a reconnect storm every client's ``auth`` reads its user (the token
generation is in the row) and every first connection's presence reads the
member counts of its conversations: thousands of one-row queries, each a
thread hop on SQLite or a pool connection on PostgreSQL, where a pool of 10
saturated and ``auth`` timed out at the store (issue 13). Here a lookup
asked while its kind's previous batch is in flight waits and goes with the
next batch, as one ``get_users`` / ``member_counts`` call; a lone lookup
waits for nothing (a batch of one, on the next loop turn). A batch is read
after every lookup in it was asked, so nothing reads older data than it
would alone. A failing batch fails its lookups with the store's own error
(``StoreUnavailable`` answers ``unavailable``), and the next batch goes on.

``auth`` makes one store call, batched: ``sessions_of`` reads the user (the
token generation is in the row) and their conversation ids together, so a
storm of N authentications is about N / 500 store calls. A disconnect's
``set_last_seen`` is batched the same way (``KeyedWrites``): one write for the
users who went offline together, not one commit each.

Budgets: a batch serves hundreds of callers, so it is not failed by the
ordinary per-call bound (``storage_timeout_seconds``, 5 s) when it merely
waited its turn under load: the calls made for ``auth`` and for disconnects
(``sessions_of``, ``set_last_seen_many``) are bounded by
``lookup_batch_timeout_seconds`` instead, and on PostgreSQL they run on the
lookup lane (storage/postgres.py ``PostgresPools``), not behind the requests
waiting for the primary pool. A store that refuses connections still fails a
batch at once. ``get_user`` and ``member_counts``
batches keep the ordinary bound: ordinary requests (invites, typing) wait on
them, and a request waiting on ``get_user`` waits no longer than its own store
budget (server/guarded.py ``within_request_budget``) although another task
makes the batch.

The catch-up after a reconnect (PROTOCOL.md §9: ``channel.list``,
``dm.list``, ``message.history``) is coalesced the same way: each listing's
memberships (``memberships_of_many``) and unread counts (``unread_many``) are
one statement per batch for up to 500 requests, the public channels with
their heads one read for all (server/listings.py), and the ``history`` pages
and ``heads`` of a batch one call each (``history_many``; equal reads once:
``CoalescedLog``). Those batches are bounded by ``lookup_batch_timeout_seconds``
(on PostgreSQL on the lookup lane, where a storm's catch-up makes all its
calls), and the requests waiting on them by their own store budget, which runs
only while the store answers none of its batches and the event loop is not
stalled (``answered``): no request is refused because it queued behind other
batches or because a loaded server was slow to run its own, and a frozen store
still answers ``unavailable`` within ``storage_timeout_seconds``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from typing import Any, Generic, Protocol, TypeVar, cast

from hubbub.server.guarded import budget_spent, current_request_budget, within_request_budget
from hubbub.storage.base import Directory, HistoryOrder, MessageLog
from hubbub.storage.records import (
    Head,
    HistoryRead,
    Membership,
    MessageRecord,
    Unread,
    UnreadAsk,
    UserRecord,
    UserSession,
)

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

LOOKUP_BATCH_MAX = 500
"""Keys per store call: bounds one query's size (and SQLite's bound parameters)."""


class BatchProgress:
    """When one store last answered a batch of server/lookups.py (loop time),
    shared by every lookup whose batches that store reads: while it keeps
    answering some, it is alive, and a request waiting on any of them is waiting
    for the server's own queue, not for a dead store (``answered``).

    ``stalls``: the server's loop-lag monitor, whose ``stalled()`` seconds (the
    loop too busy to run anything on time) are not the store's either."""

    __slots__ = ("last_finished", "stalls")

    def __init__(self, stalls: Stalls | None = None) -> None:
        self.last_finished = 0.0
        """A failed batch is no progress."""
        self.stalls = stalls


class Stalls(Protocol):
    """What ``answered`` reads of server/loop_lag.py ``LoopLagMonitor``."""

    def stalled(self) -> float:
        """Seconds the event loop could not run on time, summed, up to now."""
        ...

    def watch(self) -> None:
        """Somebody reads ``stalled`` until ``unwatch``: measure it meanwhile."""
        ...

    def unwatch(self) -> None: ...


class KeyedLookup(Generic[K, V]):
    def __init__(
        self,
        fetch: Callable[[list[K]], Awaitable[Mapping[K, V]]],
        *,
        max_batch: int = LOOKUP_BATCH_MAX,
        progress: BatchProgress | None = None,
    ) -> None:
        self._fetch = fetch
        self.max_batch = max_batch
        self._waiting: dict[K, list[asyncio.Future[V | None]]] = {}
        self.progress = progress or BatchProgress()
        """Moved by every batch answered here (and, shared, by the other lookups of the store)."""
        self._flusher: asyncio.Task[None] | None = None  # held: the loop keeps only weak references
        self.batches = 0
        """Store calls made (the tests count them)."""
        self.answered_batch_began = 0.0
        """When the batch answered last was sent (loop time): the requests it
        answered waited that long on the store itself (``answered``)."""

    async def get(self, key: K) -> V | None:
        return (await self.get_many((key,))).get(key)

    async def get_many(self, keys: Sequence[K]) -> dict[K, V]:
        """The value of each key that has one (absent keys are left out)."""
        futures = [(key, self._enqueue(key)) for key in dict.fromkeys(keys)]
        found: dict[K, V] = {}
        for key, future in futures:
            value = await future
            if value is not None:
                found[key] = value
        return found

    def ask(self, key: K) -> asyncio.Future[V | None]:
        """The key's answer, which ``answered`` waits on within the request's budget."""
        return self._enqueue(key)

    def _enqueue(self, key: K) -> asyncio.Future[V | None]:
        future: asyncio.Future[V | None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, []).append(future)
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush())
        return future

    async def _flush(self) -> None:
        try:
            while self._waiting:
                keys = list(self._waiting)[: self.max_batch]
                batch = {key: self._waiting.pop(key) for key in keys}
                self.batches += 1
                began = asyncio.get_running_loop().time()
                try:
                    values = await self._fetch(keys)
                except asyncio.CancelledError:
                    self._cancel(batch)
                    raise
                except Exception as exc:
                    for futures in batch.values():
                        for future in futures:
                            if not future.done():
                                future.set_exception(exc)
                    continue
                self._finish()
                self.answered_batch_began = began
                for key, futures in batch.items():
                    value = values.get(key)
                    for future in futures:
                        if not future.done():
                            future.set_result(value)
        except asyncio.CancelledError:
            self._cancel(self._waiting)
            self._waiting = {}
            raise
        finally:
            self._flusher = None

    def _finish(self) -> None:
        self.progress.last_finished = asyncio.get_running_loop().time()

    @staticmethod
    def _cancel(batch: Mapping[Any, list[asyncio.Future[Any]]]) -> None:
        for futures in batch.values():
            for future in futures:
                future.cancel()


async def answered(lookup: KeyedLookup[K, V], key: K, store: str, op: str) -> V | None:
    """``lookup``'s value for ``key``, waited for within the current request's
    store budget, which runs only while the store answers no batch: each time
    one of its lookups' batches is answered (``BatchProgress``), the time since
    the last one (or since the key was asked) is given back. So what counts is
    only the time the store stood still (or failed). In a storm a request queues
    behind batches of reads identical to its own, and its own batch may be slow
    on a loaded server, and it is not refused for that while the store keeps
    answering the others; a frozen store still answers ``unavailable`` within
    the budget, since then no batch finishes (the batch itself is bounded by
    ``lookup_batch_timeout_seconds``). Once answered, the request's budget is
    spent by no more than its own batch's time at the store (server/guarded.py:
    the next store call of the request gets the rest). Unbounded outside a
    request (the batches themselves are bounded by their store's timeout)."""
    answer = lookup.ask(key)
    budget = current_request_budget()
    try:
        if budget is None:
            return await answer
        loop = asyncio.get_running_loop()
        progress = lookup.progress
        stalls = progress.stalls
        mark = began = loop.time()
        deadline = first_deadline = began + budget.remaining  # what the loop below moves it by is given back
        if stalls:
            stalls.watch()
        try:
            stalled = stalls.stalled() if stalls else 0.0
            while True:
                # Woken by the answer, or when the budget would be spent: not by every batch before it.
                await asyncio.wait((answer,), timeout=max(0.0, deadline - loop.time()))
                if answer.done():
                    break
                if progress.last_finished > mark:  # the store moved: its wait until then was not the store's
                    deadline += progress.last_finished - mark
                    mark = progress.last_finished
                    stalled = stalls.stalled() if stalls else 0.0  # stalls until now: counted in that (or dropped)
                elif stalls and stalls.stalled() > stalled:  # the loop could not run: nor was that the store's
                    deadline += stalls.stalled() - stalled
                    stalled = stalls.stalled()
                elif loop.time() >= deadline:
                    raise budget_spent(store, op)
        finally:
            if stalls:
                stalls.unwatch()
            waited = loop.time() - began - (deadline - first_deadline)  # less what the loop gave back
            if answer.done():
                # Answered: its wait behind the batches before its own was the server's
                # queue, not the store's, however few of them finished while it waited.
                waited = min(waited, loop.time() - max(began, lookup.answered_batch_began))
            budget.remaining -= waited
        return answer.result()
    finally:
        answer.cancel()  # no-op once answered; else its batch leaves it be


class KeyedWrites(Generic[K, V]):
    """Writes of one value per key, coalesced like ``KeyedLookup``'s reads: a
    write asked while its kind's previous batch is in flight goes with the
    next batch; of two values for one key in one batch the later wins (both
    callers wait for it). ``put`` returns once its batch is written, or raises
    its batch's error."""

    def __init__(self, write: Callable[[dict[K, V]], Awaitable[None]], *, max_batch: int = LOOKUP_BATCH_MAX) -> None:
        self._write = write
        self.max_batch = max_batch
        self._pending: dict[K, tuple[V, list[asyncio.Future[None]]]] = {}
        self._flusher: asyncio.Task[None] | None = None  # held: the loop keeps only weak references
        self.batches = 0
        """Store calls made (the tests count them)."""

    async def put(self, key: K, value: V) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        _, waiting = self._pending.pop(key, (value, []))
        waiting.append(future)
        self._pending[key] = (value, waiting)
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush())
        await future

    async def _flush(self) -> None:
        try:
            while self._pending:
                keys = list(self._pending)[: self.max_batch]
                batch = {key: self._pending.pop(key) for key in keys}
                self.batches += 1
                failure: Exception | None = None
                try:
                    await self._write({key: value for key, (value, _) in batch.items()})
                except asyncio.CancelledError:
                    self._cancel(batch)
                    raise
                except Exception as exc:
                    failure = exc
                for _, futures in batch.values():
                    for future in futures:
                        if future.done():
                            continue
                        if failure is None:
                            future.set_result(None)
                        else:
                            future.set_exception(failure)
        except asyncio.CancelledError:
            self._cancel(self._pending)
            self._pending = {}
            raise
        finally:
            self._flusher = None

    @staticmethod
    def _cancel(batch: Mapping[Any, tuple[Any, list[asyncio.Future[None]]]]) -> None:
        for _, futures in batch.values():
            for future in futures:
                future.cancel()


class CoalescedLog:
    """The message log, with ``unread``, ``heads`` and ``history`` coalesced
    across concurrent requests; every other call passes through.

    In a reconnect storm every client's catch-up asks the same things at once
    (PROTOCOL.md §9): its listings' unread counts, then the history of its room
    after the last seq it saw, which is the same page for every member of the
    room. Here the ``unread`` asks of one batch are one ``unread_many`` call, the
    heads one ``heads`` call, and the ``history`` reads one ``history_many`` call
    (equal ones read once; a gap fill's go the same way). All three are made on
    ``batches``, bounded by ``lookup_batch_timeout_seconds`` (on PostgreSQL on the
    lookup lane). A request's store budget does not count the time its store kept
    answering batches, nor the event loop's stalls (``answered``): it is never
    refused for having waited behind other reads on a live store."""

    def __init__(
        self, messages: MessageLog, batches: MessageLog | None = None, progress: BatchProgress | None = None
    ) -> None:
        self._messages = messages
        self._batches = batches or messages
        self.progress = progress = progress or BatchProgress()
        self._unread: dict[int, KeyedLookup[UnreadAsk, dict[int, Unread]]] = {}
        """By cap (one setting: one lookup)."""
        # Looked up on each batch, not bound here: tests slow a store down by swapping its method.
        self.heads_lookup: KeyedLookup[int, Head] = KeyedLookup(lambda ids: self._batches.heads(ids), progress=progress)
        self.history_lookup: KeyedLookup[HistoryRead, list[MessageRecord]] = KeyedLookup(
            self._histories, progress=progress
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self._messages, name)

    def unread_lookup(self, cap: int) -> KeyedLookup[UnreadAsk, dict[int, Unread]]:
        lookup = self._unread.get(cap)
        if lookup is None:
            lookup = self._unread[cap] = KeyedLookup(
                lambda asks: self._batches.unread_many(asks, cap), progress=self.progress
            )
        return lookup

    async def unread(self, user_id: int, positions: Mapping[int, int | None], cap: int) -> dict[int, Unread]:
        if not positions:
            return {}
        ask = UnreadAsk(user_id=user_id, positions=tuple(sorted(positions.items())))
        found = await answered(self.unread_lookup(cap), ask, self._messages.name, "unread")
        return dict(found or {})  # each caller's own dict

    async def heads(self, conversation_ids: Sequence[int]) -> dict[int, Head]:
        found: dict[int, Head] = {}
        for conversation_id in dict.fromkeys(conversation_ids):
            head = await answered(self.heads_lookup, conversation_id, self._messages.name, "heads")
            if head is not None:
                found[conversation_id] = head
        return found

    async def history(
        self,
        conversation_id: int,
        *,
        before: int | None,
        after: int | None,
        limit: int,
        order: HistoryOrder,
        thread_root_id: str | None = None,
        include_replies: bool = True,
    ) -> list[MessageRecord]:
        read = HistoryRead(
            conversation_id=conversation_id,
            before=before,
            after=after,
            limit=limit,
            order=order,
            thread_root_id=thread_root_id,
            include_replies=include_replies,
        )
        found = await answered(self.history_lookup, read, self._messages.name, "history")
        return list(found or ())  # records are frozen; the list is the caller's

    async def _histories(self, reads: list[HistoryRead]) -> dict[HistoryRead, list[MessageRecord]]:
        return await self._batches.history_many(reads)


class CoalescedReads:
    """The directory, with ``get_user``, ``member_counts``, ``memberships_of``,
    ``sessions_of`` and ``set_last_seen`` coalesced; every other call passes through.

    ``batches`` is the directory the ``sessions_of``, ``memberships_of_many`` and
    ``set_last_seen_many`` batches are made on: the same store under ``lookup_batch_timeout_seconds``
    (server/app.py); without it, ``directory``."""

    def __init__(
        self, directory: Directory, batches: Directory | None = None, progress: BatchProgress | None = None
    ) -> None:
        self._directory = directory
        self._batches = batched = batches or directory
        self.progress = progress = progress or BatchProgress()
        self.users: KeyedLookup[int, UserRecord] = KeyedLookup(self._users, progress=progress)
        self.member_counts_lookup: KeyedLookup[int, int] = KeyedLookup(self._directory.member_counts, progress=progress)
        # Looked up on each batch, not bound here: tests slow a store down by swapping its method.
        self.memberships: KeyedLookup[int, list[Membership]] = KeyedLookup(
            lambda ids: batched.memberships_of_many(ids), progress=progress
        )
        """``channel.list`` and ``dm.list`` (every client's catch-up in a storm)."""
        self.sessions: KeyedLookup[int, UserSession] = KeyedLookup(batched.sessions_of, progress=progress)
        self.last_seen: KeyedWrites[int, int] = KeyedWrites(batched.set_last_seen_many)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._directory, name)

    async def _users(self, user_ids: list[int]) -> dict[int, UserRecord]:
        return {user.id: user for user in await self._directory.get_users(user_ids)}

    async def memberships_of(self, user_id: int) -> list[Membership]:
        found = await answered(self.memberships, user_id, self._directory.name, "memberships_of")
        return list(found or ())  # a list of each caller's own: callers may change theirs

    async def get_user(self, user_id: int) -> UserRecord | None:
        return await within_request_budget(self.users.get(user_id), self._directory.name, "get_user")

    async def member_counts(self, conversation_ids: Sequence[int]) -> dict[int, int]:
        return await self.member_counts_lookup.get_many(conversation_ids)

    async def session_of(self, user_id: int) -> UserSession | None:
        """The user and their conversation ids (``auth``, a disconnect's presence), batched."""
        return await self.sessions.get(user_id)

    async def sessions_of(self, user_ids: Sequence[int]) -> dict[int, UserSession]:
        return await self.sessions.get_many(user_ids)

    async def set_last_seen(self, user_id: int, ts: int) -> None:
        await self.last_seen.put(user_id, ts)


def coalesced(
    directory: Directory, batches: Directory | None = None, progress: BatchProgress | None = None
) -> Directory:
    """``directory`` with its per-key reads and ``set_last_seen`` coalesced across concurrent callers
    (``batches``: the directory those batches are made on, see ``CoalescedReads``; ``progress``:
    its store's, shared with the other lookups of that store, see ``answered``)."""
    return cast(Directory, CoalescedReads(directory, batches, progress))


def coalesced_log(
    messages: MessageLog, batches: MessageLog | None = None, progress: BatchProgress | None = None
) -> MessageLog:
    """``messages`` with ``unread``, ``heads`` and ``history`` coalesced across concurrent
    callers (``batches``: the log those batches are read from, see ``CoalescedLog``;
    ``progress`` as ``coalesced``'s)."""
    return cast(MessageLog, CoalescedLog(messages, batches, progress))
