"""The MongoDB topology's search index in PostgreSQL (storage/search_index.py):
a batch's index write is one statement, so one round trip on the group
commit's path (no BEGIN and COMMIT around it), rows for the live messages
and none for tombstones, an older state never replacing a newer edit's."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import msgspec
import pytest

from hubbub.storage.postgres import PostgresPools, migrate
from hubbub.storage.records import MessageRecord, NewMessage
from hubbub.storage.rows import new_message_record
from hubbub.storage.search_index import PostgresSearchIndex
from tests.backends import truncate_postgres


@pytest.fixture
async def dsn(postgres_database: str) -> str:
    await migrate(postgres_database)
    await truncate_postgres(postgres_database)
    return postgres_database


@pytest.fixture
async def logged(dsn: str) -> AsyncIterator[tuple[PostgresSearchIndex, list[str], asyncpg.Pool]]:
    statements: list[str] = []

    def record(query: asyncpg.connection.LoggedQuery) -> None:
        if not query.query.startswith("SELECT pg_advisory_unlock_all();"):  # the pool's reset on release
            statements.append(query.query)

    async def log_statements(conn: asyncpg.Connection) -> None:
        conn.add_query_logger(record)

    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1, init=log_statements)
    assert pool is not None
    try:
        yield PostgresSearchIndex(PostgresPools(pool, None), "simple"), statements, pool
    finally:
        await pool.close()


def stored(seq: int, text: str) -> MessageRecord:
    new = NewMessage(conversation_id=7, sender_id=1, text=text, client_msg_id=f"m{seq}", ts=1_000 + seq)
    return new_message_record(new, seq, seq)


async def rows(pool: asyncpg.Pool) -> dict[int, tuple[int | None, str]]:
    found = await pool.fetch("SELECT seq, edited_ts, search::text AS words FROM message_search ORDER BY seq")
    return {r["seq"]: (r["edited_ts"], r["words"]) for r in found}


async def test_a_batch_is_one_statement_live_rows_in_tombstones_out(
    logged: tuple[PostgresSearchIndex, list[str], asyncpg.Pool],
) -> None:
    index, statements, pool = logged
    one, two, three = stored(1, "alpha"), stored(2, "bravo"), stored(3, "charlie")
    await index.store([one])
    statements.clear()  # asyncpg's look-ups of the statement's types, on the connection's first use
    await index.store([one, two, three])
    assert len(statements) == 1
    assert await rows(pool) == {1: (None, "'alpha':1"), 2: (None, "'bravo':1"), 3: (None, "'charlie':1")}

    statements.clear()
    edited = msgspec.structs.replace(two, text="bravo edited", edited_ts=2_000)
    deleted = msgspec.structs.replace(three, text="", deleted=True)
    # A late resend's older state of two in the same batch as its edit: the newest state wins.
    await index.store([stored(4, "delta"), deleted, edited])
    assert len(statements) == 1
    assert await rows(pool) == {1: (None, "'alpha':1"), 2: (2_000, "'bravo':1 'edited':2"), 4: (None, "'delta':1")}

    statements.clear()
    await index.store([two])  # an older state than the row's: kept as it is
    assert len(statements) == 1
    assert (await rows(pool))[2] == (2_000, "'bravo':1 'edited':2")
