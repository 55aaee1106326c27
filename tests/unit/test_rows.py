"""storage.rows: the one mapping between stored rows and records, checked
against the SQLite schema (the PostgreSQL one: tests/test_migrations.py)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import msgspec

from hubbub.storage.records import ConversationRecord, MessageRecord, UserRecord
from hubbub.storage.rows import (
    CONVERSATION_COLUMNS,
    CONVERSATION_FIELDS,
    MESSAGE_COLUMNS,
    NO_SEQ_ABOVE,
    NO_SEQ_BELOW,
    USER_COLUMNS,
    conversation_record,
    dm_key,
    history_sql,
    message_document,
    message_from_document,
    message_record,
    message_values,
    seq_range,
    user_record,
)
from hubbub.storage.sqlite import MIGRATIONS

COLUMN_LISTS = {"users": USER_COLUMNS, "conversations": CONVERSATION_FIELDS, "messages": MESSAGE_COLUMNS}
RECORDS: dict[str, type[msgspec.Struct]] = {
    "users": UserRecord,
    "conversations": ConversationRecord,
    "messages": MessageRecord,
}

MESSAGE = MessageRecord(id="m1", conversation_id=7, seq=3, sender_id=2, text="hi", client_msg_id="c1", ts=99)


def columns(listing: str) -> list[str]:
    return [c.strip() for c in listing.split(",")]


def test_each_column_list_names_exactly_its_records_fields() -> None:
    for table, listing in COLUMN_LISTS.items():
        assert sorted(columns(listing)) == sorted(RECORDS[table].__struct_fields__), table
    assert columns(CONVERSATION_COLUMNS) == [f"c.{f}" for f in columns(CONVERSATION_FIELDS)]


def test_each_column_list_names_columns_of_the_sqlite_schema(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "schema.db")
    try:
        for script in MIGRATIONS:
            conn.executescript(script)
        for table, listing in COLUMN_LISTS.items():
            table_columns = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
            assert set(columns(listing)) <= table_columns, table
    finally:
        conn.close()


def test_positional_mappers_read_rows_in_column_list_order() -> None:
    user = user_record((1, "alice", "Alice", "hash", 10, None))
    assert user == UserRecord(
        id=1, username="alice", display_name="Alice", password_hash="hash", created_at=10, last_seen_at=None
    )
    channel = conversation_record((4, "channel", "general", "", 0, 1, 10))
    assert channel.private is False and channel.name == "general"  # SQLite's 0/1 is a bool
    assert message_record(message_values(MESSAGE)) == MESSAGE


def test_a_message_document_round_trips() -> None:
    document = message_document(MESSAGE)
    assert document["_id"] == "m1"
    assert message_from_document(document) == MESSAGE


def test_an_absent_history_bound_lets_every_seq_through() -> None:
    assert seq_range(None, None) == (NO_SEQ_BELOW, NO_SEQ_ABOVE)
    assert seq_range(10, 2) == (2, 10)
    assert NO_SEQ_ABOVE == 2**63 - 1  # the largest 64-bit integer every store can hold


def test_history_sql_is_parameterised_in_the_backends_style() -> None:
    sql = history_sql("asc", ("$1", "$2", "$3", "$4"))
    assert "conversation_id = $1 AND seq > $2 AND seq < $3" in sql and sql.endswith("ORDER BY seq ASC LIMIT $4")
    assert "ORDER BY seq DESC" in history_sql("desc", ("?", "?", "?", "?"))


def test_a_dm_key_is_its_sorted_distinct_members() -> None:
    assert dm_key([3, 1, 3, 2]) == "1,2,3"
    assert dm_key([5]) == "5"
