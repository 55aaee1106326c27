"""Upgrading a SQLite file written before the deferred search index
(INDEX_WATERMARK_MIGRATION) in place: that release indexed every message in
its own append, so the watermark starts at the largest search rowid stored,
nothing is indexed twice, old messages are found (a deleted one never), an
edit of one replaces its words at once, and new messages go through the
deferred index; opening again changes nothing."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import msgspec

from hubbub.protocol.search import parse
from hubbub.storage.records import MessageQuery, NewMessage
from hubbub.storage.search_sql import fts5_text, sqlite_rowid_base
from hubbub.storage.sqlite import INDEX_WATERMARK_MIGRATION, MIGRATIONS, SqliteMessageLog, open_sqlite
from hubbub.storage.sqlite_index import watermark
from tests.backends import write_released_sqlite

NOW = 1_700_000_000_000
RELEASED_VERSION = MIGRATIONS.index(INDEX_WATERMARK_MIGRATION)
"""The schema version the release before the deferred index left."""
OLD = [
    # (seq, id, text, deleted)
    (1, "m1", "the old harbour", False),
    (2, "m2", "", True),  # a tombstone (its words were deleted from the index)
    (3, "m3", "harbour lights", False),
]


def rowid(seq: int) -> int:
    return sqlite_rowid_base(NOW + seq)


def write_release(path: Path) -> None:
    def seed(conn: sqlite3.Connection) -> None:
        conn.executemany(
            "INSERT INTO messages (conversation_id, seq, id, sender_id, text, client_msg_id, ts, rev, deleted,"
            " search_rowid) VALUES (1, ?, ?, 1, ?, ?, ?, ?, ?, ?)",
            [(seq, mid, text, f"c-{mid}", NOW + seq, seq, int(gone), rowid(seq)) for seq, mid, text, gone in OLD],
        )
        conn.execute("INSERT INTO conversation_seq (conversation_id, last_seq, last_rev) VALUES (1, 3, 3)")
        # As that release's appends left the index: every message not deleted, in its own commit.
        for seq, _, text, gone in OLD:
            if not gone:
                conn.execute("INSERT INTO message_search (rowid, text) VALUES (?, ?)", (rowid(seq), fts5_text(text)))

    write_released_sqlite(path, RELEASED_VERSION, seed)


def segments(c: sqlite3.Connection) -> int:
    (count,) = c.execute("SELECT count(DISTINCT segid) FROM message_search_idx").fetchone()
    return int(count)


async def found(log: SqliteMessageLog, words: str) -> list[str]:
    hits = await log.search(MessageQuery(terms=tuple(parse(words)), conversation_ids=(1,)))
    return [h.record.id for h in hits]


async def test_upgrade_starts_the_watermark_at_the_largest_rowid_and_indexes_nothing_twice(tmp_path: Path) -> None:
    path = tmp_path / "hubbub.db"
    write_release(path)
    with sqlite3.connect(path) as before:
        released_segments = segments(before)
    db, _, log = await open_sqlite(path, 5.0, index_idle_seconds=3600.0)
    try:
        assert await db.run(lambda c: c.execute("PRAGMA user_version").fetchone()[0]) == len(MIGRATIONS)
        assert await db.run(watermark) == rowid(3)
        assert await db.run(segments) == released_segments, "the open indexed nothing again"
        assert await found(log, "harbour") == ["m3", "m1"]
        assert await found(log, "lights") == ["m3"]
        # An old message is below the watermark: its edit replaces its words at once.
        await log.change_message(1, "m1", lambda m: msgspec.structs.replace(m, text="the new pier", edited_ts=NOW + 9))
        assert await found(log, "harbour") == ["m3"]
        assert await found(log, "pier") == ["m1"]
        new = await log.append(
            NewMessage(conversation_id=1, sender_id=1, text="harbour master", client_msg_id="n1", ts=NOW + 50)
        )
        assert new.record.seq == 4
        assert await db.run(watermark) == rowid(3), "the new message waits for the index transaction"
        assert await found(log, "harbour") == [new.record.id, "m3"]
        assert await db.run(watermark) == rowid(50)
    finally:
        await log.close()
        await db.close()
    db, _, log = await open_sqlite(path, 5.0)  # opened again: nothing to migrate, nothing behind
    try:
        assert await db.run(watermark) == rowid(50)
        assert await found(log, "harbour") == [new.record.id, "m3"]
    finally:
        await log.close()
        await db.close()


async def test_upgrade_of_an_empty_file_starts_the_watermark_at_zero(tmp_path: Path) -> None:
    path = tmp_path / "hubbub.db"
    write_released_sqlite(path, RELEASED_VERSION, lambda conn: None)
    db, _, log = await open_sqlite(path, 5.0)
    try:
        assert await db.run(watermark) == 0
    finally:
        await log.close()
        await db.close()
