"""Rows and records: the one mapping between what the backends store and the
records that cross the storage interfaces (storage/records.py).

The SQL backends (SQLite, PostgreSQL) share their tables' shape (the
PostgreSQL migrations and SQLite's ``MIGRATIONS`` create the same columns),
so they select the same column lists and turn rows into records with the
same positional mappers: an ``sqlite3`` row and an ``asyncpg.Record`` both
index by position. MongoDB stores a message as a document; its mapping is
here too, beside the others.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any, Protocol

from hubbub.storage.base import HistoryOrder
from hubbub.storage.records import ConversationRecord, MessageRecord, NewMessage, UserRecord


class Row(Protocol):
    """A result row of one of the column lists below, indexed by position:
    an ``sqlite3`` row tuple or an ``asyncpg.Record``."""

    def __getitem__(self, index: int, /) -> Any: ...


USER_COLUMNS = "id, username, display_name, password_hash, created_at, last_seen_at"
CONVERSATION_FIELDS = "id, kind, name, topic, private, created_by, created_at"
CONVERSATION_COLUMNS = ", ".join(f"c.{field}" for field in CONVERSATION_FIELDS.split(", "))
"""``CONVERSATION_FIELDS`` qualified for queries that alias ``conversations`` as ``c``."""
MESSAGE_COLUMNS = "conversation_id, seq, id, sender_id, text, client_msg_id, ts"

NO_SEQ_BELOW = -1
"""The lower bound of a history read without ``after``: below every seq (seqs start at 1)."""
NO_SEQ_ABOVE = 2**63 - 1
"""The upper bound of a history read without ``before``: the largest 64-bit
integer (SQLite INTEGER, PostgreSQL BIGINT, BSON int64), above every seq."""


def user_record(row: Row) -> UserRecord:
    """A row of ``USER_COLUMNS``."""
    return UserRecord(
        id=row[0],
        username=row[1],
        display_name=row[2],
        password_hash=row[3],
        created_at=row[4],
        last_seen_at=row[5],
    )


def conversation_record(row: Row) -> ConversationRecord:
    """A row of ``CONVERSATION_FIELDS`` (or ``CONVERSATION_COLUMNS``)."""
    return ConversationRecord(
        id=row[0],
        kind=row[1],
        name=row[2],
        topic=row[3],
        private=bool(row[4]),  # SQLite stores 0/1
        created_by=row[5],
        created_at=row[6],
    )


def new_message_record(message: NewMessage, seq: int) -> MessageRecord:
    """The record of a message being stored with ``seq``, under a fresh id (SQLite and MongoDB; PostgreSQL's
    append function takes the ids as an array)."""
    return MessageRecord(
        id=uuid.uuid4().hex,
        conversation_id=message.conversation_id,
        seq=seq,
        sender_id=message.sender_id,
        text=message.text,
        client_msg_id=message.client_msg_id,
        ts=message.ts,
    )


def message_record(row: Row) -> MessageRecord:
    """A row of ``MESSAGE_COLUMNS``."""
    return MessageRecord(
        conversation_id=row[0],
        seq=row[1],
        id=row[2],
        sender_id=row[3],
        text=row[4],
        client_msg_id=row[5],
        ts=row[6],
    )


def message_values(record: MessageRecord) -> tuple[int, int, str, int, str, str, int]:
    """``record`` as the values of ``MESSAGE_COLUMNS``, in order."""
    return (
        record.conversation_id,
        record.seq,
        record.id,
        record.sender_id,
        record.text,
        record.client_msg_id,
        record.ts,
    )


def message_document(record: MessageRecord) -> dict[str, Any]:
    """``record`` as a MongoDB document (``_id`` is the message id)."""
    return {
        "_id": record.id,
        "conversation_id": record.conversation_id,
        "seq": record.seq,
        "sender_id": record.sender_id,
        "text": record.text,
        "client_msg_id": record.client_msg_id,
        "ts": record.ts,
    }


def message_from_document(document: dict[str, Any]) -> MessageRecord:
    """A stored MongoDB document; int() because BSON may hand back bson.Int64,
    which JSON encoders refuse."""
    return MessageRecord(
        id=document["_id"],
        conversation_id=int(document["conversation_id"]),
        seq=int(document["seq"]),
        sender_id=int(document["sender_id"]),
        text=document["text"],
        client_msg_id=document["client_msg_id"],
        ts=int(document["ts"]),
    )


def seq_range(before: int | None, after: int | None) -> tuple[int, int]:
    """(after, before) of a history read, each absent bound replaced by one
    no seq can pass: the read is ``after < seq < before``."""
    return (NO_SEQ_BELOW if after is None else after, NO_SEQ_ABOVE if before is None else before)


def history_sql(order: HistoryOrder, marks: tuple[str, str, str, str]) -> str:
    """The history read of the SQL backends; ``marks`` are the placeholders of
    (conversation id, after, before, limit) in the backend's paramstyle."""
    conversation_id, after, before, limit = marks
    direction = "DESC" if order == "desc" else "ASC"
    return (
        f"SELECT {MESSAGE_COLUMNS} FROM messages"
        f" WHERE conversation_id = {conversation_id} AND seq > {after} AND seq < {before}"
        f" ORDER BY seq {direction} LIMIT {limit}"
    )


def dm_key(member_ids: Sequence[int]) -> str:
    """The identity of a DM (its ``dm_key`` column): its sorted, distinct member ids."""
    return ",".join(str(i) for i in sorted(set(member_ids)))
