"""The embedded backend: one SQLite file holds the directory and the message log.

All SQL runs on one dedicated thread that owns the connection, so the event
loop never blocks on disk and SQLite never sees two threads. Message appends
are group-committed: appends that arrive while a commit is in flight wait and
go together in the next transaction, so an ack still means "on disk"
(WAL, synchronous=FULL) while fsyncs are shared under load.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from storage import supervision
from storage.base import HistoryOrder
from storage.batching import fail_batch
from storage.errors import Conflict, StoreUnavailable
from storage.records import ConversationRecord, MessageRecord, NewMessage, UserRecord

T = TypeVar("T")

# Each entry migrates the schema from version i to i+1 (PRAGMA user_version).
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE users (
        id INTEGER PRIMARY KEY,
        username TEXT NOT NULL UNIQUE,
        display_name TEXT NOT NULL,
        password_hash TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        last_seen_at INTEGER
    );
    CREATE TABLE conversations (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL CHECK (kind IN ('channel', 'dm')),
        name TEXT UNIQUE,
        topic TEXT NOT NULL DEFAULT '',
        private INTEGER NOT NULL,
        created_by INTEGER NOT NULL REFERENCES users(id),
        created_at INTEGER NOT NULL,
        dm_key TEXT UNIQUE
    );
    CREATE INDEX conversations_public ON conversations(kind, private);
    CREATE TABLE memberships (
        conversation_id INTEGER NOT NULL REFERENCES conversations(id),
        user_id INTEGER NOT NULL REFERENCES users(id),
        joined_at INTEGER NOT NULL,
        PRIMARY KEY (conversation_id, user_id)
    ) WITHOUT ROWID;
    CREATE INDEX memberships_by_user ON memberships(user_id, conversation_id);
    CREATE TABLE conversation_seq (
        conversation_id INTEGER PRIMARY KEY,
        last_seq INTEGER NOT NULL
    );
    CREATE TABLE messages (
        conversation_id INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        id TEXT NOT NULL,
        sender_id INTEGER NOT NULL,
        text TEXT NOT NULL,
        client_msg_id TEXT NOT NULL,
        ts INTEGER NOT NULL,
        PRIMARY KEY (conversation_id, seq)
    ) WITHOUT ROWID;
    CREATE UNIQUE INDEX messages_idempotency ON messages(conversation_id, sender_id, client_msg_id);
    """,
)


