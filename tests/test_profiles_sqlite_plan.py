"""user.search on the embedded store reads its two indexes, never the whole
users table (SQLite plans without statistics: nothing runs ANALYZE)."""

from __future__ import annotations

from pathlib import Path

from hubbub.storage.sqlite import SEARCH_USERS_SQL, open_sqlite


async def test_search_reads_a_range_of_each_index(tmp_path: Path) -> None:
    db, _, _ = await open_sqlite(tmp_path / "plans.db", 5.0)
    try:
        cursor = {"start": "alice", "key": "alice", "username": "alice"}  # a later page
        params = {"low": "al", "high": "al\U0010ffff", "limit": 21, **cursor}
        rows = await db.run(lambda c: c.execute("EXPLAIN QUERY PLAN " + SEARCH_USERS_SQL, params).fetchall())
        plan = " | ".join(str(row[3]) for row in rows)
        assert "USING INDEX users_search_name (search_name>? AND search_name<?)" in plan, plan
        assert "(username>? AND username<?)" in plan, plan
        assert "SCAN users" not in plan.replace("SCAN users USING", ""), plan
    finally:
        await db.close()
