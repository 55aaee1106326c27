"""Upgrading a PostgreSQL message log to migration NNNN_append_many (hubbub_append_many, the
group commit across conversations): messages the release stored (through its
per-conversation hubbub_append_batch) are continued gapless, a resend of one is
its duplicate, and an instance still on the release (a rolling deploy) keeps
appending through the old function in between, on the same counters."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from hubbub.storage.postgres import Conn, PostgresMessageLog, PostgresPools, migrate, migrations
from hubbub.storage.records import NewMessage
from tests.backends import released_postgres_database

APPEND_MANY = next(v for v, _ in migrations() if v.endswith("_append_many"))
"""The migration under test, found by name so renumbering changes no test."""
RELEASED = tuple(v for v, _ in migrations() if v < APPEND_MANY)
ROOMS = (1, 2, 3)
OLD_SQL = (
    "SELECT (a.message).seq FROM hubbub_append_batch($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 'simple') AS a"
)
"""The release's append: one conversation's batch through hubbub_append_batch."""


async def old_append(conn: Conn | asyncpg.Connection, room: int, client_msg_ids: list[str]) -> list[int]:
    n = len(client_msg_ids)
    rows = await conn.fetch(
        OLD_SQL,
        room,
        [f"old-{room}-{c}" for c in client_msg_ids],
        [1] * n,
        [f"text {c}" for c in client_msg_ids],
        client_msg_ids,
        [1] * n,
        [None] * n,
        [False] * n,
        ["[]"] * n,
        [None] * n,
        5,
        [f"text {c}" for c in client_msg_ids],
    )
    return [r[0] for r in rows]


def new(room: int, client_msg_id: str) -> NewMessage:
    return NewMessage(
        conversation_id=room, sender_id=1, text=f"text {client_msg_id}", client_msg_id=client_msg_id, ts=2
    )


@pytest.fixture
async def release_postgres() -> AsyncIterator[str]:
    async def seed(conn: asyncpg.Connection) -> None:
        for room in ROOMS:
            assert await old_append(conn, room, ["a", "b"]) == [1, 2]

    async with released_postgres_database(RELEASED, seed) as dsn:
        yield dsn


async def test_postgres_upgrade_to_append_many(release_postgres: str) -> None:
    assert await migrate(release_postgres) == [APPEND_MANY]
    assert await migrate(release_postgres) == []
    pools = await PostgresPools.open(release_postgres, None, min_size=1, max_size=4, timeout=10)
    log = PostgresMessageLog(pools)
    try:
        burst = [new(room, c) for c in ("c", "a", "d") for room in ROOMS]  # "a": a resend of a stored one
        results = await asyncio.gather(*(log.append(m) for m in burst))
        by_room = {room: [r for r in results if r.record.conversation_id == room] for room in ROOMS}
        for room in ROOMS:
            c, a, d = by_room[room]
            assert (c.record.seq, c.duplicate) == (3, False)
            assert (a.record.seq, a.duplicate, a.record.id) == (1, True, f"old-{room}-a")
            assert (d.record.seq, d.duplicate) == (4, False)
        # An instance of the release appends in between, through the old function.
        async with pools.primary.acquire() as conn:
            assert await old_append(conn, 2, ["e"]) == [5]
        after = await asyncio.gather(*(log.append(new(room, "f")) for room in ROOMS))
        assert [r.record.seq for r in after] == [5, 6, 5]
        heads = await log.heads(list(ROOMS))
        assert [(heads[room].last_seq, heads[room].last_rev) for room in ROOMS] == [(5, 5), (6, 6), (5, 5)]
    finally:
        await log.close()
        await pools.close()
