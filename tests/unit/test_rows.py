"""storage.rows: the one mapping between stored rows and records, checked
against the SQLite schema (the PostgreSQL one: tests/test_migrations.py)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import msgspec

from hubbub.protocol.search import index_text
from hubbub.storage.records import ConversationRecord, MessageRecord, NewMessage, Reaction, UserRecord
from hubbub.storage.rows import (
    CONVERSATION_COLUMNS,
    CONVERSATION_FIELDS,
    MESSAGE_COLUMNS,
    MESSAGE_STATE_COLUMNS,
    NO_SEQ_ABOVE,
    NO_SEQ_BELOW,
    USER_COLUMNS,
    audit_record,
    audit_target,
    conversation_record,
    dm_key,
    history_sql,
    ids_json,
    message_document,
    message_from_document,
    message_record,
    message_state_document,
    message_state_values,
    message_values,
    new_message_record,
    reactions_from_json,
    reactions_json,
    search_key,
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
EVERY_FIELD_SET = MessageRecord(
    id="m2",
    conversation_id=7,
    seq=4,
    sender_id=2,
    text="re: 👋 @bob",
    client_msg_id="c2",
    ts=100,
    rev=9,
    thread_root_id="m1",
    also_in_channel=True,
    reply_count=2,
    last_reply_ts=120,
    repliers=(5, 3),
    edited_ts=130,
    deleted=True,
    mentions=(3, 4),
    mention_all="channel",
    reactions=(Reaction(emoji="👍", user_ids=(3, 2)), Reaction(emoji="🎉", user_ids=(4,))),
    pinned_by=3,
    pinned_ts=140,
)
"""A message whose every field differs from its default."""
STATE_FIELDS = {
    "text", "reply_count", "last_reply_ts", "repliers", "edited_ts", "deleted", "mentions", "mention_all",
    "reactions", "pinned_by", "pinned_ts", "rev",
}  # fmt: skip
"""What a change may write (storage.base.MessageChange), and the rev the store sets."""


def columns(listing: str) -> list[str]:
    return [c.strip() for c in listing.split(",")]


def test_each_column_list_names_exactly_its_records_fields() -> None:
    for table, listing in COLUMN_LISTS.items():
        # A group DM's name is read from its own column into the record's name.
        extra = ["dm_name"] if table == "conversations" else []
        assert sorted(columns(listing)) == sorted([*RECORDS[table].__struct_fields__, *extra]), table
    assert columns(CONVERSATION_COLUMNS) == [f"c.{f}" for f in columns(CONVERSATION_FIELDS)]


def test_each_column_list_names_columns_of_the_sqlite_schema(tmp_path: Path) -> None:
    conn = sqlite_schema(tmp_path)
    try:
        for table, listing in COLUMN_LISTS.items():
            table_columns = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
            assert set(columns(listing)) <= table_columns, table
    finally:
        conn.close()


def sqlite_schema(tmp_path: Path) -> sqlite3.Connection:
    """A connection to a database of SQLite's whole schema (every migration)."""
    conn = sqlite3.connect(tmp_path / "schema.db")
    conn.create_function("hubbub_lower", 1, search_key)  # as SqliteDatabase registers it for the migrations
    conn.create_function("hubbub_index_text", 1, index_text)
    for script in MIGRATIONS:
        conn.executescript(script)
    return conn


def test_the_state_columns_are_the_fields_a_change_may_write() -> None:
    assert set(MESSAGE_STATE_COLUMNS) == STATE_FIELDS
    assert set(MESSAGE_STATE_COLUMNS) <= set(columns(MESSAGE_COLUMNS))
    assert len(message_state_values(EVERY_FIELD_SET)) == len(MESSAGE_STATE_COLUMNS)
    assert set(message_state_document(EVERY_FIELD_SET)) == STATE_FIELDS


