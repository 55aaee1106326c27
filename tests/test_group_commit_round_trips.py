"""Group commit across conversations, counted: what one flush costs the store,
for 1, 10 and 100 conversations (issue 13: "round trips per flush constant
whatever the number of conversations").

Counted by the drivers, not by the code under test: pymongo's command
monitoring (``pymongo.monitoring.CommandListener``) against the CI stand-in
(secantusd-py, or HUBBUB_TEST_MONGO_URL), and asyncpg's query logger on every
pooled connection (one statement without BEGIN/COMMIT is one transaction).
Each burst is submitted in one event-loop turn, so it is one flush, which the
group commit's own ``flushes`` counter confirms.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from pymongo import AsyncMongoClient
from pymongo.monitoring import CommandFailedEvent, CommandListener, CommandStartedEvent, CommandSucceededEvent

from hubbub.storage.errors import StoreUnavailable
from hubbub.storage.mongo import MongoMessageLog, parse_write_concern
from hubbub.storage.postgres import PostgresMessageLog, PostgresPools, migrate
from hubbub.storage.records import NewMessage
from hubbub.storage.search_index import IndexedMessageLog, PostgresSearchIndex
from tests.backends import MongoServer, drop_mongo_database, truncate_postgres

SIZES = (1, 10, 100)
_conversations = itertools.count(1_000)


class Commands(CommandListener):
    """The names of the commands the client sent (and how they ended)."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def started(self, event: CommandStartedEvent) -> None:
        self.names.append(event.command_name)

    def succeeded(self, event: CommandSucceededEvent) -> None:
        pass

    def failed(self, event: CommandFailedEvent) -> None:
        pass


_DRIVER_HOUSEKEEPING = ("pg_advisory_unlock_all()", "typeinfo", "'jit'")
"""asyncpg's own statements: the reset of a connection released to the pool
(once per acquire, whatever the flush holds) and the type introspection (with
its jit setting) of a new connection's first statements."""


class Statements:
    """Every statement the store's code ran on any pooled connection (asyncpg's
    query logger), the driver's own housekeeping left out."""

    def __init__(self) -> None:
        self.queries: list[str] = []

    def __call__(self, record: asyncpg.connection.LoggedQuery) -> None:
        if not any(marker in record.query for marker in _DRIVER_HOUSEKEEPING):
            self.queries.append(record.query)

    async def init(self, conn: asyncpg.Connection) -> None:
        conn.add_query_logger(self)


async def _pools(dsn: str, statements: Statements) -> PostgresPools:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4, init=statements.init)
    return PostgresPools(pool, None)


def conversations(size: int) -> list[int]:
    return [next(_conversations) for _ in range(size)]


def burst(conversation_ids: list[int], per_conversation: int = 1, tag: str = "") -> list[NewMessage]:
    """``per_conversation`` messages into each of the conversations, round robin."""
    return [
        NewMessage(conversation_id=cid, sender_id=7, text=f"hello {cid} {k}", client_msg_id=f"{cid}-{tag}{k}", ts=1)
        for k in range(per_conversation)
        for cid in conversation_ids
    ]


async def settle() -> None:
    """Let the drivers' callbacks scheduled for the last replies run."""
    for _ in range(3):
        await asyncio.sleep(0)


@pytest.fixture
async def postgres_dsn(postgres_database: str) -> str:
    await truncate_postgres(postgres_database)
    await migrate(postgres_database)
    return postgres_database


@pytest.fixture
async def mongo_database(mongo_server: MongoServer) -> AsyncIterator[tuple[str, str]]:
    name = f"hubbub_test_{uuid.uuid4().hex[:12]}"
    try:
        yield mongo_server.url, name
    finally:
        await drop_mongo_database(mongo_server.url, name)


