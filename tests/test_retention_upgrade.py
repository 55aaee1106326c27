"""Upgrading stores written by the release before retention (issue 15) in
place, on SQLite (the schema version before RETENTION_MIGRATION) and
PostgreSQL (every migration before 0009_retention): existing channels have no
override, existing conversations have purged nothing (oldest seq 1), and the
purge then removes the old messages, their search entries included; opening
or migrating again changes nothing."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from hubbub.protocol.search import index_text, parse
from hubbub.storage.base import Directory, MessageLog
from hubbub.storage.postgres import PostgresDirectory, PostgresMessageLog, PostgresPools, migrate, migrations
from hubbub.storage.records import MessageQuery
from hubbub.storage.sqlite import MIGRATIONS, RETENTION_MIGRATION, open_sqlite
from tests.backends import released_postgres_database, write_released_sqlite

NOW = 1_700_000_000_000
ROOM = 1
TEXTS = ["old walrus one", "old walrus two", "old walrus three", "old walrus four"]
RELEASED_SQLITE_VERSION = MIGRATIONS.index(RETENTION_MIGRATION)
RELEASED_POSTGRES = tuple(v for v, _ in migrations() if v < "0009_retention")


async def check_upgraded(directory: Directory, log: MessageLog) -> None:
    room = await directory.get_conversation(ROOM)
    assert room is not None
    assert (room.retention_max_age_days, room.retention_max_messages) == (0, 0)
    assert [c.id for c in await directory.conversations_after(0, 10, overridden_only=True)] == []
    head = (await log.heads([ROOM]))[ROOM]
    assert (head.last_seq, head.oldest_seq) == (4, 1)
    assert (await log.changes(ROOM, after_rev=0, limit=10)).oldest_seq == 1

    def walrus() -> MessageQuery:
        return MessageQuery(terms=tuple(parse("walrus")), conversation_ids=(ROOM,))

    assert len(await log.search(walrus())) == 4
    result = await log.purge(ROOM, before_ts=None, keep_last=1, limit=10)
    assert (result.purged, result.oldest_seq) == (3, 4)
    assert [hit.record.text for hit in await log.search(walrus())] == ["old walrus four"]


def write_release_sqlite(path: Path) -> None:
    def seed(conn: sqlite3.Connection) -> None:
        conn.execute(
            "INSERT INTO users (id, username, display_name, password_hash, created_at) VALUES (1, 'alice', 'A', 'h', 0)"
        )
        conn.execute(
            "INSERT INTO conversations (id, kind, name, topic, private, created_by, created_at)"
            " VALUES (1, 'channel', 'general', '', 0, 1, 0)"
        )
        for seq, text in enumerate(TEXTS, start=1):
            rowid = ((NOW + seq) << 20) + 0
            conn.execute(
                "INSERT INTO messages (conversation_id, seq, id, sender_id, text, client_msg_id, ts, rev, search_rowid)"
                " VALUES (?, ?, ?, 1, ?, ?, ?, ?, ?)",
                (ROOM, seq, f"m{seq}", text, f"c{seq}", NOW + seq, seq, rowid),
            )
            conn.execute("INSERT INTO message_search (rowid, text) VALUES (?, ?)", (rowid, index_text(text)))
        conn.execute("INSERT INTO conversation_seq (conversation_id, last_seq, last_rev) VALUES (1, 4, 4)")

    write_released_sqlite(path, RELEASED_SQLITE_VERSION, seed)


async def test_sqlite_upgrade(tmp_path: Path) -> None:
    path = tmp_path / "hubbub.db"
    write_release_sqlite(path)
    db, directory, log = await open_sqlite(path, 5.0)
    try:
        version = await db.run(lambda c: c.execute("PRAGMA user_version").fetchone()[0])
        assert version == len(MIGRATIONS) > RELEASED_SQLITE_VERSION
        await check_upgraded(directory, log)
    finally:
        await log.close()
        await db.close()
    db, _, log = await open_sqlite(path, 5.0)  # opening again migrates nothing, keeps the purge
    try:
        assert (await log.heads([ROOM]))[ROOM].oldest_seq == 4
    finally:
        await log.close()
        await db.close()


@pytest.fixture
async def release_postgres() -> AsyncIterator[str]:
    async def seed(conn: asyncpg.Connection) -> None:
        await conn.execute(
            "INSERT INTO users (id, username, display_name, password_hash, created_at) VALUES (1, 'alice', 'A', 'h', 0)"
        )
        await conn.execute(
            "INSERT INTO conversations (id, kind, name, topic, private, created_by, created_at)"
            " VALUES (1, 'channel', 'general', '', FALSE, 1, 0)"
        )
        await conn.executemany(
            "INSERT INTO messages (conversation_id, seq, id, sender_id, text, client_msg_id, ts, rev, search)"
            " VALUES ($1, $2, $3, 1, $4, $5, $6, $7, to_tsvector('simple', $8))",
            [
                (ROOM, seq, f"m{seq}", text, f"c{seq}", NOW + seq, seq, index_text(text))
                for seq, text in enumerate(TEXTS, start=1)
            ],
        )
        await conn.execute("INSERT INTO conversation_seq (conversation_id, last_seq, last_rev) VALUES (1, 4, 4)")

    async with released_postgres_database(RELEASED_POSTGRES, seed) as dsn:
        yield dsn


async def test_postgres_upgrade(release_postgres: str) -> None:
    assert "0008_message_search" in RELEASED_POSTGRES
    assert await migrate(release_postgres) == ["0009_retention"] + [v for v, _ in migrations() if v > "0009_retention"]
    assert await migrate(release_postgres) == []
    pools = await PostgresPools.open(release_postgres, None, min_size=1, max_size=2, timeout=10)
    log = PostgresMessageLog(pools)
    try:
        await check_upgraded(PostgresDirectory(pools), log)
    finally:
        await log.close()
        await pools.close()
