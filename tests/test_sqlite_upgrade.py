"""Upgrading an embedded database written by the release before revisions
(schema version 1) in place: every old message reads back with rev = seq,
every conversation's revision counter starts at its last seq, and both
counters continue from there (docs/messages.md). Opening an upgraded file
again changes nothing.

The old file is written here by hand with the release's schema, a verbatim
copy of MIGRATIONS[0] as committed in d8d2242, and rows as that release
stored them.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import msgspec
import pytest

from hubbub.storage.records import Head, MessageRecord, NewMessage, Reaction
from hubbub.storage.sqlite import MIGRATIONS, SqliteDirectory, SqliteMessageLog, open_sqlite

NOW = 1_700_000_000_000
BUSY_TIMEOUT = 5.0
SECRET = "the-old-text-that-a-delete-must-erase"

RELEASE_SCHEMA = """
    CREATE TABLE users (
        id INTEGER PRIMARY KEY,
        username TEXT NOT NULL UNIQUE,
        display_name TEXT NOT NULL,
        password_hash TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        last_seen_at INTEGER
    );
    CREATE TABLE conversations (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL CHECK (kind IN ('channel', 'dm')),
        name TEXT UNIQUE,
        topic TEXT NOT NULL DEFAULT '',
        private INTEGER NOT NULL,
        created_by INTEGER NOT NULL REFERENCES users(id),
        created_at INTEGER NOT NULL,
        dm_key TEXT UNIQUE
    );
    CREATE INDEX conversations_public ON conversations(kind, private);
    CREATE TABLE memberships (
        conversation_id INTEGER NOT NULL REFERENCES conversations(id),
        user_id INTEGER NOT NULL REFERENCES users(id),
        joined_at INTEGER NOT NULL,
        PRIMARY KEY (conversation_id, user_id)
    ) WITHOUT ROWID;
    CREATE INDEX memberships_by_user ON memberships(user_id, conversation_id);
    CREATE TABLE conversation_seq (
        conversation_id INTEGER PRIMARY KEY,
        last_seq INTEGER NOT NULL
    );
    CREATE TABLE messages (
        conversation_id INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        id TEXT NOT NULL,
        sender_id INTEGER NOT NULL,
        text TEXT NOT NULL,
        client_msg_id TEXT NOT NULL,
        ts INTEGER NOT NULL,
        PRIMARY KEY (conversation_id, seq)
    ) WITHOUT ROWID;
    CREATE UNIQUE INDEX messages_idempotency ON messages(conversation_id, sender_id, client_msg_id);
    """
"""The schema of the release (schema version 1), exactly as it shipped."""

ALICE, BOB = 1, 2
GENERAL, DM = 1, 2
OLD_MESSAGES = {
    # conversation id -> (id, sender, text) of each message, seq = position + 1
    GENERAL: [("g1", ALICE, "hello"), ("g2", BOB, "hi alice"), ("g3", ALICE, SECRET)],
    DM: [("d1", BOB, "psst"), ("d2", ALICE, "yes?")],
}


def write_release_database(path: Path) -> None:
    """A database as the release left it: two users, a channel and a DM, a few messages each."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.executescript(RELEASE_SCHEMA)
        conn.execute("PRAGMA user_version=1")
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO users (id, username, display_name, password_hash, created_at) VALUES (?, ?, ?, ?, ?)",
            [(ALICE, "alice", "Alice", "hash$a", NOW), (BOB, "bob", "Bob", "hash$b", NOW)],
        )
        conn.execute(
            "INSERT INTO conversations (id, kind, name, topic, private, created_by, created_at)"
            " VALUES (?, 'channel', 'general', '', 0, ?, ?)",
            (GENERAL, ALICE, NOW),
        )
        conn.execute(
            "INSERT INTO conversations (id, kind, name, topic, private, created_by, created_at, dm_key)"
            " VALUES (?, 'dm', NULL, '', 1, ?, ?, '1,2')",
            (DM, BOB, NOW),
        )
        conn.executemany(
            "INSERT INTO memberships (conversation_id, user_id, joined_at) VALUES (?, ?, ?)",
            [(c, u, NOW) for c in (GENERAL, DM) for u in (ALICE, BOB)],
        )
        for conversation_id, rows in OLD_MESSAGES.items():
            conn.executemany(
                "INSERT INTO messages (conversation_id, seq, id, sender_id, text, client_msg_id, ts)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (conversation_id, seq, message_id, sender, text, f"c-{message_id}", NOW + seq)
                    for seq, (message_id, sender, text) in enumerate(rows, start=1)
                ],
            )
            conn.execute(
                "INSERT INTO conversation_seq (conversation_id, last_seq) VALUES (?, ?)", (conversation_id, len(rows))
            )
        conn.execute("COMMIT")
    finally:
        conn.close()


