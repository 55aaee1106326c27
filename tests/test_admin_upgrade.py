"""Upgrading directories written before administration (issue 15) in place,
on SQLite (the schema version before ADMIN_MIGRATION -> it) and PostgreSQL
(every migration before 0010_administration -> it): every existing user is
active, a workspace member and not deleted, and keeps everything else
(profile, token generation); the audit log starts empty. Opening or
migrating again changes nothing, and the new columns work at once."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from hubbub.storage.base import Directory
from hubbub.storage.postgres import PostgresDirectory, PostgresPools, migrate, migrations
from hubbub.storage.records import UserRecord
from hubbub.storage.sqlite import ADMIN_MIGRATION, MIGRATIONS, open_sqlite
from tests.backends import released_postgres_database, write_released_sqlite

NOW = 1_700_000_000_000
# (id, username, status_text, searchable, token_generation)
USERS: list[tuple[int, str, str, bool, int]] = [
    (1, "alice", "at lunch", True, 0),
    (2, "bob", "", False, 3),
]
ADMIN_SQLITE_VERSION = MIGRATIONS.index(ADMIN_MIGRATION)
"""The schema version a release before administration left."""
ADMIN_POSTGRES = next(version for version, _ in migrations() if version.endswith("_administration"))
"""The PostgreSQL administration migration (0010_administration), found by name so renumbering changes no test."""


def expected(user_id: int, username: str, status: str, searchable: bool, generation: int) -> UserRecord:
    return UserRecord(
        id=user_id,
        username=username,
        display_name=username.title(),
        password_hash="hash$" + username,
        created_at=NOW,
        last_seen_at=None,
        status_text=status,
        searchable=searchable,
        token_generation=generation,
    )


def release_rows() -> list[Sequence[Any]]:
    return [
        (uid, name, name.title(), "hash$" + name, NOW, status, searchable, generation, name)
        for uid, name, status, searchable, generation in USERS
    ]


_INSERT = (
    "INSERT INTO users (id, username, display_name, password_hash, created_at, status_text, searchable,"
    " token_generation, search_name) VALUES ({})"
)


async def check_upgraded(directory: Directory) -> None:
    for user in USERS:
        found = await directory.get_user(user[0])
        assert found == expected(*user)
        assert (found.disabled_at, found.workspace_role, found.deleted_at) == (None, "member", None)
    assert await directory.disabled_since(0) == []
    assert await directory.workspace_admins() == []
    assert await directory.audit_entries(0, 10) == []
    # The new columns and table work on the upgraded schema.
    disabled = await directory.set_disabled(2, True, NOW + 1)
    assert disabled is not None and disabled.token_generation == 4
    assert [u.id for u in await directory.disabled_since(NOW)] == [2]
    entry = await directory.record_audit(None, "user.disable", {"user_id": 2}, NOW + 1)
    assert await directory.audit_entries(0, 10) == [entry]


def write_release_sqlite(path: Path) -> None:
    def seed(conn: sqlite3.Connection) -> None:
        conn.executemany(_INSERT.format(", ".join("?" * 9)), release_rows())

    write_released_sqlite(path, ADMIN_SQLITE_VERSION, seed)


async def test_sqlite_upgrade_makes_every_user_an_active_member(tmp_path: Path) -> None:
    path = tmp_path / "hubbub.db"
    write_release_sqlite(path)
    db, directory, _log = await open_sqlite(path, 5.0)
    try:
        assert await db.run(lambda c: c.execute("PRAGMA user_version").fetchone()[0]) == len(MIGRATIONS)
        await check_upgraded(directory)
    finally:
        await db.close()
    db, directory, _log = await open_sqlite(path, 5.0)  # opened again: nothing more to migrate
    try:
        found = await directory.get_user(2)
        assert found is not None and found.disabled_at == NOW + 1
        assert len(await directory.audit_entries(0, 10)) == 1
    finally:
        await db.close()


@pytest.fixture
async def release_postgres() -> AsyncIterator[str]:
    """A database migrated up to the migration before administration, with its users."""

    async def seed(conn: asyncpg.Connection) -> None:
        await conn.executemany(_INSERT.format(", ".join(f"${n}" for n in range(1, 10))), release_rows())

    async with released_postgres_database([v for v, _ in migrations() if v < ADMIN_POSTGRES], seed) as dsn:
        yield dsn


async def test_postgres_upgrade_makes_every_user_an_active_member(release_postgres: str) -> None:
    applied = await migrate(release_postgres)
    assert applied[0] == ADMIN_POSTGRES
    assert await migrate(release_postgres) == []
    pools = await PostgresPools.open(release_postgres, None, min_size=1, max_size=2, timeout=10)
    try:
        await check_upgraded(PostgresDirectory(pools))
    finally:
        await pools.close()
