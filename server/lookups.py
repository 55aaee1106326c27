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
batch at once. ``get_user``, ``public_channels`` and ``member_counts``
batches keep the ordinary bound: ordinary requests (invites, ``channel.list``,
typing) wait on them, and a request waiting on ``get_user`` or
``public_channels`` waits no longer than its own store budget
(server/guarded.py ``within_request_budget``) although another task makes
the batch. Every ``channel.list`` of a storm's catch-up reads the same public
channels: one read for all that ask together.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from typing import Any, Generic, TypeVar, cast

from hubbub.server.guarded import within_request_budget
from hubbub.storage.base import Directory
from hubbub.storage.records import ConversationRecord, UserRecord, UserSession

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

LOOKUP_BATCH_MAX = 500
"""Keys per store call: bounds one query's size (and SQLite's bound parameters)."""


class KeyedLookup(Generic[K, V]):
    def __init__(
        self, fetch: Callable[[list[K]], Awaitable[Mapping[K, V]]], *, max_batch: int = LOOKUP_BATCH_MAX
    ) -> None:
        self._fetch = fetch
        self.max_batch = max_batch
        self._waiting: dict[K, list[asyncio.Future[V | None]]] = {}
        self._flusher: asyncio.Task[None] | None = None  # held: the loop keeps only weak references
        self.batches = 0
        """Store calls made (the tests count them)."""

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

    @staticmethod
    def _cancel(batch: Mapping[Any, list[asyncio.Future[Any]]]) -> None:
        for futures in batch.values():
            for future in futures:
                future.cancel()


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


class CoalescedReads:
    """The directory, with ``get_user``, ``member_counts``, ``public_channels``,
    ``sessions_of`` and ``set_last_seen`` coalesced; every other call passes through.

    ``batches`` is the directory the ``sessions_of`` and ``set_last_seen_many``
    batches are made on: the same store under ``lookup_batch_timeout_seconds``
    (server/app.py); without it, ``directory``."""

    def __init__(self, directory: Directory, batches: Directory | None = None) -> None:
        self._directory = directory
        batched = batches or directory
        self.users: KeyedLookup[int, UserRecord] = KeyedLookup(self._users)
        self.member_counts_lookup: KeyedLookup[int, int] = KeyedLookup(self._directory.member_counts)
        self.public: KeyedLookup[int, list[ConversationRecord]] = KeyedLookup(self._public_channels)
        """One key: every ``channel.list`` of a storm's catch-up reads the same list of public channels."""
        self.sessions: KeyedLookup[int, UserSession] = KeyedLookup(batched.sessions_of)
        self.last_seen: KeyedWrites[int, int] = KeyedWrites(batched.set_last_seen_many)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._directory, name)

    async def _users(self, user_ids: list[int]) -> dict[int, UserRecord]:
        return {user.id: user for user in await self._directory.get_users(user_ids)}

    async def _public_channels(self, _keys: list[int]) -> dict[int, list[ConversationRecord]]:
        return {0: await self._directory.public_channels()}

    async def public_channels(self) -> list[ConversationRecord]:
        found = await within_request_budget(self.public.get(0), self._directory.name, "public_channels")
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


def coalesced(directory: Directory, batches: Directory | None = None) -> Directory:
    """``directory`` with its per-key reads and ``set_last_seen`` coalesced across concurrent callers
    (``batches``: the directory those batches are made on, see ``CoalescedReads``)."""
    return cast(Directory, CoalescedReads(directory, batches))
