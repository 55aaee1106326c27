"""MongoDB message log on pymongo's native AsyncMongoClient.

Documents are keyed for sharding by ``conversation_id``: every query names
one conversation, so with shard key ``{conversation_id: 1}`` each read and
write goes to exactly one shard and a conversation's history stays together.
Both unique indexes start with ``conversation_id``, as MongoDB requires of
unique indexes on a sharded collection (which also rules out a hashed key). Per-conversation seq comes from an
atomic ``$inc`` on a counter document (``counters`` collection, ``_id`` =
conversation id), which is correct with any number of server instances.
The counter and the insert are two writes: if the insert fails after the
increment (outage, racing duplicate), that seq is never used, so seqs are
strictly increasing but may have rare gaps; clients treat a gap-fill that
returns nothing as complete. Appends are group-committed per conversation
(storage/batching.py): a batch is one read for earlier copies of resent
messages, one ``$inc`` reserving all its seqs and one ordered ``insert_many``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import pymongo
from pymongo import AsyncMongoClient, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError, DuplicateKeyError, PyMongoError
from pymongo.write_concern import WriteConcern

from hubbub.storage.base import HistoryOrder, MessageLog
from hubbub.storage.batching import GroupCommit, Stored, by_conversation
from hubbub.storage.errors import StoreUnavailable
from hubbub.storage.records import MessageRecord, NewMessage
from hubbub.storage.rows import message_document, message_from_document, new_message_record, seq_range

Document = dict[str, Any]


def _unavailable(exc: PyMongoError) -> StoreUnavailable:
    return StoreUnavailable("mongo", str(exc).split(", Timeout:")[0] or type(exc).__name__)


def parse_write_concern(value: str) -> WriteConcern:
    """``majority``, or a number of nodes such as ``1``."""
    w: int | str = int(value) if value.isdigit() else value
    return WriteConcern(w=w, j=True)


class MongoMessageLog:
    name = "mongo"
    gapless = False
    ordered_appends = True  # group-committed per conversation (storage/batching.py)

    def __init__(self, client: AsyncMongoClient[Document], database: str, write_concern: WriteConcern) -> None:
        self.client = client
        self._batches = GroupCommit(self.name, self._store_batch, key=by_conversation)
        db = client.get_database(database, write_concern=write_concern)
        self.messages: AsyncCollection[Document] = db.messages
        self.counters: AsyncCollection[Document] = db.counters

    @classmethod
    async def open(cls, url: str, database: str, write_concern: str, timeout: float) -> MongoMessageLog:
        ms = int(timeout * 1000)
        client: AsyncMongoClient[Document] = AsyncMongoClient(
            url,
            serverSelectionTimeoutMS=ms,
            connectTimeoutMS=ms,
            socketTimeoutMS=ms,
            timeoutMS=ms,
            retryWrites=True,
            appname="hubbub",
        )
        log = cls(client, database, parse_write_concern(write_concern))
        try:
            await log.ensure_indexes()
        except PyMongoError as exc:
            await client.close()
            raise _unavailable(exc) from exc
        return log

    async def ensure_indexes(self) -> None:
        """Idempotent: creating an index that exists is a no-op."""
        await self.messages.create_index(
            [("conversation_id", pymongo.ASCENDING), ("seq", pymongo.DESCENDING)], unique=True, name="history"
        )
        await self.messages.create_index(
            [("conversation_id", pymongo.ASCENDING), ("sender_id", pymongo.ASCENDING), ("client_msg_id", 1)],
            unique=True,
            partialFilterExpression={"client_msg_id": {"$type": "string"}},
            name="idempotency",
        )

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

    async def _find_original(self, m: NewMessage) -> Document | None:
        return await self.messages.find_one(
            {"conversation_id": m.conversation_id, "sender_id": m.sender_id, "client_msg_id": m.client_msg_id}
        )

    async def _allocate_seqs(self, conversation_id: int, count: int) -> int:
        """Reserve ``count`` consecutive seqs of the conversation; the last of them."""
        for _ in range(3):
            counter = await self.counters.find_one_and_update(
                {"_id": conversation_id}, {"$inc": {"seq": count}}, return_document=ReturnDocument.AFTER
            )
            if counter is not None:
                return int(counter["seq"])
            # First message of the conversation: create the counter, then
            # increment it. Not an upsert: racing upserts may fail or
            # double-count on some servers, while this insert either wins or
            # finds the winner's document.
            with contextlib.suppress(DuplicateKeyError):
                await self.counters.insert_one({"_id": conversation_id, "seq": 0})
        raise StoreUnavailable("mongo", f"could not allocate a seq for conversation {conversation_id}")

    async def append(self, message: NewMessage) -> tuple[MessageRecord, bool]:
        return await self._batches.append(message)

    async def _store_batch(self, batch: list[NewMessage]) -> list[Stored | BaseException]:
        """One conversation's messages in order: one read for earlier copies of
        resent ones, one ``$inc`` for all their seqs, one ordered insert."""
        try:
            return await self._append_batch(batch)
        except PyMongoError as exc:
            raise _unavailable(exc) from exc

    async def _append_batch(self, batch: list[NewMessage]) -> list[Stored | BaseException]:
        cid = batch[0].conversation_id
        query = {"conversation_id": cid, "client_msg_id": {"$in": sorted({m.client_msg_id for m in batch})}}
        originals = {(int(d["sender_id"]), d["client_msg_id"]): d async for d in self.messages.find(query)}
        outcomes: list[Stored | BaseException | None] = [None] * len(batch)
        fresh: list[int] = []  # indexes of the messages to store
        first_copy: dict[tuple[int, str], int] = {}
        resends: list[tuple[int, int]] = []  # (index, index of its first copy in this batch)
        for i, m in enumerate(batch):
            key = (m.sender_id, m.client_msg_id)
            if key in originals:
                outcomes[i] = (message_from_document(originals[key]), True)
            elif key in first_copy:
                resends.append((i, first_copy[key]))
            else:
                first_copy[key] = i
                fresh.append(i)
        if fresh:
            last = await self._allocate_seqs(cid, len(fresh))
            seqs = range(last - len(fresh) + 1, last + 1)
            records = [new_message_record(batch[i], seq) for i, seq in zip(fresh, seqs, strict=True)]
            docs = [message_document(record) for record in records]
            try:
                await self.messages.insert_many(docs, ordered=True)
                stored = len(docs)
            except BulkWriteError as exc:
                if exc.details.get("writeConcernErrors"):
                    raise  # written, but not as durably as asked: not acknowledged
                stored = int(exc.details.get("nInserted", 0))
            for i, record in zip(fresh[:stored], records[:stored], strict=True):
                outcomes[i] = (record, False)
            # The rest one at a time: an ordered insert stops at its first error,
            # typically a resend stored meanwhile through another instance.
            for i, record, doc in zip(fresh[stored:], records[stored:], docs[stored:], strict=True):
                outcomes[i] = await self._insert_one(batch[i], record, doc)
        for i, first in resends:
            outcome = outcomes[first]
            outcomes[i] = (outcome[0], True) if isinstance(outcome, tuple) else outcome
        stored_or_failed = [o for o in outcomes if o is not None]
        if len(stored_or_failed) != len(batch):  # every message got an outcome above
            raise RuntimeError(f"{len(batch) - len(stored_or_failed)} of {len(batch)} messages got no outcome")
        return stored_or_failed

    async def _insert_one(self, m: NewMessage, record: MessageRecord, doc: Document) -> Stored | BaseException:
        try:
            await self.messages.insert_one(doc)
        except DuplicateKeyError as exc:
            original = await self._find_original(m)
            return (message_from_document(original), True) if original is not None else _unavailable(exc)
        return record, False

    async def history(
        self,
        conversation_id: int,
        *,
        before: int | None,
        after: int | None,
        limit: int,
        order: HistoryOrder,
    ) -> list[MessageRecord]:
        after_seq, before_seq = seq_range(before, after)
        query: Document = {"conversation_id": conversation_id, "seq": {"$gt": after_seq, "$lt": before_seq}}
        direction = pymongo.DESCENDING if order == "desc" else pymongo.ASCENDING
        try:
            cursor = self.messages.find(query).sort("seq", direction).limit(limit)
            return [message_from_document(d) async for d in cursor]
        except PyMongoError as exc:
            raise _unavailable(exc) from exc

    async def last_seqs(self, conversation_ids: Sequence[int]) -> dict[int, int]:
        ids = sorted(set(conversation_ids))
        if not ids:
            return {}
        try:
            return {int(d["_id"]): int(d["seq"]) async for d in self.counters.find({"_id": {"$in": ids}})}
        except PyMongoError as exc:
            raise _unavailable(exc) from exc


# mypy proves the backend implements its interface (storage/base.py).
_messages: type[MessageLog] = MongoMessageLog