class SqliteDatabase:
    """One SQLite connection, used only from its own thread."""

    def __init__(self, path: Path, timeout: float) -> None:
        self.path = path
        self.timeout = timeout
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._conn: sqlite3.Connection | None = None

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._open)
        except sqlite3.Error as exc:
            raise StoreUnavailable("sqlite", f"cannot open {self.path}: {exc}") from exc

    def _open(self) -> None:
        conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        # BEGIN IMMEDIATE takes the write lock before reading the version, so
        # processes starting at once on one file migrate it exactly once.
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            for target, script in enumerate(MIGRATIONS[version:], start=version + 1):
                # One statement at a time: executescript() would commit the lock away.
                for statement in filter(None, (part.strip() for part in script.split(";"))):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version={target}")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        self._conn = conn

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(connection)`` on the database thread."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, self._call, fn)
        except sqlite3.IntegrityError:
            raise
        except sqlite3.Error as exc:
            raise StoreUnavailable("sqlite", str(exc)) from exc

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._conn is None:
            raise sqlite3.OperationalError("database is not open")
        return fn(self._conn)

    async def fetch_for_ids(self, sql: str, ids: Sequence[int]) -> list[Any]:
        """Rows of ``sql`` whose ``{ids}`` placeholder becomes the distinct ``ids``."""
        distinct = sorted(set(ids))
        if not distinct:
            return []
        query = sql.format(ids=",".join("?" * len(distinct)))
        return await self.run(lambda c: c.execute(query, distinct).fetchall())

    async def ping(self) -> None:
        """Read a page of the file, so a vanished or unreadable database fails readiness."""
        await self.run(lambda c: c.execute("SELECT count(*) FROM sqlite_master").fetchone())

    async def transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` inside BEGIN IMMEDIATE ... COMMIT, rolled back on any error."""

        def wrapped(conn: sqlite3.Connection) -> T:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result

        return await self.run(wrapped)

    async def close(self) -> None:
        def _close(conn: sqlite3.Connection) -> None:
            conn.close()

        if self._conn is not None:
            await self.run(_close)
            self._conn = None
        self._executor.shutdown(wait=True)


async def open_sqlite(path: Path, busy_timeout: float) -> tuple[SqliteDatabase, SqliteDirectory, SqliteMessageLog]:
    """Open (creating and migrating) the embedded database and both stores on it."""
    db = SqliteDatabase(path, busy_timeout)
    await db.open()
    return db, SqliteDirectory(db), SqliteMessageLog(db)


def _user(row: sqlite3.Row | tuple[Any, ...]) -> UserRecord:
    return UserRecord(
        id=row[0],
        username=row[1],
        display_name=row[2],
        password_hash=row[3],
        created_at=row[4],
        last_seen_at=row[5],
    )


def _conversation(row: sqlite3.Row | tuple[Any, ...]) -> ConversationRecord:
    return ConversationRecord(
        id=row[0],
        kind=row[1],
        name=row[2],
        topic=row[3],
        private=bool(row[4]),
        created_by=row[5],
        created_at=row[6],
    )


def _message(row: sqlite3.Row | tuple[Any, ...]) -> MessageRecord:
    return MessageRecord(
        conversation_id=row[0],
        seq=row[1],
        id=row[2],
        sender_id=row[3],
        text=row[4],
        client_msg_id=row[5],
        ts=row[6],
    )


USER_COLUMNS = "id, username, display_name, password_hash, created_at, last_seen_at"
CONVERSATION_FIELDS = "id, kind, name, topic, private, created_by, created_at"
CONVERSATION_COLUMNS = ", ".join(f"c.{f}" for f in CONVERSATION_FIELDS.split(", "))
MESSAGE_COLUMNS = "conversation_id, seq, id, sender_id, text, client_msg_id, ts"


def dm_key(member_ids: Sequence[int]) -> str:
    """The identity of a DM: its sorted, distinct member ids."""
    return ",".join(str(i) for i in sorted(set(member_ids)))


class SqliteDirectory:
    name = "sqlite"

    def __init__(self, db: SqliteDatabase) -> None:
        self.db = db

    async def ping(self) -> None:
        await self.db.ping()

    async def close(self) -> None:
        """The database is closed by its owner, shared with the message log."""

    async def create_user(self, username: str, display_name: str, password_hash: str, now: int) -> UserRecord:
        def insert(c: sqlite3.Connection) -> UserRecord:
            cur = c.execute(
                "INSERT INTO users (username, display_name, password_hash, created_at) VALUES (?, ?, ?, ?)"
                f" RETURNING {USER_COLUMNS}",
                (username, display_name, password_hash, now),
            )
            return _user(cur.fetchone())

        try:
            return await self.db.transaction(insert)
        except sqlite3.IntegrityError:
            raise Conflict(f"username {username!r} is taken") from None

    async def get_user(self, user_id: int) -> UserRecord | None:
        row = await self.db.run(
            lambda c: c.execute(f"SELECT {USER_COLUMNS} FROM users WHERE id = ?", (user_id,)).fetchone()
        )
        return _user(row) if row else None

    async def get_user_by_username(self, username: str) -> UserRecord | None:
        row = await self.db.run(
            lambda c: c.execute(f"SELECT {USER_COLUMNS} FROM users WHERE username = ?", (username,)).fetchone()
        )
        return _user(row) if row else None

    async def get_users(self, user_ids: Sequence[int]) -> list[UserRecord]:
        rows = await self.db.fetch_for_ids(
            f"SELECT {USER_COLUMNS} FROM users WHERE id IN ({{ids}}) ORDER BY id", user_ids
        )
        return [_user(r) for r in rows]

    async def set_last_seen(self, user_id: int, ts: int) -> None:
        await self.db.run(lambda c: c.execute("UPDATE users SET last_seen_at = ? WHERE id = ?", (ts, user_id)))

    async def create_channel(
        self, name: str, topic: str, private: bool, creator_id: int, now: int
    ) -> ConversationRecord:
        def insert(c: sqlite3.Connection) -> ConversationRecord:
            row = c.execute(
                "INSERT INTO conversations (kind, name, topic, private, created_by, created_at)"
                f" VALUES ('channel', ?, ?, ?, ?, ?) RETURNING {CONVERSATION_FIELDS}",
                (name, topic, int(private), creator_id, now),
            ).fetchone()
            c.execute(
                "INSERT INTO memberships (conversation_id, user_id, joined_at) VALUES (?, ?, ?)",
                (row[0], creator_id, now),
            )
            return _conversation(row)

        try:
            return await self.db.transaction(insert)
        except sqlite3.IntegrityError:
            raise Conflict(f"channel name {name!r} is taken") from None

    async def get_conversation(self, conversation_id: int) -> ConversationRecord | None:
        row = await self.db.run(
            lambda c: c.execute(
                f"SELECT {CONVERSATION_COLUMNS} FROM conversations c WHERE c.id = ?", (conversation_id,)
            ).fetchone()
        )
        return _conversation(row) if row else None

    async def public_channels(self) -> list[ConversationRecord]:
        rows = await self.db.run(
            lambda c: c.execute(
                f"SELECT {CONVERSATION_COLUMNS} FROM conversations c"
                " WHERE c.kind = 'channel' AND c.private = 0 ORDER BY c.name"
            ).fetchall()
        )
        return [_conversation(r) for r in rows]

    async def conversations_of(self, user_id: int) -> list[ConversationRecord]:
        rows = await self.db.run(
            lambda c: c.execute(
                f"SELECT {CONVERSATION_COLUMNS} FROM memberships m JOIN conversations c ON c.id = m.conversation_id"
                " WHERE m.user_id = ? ORDER BY c.id",
                (user_id,),
            ).fetchall()
        )
        return [_conversation(r) for r in rows]

    async def is_member(self, conversation_id: int, user_id: int) -> bool:
        row = await self.db.run(
            lambda c: c.execute(
                "SELECT 1 FROM memberships WHERE conversation_id = ? AND user_id = ?", (conversation_id, user_id)
            ).fetchone()
        )
        return row is not None

    async def add_member(self, conversation_id: int, user_id: int, now: int) -> bool:
        cur = await self.db.run(
            lambda c: c.execute(
                "INSERT INTO memberships (conversation_id, user_id, joined_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                (conversation_id, user_id, now),
            )
        )
        return cur.rowcount == 1

    async def remove_member(self, conversation_id: int, user_id: int) -> bool:
        cur = await self.db.run(
            lambda c: c.execute(
                "DELETE FROM memberships WHERE conversation_id = ? AND user_id = ?", (conversation_id, user_id)
            )
        )
        return cur.rowcount == 1

    async def member_ids(self, conversation_id: int) -> list[int]:
        rows = await self.db.run(
            lambda c: c.execute(
                "SELECT user_id FROM memberships WHERE conversation_id = ? ORDER BY user_id", (conversation_id,)
            ).fetchall()
        )
        return [r[0] for r in rows]

    async def members_of_many(self, conversation_ids: Sequence[int]) -> dict[int, list[int]]:
        rows = await self.db.fetch_for_ids(
            "SELECT conversation_id, user_id FROM memberships WHERE conversation_id IN ({ids})"
            " ORDER BY conversation_id, user_id",
            conversation_ids,
        )
        result: dict[int, list[int]] = {}
        for conversation_id, user_id in rows:
            result.setdefault(conversation_id, []).append(user_id)
        return result

    async def member_counts(self, conversation_ids: Sequence[int]) -> dict[int, int]:
        rows = await self.db.fetch_for_ids(
            "SELECT conversation_id, count(*) FROM memberships WHERE conversation_id IN ({ids})"
            " GROUP BY conversation_id",
            conversation_ids,
        )
        return {conversation_id: count for conversation_id, count in rows}

    async def open_dm(self, member_ids: Sequence[int], creator_id: int, now: int) -> tuple[ConversationRecord, bool]:
        key = dm_key(member_ids)

        def open_(c: sqlite3.Connection) -> tuple[ConversationRecord, bool]:
            row = c.execute(f"SELECT {CONVERSATION_COLUMNS} FROM conversations c WHERE c.dm_key = ?", (key,)).fetchone()
            if row:
                return _conversation(row), False
            row = c.execute(
                "INSERT INTO conversations (kind, name, topic, private, created_by, created_at, dm_key)"
                f" VALUES ('dm', NULL, '', 1, ?, ?, ?) RETURNING {CONVERSATION_FIELDS}",
                (creator_id, now, key),
            ).fetchone()
            c.executemany(
                "INSERT INTO memberships (conversation_id, user_id, joined_at) VALUES (?, ?, ?)",
                [(row[0], uid, now) for uid in sorted(set(member_ids))],
            )
            return _conversation(row), True

        return await self.db.transaction(open_)


class _PendingAppend:
    __slots__ = ("future", "message")

    def __init__(self, message: NewMessage, future: asyncio.Future[tuple[MessageRecord, bool]]) -> None:
        self.message = message
        self.future = future


class SqliteMessageLog:
    name = "sqlite"
    gapless = True
    ordered_appends = True

    def __init__(self, db: SqliteDatabase, max_batch: int = 256) -> None:
        self.db = db
        self.max_batch = max_batch
        self._pending: list[_PendingAppend] = []
        self._flusher: asyncio.Task[None] | None = None
        self._on_failure = supervision.current_hook()

    async def ping(self) -> None:
        await self.db.ping()

    async def close(self) -> None:
        if self._flusher is not None:
            await self._flusher

    async def append(self, message: NewMessage) -> tuple[MessageRecord, bool]:
        future: asyncio.Future[tuple[MessageRecord, bool]] = asyncio.get_running_loop().create_future()
        self._pending.append(_PendingAppend(message, future))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch = self._pending[: self.max_batch]
                del self._pending[: self.max_batch]
                try:
                    results = await self.db.transaction(functools.partial(_append_batch, batch=batch))
                    for p, result in zip(batch, results, strict=True):
                        if not p.future.done():
                            p.future.set_result(result)
                except Exception as exc:
                    # This batch's appends answer unavailable; the flusher goes on with the next.
                    fail_batch("sqlite", [p.future for p in batch], exc, self._on_failure)
        finally:
            self._flusher = None

    async def history(
        self,
        conversation_id: int,
        *,
        before: int | None,
        after: int | None,
        limit: int,
        order: HistoryOrder,
    ) -> list[MessageRecord]:
        direction = "DESC" if order == "desc" else "ASC"
        sql = (
            f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id = ? AND seq > ? AND seq < ?"
            f" ORDER BY seq {direction} LIMIT ?"
        )
        params = (conversation_id, -1 if after is None else after, 2**63 - 1 if before is None else before, limit)
        rows = await self.db.run(lambda c: c.execute(sql, params).fetchall())
        return [_message(r) for r in rows]

    async def last_seqs(self, conversation_ids: Sequence[int]) -> dict[int, int]:
        rows = await self.db.fetch_for_ids(
            "SELECT conversation_id, last_seq FROM conversation_seq WHERE conversation_id IN ({ids})", conversation_ids
        )
        return {conversation_id: seq for conversation_id, seq in rows}


def _append_batch(c: sqlite3.Connection, batch: list[_PendingAppend]) -> list[tuple[MessageRecord, bool]]:
    return [_append_one(c, p.message) for p in batch]


def _append_one(c: sqlite3.Connection, m: NewMessage) -> tuple[MessageRecord, bool]:
    row = c.execute(
        f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id = ? AND sender_id = ? AND client_msg_id = ?",
        (m.conversation_id, m.sender_id, m.client_msg_id),
    ).fetchone()
    if row:
        return _message(row), True
    seq = c.execute(
        "INSERT INTO conversation_seq (conversation_id, last_seq) VALUES (?, 1)"
        " ON CONFLICT (conversation_id) DO UPDATE SET last_seq = last_seq + 1 RETURNING last_seq",
        (m.conversation_id,),
    ).fetchone()[0]
    record = MessageRecord(
        id=uuid.uuid4().hex,
        conversation_id=m.conversation_id,
        seq=seq,
        sender_id=m.sender_id,
        text=m.text,
        client_msg_id=m.client_msg_id,
        ts=m.ts,
    )
    c.execute(
        f"INSERT INTO messages ({MESSAGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (record.conversation_id, record.seq, record.id, record.sender_id, record.text, record.client_msg_id, record.ts),
    )
    return record, False
