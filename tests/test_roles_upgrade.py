"""Upgrading directories written before roles (issue 12) in place, on SQLite
(the schema version before ROLES_MIGRATION -> it) and PostgreSQL (every
migration before 0007_roles -> it): each channel's creator becomes its owner
if still a member, else its earliest member (by joined_at, then user id),
everyone else a member; a channel nobody is in has no owner; channels keep
what they had and get an empty purpose, are not archived and let anyone
invite; DMs keep no name. Opening or migrating again changes nothing."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from hubbub.server import channel_roles as rules
from hubbub.storage.base import Directory
from hubbub.storage.postgres import PostgresDirectory, PostgresPools, migrate, migrations
from hubbub.storage.records import ConversationRecord
from hubbub.storage.sqlite import MIGRATIONS, ROLES_MIGRATION, open_sqlite
from tests.backends import released_postgres_database, write_released_sqlite

NOW = 1_700_000_000_000
USERS = [(1, "alice"), (2, "bob"), (3, "carol")]
CONVERSATIONS = [
    # (id, kind, name, created_by)
    (1, "channel", "general", 1),  # the creator is still in: owner
    (2, "channel", "left", 1),  # the creator left: the earliest member, bob
    (3, "channel", "empty", 1),  # nobody left in it: no owner
    (4, "channel", "tie", 3),  # the creator left, two joined at once: the lower id, alice
    (5, "dm", None, 1),
]
MEMBERSHIPS = [
    # (conversation, user, joined_at)
    (1, 1, NOW),
    (1, 2, NOW + 1),
    (1, 3, NOW + 2),
    (2, 3, NOW + 5),
    (2, 2, NOW + 2),
    (4, 2, NOW + 3),
    (4, 1, NOW + 3),
    (5, 1, NOW),
    (5, 2, NOW),
]
EXPECTED_ROLES = {
    1: {1: "owner", 2: "member", 3: "member"},
    2: {2: "owner", 3: "member"},
    3: {},
    4: {1: "owner", 2: "member"},
    5: {1: "member", 2: "member"},
}
ROLES_SQLITE_VERSION = MIGRATIONS.index(ROLES_MIGRATION)
"""The schema version a release before roles left (roles migrate it to the next)."""
ROLES_POSTGRES = next(version for version, _ in migrations() if version.endswith("_roles"))
"""The PostgreSQL roles migration (0007_roles), found by name so that renumbering it changes no test."""


def old_conversation(conversation_id: int, kind: Any, name: str | None, created_by: int) -> ConversationRecord:
    return ConversationRecord(
        id=conversation_id,
        kind=kind,
        name=name,
        topic="",
        private=kind == "dm",
        created_by=created_by,
        created_at=NOW,
    )


async def check_upgraded(directory: Directory) -> None:
    for conversation in CONVERSATIONS:
        assert await directory.get_conversation(conversation[0]) == old_conversation(*conversation)
        assert await directory.member_roles(conversation[0]) == EXPECTED_ROLES[conversation[0]]
    # The new owner administers like any owner: the rules see the migrated roles.
    assert await directory.set_role(2, 2, 3, "admin", rules.set_role_check("admin")) is True
    assert await directory.roles_of(3, [1, 2]) == {1: "member", 2: "admin"}


def release_rows() -> tuple[list[Sequence[Any]], list[Sequence[Any]], list[Sequence[Any]]]:
    users: list[Sequence[Any]] = [(uid, name, name.title(), "hash$" + name, NOW, None) for uid, name in USERS]
    conversations: list[Sequence[Any]] = [
        (cid, kind, name, "", kind == "dm", by, NOW) for cid, kind, name, by in CONVERSATIONS
    ]
    return users, conversations, list(MEMBERSHIPS)


def write_release_sqlite(path: Path) -> None:
    def seed(conn: sqlite3.Connection) -> None:
        users, conversations, memberships = release_rows()
        conn.executemany(
            "INSERT INTO users (id, username, display_name, password_hash, created_at, last_seen_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            users,
        )
        conn.executemany(
            "INSERT INTO conversations (id, kind, name, topic, private, created_by, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            conversations,
        )
        conn.executemany("INSERT INTO memberships (conversation_id, user_id, joined_at) VALUES (?, ?, ?)", memberships)

    write_released_sqlite(path, ROLES_SQLITE_VERSION, seed)


async def test_sqlite_upgrade_gives_each_channel_an_owner(tmp_path: Path) -> None:
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
        assert await directory.member_roles(2) == {2: "owner", 3: "admin"}
        assert await directory.member_roles(1) == EXPECTED_ROLES[1]
    finally:
        await db.close()


@pytest.fixture
async def release_postgres() -> AsyncIterator[str]:
    """A database migrated up to the migration before roles, with its rows."""

    async def seed(conn: asyncpg.Connection) -> None:
        users, conversations, memberships = release_rows()
        await conn.executemany(
            "INSERT INTO users (id, username, display_name, password_hash, created_at, last_seen_at)"
            " VALUES ($1, $2, $3, $4, $5, $6)",
            users,
        )
        await conn.executemany(
            "INSERT INTO conversations (id, kind, name, topic, private, created_by, created_at)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7)",
            conversations,
        )
        await conn.executemany(
            "INSERT INTO memberships (conversation_id, user_id, joined_at) VALUES ($1, $2, $3)", memberships
        )

    async with released_postgres_database([v for v, _ in migrations() if v < ROLES_POSTGRES], seed) as dsn:
        yield dsn


async def test_postgres_upgrade_gives_each_channel_an_owner(release_postgres: str) -> None:
    applied = await migrate(release_postgres)
    assert applied[0] == ROLES_POSTGRES
    assert await migrate(release_postgres) == []
    pools = await PostgresPools.open(release_postgres, None, min_size=1, max_size=2, timeout=10)
    try:
        await check_upgraded(PostgresDirectory(pools))
    finally:
        await pools.close()
