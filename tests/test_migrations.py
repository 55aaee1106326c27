"""PostgreSQL migrations: `hubbub migrate`, idempotence, and several
instances migrating one database at once."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator

import asyncpg
import pytest

from hubbub.storage.postgres import migrate, migrations
from hubbub.storage.rows import CONVERSATION_FIELDS, MESSAGE_COLUMNS, USER_COLUMNS
from tests.backends import create_postgres_database, drop_postgres_database
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
