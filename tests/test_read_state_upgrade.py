"""Upgrading stores written by the current release (profiles, before read
state) in place, on SQLite (schema version 3 -> 4) and PostgreSQL
(migrations up to 0005 -> 0006), with memberships and messages in them:
existing memberships get no read position, which lists as read up to the
head and is stored by that first listing (one write); what arrives after
counts; a mark on such a membership never moves it behind the head it
stood for. Opening or migrating again changes nothing."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from hubbub.server.retention_policy import default_policy
from hubbub.server.views import conversation_views
from hubbub.storage.base import Directory, MessageLog
from hubbub.storage.postgres import PostgresDirectory, PostgresMessageLog, PostgresPools, migrate, migrations
from hubbub.storage.records import MemberState, NewMessage
from hubbub.storage.sqlite import MIGRATIONS, open_sqlite
from tests.backends import released_postgres_database, write_released_sqlite

NOW = 1_700_000_000_000
RELEASED_SQLITE_VERSION = 3
RELEASED_POSTGRES = ("0001_directory", "0002_messages", "0003_append_function", "0004_message_changes", "0005_profiles")
USERS = [(1, "alice"), (2, "bob")]
CHANNEL = 1
MESSAGES = [(CHANNEL, seq, f"m{seq}", 1, f"text {seq}", f"c{seq}", NOW + seq, seq) for seq in (1, 2, 3)]
"""(conversation_id, seq, id, sender_id, text, client_msg_id, ts, rev): alice wrote three messages."""
CAP = 100


async def listing_of(directory: Directory, messages: MessageLog, user_id: int) -> tuple[int, int]:
    """(read_seq, unread_count) of the channel as the server lists it for ``user_id``."""
    mine = await directory.memberships_of(user_id)
    (view,) = await conversation_views(
        directory,
        messages,
        [m.conversation for m in mine],
        {m.conversation.id: m.state for m in mine},
        viewer=user_id,
        cap=CAP,
        retention=default_policy(),
    )
    return view.read_seq, view.unread_count


async def check_upgraded(directory: Directory, messages: MessageLog) -> None:
    assert await directory.member_state(CHANNEL, 2) == MemberState(read_seq=None, muted=False)
    assert await listing_of(directory, messages, 2) == (3, 0)  # history from before is not unread
    assert await directory.member_state(CHANNEL, 2) == MemberState(read_seq=3, muted=False)  # stored now
    await messages.append(NewMessage(conversation_id=CHANNEL, sender_id=1, text="new", client_msg_id="n1", ts=NOW))
    assert await listing_of(directory, messages, 2) == (3, 1)
    # Alice's membership was never listed: a mark below the head it stands for does not go back.
    mark = await directory.mark_read(CHANNEL, 1, 1, unset_as=4)
    assert mark is not None and mark.state.read_seq == 4
    assert await directory.set_muted(CHANNEL, 2, True) == MemberState(read_seq=3, muted=True)


def write_release_sqlite(path: Path) -> None:
    def seed(conn: sqlite3.Connection) -> None:
        conn.executemany(
            "INSERT INTO users (id, username, display_name, password_hash, created_at) VALUES (?, ?, ?, 'h', ?)",
            [(uid, name, name.title(), NOW) for uid, name in USERS],
        )
        conn.execute(
            "INSERT INTO conversations (id, kind, name, topic, private, created_by, created_at)"
            " VALUES (?, 'channel', 'general', '', 0, 1, ?)",
            (CHANNEL, NOW),
        )
        conn.executemany("INSERT INTO memberships VALUES (?, ?, ?)", [(CHANNEL, uid, NOW) for uid, _ in USERS])
        conn.executemany(
            "INSERT INTO messages (conversation_id, seq, id, sender_id, text, client_msg_id, ts, rev)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            MESSAGES,
        )
        conn.execute("INSERT INTO conversation_seq VALUES (?, 3, 3)", (CHANNEL,))

    write_released_sqlite(path, RELEASED_SQLITE_VERSION, seed)


async def test_sqlite_upgrade_lists_existing_memberships_as_read(tmp_path: Path) -> None:
    path = tmp_path / "hubbub.db"
    write_release_sqlite(path)
    db, directory, messages = await open_sqlite(path, 5.0)
    try:
        assert await db.run(lambda c: c.execute("PRAGMA user_version").fetchone()[0]) == len(MIGRATIONS)
        await check_upgraded(directory, messages)
    finally:
        await messages.close()
        await db.close()
    db, directory, messages = await open_sqlite(path, 5.0)  # opened again: nothing more to migrate
    try:
        assert await directory.member_state(CHANNEL, 2) == MemberState(read_seq=3, muted=True)
        assert await listing_of(directory, messages, 2) == (3, 1)
    finally:
        await messages.close()
        await db.close()


@pytest.fixture
async def release_postgres() -> AsyncIterator[str]:
    """A database migrated as the release migrates it, with the release's data."""

    async def seed(conn: asyncpg.Connection) -> None:
        await conn.executemany(
            "INSERT INTO users (id, username, display_name, password_hash, created_at) VALUES ($1, $2, $3, 'h', $4)",
            [(uid, name, name.title(), NOW) for uid, name in USERS],
        )
        await conn.execute(
            "INSERT INTO conversations (id, kind, name, topic, private, created_by, created_at)"
            " VALUES ($1, 'channel', 'general', '', false, 1, $2)",
            CHANNEL,
            NOW,
        )
        await conn.executemany("INSERT INTO memberships VALUES ($1, $2, $3)", [(CHANNEL, uid, NOW) for uid, _ in USERS])
        await conn.executemany(
            "INSERT INTO messages (conversation_id, seq, id, sender_id, text, client_msg_id, ts, rev)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            MESSAGES,
        )
        await conn.execute("INSERT INTO conversation_seq VALUES ($1, 3, 3)", CHANNEL)
        # Ids are the release's own: new rows take the next ones.
        for table in ("users", "conversations"):
            await conn.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), 10)")

    async with released_postgres_database(RELEASED_POSTGRES, seed) as dsn:
        yield dsn


async def test_postgres_upgrade_lists_existing_memberships_as_read(release_postgres: str) -> None:
    assert await migrate(release_postgres) == [v for v, _ in migrations() if v not in RELEASED_POSTGRES]
    assert await migrate(release_postgres) == []
    pools = await PostgresPools.open(release_postgres, None, min_size=1, max_size=2, timeout=10)
    messages = PostgresMessageLog(pools)
    try:
        await check_upgraded(PostgresDirectory(pools), messages)
    finally:
        await messages.close()
        await pools.close()