async def test_postgres_a_flush_is_one_statement_whatever_the_conversations(postgres_dsn: str) -> None:
    statements = Statements()
    pools = await _pools(postgres_dsn, statements)
    log = PostgresMessageLog(pools)
    try:
        per_flush: dict[tuple[int, int], list[str]] = {}
        for size in SIZES:
            ids = conversations(size)
            # A conversation's first message (its counter created), then two more each
            # (at most 200 messages: one batch).
            for per_conversation, first_seq, tag in ((1, 1, "a"), (2, 2, "b")):
                messages = burst(ids, per_conversation, tag)
                flushes, statements.queries = log._batches.flushes, []
                results = await asyncio.gather(*(log.append(m) for m in messages))
                await settle()
                assert log._batches.flushes - flushes == 1
                assert [r.record.client_msg_id for r in results] == [m.client_msg_id for m in messages]
                assert [r.record.seq for r in results] == [first_seq + k // size for k in range(len(messages))]
                per_flush[size, per_conversation] = statements.queries
        counts = {key: len(queries) for key, queries in per_flush.items()}
        assert set(counts.values()) == {1}, per_flush
        assert all("hubbub_append_many" in queries[0] for queries in per_flush.values())
    finally:
        await log.close()
        await pools.primary.close()


async def test_postgres_a_refused_message_fails_alone_and_leaves_nothing_half_written(postgres_dsn: str) -> None:
    """A message the database refuses (text with a NUL) fails its own send only:
    the flush's statement rolled back whole, the others are stored, gapless."""
    pools = await _pools(postgres_dsn, Statements())
    log = PostgresMessageLog(pools)
    try:
        messages = burst(conversations(10), 2)
        bad = messages[13]
        messages[13] = NewMessage(
            conversation_id=bad.conversation_id, sender_id=7, text="nul \x00 byte", client_msg_id="bad", ts=1
        )
        results = await asyncio.gather(*(log.append(m) for m in messages), return_exceptions=True)
        assert isinstance(results[13], StoreUnavailable)
        assert sum(isinstance(r, BaseException) for r in results) == 1
        heads = await log.heads([m.conversation_id for m in messages])
        for m, result in zip(messages, results, strict=True):
            if result is results[13]:
                continue
            assert not isinstance(result, BaseException)
            assert result.record.client_msg_id == m.client_msg_id
        # The refused message's conversation: its other message, seq 1, nothing else.
        assert heads[bad.conversation_id].last_seq == 1
        assert all(head.last_seq == 2 for cid, head in heads.items() if cid != bad.conversation_id)
        retry = await log.append(
            NewMessage(conversation_id=bad.conversation_id, sender_id=7, text="ok", client_msg_id="bad", ts=1)
        )
        assert (retry.record.seq, retry.duplicate) == (2, False)
    finally:
        await log.close()
        await pools.primary.close()


async def test_mongo_round_trips_per_flush_do_not_grow_with_conversations(
    mongo_database: tuple[str, str], postgres_dsn: str
) -> None:
    """MongoDB with the search index in PostgreSQL beside it, as production runs it:
    a flush is the same commands whatever the number of conversations, and one
    PostgreSQL statement for the index."""
    url, name = mongo_database
    commands = Commands()
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(url, event_listeners=[commands], timeoutMS=10_000)
    statements = Statements()
    pools = await _pools(postgres_dsn, statements)
    mongo = MongoMessageLog(client, name, parse_write_concern("1"))
    log = IndexedMessageLog(mongo, PostgresSearchIndex(pools, "simple"))
    try:
        await mongo.ensure_indexes()
        first: dict[int, list[str]] = {}
        later: dict[int, list[str]] = {}
        index_statements: dict[tuple[int, int], int] = {}
        for size in SIZES:
            ids = conversations(size)
            # Counters new (this process has not seen them), then known.
            for per_conversation, first_seq, tag, seen in ((1, 1, "a", first), (2, 2, "b", later)):
                messages = burst(ids, per_conversation, tag)
                flushes, commands.names, statements.queries = mongo._batches.flushes, [], []
                results = await asyncio.gather(*(log.append(m) for m in messages))
                await settle()
                assert mongo._batches.flushes - flushes == 1
                assert [r.record.client_msg_id for r in results] == [m.client_msg_id for m in messages]
                assert [r.record.seq for r in results] == [first_seq + k // size for k in range(len(messages))]
                seen[size] = commands.names
                index_statements[size, per_conversation] = len(statements.queries)
        # Read for resends, read the counters not seen yet, reserve, insert, release.
        assert all(names == ["find", "find", "update", "insert", "update"] for names in first.values()), first
        # Counters known: no read of them.
        assert all(names == ["find", "update", "insert", "update"] for names in later.values()), later
        assert set(index_statements.values()) == {1}, index_statements
    finally:
        await log.close()
        await pools.primary.close()
