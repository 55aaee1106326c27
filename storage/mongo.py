"""MongoDB message log on pymongo's native AsyncMongoClient.

Documents are keyed for sharding by ``conversation_id``: every query names
one conversation, so with shard key ``{conversation_id: 1}`` each read and
write goes to exactly one shard and a conversation's history stays together.
Every unique index starts with ``conversation_id``, as MongoDB requires of
unique indexes on a sharded collection (which also rules out a hashed key).

There are no multi-document transactions here, so a conversation's two
counters (``seq`` for messages, ``rev`` for changes) live in a counter
document (``counters`` collection, ``_id`` = conversation id) that every
writer advances by compare-and-set, adding in the same update a pending
entry (first revision -> lease end, ms) that holds back the change feed's
horizon until the write it stands for is done (docs/messages.md). A seq or
rev allocated for a write that then fails is never used: both counters are
strictly increasing with rare gaps, and clients treat a gap-fill that
returns nothing as complete.

Appends are group-committed across conversations (storage/batching.py),
and a flush costs the same round trips whatever the number of conversations
in it: one read for earlier copies of resent messages, one ``bulk_write`` of
compare-and-sets reserving every conversation's seqs and revs (plus one read
of the counters this process has not seen yet), one unordered
``insert_many`` and one ``bulk_write`` removing the pending entries; each
new reply then updates its root as a change.
A change (``change_message``) is four round trips: read the message,
allocate a rev, write the new state filtered on the rev read, remove the
pending entry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Mapping, Sequence
from typing import Any, NamedTuple

import msgspec
import pymongo
from pymongo import AsyncMongoClient, ReturnDocument, UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError, DuplicateKeyError, PyMongoError
from pymongo.write_concern import WriteConcern

from hubbub.protocol.search import matches, relevance
from hubbub.storage.base import HistoryOrder, MessageChange, MessageLog
from hubbub.storage.batching import GroupCommit, Stored, by_conversation
from hubbub.storage.errors import StoreUnavailable
from hubbub.storage.mongo_pools import MongoPoolEvents
from hubbub.storage.records import (
    Appended,
    ChangesPage,
    Head,
    HistoryRead,
    MessageQuery,
    MessageRecord,
    NewMessage,
    PurgeResult,
    SearchHit,
    Unread,
    UnreadAsk,
)
from hubbub.storage.rows import (
    expired_prefix,
    message_document,
    message_from_document,
    message_state_document,
    new_message_record,
    seq_range,
)
from hubbub.storage.search_sql import parse_ts_position, ts_position
from hubbub.storage.threads import with_reply

Document = dict[str, Any]
Clock = Callable[[], float]
"""Wall-clock seconds (``time.time``): pending leases are compared across instances."""

log = logging.getLogger(__name__)

ALLOCATION_ATTEMPTS = 50
"""Compare-and-set attempts of one allocation: each miss means another
instance allocated meanwhile (this one's are serialised), so this bounds a
burst of contention, not a wait."""
CHANGE_ATTEMPTS = 50
"""Attempts of one change: each miss means another instance changed the
message between our read and our write."""
COUNTERS_CACHED = 10_000
"""Conversations whose counter this process remembers (the compare-and-set
filter); a forgotten one costs one extra read on its next allocation."""


def _unavailable(exc: PyMongoError) -> StoreUnavailable:
    return StoreUnavailable("mongo", str(exc).split(", Timeout:")[0] or type(exc).__name__)


def parse_write_concern(value: str) -> WriteConcern:
    """``majority``, or a number of nodes such as ``1``."""
    w: int | str = int(value) if value.isdigit() else value
    return WriteConcern(w=w, j=True)


class Allocation(NamedTuple):
    """Seqs and revs reserved in one compare-and-set of a conversation's counter."""

    conversation_id: int
    first_seq: int
    """The first of ``seqs`` consecutive seqs (unused when ``seqs`` is 0)."""
    seqs: int
    first_rev: int
    """The first of ``revs`` consecutive revs; also the key of the allocation's pending entry."""
    revs: int

    @property
    def pending_field(self) -> str:
        return f"pending.{self.first_rev}"


class _KeyedLocks:
    """One asyncio.Lock per key, forgotten when nobody holds or awaits it."""

    def __init__(self) -> None:
        self._locks: dict[Hashable, tuple[asyncio.Lock, list[int]]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: Hashable) -> AsyncIterator[None]:
        lock, users = self._locks.setdefault(key, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._locks[key]


def _counter_filter(counter: Document) -> Document:
    """The compare-and-set filter: the counter exactly as last seen. A counter
    written before revisions existed has no ``rev`` (the upgrade gives it one)."""
    rev: Any = counter.get("rev", {"$exists": False})
    return {"_id": counter["_id"], "seq": counter["seq"], "rev": rev}


def _counter_rev(counter: Document) -> int:
    return int(counter["rev"] if "rev" in counter else counter["seq"])


def _pending(counter: Document) -> dict[str, int]:
    return {str(k): int(v) for k, v in (counter.get("pending") or {}).items()}


def horizon_of(counter: Document, now_ms: int) -> int:
    """Every change up to here is stored: one below the lowest pending entry
    whose lease has not ended, else the counter's rev."""
    live = [int(first) for first, end in _pending(counter).items() if end > now_ms]
    return min(live) - 1 if live else _counter_rev(counter)


class MongoMessageLog:
    name = "mongo"
    gapless = False
    ordered_appends = True  # group-committed, each conversation in order (storage/batching.py)

    def __init__(
        self,
        client: AsyncMongoClient[Document],
        database: str,
        write_concern: WriteConcern,
        change_lease_seconds: float = 30.0,
        clock: Clock = time.time,
    ) -> None:
        self.client = client
        self.change_lease_seconds = change_lease_seconds
        self._clock = clock
        self._batches = GroupCommit(self.name, self._store_batch, key=by_conversation)
        db = client.get_database(database, write_concern=write_concern)
        self.messages: AsyncCollection[Document] = db.messages
        self.counters: AsyncCollection[Document] = db.counters
        self._counters_seen: OrderedDict[int, Document] = OrderedDict()
        """The last state of each conversation's counter this process saw: the next compare-and-set's filter."""
        self._allocating = _KeyedLocks()
        """Per conversation, held around one allocation round trip, so that a
        compare-and-set misses only because of another instance."""
        self._changing = _KeyedLocks()
        """Per conversation, held around a change's read, allocation and write,
        so that a change is retried only because of another instance."""
        self.pool_events: MongoPoolEvents | None = None
        """The client's connection-pool events, counted (hubbub_pool_*), when ``open`` made the client."""
        self.after_batch: Callable[[Sequence[Appended]], Awaitable[None]] | None = None
        """Called with a batch's stored messages (duplicates too) before they are
        acknowledged; what it raises fails the batch (storage/search_index.py)."""

    @classmethod
    async def open(
        cls, url: str, database: str, write_concern: str, timeout: float, change_lease_seconds: float = 30.0
    ) -> MongoMessageLog:
        ms = int(timeout * 1000)
        pool_events = MongoPoolEvents()
        client: AsyncMongoClient[Document] = AsyncMongoClient(
            url,
            serverSelectionTimeoutMS=ms,
            connectTimeoutMS=ms,
            socketTimeoutMS=ms,
            timeoutMS=ms,
            retryWrites=True,
            appname="hubbub",
            event_listeners=[pool_events],
        )
        log = cls(client, database, parse_write_concern(write_concern), change_lease_seconds)
        log.pool_events = pool_events
        try:
            await log.ensure_indexes()
        except PyMongoError as exc:
            await client.close()
            raise _unavailable(exc) from exc
        return log

    async def ensure_indexes(self) -> None:
        """Upgrade documents written before revisions existed, then create the
        indexes. Idempotent, and safe with several instances at once: the
        upgrade only touches documents without ``rev`` and gives each the
        value every instance would (its seq), and creating an index that
        exists is a no-op."""
        await self.messages.create_index(
            [("conversation_id", pymongo.ASCENDING), ("seq", pymongo.DESCENDING)], unique=True, name="history"
        )
        await self.messages.create_index(
            [("conversation_id", pymongo.ASCENDING), ("sender_id", pymongo.ASCENDING), ("client_msg_id", 1)],
            unique=True,
            partialFilterExpression={"client_msg_id": {"$type": "string"}},
            name="idempotency",
        )
        await self._upgrade_to_revisions()
        await self.messages.create_index(
            [("conversation_id", pymongo.ASCENDING), ("rev", pymongo.ASCENDING)], unique=True, name="changes"
        )
        await self.messages.create_index(
            [("conversation_id", pymongo.ASCENDING), ("thread_root_id", pymongo.ASCENDING), ("seq", 1)],
            partialFilterExpression={"thread_root_id": {"$type": "string"}},
            name="threads",
        )
        await self.messages.create_index(
            [("conversation_id", pymongo.ASCENDING), ("pinned_ts", pymongo.DESCENDING)],
            partialFilterExpression={"pinned_ts": {"$type": "number"}},
            name="pins",
        )

    async def _upgrade_to_revisions(self) -> None:
        """rev = seq for every counter and message without one (docs/messages.md):
        unique, since seqs are, and below every revision allocated later, since
        a counter's rev starts at its seq. Counters first, so that no instance
        allocates a rev from a counter that lacks one."""
        to_upgrade = {"rev": {"$exists": False}}
        await self.counters.update_many(to_upgrade, [{"$set": {"rev": "$seq"}}])
        await self.messages.update_many(to_upgrade, [{"$set": {"rev": "$seq"}}])

    async def ping(self) -> None:
        try:
            await self.client.admin.command("ping")
        except PyMongoError as exc:
            raise _unavailable(exc) from exc

    def last_error(self) -> str:
        """The last error the client's server monitor met ("" if none): why a
        ping that timed out got no answer, e.g. a refused connection."""
        servers = self.client.topology_description.server_descriptions().values()
        return "; ".join(str(sd.error).split(" (configured timeouts")[0] for sd in servers if sd.error)

    async def close(self) -> None:
        await self._batches.close()
        await self.client.close()

    # Allocation: the counter's compare-and-set, and its pending entry.

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    async def allocate(self, conversation_id: int, *, seqs: int, revs: int) -> Allocation:
        """Reserve ``seqs`` seqs and ``revs`` (at least one) revs of the
        conversation, with a pending entry holding the horizon below them
        until ``release`` (or its lease ends). Raises PyMongoError."""
        async with self._allocating.hold(conversation_id):
            for _ in range(ALLOCATION_ATTEMPTS):
                seen = self._counters_seen.get(conversation_id) or await self._read_counter(conversation_id)
                try:
                    allocation, after = await self._compare_and_set(seen, seqs, revs)
                except BaseException:
                    self._forget_counter(conversation_id)  # it may or may not have been written
                    raise
                if after is not None:
                    self._remember_counter(after)
                    return allocation
                self._forget_counter(conversation_id)  # another instance allocated: read again
        raise StoreUnavailable("mongo", f"could not allocate a revision for conversation {conversation_id}")

    async def allocate_many(self, counts: Mapping[int, int]) -> dict[int, Allocation]:
        """``allocate`` for several conversations at once, ``counts[c]`` seqs and
        as many revs each, in one ``bulk_write`` of compare-and-sets (and one read
        of the counters not seen yet): round trips that do not grow with the number
        of conversations. A compare-and-set that finds its counter moved (another
        instance allocated) is an upsert that collides with the existing counter
        (E11000 at its index), so each conversation's outcome is known; those are
        read again and retried. Raises PyMongoError."""
        ids = sorted(counts)
        async with contextlib.AsyncExitStack() as held:
            for conversation_id in ids:  # ascending: the one order these locks are taken in
                await held.enter_async_context(self._allocating.hold(conversation_id))
            allocations: dict[int, Allocation] = {}
            todo = ids
            for _ in range(ALLOCATION_ATTEMPTS):
                seen = await self._counters_of(todo)
                plans = [self._plan(seen[c], counts[c], counts[c]) for c in todo]
                ops = [
                    UpdateOne(_counter_filter(seen[c]), update, upsert=True)
                    for c, (_, update, _) in zip(todo, plans, strict=True)
                ]
                missed: set[int] = set()
                try:
                    await self.counters.bulk_write(ops, ordered=False)
                except BulkWriteError as exc:
                    errors = exc.details.get("writeErrors", [])
                    if exc.details.get("writeConcernErrors") or any(e.get("code") != 11000 for e in errors):
                        for c in todo:
                            self._forget_counter(c)  # written or not: read again next time
                        raise
                    missed = {todo[int(e["index"])] for e in errors}
                except BaseException:
                    for c in todo:
                        self._forget_counter(c)
                    raise
                for c, (allocation, _, after) in zip(todo, plans, strict=True):
                    if c in missed:
                        self._forget_counter(c)  # another instance allocated: read again
                    else:
                        self._remember_counter(after)
                        allocations[c] = allocation
                todo = [c for c in todo if c in missed]
                if not todo:
                    return allocations
            await self.release_many(list(allocations.values()))
        raise StoreUnavailable("mongo", f"could not allocate seqs for conversations {todo}")

    async def _counters_of(self, ids: Sequence[int]) -> dict[int, Document]:
        """The counters as last seen, those not seen read in one query; a
        conversation without one yet as a counter at zero (the upsert of its
        first compare-and-set creates it)."""
        seen = {c: self._counters_seen[c] for c in ids if c in self._counters_seen}
        unseen = [c for c in ids if c not in seen]
        if unseen:
            found = {int(d["_id"]): d async for d in self.counters.find({"_id": {"$in": unseen}})}
            for c in unseen:
                seen[c] = found.get(c) or {"_id": c, "seq": 0, "rev": 0, "pending": {}}
        return seen

    def _plan(self, seen: Document, seqs: int, revs: int) -> tuple[Allocation, Document, Document]:
        """A compare-and-set's allocation, update and the counter after it, from ``seen``.

        The counter after it is exact in what a compare-and-set filters on
        (``seq``, ``rev``): another writer changes those only by a compare-and-set,
        which the next one's filter would meet. Its ``pending`` may still list an
        entry another instance has released since: removing it again is a no-op."""
        now = self._now_ms()
        seq, rev = int(seen["seq"]), _counter_rev(seen)
        allocation = Allocation(int(seen["_id"]), seq + 1, seqs, rev + 1, revs)
        lease_end = now + int(self.change_lease_seconds * 1000)
        update: Document = {"$set": {"seq": seq + seqs, "rev": rev + revs, allocation.pending_field: lease_end}}
        pending = _pending(seen)
        expired = {f"pending.{first}": "" for first, end in pending.items() if end <= now}
        if expired:
            update["$unset"] = expired
        kept = {first: end for first, end in pending.items() if end > now}
        after = {"_id": seen["_id"], "seq": seq + seqs, "rev": rev + revs, "pending": {**kept, str(rev + 1): lease_end}}
        return allocation, update, after

    async def release_many(self, allocations: Sequence[Allocation]) -> None:
        """``release`` of several allocations in one ``bulk_write``; never raises."""
        if not allocations:
            return
        ops = [UpdateOne({"_id": a.conversation_id}, {"$unset": {a.pending_field: ""}}) for a in allocations]
        try:
            await self.counters.bulk_write(ops, ordered=False)
        except PyMongoError as exc:
            log.warning("pending entries of %s conversations left to their lease: %s", len(allocations), exc)

    async def _compare_and_set(self, seen: Document, seqs: int, revs: int) -> tuple[Allocation, Document | None]:
        """One attempt: the allocation, and the counter after it (None when ``seen`` was stale).
        Pending entries whose lease ended are removed in the same update."""
        now = self._now_ms()
        seq, rev = int(seen["seq"]), _counter_rev(seen)
        allocation = Allocation(int(seen["_id"]), seq + 1, seqs, rev + 1, revs)
        update: Document = {
            "$set": {
                "seq": seq + seqs,
                "rev": rev + revs,
                allocation.pending_field: now + int(self.change_lease_seconds * 1000),
            }
        }
        expired = {f"pending.{first}": "" for first, end in _pending(seen).items() if end <= now}
        if expired:
            update["$unset"] = expired
        after = await self.counters.find_one_and_update(
            _counter_filter(seen), update, return_document=ReturnDocument.AFTER
        )
        return allocation, after

    async def _read_counter(self, conversation_id: int) -> Document:
        """The counter as stored, created (seq 0, rev 0) for a conversation's first message."""
        counter = await self.counters.find_one({"_id": conversation_id})
        if counter is not None:
            return counter
        # Not an upsert: racing upserts may fail or double-count on some
        # servers, while this insert either wins or finds the winner's document.
        created: Document = {"_id": conversation_id, "seq": 0, "rev": 0, "pending": {}}
        try:
            await self.counters.insert_one(dict(created))
            return created
        except DuplicateKeyError:
            counter = await self.counters.find_one({"_id": conversation_id})
            if counter is None:  # created and gone: counters are never deleted
                raise StoreUnavailable("mongo", f"the counter of conversation {conversation_id} vanished") from None
            return counter

    def _remember_counter(self, counter: Document) -> None:
        conversation_id = int(counter["_id"])
        self._counters_seen.pop(conversation_id, None)
        self._counters_seen[conversation_id] = counter
        if len(self._counters_seen) > COUNTERS_CACHED:
            self._counters_seen.popitem(last=False)

    def _forget_counter(self, conversation_id: int) -> None:
        self._counters_seen.pop(conversation_id, None)

    async def release(self, allocation: Allocation) -> None:
        """Remove the allocation's pending entry: its write is done or has
        failed. Never raises: an entry left behind only holds the horizon back
        until its lease ends, and the next allocation removes it."""
        try:
            await self.counters.update_one(
                {"_id": allocation.conversation_id}, {"$unset": {allocation.pending_field: ""}}
            )
        except PyMongoError as exc:
            log.warning(
                "pending entry %s of conversation %s left to its lease: %s",
                allocation.first_rev,
                allocation.conversation_id,
                exc,
            )

    # Appends.

    async def _find_original(self, m: NewMessage) -> Document | None:
        return await self.messages.find_one(
            {
                "conversation_id": m.conversation_id,
                "sender_id": m.sender_id,
                "client_msg_id": {"$eq": m.client_msg_id, "$type": "string"},  # the index's partial filter
            }
        )

    async def append(self, message: NewMessage, deadline: float | None = None) -> Appended:
        return await self._batches.append(message, deadline)

    async def _store_batch(self, batch: list[NewMessage]) -> list[Stored | BaseException]:
        """One conversation's messages in order: one read for earlier copies of
        resent ones, one allocation for all their seqs and revs, one ordered
        insert, the allocation's release; then each new reply's root update;
        then ``after_batch`` (the search index) before any is acknowledged."""
        try:
            outcomes = await self._append_batch(batch)
        except PyMongoError as exc:
            raise _unavailable(exc) from exc
        if self.after_batch is not None:
            await self.after_batch([o for o in outcomes if isinstance(o, Appended)])
        return outcomes

    async def _append_batch(self, batch: list[NewMessage]) -> list[Stored | BaseException]:
        # Every field of the idempotency index, and its partial filter ($type), so
        # the server reads that index; without them it walked the conversations.
        # Across conversations the query is a superset (any of the senders with
        # any of the ids): only exact (conversation, sender, id) matches count.
        query = {
            "conversation_id": {"$in": sorted({m.conversation_id for m in batch})},
            "sender_id": {"$in": sorted({m.sender_id for m in batch})},
            "client_msg_id": {"$in": sorted({m.client_msg_id for m in batch}), "$type": "string"},
        }
        originals = {
            (int(d["conversation_id"]), int(d["sender_id"]), d["client_msg_id"]): d
            async for d in self.messages.find(query)
        }
        outcomes: list[Stored | BaseException | None] = [None] * len(batch)
        fresh: list[int] = []  # indexes of the messages to store
        first_copy: dict[tuple[int, int, str], int] = {}
        resends: list[tuple[int, int]] = []  # (index, index of its first copy in this batch)
        for i, m in enumerate(batch):
            key = (m.conversation_id, m.sender_id, m.client_msg_id)
            if key in originals:
                outcomes[i] = Appended(record=message_from_document(originals[key]), duplicate=True)
            elif key in first_copy:
                resends.append((i, first_copy[key]))
            else:
                first_copy[key] = i
                fresh.append(i)
        if fresh:
            inserted = await self._insert_fresh([batch[i] for i in fresh])
            for i, outcome in zip(fresh, inserted, strict=True):
                outcomes[i] = await self._update_root(outcome)
        for i, first in resends:
            earlier = outcomes[first]
            outcomes[i] = Appended(record=earlier.record, duplicate=True) if isinstance(earlier, Appended) else earlier
        stored_or_failed = [o for o in outcomes if o is not None]
        if len(stored_or_failed) != len(batch):  # every message got an outcome above
            raise RuntimeError(f"{len(batch) - len(stored_or_failed)} of {len(batch)} messages got no outcome")
        return stored_or_failed

    async def _insert_fresh(self, fresh: list[NewMessage]) -> list[Stored | BaseException]:
        """Store messages not stored before, each with its own seq and rev of its
        conversation's allocation (one allocation per conversation, all in one
        round trip), in one unordered insert: a message that fails it (typically
        a resend stored meanwhile through another instance) does not stop the
        others, and is then tried alone."""
        counts: dict[int, int] = {}
        for m in fresh:
            counts[m.conversation_id] = counts.get(m.conversation_id, 0) + 1
        allocations = await self.allocate_many(counts)
        try:
            used = dict.fromkeys(counts, 0)
            records: list[MessageRecord] = []
            for m in fresh:
                allocation, k = allocations[m.conversation_id], used[m.conversation_id]
                used[m.conversation_id] = k + 1
                records.append(new_message_record(m, allocation.first_seq + k, allocation.first_rev + k))
            docs = [message_document(record) for record in records]
            failed: set[int] = set()
            try:
                await self.messages.insert_many(docs, ordered=False)
            except BulkWriteError as exc:
                if exc.details.get("writeConcernErrors"):
                    raise  # written, but not as durably as asked: not acknowledged
                failed = {int(e["index"]) for e in exc.details.get("writeErrors", [])}
            outcomes: list[Stored | BaseException] = []
            for i, (m, record, doc) in enumerate(zip(fresh, records, docs, strict=True)):
                if i in failed:
                    outcomes.append(await self._insert_one(m, record, doc))
                else:
                    outcomes.append(Appended(record=record, duplicate=False))
            return outcomes
        finally:
            await self.release_many(list(allocations.values()))

    async def _insert_one(self, m: NewMessage, record: MessageRecord, doc: Document) -> Stored | BaseException:
        try:
            await self.messages.insert_one(doc)
        except DuplicateKeyError as exc:
            original = await self._find_original(m)
            if original is None:
                return _unavailable(exc)
            return Appended(record=message_from_document(original), duplicate=True)
        return Appended(record=record, duplicate=False)

    async def _update_root(self, outcome: Stored | BaseException) -> Stored | BaseException:
        """A new reply's outcome with its root updated (``with_reply``) under a
        rev of its own; the root is None when it does not exist. The reply is
        stored already: if the root's update fails, so does this outcome."""
        if not isinstance(outcome, Appended) or outcome.duplicate:
            return outcome
        reply = outcome.record
        if reply.thread_root_id is None:
            return outcome
        try:
            changed = await self._change_serialised(
                reply.conversation_id, reply.thread_root_id, lambda root: with_reply(root, reply)
            )
        except PyMongoError as exc:
            return _unavailable(exc)
        except StoreUnavailable as exc:
            return exc
        return msgspec.structs.replace(outcome, root=None if changed is None else changed[0])

    # Changes.

    async def get_message(self, conversation_id: int, message_id: str) -> MessageRecord | None:
        try:
            doc = await self.messages.find_one({"_id": message_id, "conversation_id": conversation_id})
        except PyMongoError as exc:
            raise _unavailable(exc) from exc
        return None if doc is None else message_from_document(doc)

    async def change_message(
        self, conversation_id: int, message_id: str, change: MessageChange
    ) -> tuple[MessageRecord, bool] | None:
        try:
            return await self._change_serialised(conversation_id, message_id, change)
        except PyMongoError as exc:
            raise _unavailable(exc) from exc

    async def _change_serialised(
        self, conversation_id: int, message_id: str, change: MessageChange
    ) -> tuple[MessageRecord, bool] | None:
        async with self._changing.hold(conversation_id):
            for _ in range(CHANGE_ATTEMPTS):
                doc = await self.messages.find_one({"_id": message_id, "conversation_id": conversation_id})
                if doc is None:
                    return None
                current = message_from_document(doc)
                new = change(current)
                if new is None:
                    return current, False
                stored = await self._write_change(doc, new)
                if stored is not None:
                    return stored, True
        raise StoreUnavailable("mongo", f"message {message_id} kept changing under {CHANGE_ATTEMPTS} attempts")

    async def _write_change(self, doc: Document, new: MessageRecord) -> MessageRecord | None:
        """Store ``new``'s state under a fresh rev if the message is still as
        ``doc`` (same rev); None when another change got there first (the rev
        becomes a gap). The record is built from what is written, so it is
        exactly what a read returns."""
        allocation = await self.allocate(int(doc["conversation_id"]), seqs=0, revs=1)
        try:
            state = message_state_document(msgspec.structs.replace(new, rev=allocation.first_rev))
            read_rev: Any = doc.get("rev", {"$exists": False})
            result = await self.messages.update_one(
                {"_id": doc["_id"], "conversation_id": doc["conversation_id"], "rev": read_rev}, {"$set": state}
            )
        finally:
            await self.release(allocation)
        return message_from_document({**doc, **state}) if result.matched_count else None

    # Reads.

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
        return await self._find(_history_query(read), [("seq", _direction(read))], read.limit)

    async def history_many(self, reads: Sequence[HistoryRead]) -> dict[HistoryRead, list[MessageRecord]]:
        """One aggregate: the first read's range of the ``history`` index, then one
        ``$unionWith`` per further read, each document tagged with its read's number."""
        distinct = list(dict.fromkeys(reads))
        if not distinct:
            return {}
        first, *rest = (_history_pipeline(n, read) for n, read in enumerate(distinct))
        pipeline = [*first, *({"$unionWith": {"coll": self.messages.name, "pipeline": p}} for p in rest)]
        try:
            documents = [d async for d in await self.messages.aggregate(pipeline)]
        except PyMongoError as exc:
            raise _unavailable(exc) from exc
        found: dict[HistoryRead, list[MessageRecord]] = {read: [] for read in distinct}
        for d in documents:
            found[distinct[int(d["read_of"])]].append(message_from_document(d))
        for read, records in found.items():  # each read's documents in its order (the union's is no promise)
            records.sort(key=lambda m: m.seq, reverse=read.order == "desc")
        return found

    async def pins(self, conversation_id: int, limit: int) -> list[MessageRecord]:
        query: Document = {"conversation_id": conversation_id, "pinned_ts": {"$type": "number"}}
        return await self._find(query, [("pinned_ts", pymongo.DESCENDING), ("seq", pymongo.DESCENDING)], limit)

    async def changes(self, conversation_id: int, *, after_rev: int, limit: int) -> ChangesPage:
        """The counter first, then the messages up to the horizon it gives: a
        change allocated after that read has a rev above it, and one allocated
        before and not yet written still has its pending entry."""
        try:
            counter = await self.counters.find_one({"_id": conversation_id})
        except PyMongoError as exc:
            raise _unavailable(exc) from exc
        if counter is None:
            return ChangesPage(messages=[], horizon=0)
        horizon = horizon_of(counter, self._now_ms())
        oldest = _oldest_seq(counter)
        if horizon <= after_rev:
            return ChangesPage(messages=[], horizon=horizon, oldest_seq=oldest)
        query: Document = {"conversation_id": conversation_id, "rev": {"$gt": after_rev, "$lte": horizon}}
        found = await self._find(query, [("rev", pymongo.ASCENDING)], limit)
        return ChangesPage(messages=found, horizon=horizon, oldest_seq=oldest)

    async def _find(self, query: Document, sort: list[tuple[str, int]], limit: int) -> list[MessageRecord]:
        try:
            cursor = self.messages.find(query).sort(sort).limit(limit)
            return [message_from_document(d) async for d in cursor]
        except PyMongoError as exc:
            raise _unavailable(exc) from exc

    async def heads(self, conversation_ids: Sequence[int]) -> dict[int, Head]:
        ids = sorted(set(conversation_ids))
        if not ids:
            return {}
        try:
            counters = [d async for d in self.counters.find({"_id": {"$in": ids}, "seq": {"$gt": 0}})]
        except PyMongoError as exc:
            raise _unavailable(exc) from exc
        return {int(d["_id"]): _head(d) for d in counters}

    async def unread(self, user_id: int, positions: Mapping[int, int | None], cap: int) -> dict[int, Unread]:
        """One aggregate: the counters, then one ``$unionWith`` per conversation
        with a read position, each a range of the ``history`` index after it,
        filtered to the messages that count and stopped after ``cap`` of them."""
        ids = sorted(set(positions))
        if not ids:
            return {}
        pipeline: list[Document] = [
            {"$match": {"_id": {"$in": ids}, "seq": {"$gt": 0}}},
            {"$project": {"seq": 1, "rev": 1, "purged_seq": 1}},
        ]
        for conversation_id in ids:
            read_seq = positions[conversation_id]
            if read_seq is not None:
                pipeline.append(
                    {
                        "$unionWith": {
                            "coll": self.messages.name,
                            "pipeline": _unread_pipeline(conversation_id, read_seq, user_id, cap),
                        }
                    }
                )
        try:
            found = [d async for d in await self.counters.aggregate(pipeline)]
        except PyMongoError as exc:
            raise _unavailable(exc) from exc
        counts = {int(d["unread_of"]): (int(d["unread"]), int(d["mentioned"])) for d in found if "unread_of" in d}
        result: dict[int, Unread] = {}
        for d in found:
            if "seq" not in d:
                continue
            conversation_id = int(d["_id"])
            head = _head(d)
            read_seq = positions[conversation_id]
            unread, mentioned = counts.get(conversation_id, (0, 0))
            if read_seq is None or read_seq >= head.last_seq:  # a message past the head read: not yet counted
                unread = mentioned = 0
            result[conversation_id] = Unread(head=head, unread_count=unread, mention_count=mentioned)
        return result

    async def unread_many(self, asks: Sequence[UnreadAsk], cap: int) -> dict[UnreadAsk, dict[int, Unread]]:
        """``unread``'s aggregate for every ask at once: the counters of all their
        conversations, then one ``$unionWith`` per (ask, conversation) with a read
        position, its counts tagged with the ask's number."""
        distinct = list(dict.fromkeys(asks))
        result: dict[UnreadAsk, dict[int, Unread]] = {ask: {} for ask in distinct}
        ids = sorted({conversation_id for ask in distinct for conversation_id, _ in ask.positions})
        if not ids:
            return result
        pipeline: list[Document] = [
            {"$match": {"_id": {"$in": ids}, "seq": {"$gt": 0}}},
            {"$project": {"seq": 1, "rev": 1, "purged_seq": 1}},
        ]
        for n, ask in enumerate(distinct):
            for conversation_id, read_seq in ask.positions:
                if read_seq is not None:
                    counting = _unread_pipeline(conversation_id, read_seq, ask.user_id, cap)
                    counting[-1]["$project"]["ask_of"] = {"$literal": n}
                    pipeline.append({"$unionWith": {"coll": self.messages.name, "pipeline": counting}})
        try:
            found = [d async for d in await self.counters.aggregate(pipeline)]
        except PyMongoError as exc:
            raise _unavailable(exc) from exc
        heads = {int(d["_id"]): _head(d) for d in found if "seq" in d}
        counts = {
            (int(d["ask_of"]), int(d["unread_of"])): (int(d["unread"]), int(d["mentioned"]))
            for d in found
            if "unread_of" in d
        }
        for n, ask in enumerate(distinct):
            answer = result[ask]
            for conversation_id, read_seq in ask.positions:
                head = heads.get(conversation_id)
                if head is None:
                    continue
                unread, mentioned = counts.get((n, conversation_id), (0, 0))
                if read_seq is None or read_seq >= head.last_seq:  # a message past the head read: not yet counted
                    unread = mentioned = 0
                answer[conversation_id] = Unread(head=head, unread_count=unread, mention_count=mentioned)
        return result

    # Retention.

    async def purge(
        self, conversation_id: int, *, before_ts: int | None, keep_last: int | None, limit: int
    ) -> PurgeResult:
        """The expired prefix removed with one ``delete_many``, then the counter's
        ``purged_seq`` raised (``$max``: a purge racing another never lowers it).
        Seqs may have gaps here, so the count rule finds the ``keep_last``-th
        newest message in the ``history`` index (a skip of ``keep_last`` entries)."""
        try:
            counter = await self.counters.find_one({"_id": conversation_id})
            if counter is None:
                return PurgeResult(purged=0, oldest_seq=1, more=False)
            below = 0
            if keep_last is not None:
                kept = await self.messages.find_one(
                    {"conversation_id": conversation_id}, {"seq": 1}, sort=[("seq", -1)], skip=keep_last - 1
                )
                below = 0 if kept is None else int(kept["seq"])
            cursor = self.messages.find({"conversation_id": conversation_id}, {"seq": 1, "ts": 1})
            docs = [d async for d in cursor.sort([("seq", pymongo.ASCENDING)]).limit(limit + 1)]
            expired = expired_prefix([(int(d["seq"]), int(d["ts"])) for d in docs], below, before_ts)
            gone = min(expired, limit)
            if gone == 0:
                return PurgeResult(purged=0, oldest_seq=_oldest_seq(counter), more=False)
            last = int(docs[gone - 1]["seq"])
            await self.messages.delete_many({"conversation_id": conversation_id, "seq": {"$lte": last}})
            await self.counters.update_one({"_id": conversation_id}, {"$max": {"purged_seq": last}})
        except PyMongoError as exc:
            raise _unavailable(exc) from exc
        return PurgeResult(purged=gone, oldest_seq=last + 1, more=expired > limit)

    # Search: the index is PostgreSQL's (storage/search_index.py); these are its reads here.

    async def get_messages(self, keys: Sequence[tuple[int, str]]) -> dict[str, MessageRecord]:
        """The messages of (conversation id, message id) ``keys`` that exist, by id: one query."""
        if not keys:
            return {}
        query = {"conversation_id": {"$in": sorted({c for c, _ in keys})}, "_id": {"$in": [i for _, i in keys]}}
        try:
            return {str(d["_id"]): message_from_document(d) async for d in self.messages.find(query)}
        except PyMongoError as exc:
            raise _unavailable(exc) from exc

    async def all_messages(self, batch: int) -> AsyncIterator[list[MessageRecord]]:
        """Every message, ``batch`` at a time, in (conversation, seq) order (``hubbub reindex``)."""
        try:
            cursor = self.messages.find({}).sort([("conversation_id", 1), ("seq", 1)]).batch_size(batch)
            records: list[MessageRecord] = []
            async for doc in cursor:
                records.append(message_from_document(doc))
                if len(records) >= batch:
                    yield records
                    records = []
            if records:
                yield records
        except PyMongoError as exc:
            raise _unavailable(exc) from exc

    # Account deletion (issue 15): a sender's messages moved to the tombstone user.

    async def sender_messages(self, sender_id: int, limit: int) -> list[tuple[int, int, str]]:
        """(conversation id, seq, id) of up to ``limit`` of ``sender_id``'s messages.
        No index leads with sender_id (one would cost every send): a scan, an
        admin's one-off cost (docs/operations.md)."""
        try:
            cursor = self.messages.find({"sender_id": sender_id}, {"conversation_id": 1, "seq": 1}).limit(limit)
            return [(int(d["conversation_id"]), int(d["seq"]), str(d["_id"])) async for d in cursor]
        except PyMongoError as exc:
            raise _unavailable(exc) from exc

    async def move_messages(self, message_ids: Sequence[str], sender_id: int, to_id: int) -> int:
        """Attribute those of ``message_ids`` still sent by ``sender_id`` to ``to_id``
        (``client_msg_id`` becomes the message id); how many it moved."""
        if not message_ids:
            return 0
        try:
            result = await self.messages.update_many(
                {"_id": {"$in": list(message_ids)}, "sender_id": sender_id},
                [{"$set": {"sender_id": to_id, "client_msg_id": "$_id"}}],
            )
        except PyMongoError as exc:
            raise _unavailable(exc) from exc
        return int(result.modified_count)

    async def reattribute(self, sender_id: int, to_id: int, limit: int) -> int:
        found = await self.sender_messages(sender_id, limit)
        return await self.move_messages([message_id for _, _, message_id in found], sender_id, to_id)

    async def search(self, query: MessageQuery) -> list[SearchHit]:
        """Search without an index: the conversations' messages newest first,
        each checked with protocol.search.matches, until a page is found (or
        ``SCAN_LIMIT`` messages were read). Only for the SQLite-directory
        topology, which has no PostgreSQL to keep the index in; with a
        PostgreSQL directory storage.search_index.IndexedMessageLog searches
        its index instead (docs/storage.md, Search)."""
        after = None if query.after is None else parse_ts_position(query.after)
        filters: Document = {"conversation_id": {"$in": sorted(set(query.conversation_ids))}, "deleted": {"$ne": True}}
        ts_range: Document = {}
        if query.after_ts is not None:
            ts_range["$gte"] = query.after_ts
        if query.before_ts is not None:
            ts_range["$lt"] = query.before_ts
        if ts_range:
            filters["ts"] = ts_range
        if query.sender_id is not None:
            filters["sender_id"] = query.sender_id
        if query.threads_only:
            filters["thread_root_id"] = {"$type": "string"}
        order = [("ts", pymongo.DESCENDING), ("conversation_id", pymongo.DESCENDING), ("seq", pymongo.DESCENDING)]
        found: list[tuple[float, SearchHit]] = []
        try:
            cursor = self.messages.find(filters).sort(order).limit(SCAN_LIMIT)
            async for doc in cursor:
                record = message_from_document(doc)
                position = (record.ts, record.conversation_id, record.seq)
                if after is not None and position >= after:
                    continue
                if not matches(record.text, query.terms):
                    continue
                hit = SearchHit(record=record, position=ts_position(*position))
                found.append((relevance(record.text, query.terms), hit))
                if len(found) >= (query.limit if query.order == "newest" else query.window):
                    break
        except PyMongoError as exc:
            raise _unavailable(exc) from exc
        if query.order == "newest":
            return [hit for _, hit in found]
        found.sort(key=lambda scored: -scored[0])  # stable: newest first among equals
        return [hit for _, hit in found[query.offset : query.offset + query.limit]]


def _oldest_seq(counter: Document) -> int:
    """The oldest retained seq: one above the last the purge removed (a counter from before retention has none)."""
    return int(counter.get("purged_seq") or 0) + 1


def _head(counter: Document) -> Head:
    return Head(last_seq=int(counter["seq"]), last_rev=_counter_rev(counter), oldest_seq=_oldest_seq(counter))


def _history_query(read: HistoryRead) -> Document:
    """A ``history`` read's filter: a range of the ``history`` index (of the thread's, with a root)."""
    after_seq, before_seq = seq_range(read.before, read.after)
    query: Document = {"conversation_id": read.conversation_id, "seq": {"$gt": after_seq, "$lt": before_seq}}
    if read.thread_root_id is not None:
        query["thread_root_id"] = read.thread_root_id
    elif not read.include_replies:
        # None also matches documents written before threads existed (no field).
        query["$or"] = [{"thread_root_id": None}, {"also_in_channel": True}]
    return query


def _direction(read: HistoryRead) -> int:
    return pymongo.DESCENDING if read.order == "desc" else pymongo.ASCENDING


def _history_pipeline(n: int, read: HistoryRead) -> list[Document]:
    """A ``history`` read as stages of ``history_many``'s aggregate, its documents tagged ``read_of: n``."""
    return [
        {"$match": _history_query(read)},
        {"$sort": {"seq": _direction(read)}},
        {"$limit": read.limit},
        {"$addFields": {"read_of": {"$literal": n}}},
    ]


def _unread_pipeline(conversation_id: int, read_seq: int, user_id: int, cap: int) -> list[Document]:
    """One conversation's unread and mention counts as one document (none when nothing counts).

    Documents stored before message state existed lack ``deleted`` and
    ``mentions``, hence ``$ne: true`` and ``$ifNull``."""
    mentioned = {
        "$or": [
            {"$ne": [{"$ifNull": ["$mention_all", None]}, None]},
            {"$in": [user_id, {"$ifNull": ["$mentions", []]}]},
        ]
    }
    return [
        {
            "$match": {
                "conversation_id": conversation_id,
                "seq": {"$gt": read_seq},
                "sender_id": {"$ne": user_id},
                "deleted": {"$ne": True},
                "$or": [{"thread_root_id": None}, {"also_in_channel": True}],
            }
        },
        {"$limit": cap},
        {"$group": {"_id": None, "unread": {"$sum": 1}, "mentioned": {"$sum": {"$cond": [mentioned, 1, 0]}}}},
        {"$project": {"_id": 0, "unread_of": {"$literal": conversation_id}, "unread": 1, "mentioned": 1}},
    ]


SCAN_LIMIT = 100_000
"""Most messages one index-less MongoDB search reads (newest first); older ones are not found by it."""

# mypy proves the backend implements its interface (storage/base.py).
_messages: type[MessageLog] = MongoMessageLog
