"""PostgreSQL migrations: `hubbub migrate`, idempotence, and several
instances migrating one database at once."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator

import asyncpg
import msgspec
import pytest

from hubbub.storage.postgres import PostgresMessageLog, PostgresPools, migrate, migrations
from hubbub.storage.records import Head, MessageRecord, NewMessage, Reaction
from hubbub.storage.rows import CONVERSATION_FIELDS, MESSAGE_COLUMNS, USER_COLUMNS
from tests.backends import apply_released_migrations, create_postgres_database, drop_postgres_database
from tests.processes import settings_env


@pytest.fixture
async def empty_database() -> AsyncIterator[str]:
    dsn = await create_postgres_database()
    try:
        yield dsn
    finally:
        await drop_postgres_database(dsn)


async def applied_versions(dsn: str) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        return [r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")]
    finally:
        await conn.close()


async def test_cli_migrate_applies_every_migration_once(empty_database: str) -> None:
    everything = [version for version, _ in migrations()]
    assert everything == sorted(everything) and len(everything) >= 2

    async def run_cli() -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "hubbub.server",
            "migrate",
            env=settings_env({"postgres_dsn": empty_database}),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        _, stderr = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode is not None
        return proc.returncode, stderr.decode()

    code, log = await run_cli()
    assert code == 0, log
    assert '"migrated"' in log and all(version in log for version in everything)
    assert await applied_versions(empty_database) == everything

    code, log = await run_cli()
    assert code == 0 and '"applied":[]' in log


async def test_concurrent_migrations_apply_each_once(empty_database: str) -> None:
    results = await asyncio.gather(*(migrate(empty_database) for _ in range(4)))
    everything = [version for version, _ in migrations()]
    applied = sorted(version for result in results for version in result)
    assert applied == everything, "the advisory lock lets exactly one migrator apply each version"
    assert await applied_versions(empty_database) == everything


async def test_migrate_without_a_dsn_is_a_usage_error() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hubbub.server",
        "migrate",
        env=settings_env({}),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2
    assert "HUBBUB_POSTGRES_DSN" in stderr.decode()


async def test_the_shared_column_lists_name_columns_of_the_postgres_schema(empty_database: str) -> None:
    """storage.rows' lists serve SQLite and PostgreSQL alike (SQLite: tests/unit/test_rows.py)."""
    await migrate(empty_database)
    conn = await asyncpg.connect(empty_database)
    try:
        for table, listing in (
            ("users", USER_COLUMNS),
            ("conversations", CONVERSATION_FIELDS),
            ("messages", MESSAGE_COLUMNS),
        ):
            found = await conn.fetch("SELECT column_name FROM information_schema.columns WHERE table_name = $1", table)
            assert {c.strip() for c in listing.split(",")} <= {r["column_name"] for r in found}, table
    finally:
        await conn.close()


RELEASED = ("0001_directory", "0002_messages", "0003_append_function")
"""The migrations of the release before revisions (0004) existed."""


async def migrate_like_the_release(dsn: str) -> None:
    """Apply only the released migrations, recorded in schema_migrations as migrate() records them."""
    conn = await asyncpg.connect(dsn)
    try:
        await apply_released_migrations(conn, RELEASED)
    finally:
        await conn.close()


async def append_like_the_release(dsn: str, conversation_id: int, client_msg_ids: list[str]) -> list[tuple[str, int]]:
    """Messages stored as the release stores them (its hubbub_append_batch of
    migration 0003, one batch); (id, seq) of each."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT id, seq FROM hubbub_append_batch($1, $2, $3, $4, $5, $6)",
            conversation_id,
            [f"old-{conversation_id}-{c}" for c in client_msg_ids],
            [7 for _ in client_msg_ids],
            [f"text of {c}" for c in client_msg_ids],
            client_msg_ids,
            [1_000 + n for n in range(len(client_msg_ids))],
        )
    finally:
        await conn.close()
    return [(r["id"], r["seq"]) for r in rows]


async def test_upgrade_gives_old_messages_rev_seq_and_counters_continue(empty_database: str) -> None:
    await migrate_like_the_release(empty_database)
    assert await applied_versions(empty_database) == list(RELEASED)
    busy = await append_like_the_release(empty_database, 1, ["a", "b", "c"])
    quiet = await append_like_the_release(empty_database, 2, ["z"])
    assert [seq for _, seq in busy] == [1, 2, 3] and [seq for _, seq in quiet] == [1]

    assert await migrate(empty_database) == [version for version, _ in migrations() if version not in RELEASED]

    pools = await PostgresPools.open(empty_database, None, min_size=1, max_size=2, timeout=10)
    log = PostgresMessageLog(pools)
    try:
        assert await log.heads([1, 2]) == {1: Head(last_seq=3, last_rev=3), 2: Head(last_seq=1, last_rev=1)}
        old = await log.history(1, before=None, after=None, limit=10, order="asc")
        assert [(m.id, m.seq, m.rev) for m in old] == [(id_, seq, seq) for id_, seq in busy]
        assert all(
            (m.reply_count, m.repliers, m.reactions, m.mentions, m.deleted) == (0, (), (), (), False) for m in old
        )

        new = await log.append(NewMessage(conversation_id=1, sender_id=8, text="new", client_msg_id="n", ts=2_000))
        assert (new.record.seq, new.record.rev, new.duplicate) == (4, 4, False)
        again = await log.append(NewMessage(conversation_id=1, sender_id=7, text="text of a", client_msg_id="a", ts=5))
        assert again.duplicate and again.record == old[0], "a resend of a message stored before the upgrade"

        reply = await log.append(
            NewMessage(
                conversation_id=1, sender_id=8, text="re", client_msg_id="r", ts=2_001, thread_root_id=busy[0][0]
            )
        )
        assert (reply.record.seq, reply.record.rev) == (5, 5)
        assert reply.root is not None and (reply.root.rev, reply.root.reply_count, reply.root.repliers) == (6, 1, (8,))

        def react(message: MessageRecord) -> MessageRecord:
            return msgspec.structs.replace(message, reactions=(Reaction(emoji="👍", user_ids=(8,)),))

        changed = await log.change_message(1, busy[1][0], react)
        assert changed is not None and changed[1] and changed[0].rev == 7
        assert await log.get_message(1, busy[1][0]) == changed[0]
        page = await log.changes(1, after_rev=3, limit=10)
        assert [(m.seq, m.rev) for m in page.messages] == [(4, 4), (5, 5), (1, 6), (2, 7)] and page.horizon == 7
        assert await log.heads([1, 2]) == {1: Head(last_seq=5, last_rev=7), 2: Head(last_seq=1, last_rev=1)}
    finally:
        await log.close()
        await pools.close()

    assert await migrate(empty_database) == []
    assert await applied_versions(empty_database) == [version for version, _ in migrations()]
