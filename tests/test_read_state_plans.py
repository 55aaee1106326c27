"""Unread counts read only the unread tail, from the partial index of the
messages a count counts (messages_unread): on SQLite a covering range of
it per conversation; on PostgreSQL one statement whose lateral count is a
range of it (index-only once vacuumed), skipped by a one-time filter for a
conversation read up to its head. Never a walk of a conversation's history."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from hubbub.storage.postgres import UNREAD_MANY_SQL as POSTGRES_UNREAD_MANY_SQL
from hubbub.storage.postgres import UNREAD_SQL as POSTGRES_UNREAD_SQL
from hubbub.storage.postgres import migrate
from hubbub.storage.sqlite import UNREAD_SQL as SQLITE_UNREAD_SQL
from hubbub.storage.sqlite import SqliteDatabase, open_sqlite
from tests.backends import create_postgres_database, drop_postgres_database

CONVERSATIONS = 100
MESSAGES_EACH = 200


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[SqliteDatabase]:
    database, _, _ = await open_sqlite(tmp_path / "plans.db", 5.0)
    yield database
    await database.close()


async def test_sqlite_counts_from_a_covering_range_of_the_unread_index(db: SqliteDatabase) -> None:
    params = {"user": 1, "needle": ",1,", "conversation": 1, "read_seq": 0, "cap": 10}
    rows = await db.run(lambda c: c.execute("EXPLAIN QUERY PLAN " + SQLITE_UNREAD_SQL, params).fetchall())
    plan = " | ".join(str(row[3]) for row in rows)
    assert "SEARCH messages USING COVERING INDEX messages_unread (conversation_id=? AND seq>?)" in plan, plan
    assert "SCAN messages" not in plan, plan


@pytest.fixture
async def seeded_postgres() -> AsyncIterator[asyncpg.Connection[Any]]:
    """A migrated database with CONVERSATIONS conversations of MESSAGES_EACH
    messages (some deleted, some thread replies), vacuumed and analysed."""
    dsn = await create_postgres_database()
    try:
        await migrate(dsn)
        conn: asyncpg.Connection[Any] = await asyncpg.connect(dsn)
        try:
            await conn.execute(
                "INSERT INTO conversation_seq SELECT g, $1, $1 FROM generate_series(1, $2) g",
                MESSAGES_EACH,
                CONVERSATIONS,
            )
            await conn.execute(
                "INSERT INTO messages (conversation_id, seq, id, sender_id, text, client_msg_id, ts, rev,"
                " deleted, thread_root_id)"
                " SELECT c, s, c || '-' || s, 1 + s % 3, 'x', c || '-' || s, 0, s, s % 50 = 0,"
                " CASE WHEN s % 7 = 0 THEN 'root' END"
                " FROM generate_series(1, $1) c, generate_series(1, $2) s",
                CONVERSATIONS,
                MESSAGES_EACH,
            )
            await conn.execute("VACUUM ANALYZE messages")
            await conn.execute("ANALYZE conversation_seq")
            yield conn
        finally:
            await conn.close()
    finally:
        await drop_postgres_database(dsn)


def _nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
    return [node, *(n for child in node.get("Plans", ()) for n in _nodes(child))]


async def test_postgres_counts_from_a_range_of_the_unread_index(seeded_postgres: asyncpg.Connection[Any]) -> None:
    ids = list(range(1, CONVERSATIONS + 1))
    # Every other conversation read up to its head (skipped), the others 50 short of it.
    positions = [MESSAGES_EACH if i % 2 else MESSAGES_EACH - 50 for i in ids]
    raw = await seeded_postgres.fetchval(
        "EXPLAIN (ANALYZE, FORMAT JSON) " + POSTGRES_UNREAD_SQL, ids, positions, 1, 100, ",1,"
    )
    (explained,) = json.loads(raw)
    nodes = _nodes(explained["Plan"])
    on_messages = [n for n in nodes if n.get("Relation Name") == "messages"]
    assert on_messages and all(n["Node Type"] == "Index Only Scan" for n in on_messages), on_messages
    assert {n["Index Name"] for n in on_messages} == {"messages_unread"}
    assert all(n["Heap Fetches"] == 0 for n in on_messages)
    # Only the conversations read short of their head read the index at all.
    assert {n["Actual Loops"] for n in on_messages} == {CONVERSATIONS // 2}
    assert any(n.get("One-Time Filter") == "(p.read_seq < h.last_seq)" for n in nodes)
    assert all(n["Node Type"] != "Sort" for n in nodes)


async def test_postgres_counts_many_users_from_ranges_of_the_unread_index(
    seeded_postgres: asyncpg.Connection[Any],
) -> None:
    """unread_many (a storm's listings, one statement for many users): each ask's
    conversations read the same index range as a single user's count."""
    ids = list(range(1, CONVERSATIONS + 1))
    users = [1, 2]
    rows = [(n, i, MESSAGES_EACH if i % 2 else MESSAGES_EACH - 50, users[n]) for n in range(2) for i in ids]
    raw = await seeded_postgres.fetchval(
        "EXPLAIN (ANALYZE, FORMAT JSON) " + POSTGRES_UNREAD_MANY_SQL,
        [r[0] for r in rows],
        [r[1] for r in rows],
        [r[2] for r in rows],
        [r[3] for r in rows],
        [f",{r[3]}," for r in rows],
        100,
    )
    (explained,) = json.loads(raw)
    nodes = _nodes(explained["Plan"])
    on_messages = [n for n in nodes if n.get("Relation Name") == "messages"]
    assert on_messages and all(n["Node Type"] == "Index Only Scan" for n in on_messages), on_messages
    assert {n["Index Name"] for n in on_messages} == {"messages_unread"}
    assert {n["Actual Loops"] for n in on_messages} == {len(users) * CONVERSATIONS // 2}
    assert all(n["Node Type"] != "Sort" for n in nodes)