def old_record(conversation_id: int, seq: int) -> MessageRecord:
    """An old message as it must read back after the upgrade: rev = seq, nothing else changed."""
    message_id, sender, text = OLD_MESSAGES[conversation_id][seq - 1]
    return MessageRecord(
        id=message_id,
        conversation_id=conversation_id,
        seq=seq,
        sender_id=sender,
        text=text,
        client_msg_id=f"c-{message_id}",
        ts=NOW + seq,
        rev=seq,
    )


def old_records(conversation_id: int) -> list[MessageRecord]:
    return [old_record(conversation_id, seq) for seq in range(1, len(OLD_MESSAGES[conversation_id]) + 1)]


@pytest.fixture
def release_file(tmp_path: Path) -> Path:
    path = tmp_path / "data" / "hubbub.db"
    path.parent.mkdir()
    write_release_database(path)
    return path


@asynccontextmanager
async def opened(path: Path) -> AsyncIterator[tuple[SqliteDirectory, SqliteMessageLog]]:
    """The stores on ``path``, opened (and so upgraded) as the server opens them."""
    db, directory, messages = await open_sqlite(path, BUSY_TIMEOUT)
    try:
        yield directory, messages
    finally:
        await messages.close()
        await db.close()


def read_file(path: Path, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def database_bytes(path: Path) -> list[bytes]:
    """The contents of the database file and of its -wal and -shm files, if any."""
    return [f.read_bytes() for f in (path, *path.parent.glob(f"{path.name}-*"))]


def schema_of(path: Path) -> list[tuple[object, ...]]:
    return [
        *read_file(path, "SELECT type, name, sql FROM sqlite_master ORDER BY name"),
        *read_file(path, "PRAGMA user_version"),
    ]


def test_the_released_migration_is_never_edited() -> None:
    """Files in the field were made by it: a change belongs in a new entry of MIGRATIONS."""
    assert MIGRATIONS[0] == RELEASE_SCHEMA
    assert len(MIGRATIONS) >= 2  # later entries: tests/test_profiles_upgrade.py (3)


async def test_old_messages_read_back_with_rev_equal_to_seq(release_file: Path) -> None:
    async with opened(release_file) as (directory, messages):
        for conversation_id in OLD_MESSAGES:
            history = await messages.history(conversation_id, before=None, after=None, limit=100, order="asc")
            assert history == old_records(conversation_id)
        assert await messages.heads([GENERAL, DM]) == {
            GENERAL: Head(last_seq=3, last_rev=3),
            DM: Head(last_seq=2, last_rev=2),
        }
        assert await messages.get_message(GENERAL, "g2") == old_record(GENERAL, 2)
        assert await messages.get_message(DM, "g2") is None
        assert await directory.members_by_username(GENERAL, ["alice", "bob", "carol"]) == {"alice": ALICE, "bob": BOB}
    assert read_file(release_file, "PRAGMA user_version") == [(len(MIGRATIONS),)]


async def test_both_counters_continue_after_the_upgrade(release_file: Path) -> None:
    async with opened(release_file) as (_, messages):
        fresh = await messages.append(
            NewMessage(conversation_id=GENERAL, sender_id=BOB, text="new", client_msg_id="new-1", ts=NOW + 10)
        )
        assert (fresh.duplicate, fresh.record.seq, fresh.record.rev) == (False, 4, 4)
        # A reply to an old message: the reply takes seq 5 and rev 5, its old root rev 6.
        reply = await messages.append(
            NewMessage(
                conversation_id=GENERAL,
                sender_id=BOB,
                text="re",
                client_msg_id="re-1",
                ts=NOW + 11,
                thread_root_id="g1",
            )
        )
        assert (reply.record.seq, reply.record.rev) == (5, 5)
        root = msgspec.structs.replace(
            old_record(GENERAL, 1), rev=6, reply_count=1, last_reply_ts=NOW + 11, repliers=(BOB,)
        )
        assert reply.root == root
        # An old message resent is a duplicate: the release's idempotency holds.
        resent = await messages.append(
            NewMessage(conversation_id=DM, sender_id=BOB, text="psst", client_msg_id="c-d1", ts=NOW + 12)
        )
        assert (resent.duplicate, resent.record) == (True, old_record(DM, 1))
        assert await messages.heads([GENERAL, DM]) == {
            GENERAL: Head(last_seq=5, last_rev=6),
            DM: Head(last_seq=2, last_rev=2),
        }


async def test_changes_and_change_message_work_on_old_messages(release_file: Path) -> None:
    def react(current: MessageRecord) -> MessageRecord:
        return msgspec.structs.replace(current, reactions=(Reaction(emoji="👍", user_ids=(ALICE,)),))

    async with opened(release_file) as (_, messages):
        page = await messages.changes(GENERAL, after_rev=0, limit=100)
        assert (page.messages, page.horizon) == (old_records(GENERAL), 3)
        outcome = await messages.change_message(DM, "d1", react)
        assert outcome is not None
        reacted, stored = outcome
        assert stored is True
        assert reacted == msgspec.structs.replace(react(old_record(DM, 1)), rev=3)
        assert await messages.get_message(DM, "d1") == reacted
        later = await messages.changes(DM, after_rev=2, limit=100)
        assert (later.messages, later.horizon) == ([reacted], 3)
        assert await messages.heads([DM]) == {DM: Head(last_seq=2, last_rev=3)}


async def test_revisions_are_unique_per_conversation_in_an_upgraded_file(release_file: Path) -> None:
    async with opened(release_file):
        pass
    conn = sqlite3.connect(release_file)
    try:
        with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
            conn.execute(
                "INSERT INTO messages (conversation_id, seq, id, sender_id, text, client_msg_id, ts, rev)"
                " VALUES (?, 99, 'dup-rev', ?, 'x', 'dup-rev', ?, 2)",
                (GENERAL, ALICE, NOW),
            )
        # The same rev in another conversation is another counter's.
        conn.execute(
            "INSERT INTO messages (conversation_id, seq, id, sender_id, text, client_msg_id, ts, rev)"
            " VALUES (?, 99, 'other-rev', ?, 'x', 'other-rev', ?, 3)",
            (DM, ALICE, NOW),
        )
    finally:
        conn.close()


async def test_a_deleted_old_message_leaves_no_trace_in_the_file(release_file: Path) -> None:
    """What a delete keeps (docs/messages.md): the text is gone from the file,
    and the connection zeroes whatever it frees (secure_delete), an old file's too."""
    assert any(SECRET.encode() in content for content in database_bytes(release_file))

    def tombstone(current: MessageRecord) -> MessageRecord:
        return msgspec.structs.replace(current, text="", deleted=True)

    db, _, messages = await open_sqlite(release_file, BUSY_TIMEOUT)
    try:
        assert await db.run(lambda c: c.execute("PRAGMA secure_delete").fetchone()) == (1,)
        assert await messages.change_message(GENERAL, "g3", tombstone) is not None
    finally:
        await messages.close()
        await db.close()
    assert all(SECRET.encode() not in content for content in database_bytes(release_file))


async def test_opening_an_upgraded_file_again_changes_nothing(release_file: Path) -> None:
    async with opened(release_file) as (_, messages):
        await messages.append(
            NewMessage(conversation_id=DM, sender_id=ALICE, text="after", client_msg_id="after-1", ts=NOW + 20)
        )
    schema = schema_of(release_file)
    rows = read_file(release_file, "SELECT * FROM messages ORDER BY conversation_id, seq")
    counters = read_file(release_file, "SELECT * FROM conversation_seq ORDER BY conversation_id")

    async with opened(release_file) as (_, messages):
        assert await messages.heads([GENERAL, DM]) == {
            GENERAL: Head(last_seq=3, last_rev=3),
            DM: Head(last_seq=3, last_rev=3),
        }
    assert schema_of(release_file) == schema
    assert read_file(release_file, "SELECT * FROM messages ORDER BY conversation_id, seq") == rows
    assert read_file(release_file, "SELECT * FROM conversation_seq ORDER BY conversation_id") == counters
