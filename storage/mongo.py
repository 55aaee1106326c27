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
returns nothing as complete.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Sequence
from typing import Any

import pymongo
from pymongo import AsyncMongoClient, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError, PyMongoError
from pymongo.write_concern import WriteConcern

from storage.base import HistoryOrder
from storage.errors import StoreUnavailable
from storage.records import MessageRecord, NewMessage

Document = dict[str, Any]


def _message(d: Document) -> MessageRecord:
    # int(): BSON may hand back bson.Int64, which JSON encoders refuse.
    return MessageRecord(
        id=d["_id"],
        conversation_id=int(d["conversation_id"]),
        seq=int(d["seq"]),
        sender_id=int(d["sender_id"]),
        text=d["text"],
        client_msg_id=d["client_msg_id"],
        ts=int(d["ts"]),
    )


def _unavailable(exc: PyMongoError) -> StoreUnavailable:
    return StoreUnavailable("mongo", str(exc).split(", Timeout:")[0] or type(exc).__name__)


def parse_write_concern(value: str) -> WriteConcern:
    """``majority``, or a number of nodes such as ``1``."""
    w: int | str = int(value) if value.isdigit() else value
    return WriteConcern(w=w, j=True)


class MongoMessageLog:
    name = "mongo"
    gapless = False
    ordered_appends = False

    def __init__(self, client: AsyncMongoClient[Document], database: str, write_concern: WriteConcern) -> None:
        self.client = client
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

    async def close(self) -> None:
        await self.client.close()

    async def _find_original(self, m: NewMessage) -> Document | None:
        return await self.messages.find_one(
            {"conversation_id": m.conversation_id, "sender_id": m.sender_id, "client_msg_id": m.client_msg_id}
        )

    async def _next_seq(self, conversation_id: int) -> int:
        for _ in range(3):
            counter = await self.counters.find_one_and_update(
                {"_id": conversation_id}, {"$inc": {"seq": 1}}, return_document=ReturnDocument.AFTER
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
        m = message
        try:
            original = await self._find_original(m)
            if original is not None:
                return _message(original), True
            seq = await self._next_seq(m.conversation_id)
            doc: Document = {
                "_id": uuid.uuid4().hex,
                "conversation_id": m.conversation_id,
                "seq": seq,
                "sender_id": m.sender_id,
                "text": m.text,
                "client_msg_id": m.client_msg_id,
                "ts": m.ts,
            }
            try:
                await self.messages.insert_one(doc)
            except DuplicateKeyError:
                # A concurrent resend of the same client_msg_id stored first.
                original = await self._find_original(m)
                if original is None:
                    raise
                return _message(original), True
            return _message(doc), False
        except PyMongoError as exc:
            raise _unavailable(exc) from exc

    async def history(
        self,
        conversation_id: int,
        *,
        before: int | None,
        after: int | None,
        limit: int,
        order: HistoryOrder,
    ) -> list[MessageRecord]:
        seq_range: Document = {}
        if before is not None:
            seq_range["$lt"] = before
        if after is not None:
            seq_range["$gt"] = after
        query: Document = {"conversation_id": conversation_id}
        if seq_range:
            query["seq"] = seq_range
        direction = pymongo.DESCENDING if order == "desc" else pymongo.ASCENDING
        try:
            cursor = self.messages.find(query).sort("seq", direction).limit(limit)
            return [_message(d) async for d in cursor]
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
