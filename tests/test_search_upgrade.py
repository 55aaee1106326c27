"""Upgrading message logs written by the release before search (issue 15) in
place, on SQLite (schema version 3 -> 4) and PostgreSQL (migrations up to
0005 -> 0006 and the backfill after it): every old message not deleted is
found by its words as new ones are (diacritics and case folded), newest
first, a deleted one never; new messages are indexed after them, and
opening or migrating again changes nothing."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import msgspec
import pytest

from hubbub.protocol.search import parse
from hubbub.storage.base import MessageLog
from hubbub.storage.postgres import PostgresMessageLog, PostgresPools, migrate, migrations
from hubbub.storage.records import MessageQuery, NewMessage
from hubbub.storage.sqlite import MIGRATIONS, open_sqlite, reindex_sqlite
from tests.backends import released_postgres_database, write_released_sqlite

NOW = 1_700_000_000_000
ROOM = 1
OLD_MESSAGES = [
    # (seq, id, text, deleted)
    (1, "m1", "Déjà vu at the café", False),
    (2, "m2", "the CAFÉ opens at nine", False),
    (3, "m3", "", True),  # a tombstone: its text was "secret café plans"
    (4, "m4", "nothing to find here", False),
]
RELEASED_SQLITE_VERSION = 3
RELEASED_POSTGRES = ("0001_directory", "0002_messages", "0003_append_function", "0004_message_changes", "0005_profiles")


async def check_upgraded(log: MessageLog) -> None:
    async def found(text: str) -> list[str]:
        hits = await log.search(MessageQuery(terms=tuple(parse(text)), conversation_ids=(ROOM,)))
        return [hit.record.id for hit in hits]

    assert await found("cafe") == ["m2", "m1"]
    assert await found("deja VU") == ["m1"]
    assert await found("secret") == []
    appended = await log.append(
        NewMessage(conversation_id=ROOM, sender_id=1, text="a new café", client_msg_id="new-1", ts=NOW + 100)
    )
    assert appended.record.seq == 5
    assert await found("cafe") == [appended.record.id, "m2", "m1"]


def write_release_sqlite(path: Path) -> None:
    def seed(conn: sqlite3.Connection) -> None:
        conn.execute(
            "INSERT INTO users (id, username, display_name, password_hash, created_at) VALUES (1, 'alice', 'A', 'h', 0)"
        )
        conn.execute(
            "INSERT INTO conversations (id, kind, name, topic, private, created_by, created_at)"
            " VALUES (1, 'channel', 'general', '', 0, 1, 0)"
        )
        conn.executemany(
            "INSERT INTO messages (conversation_id, seq, id, sender_id, text, client_msg_id, ts, rev, deleted)"
            " VALUES (?, ?, ?, 1, ?, ?, ?, ?, ?)",
            [
                (ROOM, seq, mid, text, f"c-{mid}", NOW + seq, seq, int(deleted))
                for seq, mid, text, deleted in OLD_MESSAGES
            ],
        )
        conn.execute("INSERT INTO conversation_seq (conversation_id, last_seq, last_rev) VALUES (1, 4, 4)")

    write_released_sqlite(path, RELEASED_SQLITE_VERSION, seed)


async def test_sqlite_upgrade_indexes_existing_messages(tmp_path: Path) -> None:
    path = tmp_path / "hubbub.db"
    write_release_sqlite(path)
    db, _, log = await open_sqlite(path, 5.0)
    try:
        version = await db.run(lambda c: c.execute("PRAGMA user_version").fetchone()[0])
        assert version == len(MIGRATIONS) and version > RELEASED_SQLITE_VERSION
        await check_upgraded(log)
    finally:
        await log.close()
        await db.close()
    # Opening again migrates nothing and finds the same.
    db, _, log = await open_sqlite(path, 5.0)
    try:
        hits = await log.search(MessageQuery(terms=tuple(parse("cafe")), conversation_ids=(ROOM,)))
        assert len(hits) == 3
    finally:
        await log.close()
        await db.close()


@pytest.fixture
async def release_postgres() -> AsyncIterator[str]:
    async def seed(conn: asyncpg.Connection) -> None:
        await conn.executemany(
            "INSERT INTO messages (conversation_id, seq, id, sender_id, text, client_msg_id, ts, rev, deleted)"
            " VALUES ($1, $2, $3, 1, $4, $5, $6, $7, $8)",
            [(ROOM, seq, mid, text, f"c-{mid}", NOW + seq, seq, deleted) for seq, mid, text, deleted in OLD_MESSAGES],
        )
        await conn.execute("INSERT INTO conversation_seq (conversation_id, last_seq, last_rev) VALUES (1, 4, 4)")

    async with released_postgres_database(RELEASED_POSTGRES, seed) as dsn:
        yield dsn


async def test_postgres_upgrade_indexes_existing_messages(release_postgres: str) -> None:
    applied = await migrate(release_postgres)
    assert applied == [v for v, _ in migrations() if v not in RELEASED_POSTGRES], applied
    assert "0008_message_search" in applied
    assert await migrate(release_postgres) == []
    pools = await PostgresPools.open(release_postgres, None, min_size=1, max_size=2, timeout=10)
    log = PostgresMessageLog(pools)
    try:
        await check_upgraded(log)
        async with pools.primary.acquire() as conn:
            unindexed = await conn.fetchval("SELECT count(*) FROM messages WHERE search IS NULL AND NOT deleted")
        assert unindexed == 0
    finally:
        await log.close()
        await pools.close()


def files_hold(folder: Path, word: str) -> bool:
    """Whether a file in ``folder`` (the database, its -wal and -shm) holds ``word``'s bytes."""
    return any(word.encode() in f.read_bytes() for f in folder.iterdir())


async def test_sqlite_reindex_takes_a_deleted_messages_words_out_of_the_file(tmp_path: Path) -> None:
    """docs/storage.md (what a delete leaves in the index): FTS5 keeps a deleted
    message's words in a segment until it merges them; reindex merges them away."""
    path = tmp_path / "hubbub.db"
    db, directory, log = await open_sqlite(path, 5.0)
    try:
        alice = await directory.create_user("alice", "Alice", "h", NOW)
        room = await directory.create_channel("general", "", False, alice.id, NOW)
        for n in range(20):
            await log.append(
                NewMessage(
                    conversation_id=room.id, sender_id=alice.id, text=f"filler {n}", client_msg_id=f"f{n}", ts=NOW + n
                )
            )
        secret = "xylophonically"
        sent = await log.append(
            NewMessage(conversation_id=room.id, sender_id=alice.id, text=secret, client_msg_id="s", ts=NOW + 99)
        )
        # Found (so indexed: a search runs the index transaction first), then deleted.
        found = await log.search(MessageQuery(terms=tuple(parse(secret)), conversation_ids=(room.id,), limit=5))
        assert [h.record.id for h in found] == [sent.record.id]
        await log.change_message(room.id, sent.record.id, lambda m: msgspec.structs.replace(m, text="", deleted=True))
        await db.run(lambda c: c.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone())
        assert files_hold(tmp_path, secret), "the words stay until a merge"
        assert await reindex_sqlite(db) == 20
        await db.run(lambda c: c.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone())
        assert not files_hold(tmp_path, secret)
        assert (
            len(await log.search(MessageQuery(terms=tuple(parse("filler")), conversation_ids=(room.id,), limit=50)))
            == 20
        )
    finally:
        await log.close()
        await db.close()
