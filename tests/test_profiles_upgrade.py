"""Upgrading directories written by the current release (before profiles,
issue 12) in place, on SQLite (schema version 2 -> 3) and PostgreSQL
(migrations up to 0004 -> 0005): existing users keep everything they had,
get an empty, searchable profile and token generation 0, and are found by
a prefix of their display name lowercased as new users are (non-ASCII too).
Opening or migrating again changes nothing."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from hubbub.storage.base import Directory
from hubbub.storage.postgres import PostgresDirectory, PostgresPools, migrate, migrations
from hubbub.storage.records import ProfileUpdate, UserRecord
from hubbub.storage.sqlite import MIGRATIONS, open_sqlite
from tests.backends import released_postgres_database, write_released_sqlite

NOW = 1_700_000_000_000
OLD_USERS = [(1, "alice", "Alice", "hash$a"), (2, "elodie", "Élodie Ünal", "hash$e")]
"""(id, username, display_name, password_hash) of the users the release stored."""
RELEASED_SQLITE_VERSION = 2
RELEASED_POSTGRES = ("0001_directory", "0002_messages", "0003_append_function", "0004_message_changes")


def old_user(user_id: int, username: str, display_name: str, password_hash: str) -> UserRecord:
    """An old user as it must read back: what the release stored, and the profile's defaults."""
    return UserRecord(
        id=user_id,
        username=username,
        display_name=display_name,
        password_hash=password_hash,
        created_at=NOW,
        last_seen_at=NOW + user_id,
    )


async def check_upgraded(directory: Directory) -> None:
    expected = [old_user(*u) for u in OLD_USERS]
    assert await directory.get_users([1, 2]) == expected
    assert [u.id for u in await directory.search_users("él", after=None, limit=10)] == [2]
    assert [u.id for u in await directory.search_users("ALI", after=None, limit=10)] == [1]
    assert await directory.contacts_of(1) == [1, 2]
    hidden = await directory.update_profile(1, ProfileUpdate(searchable=False, time_zone="UTC"))
    assert hidden is not None and hidden.time_zone == "UTC"
    assert await directory.search_users("ali", after=None, limit=10) == []
    ended = await directory.end_sessions(2)
    assert ended is not None and ended.token_generation == 1


def write_release_sqlite(path: Path) -> None:
    def seed(conn: sqlite3.Connection) -> None:
        conn.executemany(
            "INSERT INTO users (id, username, display_name, password_hash, created_at, last_seen_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            [(uid, name, display, hashed, NOW, NOW + uid) for uid, name, display, hashed in OLD_USERS],
        )
        conn.execute(
            "INSERT INTO conversations (id, kind, name, topic, private, created_by, created_at)"
            " VALUES (1, 'channel', 'general', '', 0, 1, ?)",
            (NOW,),
        )
        conn.executemany("INSERT INTO memberships VALUES (1, ?, ?)", [(1, NOW), (2, NOW)])

    write_released_sqlite(path, RELEASED_SQLITE_VERSION, seed)


async def test_sqlite_upgrade_gives_existing_users_an_empty_profile(tmp_path: Path) -> None:
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
        user = await directory.get_user(2)
        assert user is not None and user.token_generation == 1
    finally:
        await db.close()


@pytest.fixture
async def release_postgres() -> AsyncIterator[str]:
    """A database migrated as the release migrates it, with the release's users."""

    async def seed(conn: asyncpg.Connection) -> None:
        await conn.executemany(
            "INSERT INTO users (id, username, display_name, password_hash, created_at, last_seen_at)"
            " VALUES ($1, $2, $3, $4, $5, $6)",
            [(uid, name, display, hashed, NOW, NOW + uid) for uid, name, display, hashed in OLD_USERS],
        )
        await conn.execute(
            "INSERT INTO conversations (id, kind, name, topic, private, created_by, created_at)"
            " VALUES (1, 'channel', 'general', '', false, 1, $1)",
            NOW,
        )
        await conn.executemany("INSERT INTO memberships VALUES (1, $1, $2)", [(1, NOW), (2, NOW)])

    async with released_postgres_database(RELEASED_POSTGRES, seed) as dsn:
        yield dsn


async def test_postgres_upgrade_gives_existing_users_an_empty_profile(release_postgres: str) -> None:
    applied = await migrate(release_postgres)
    assert applied == [version for version, _ in migrations() if version not in RELEASED_POSTGRES]
    assert applied[0] == "0005_profiles"
    assert await migrate(release_postgres) == []
    pools = await PostgresPools.open(release_postgres, None, min_size=1, max_size=2, timeout=10)
    try:
        await check_upgraded(PostgresDirectory(pools))
    finally:
        await pools.close()
