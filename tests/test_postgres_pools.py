"""storage/postgres.py's pools: a release costs no round trip, and still leaves no transaction open.

asyncpg's default reset on release is a second statement after every query
(``SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL``), 17%
of a reconnect storm's samples (BENCHMARKS.md). The pools use ``keep_session``
instead, which relies on no pooled connection changing session state.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from hubbub.storage.postgres import PostgresDirectory, PostgresPools, migrate
from tests.backends import truncate_postgres


@pytest.fixture
async def pools(postgres_database: str) -> AsyncIterator[PostgresPools]:
    await migrate(postgres_database)
    await truncate_postgres(postgres_database)
    opened = await PostgresPools.open(postgres_database, None, min_size=1, max_size=1, timeout=10, lookup_max=1)
    try:
        yield opened
    finally:
        await opened.close()


async def last_statement(dsn: str, pid: int) -> str:
    """What the server last ran on the backend ``pid`` (pg_stat_activity), asked on a connection of its own."""
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        query = await conn.fetchval("SELECT query FROM pg_stat_activity WHERE pid = $1", pid)
    finally:
        await conn.close()
    assert isinstance(query, str)
    return query


async def test_a_release_sends_nothing_after_the_query(pools: PostgresPools, postgres_database: str) -> None:
    directory = PostgresDirectory(pools)
    for pool in (pools.primary, pools.lookups):
        async with pool.acquire() as conn:
            pid = conn.get_server_pid()
        await directory.get_users([1, 2]) if pool is pools.primary else await directory.sessions_of([1, 2])
        # The pool's one connection ran the read and then nothing: no RESET ALL behind it.
        assert "FROM users" in await last_statement(postgres_database, pid)


async def test_a_transaction_left_open_is_still_rolled_back_on_release(pools: PostgresPools) -> None:
    pool = pools.primary
    async with pool.acquire() as conn:
        pid = conn.get_server_pid()
        await conn.execute("BEGIN")
        await conn.execute("CREATE TABLE storm2_left_open (x int)")
        assert conn.is_in_transaction()
    async with pool.acquire() as again:
        assert again.get_server_pid() == pid  # the same connection, handed out again
        assert not again.is_in_transaction()
        assert await again.fetchval("SELECT to_regclass('storm2_left_open')") is None