def test_every_message_field_round_trips_through_an_sqlite_row(tmp_path: Path) -> None:
    conn = sqlite_schema(tmp_path)
    try:
        marks = ", ".join("?" * len(columns(MESSAGE_COLUMNS)))
        for record in (MESSAGE, EVERY_FIELD_SET):
            conn.execute(f"INSERT INTO messages ({MESSAGE_COLUMNS}) VALUES ({marks})", message_values(record))
            row = conn.execute(f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = ?", (record.id,)).fetchone()
            assert message_record(row) == record
    finally:
        conn.close()


def test_a_change_written_with_the_state_columns_reads_back(tmp_path: Path) -> None:
    """An UPDATE of MESSAGE_STATE_COLUMNS with message_state_values, as the SQL backends store a change."""
    conn = sqlite_schema(tmp_path)
    try:
        marks = ", ".join("?" * len(columns(MESSAGE_COLUMNS)))
        conn.execute(f"INSERT INTO messages ({MESSAGE_COLUMNS}) VALUES ({marks})", message_values(MESSAGE))
        state = {field: getattr(EVERY_FIELD_SET, field) for field in STATE_FIELDS}
        changed = msgspec.structs.replace(MESSAGE, **state)
        assignments = ", ".join(f"{column} = ?" for column in MESSAGE_STATE_COLUMNS)
        conn.execute(f"UPDATE messages SET {assignments} WHERE id = ?", (*message_state_values(changed), MESSAGE.id))
        row = conn.execute(f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = ?", (MESSAGE.id,)).fetchone()
        assert message_record(row) == changed
    finally:
        conn.close()


def test_the_json_columns() -> None:
    assert ids_json([3, 1, 2]) == "[3,1,2]"
    assert ids_json(()) == "[]"
    assert reactions_json(EVERY_FIELD_SET.reactions) == '[["👍",[3,2]],["🎉",[4]]]'
    assert reactions_from_json(reactions_json(EVERY_FIELD_SET.reactions)) == EVERY_FIELD_SET.reactions
    assert reactions_from_json("[]") == ()


def test_a_new_message_record_carries_what_it_was_sent_with() -> None:
    sent = NewMessage(
        conversation_id=7,
        sender_id=2,
        text="re",
        client_msg_id="c9",
        ts=5,
        thread_root_id="m1",
        also_in_channel=True,
        mentions=(3,),
        mention_all="here",
    )
    record = new_message_record(sent, 11, 12, "given-id")
    assert record == MessageRecord(
        id="given-id",
        conversation_id=7,
        seq=11,
        sender_id=2,
        text="re",
        client_msg_id="c9",
        ts=5,
        rev=12,
        thread_root_id="m1",
        also_in_channel=True,
        mentions=(3,),
        mention_all="here",
    )
    fresh = new_message_record(sent, 1, 1)
    assert len(fresh.id) == 32 and fresh.id != new_message_record(sent, 1, 1).id


def test_positional_mappers_read_rows_in_column_list_order() -> None:
    user = user_record(
        (1, "alice", "Alice", "hash", 10, None, "away", "🌴", 20, "UTC", "https://a/b", 0, 3, 30, "admin", None)
    )
    assert user == UserRecord(
        id=1,
        username="alice",
        display_name="Alice",
        password_hash="hash",
        created_at=10,
        last_seen_at=None,
        status_text="away",
        status_emoji="🌴",
        status_expires_at=20,
        time_zone="UTC",
        avatar_url="https://a/b",
        searchable=False,  # SQLite's 0/1 is a bool
        token_generation=3,
        disabled_at=30,
        workspace_role="admin",
        deleted_at=None,
    )
    channel = conversation_record((4, "channel", "general", "", 0, 1, 10, "", 0, "anyone", None, 30, 500))
    assert channel.private is False and channel.name == "general"  # SQLite's 0/1 is a bool
    assert (channel.retention_max_age_days, channel.retention_max_messages) == (30, 500)
    assert message_record(message_values(MESSAGE)) == MESSAGE


def test_a_message_document_round_trips() -> None:
    document = message_document(MESSAGE)
    assert document["_id"] == "m1"
    assert message_from_document(document) == MESSAGE
    full = message_document(EVERY_FIELD_SET)
    assert full["reactions"] == [{"emoji": "👍", "user_ids": [3, 2]}, {"emoji": "🎉", "user_ids": [4]}]
    assert message_from_document(full) == EVERY_FIELD_SET


def test_a_document_stored_before_revisions_reads_with_rev_equal_to_seq() -> None:
    old = {"_id": "m1", "conversation_id": 7, "seq": 3, "sender_id": 2, "text": "hi", "client_msg_id": "c1", "ts": 99}
    assert message_from_document(old) == msgspec.structs.replace(MESSAGE, rev=3)


def test_an_absent_history_bound_lets_every_seq_through() -> None:
    assert seq_range(None, None) == (NO_SEQ_BELOW, NO_SEQ_ABOVE)
    assert seq_range(10, 2) == (2, 10)
    assert NO_SEQ_ABOVE == 2**63 - 1  # the largest 64-bit integer every store can hold


def test_history_sql_is_parameterised_in_the_backends_style() -> None:
    sql = history_sql("asc", ("$1", "$2", "$3", "$4"))
    assert "conversation_id = $1 AND seq > $2 AND seq < $3" in sql and sql.endswith("ORDER BY seq ASC LIMIT $4")
    assert "ORDER BY seq DESC" in history_sql("desc", ("?", "?", "?", "?"))
    assert "thread_root_id" not in where(sql)


def test_history_sql_of_a_thread_and_of_the_main_timeline() -> None:
    thread = history_sql("asc", ("$1", "$2", "$3", "$4"), thread_root_id="$5")
    assert "AND thread_root_id = $5 ORDER BY seq ASC LIMIT $4" in thread
    timeline = history_sql("desc", ("$1", "$2", "$3", "$4"), include_replies=False)
    assert "AND (thread_root_id IS NULL OR also_in_channel) ORDER BY seq DESC" in timeline
    # A thread's replies are asked for by root, whatever include_replies says.
    both = history_sql("asc", ("?", "?", "?", "?"), thread_root_id="?", include_replies=False)
    assert where(both) == where(history_sql("asc", ("?", "?", "?", "?"), thread_root_id="?"))


def where(sql: str) -> str:
    """The WHERE clause onwards (the column list names thread_root_id too)."""
    return sql.split(" WHERE ", 1)[1]


def test_a_dm_key_is_its_sorted_distinct_members() -> None:
    assert dm_key([3, 1, 3, 2]) == "1,2,3"
    assert dm_key([5]) == "5"


def test_audit_targets_round_trip_as_json_objects() -> None:
    target = {"user_id": 7, "fields": ["topic"], "note": "née"}
    entry = audit_record((3, 10, None, "channel.update", audit_target(target)))
    assert (entry.id, entry.ts, entry.actor_id, entry.action, entry.target) == (3, 10, None, "channel.update", target)
