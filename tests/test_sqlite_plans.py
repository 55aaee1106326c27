"""The embedded store's reads use their indexes, not a walk of the whole
conversation: SQLite plans without statistics (nothing runs ANALYZE), so a
read that would fall back to the primary key is pinned to its index."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hubbub.storage.sqlite import CHANGES_SQL, PINS_SQL, SqliteDatabase, _history_sql, open_sqlite


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[SqliteDatabase]:
    database, _, _ = await open_sqlite(tmp_path / "plans.db", 5.0)
    yield database
    await database.close()


async def plan(db: SqliteDatabase, sql: str, params: tuple[object, ...]) -> str:
    rows = await db.run(lambda c: c.execute("EXPLAIN QUERY PLAN " + sql, params).fetchall())
    return " | ".join(str(row[3]) for row in rows)


async def test_a_thread_read_uses_the_thread_index(db: SqliteDatabase) -> None:
    for order in ("asc", "desc"):
        sql = _history_sql(order, thread=True, include_replies=True)
        assert "USING INDEX messages_thread" in await plan(db, sql, (1, 0, 100, "root", 50))


async def test_pins_and_changes_use_their_indexes(db: SqliteDatabase) -> None:
    assert "messages_pins" in await plan(db, PINS_SQL, (1, 10))
    assert "messages_rev" in await plan(db, CHANGES_SQL, (1, 0, 10))
