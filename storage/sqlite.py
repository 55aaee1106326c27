"""The embedded backend: one SQLite file holds the directory and the message log.

All SQL runs on one dedicated thread that owns the connection, so the event
loop never blocks on disk and SQLite never sees two threads. Message appends
are group-committed (storage/batching.py, all conversations in one group):
appends that arrive while a commit is in flight wait and go together in the
next transaction, so an ack still means "on disk" (WAL, synchronous=FULL)
while fsyncs are shared under load. A change to a message (change_message)
is a transaction of its own on the same thread, so the one writer orders
every change and append, and each takes the next revision from the
conversation's counter row in the transaction that writes it (docs/messages.md).
"""

from __future__ import annotations

import asyncio
import functools
import json
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from hubbub.storage.base import AdminCheck, Directory, HistoryOrder, MessageChange, MessageLog
from hubbub.storage.batching import GroupCommit, one_group
from hubbub.storage.errors import Conflict, LastAdmin, StoreUnavailable
from hubbub.storage.records import (
    Appended,
    AuditEntry,
    ChangesPage,
    ChannelEdit,
    ConversationRecord,
    Head,
    HistoryRead,
    Membership,
    MemberState,
    MessageQuery,
    MessageRecord,
    NewMessage,
    ProfileUpdate,
    PurgeResult,
    ReadMark,
    Role,
    SearchHit,
    SearchPosition,
    Unread,
    UnreadAsk,
    UserRecord,
    UserSession,
    WorkspaceRole,
)
from hubbub.storage.rows import (
    AUDIT_COLUMNS,
    CONVERSATION_COLUMNS,
    CONVERSATION_FIELDS,
    DELETE_USER_SQL,
    HAND_OVER_OWNERSHIP_SQL,
    MEMBERSHIP_COLUMNS,
    MESSAGE_COLUMNS,
    MESSAGE_STATE_COLUMNS,
    NO_SEQ_ABOVE,
    NO_SEQ_BELOW,
    STANDING_SQL,
    TOMBSTONE_SQL,
    TOMBSTONE_USERNAME,
    USER_COLUMNS,
    audit_record,
    audit_target,
    channel_assignments,
    conversation_record,
    count_below,
    deleted_user_values,
    deleted_username,
    dm_key,
    expired_prefix,
    history_sql,
    member_state,
    membership_record,
    mention_needle,
    message_record,
    message_state_values,
    message_values,
    new_message_record,
    prefix_bounds,
    profile_assignments,
    search_key,
    seq_range,
    standing,
    tombstone_values,
    user_record,
)
from hubbub.storage.search_sql import (
    SQLITE_ROWID_TS_SHIFT,
    fts5_match,
    fts5_text,
    sqlite_position,
    sqlite_rowid_base,
)
from hubbub.storage.sqlite_index import (
    INDEX_IDLE_SECONDS,
    INDEX_MAX_PENDING,
    INDEX_MESSAGE_SQL,
    UNINDEX_MESSAGE_SQL,
    DeferredIndex,
    index_transaction,
    watermark,
)
from hubbub.storage.sqlite_transactions import read_snapshot, write_transaction
from hubbub.storage.threads import with_reply

T = TypeVar("T")

OPEN_RETRY_SECONDS = 0.02
"""Pause between attempts to open a database another process is setting up (up to the busy timeout)."""

ROLES_MIGRATION = """
    ALTER TABLE memberships ADD COLUMN role TEXT NOT NULL DEFAULT 'member' CHECK (role IN ('owner', 'admin', 'member'));
    ALTER TABLE conversations ADD COLUMN purpose TEXT NOT NULL DEFAULT '';
    ALTER TABLE conversations ADD COLUMN archived INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE conversations ADD COLUMN invite_policy TEXT NOT NULL DEFAULT 'anyone'
        CHECK (invite_policy IN ('anyone', 'admins'));
    ALTER TABLE conversations ADD COLUMN dm_name TEXT;
    UPDATE memberships SET role = 'owner' WHERE (conversation_id, user_id) IN (
        SELECT c.id, COALESCE(
            (SELECT m.user_id FROM memberships m WHERE m.conversation_id = c.id AND m.user_id = c.created_by),
            (SELECT m.user_id FROM memberships m WHERE m.conversation_id = c.id ORDER BY m.joined_at, m.user_id LIMIT 1)
        ) FROM conversations c WHERE c.kind = 'channel'
    )
"""
"""Roles and channel administration (issue 12), self-contained so it can be
renumbered: every member becomes a ``member``, then each channel's creator
its owner if still a member, else its earliest member (by joined_at, then
user id); a channel nobody is left in has no owner. Channels get an empty
purpose, are not archived and let anyone invite (today's behaviour); DMs get
no name. PostgreSQL's is migrations/postgres/0007_roles.sql."""


SEARCH_MIGRATION = """
    ALTER TABLE messages ADD COLUMN search_rowid INTEGER;
    UPDATE messages SET search_rowid = numbered.rowid_ FROM (
        SELECT conversation_id AS cid, seq AS seq_,
            (min(max(ts, 0), 4398046511103) << 20) + row_number() OVER (
                PARTITION BY min(max(ts, 0), 4398046511103) ORDER BY conversation_id, seq) - 1 AS rowid_
        FROM messages) AS numbered
        WHERE messages.conversation_id = numbered.cid AND messages.seq = numbered.seq_;
    CREATE UNIQUE INDEX messages_search_rowid ON messages(search_rowid);
    CREATE VIRTUAL TABLE message_search USING fts5(text, content='', tokenize='unicode61 remove_diacritics 2');
    INSERT INTO message_search (rowid, text)
        SELECT search_rowid, hubbub_index_text(text) FROM messages WHERE deleted = 0 AND text != ''
"""
"""The search index (docs/storage.md, Search): a contentless FTS5 table of
every message not deleted, its words as protocol.search cuts them
(``hubbub_index_text``), under the message's ``search_rowid``: the ts
shifted left 20 bits plus a counter within the millisecond
(storage.search_sql), so the index's rowid order is ts order and a
``newest`` search reads it backwards, stopping after a page. Contentless:
the text is kept once, in ``messages``; an edit or delete removes the old
words with FTS5's ``delete`` command, which needs them, read from the row in
the same transaction."""

RETENTION_MIGRATION = """
    ALTER TABLE conversations ADD COLUMN retention_max_age_days INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE conversations ADD COLUMN retention_max_messages INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX conversations_retention ON conversations(id)
        WHERE retention_max_age_days > 0 OR retention_max_messages > 0;
    ALTER TABLE conversation_seq ADD COLUMN purged_seq INTEGER NOT NULL DEFAULT 0
"""
"""Retention (issue 15), self-contained so it can be renumbered: no channel
has an override (0 follows the server's settings), and no conversation has had
a message purged (``purged_seq`` 0: the oldest retained seq is 1). The
partial index lists the channels with an override, which the purge reads when
the server's own retention is off. PostgreSQL's is migrations/postgres/0009_retention.sql."""
ADMIN_MIGRATION = """
    ALTER TABLE users ADD COLUMN disabled_at INTEGER;
    ALTER TABLE users ADD COLUMN workspace_role TEXT NOT NULL DEFAULT 'member'
        CHECK (workspace_role IN ('member', 'admin'));
    ALTER TABLE users ADD COLUMN deleted_at INTEGER;
    CREATE INDEX users_disabled ON users(disabled_at) WHERE disabled_at IS NOT NULL;
    CREATE INDEX users_workspace_admins ON users(id) WHERE workspace_role = 'admin';
    CREATE TABLE audit_log (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        ts INTEGER NOT NULL,
        actor_id INTEGER,
        action TEXT NOT NULL,
        target TEXT NOT NULL
    )
"""
"""Administration (issue 15), self-contained so it can be renumbered: every
existing user is active (``disabled_at`` NULL), a workspace member and not
deleted; the audit log starts empty. ``users_disabled`` serves the servers'
poll (Directory.disabled_since), ``users_workspace_admins`` the last-admin
check. AUTOINCREMENT: an entry's id is never reused, so paging by it is
stable. PostgreSQL's is migrations/postgres/0010_administration.sql."""

INDEX_WATERMARK_MIGRATION = """
    CREATE TABLE search_indexed (id INTEGER PRIMARY KEY CHECK (id = 0), through INTEGER NOT NULL);
    INSERT INTO search_indexed (id, through) SELECT 0, coalesce(max(search_rowid), 0) FROM messages
"""
"""The deferred search index (storage/sqlite_index.py), self-contained so it can
be renumbered: one row, the largest search rowid the FTS5 index covers. Every
message stored before it was indexed by its own append, so the watermark
starts at the largest rowid stored (0 in an empty file)."""

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
    # Revisions and message state (docs/messages.md). Existing rows get the
    # defaults of a message nobody changed, and rev = seq, last_rev = last_seq,
    # which keeps revisions unique per conversation.
    """
    ALTER TABLE messages ADD COLUMN rev INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE messages ADD COLUMN thread_root_id TEXT;
    ALTER TABLE messages ADD COLUMN also_in_channel INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE messages ADD COLUMN reply_count INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE messages ADD COLUMN last_reply_ts INTEGER;
    ALTER TABLE messages ADD COLUMN repliers TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE messages ADD COLUMN edited_ts INTEGER;
    ALTER TABLE messages ADD COLUMN deleted INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE messages ADD COLUMN mentions TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE messages ADD COLUMN mention_all TEXT CHECK (mention_all IN ('channel', 'here'));
    ALTER TABLE messages ADD COLUMN reactions TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE messages ADD COLUMN pinned_by INTEGER;
    ALTER TABLE messages ADD COLUMN pinned_ts INTEGER;
    ALTER TABLE conversation_seq ADD COLUMN last_rev INTEGER NOT NULL DEFAULT 0;
    UPDATE messages SET rev = seq;
    UPDATE conversation_seq SET last_rev = last_seq;
    CREATE UNIQUE INDEX messages_rev ON messages(conversation_id, rev);
    CREATE UNIQUE INDEX messages_id ON messages(id);
    CREATE INDEX messages_thread ON messages(conversation_id, thread_root_id, seq) WHERE thread_root_id IS NOT NULL;
    CREATE INDEX messages_pins ON messages(conversation_id, pinned_ts) WHERE pinned_ts IS NOT NULL;
    """,
    # Profiles and the directory (issue 12). Existing users get an empty
    # profile, are searchable, and keep their tokens (generation 0, which is
    # also what a token without a generation claim carries). search_name is
    # the display name lowercased by Python (hubbub_lower, registered on every
    # connection), not SQLite's ASCII-only lower(), as new rows get it
    # (storage.rows.search_key). The partial indexes serve user.search's two
    # prefix ranges: username (searchable only) and search_name.
    """
    ALTER TABLE users ADD COLUMN status_text TEXT NOT NULL DEFAULT '';
    ALTER TABLE users ADD COLUMN status_emoji TEXT NOT NULL DEFAULT '';
    ALTER TABLE users ADD COLUMN status_expires_at INTEGER;
    ALTER TABLE users ADD COLUMN time_zone TEXT NOT NULL DEFAULT '';
    ALTER TABLE users ADD COLUMN avatar_url TEXT NOT NULL DEFAULT '';
    ALTER TABLE users ADD COLUMN searchable INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE users ADD COLUMN token_generation INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE users ADD COLUMN search_name TEXT NOT NULL DEFAULT '';
    UPDATE users SET search_name = hubbub_lower(display_name);
    CREATE INDEX users_search_username ON users(username) WHERE searchable = 1;
    CREATE INDEX users_search_name ON users(search_name, username) WHERE searchable = 1;
    """,
    # Read state and mute (issue 12). Existing memberships get no read
    # position (NULL): it counts as read up to the head, and the first
    # listing stores that head (docs/storage.md, read state upgrade). The
    # partial index holds only the messages an unread count counts (not
    # deleted, in the main timeline), with every column a count reads (those
    # of the index's own condition too, which SQLite still checks), so a
    # count is a range of at most the cap over the unread tail, read from
    # the index alone.
    """
    ALTER TABLE memberships ADD COLUMN read_seq INTEGER;
    ALTER TABLE memberships ADD COLUMN muted INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX messages_unread
        ON messages(conversation_id, seq, sender_id, mention_all, mentions, deleted, thread_root_id, also_in_channel)
        WHERE deleted = 0 AND (thread_root_id IS NULL OR also_in_channel = 1);
    """,
    ROLES_MIGRATION,
    # Message search (issue 15): SEARCH_MIGRATION, kept whole in one place for renumbering.
    SEARCH_MIGRATION,
    # Retention (issue 15): RETENTION_MIGRATION, kept whole in one place for renumbering.
    RETENTION_MIGRATION,
    # Administration (issue 15): ADMIN_MIGRATION, kept whole in one place for renumbering.
    ADMIN_MIGRATION,
    # The deferred search index: INDEX_WATERMARK_MIGRATION, kept whole in one place for renumbering.
    INDEX_WATERMARK_MIGRATION,
)


SEARCH_USERS_SQL = (
    "WITH by_username AS (SELECT username AS k, username AS u FROM users INDEXED BY users_search_username"
    " WHERE searchable = 1 AND username >= :start AND username < :high AND (username, username) > (:key, :username)"
    " ORDER BY username LIMIT :limit),"
    " by_name AS (SELECT search_name AS k, username AS u FROM users INDEXED BY users_search_name"
    " WHERE searchable = 1 AND search_name >= :start AND search_name < :high"
    " AND NOT (username >= :low AND username < :high) AND (search_name, username) > (:key, :username)"
    " ORDER BY search_name, username LIMIT :limit),"
    " page AS (SELECT k, u FROM by_username UNION ALL SELECT k, u FROM by_name ORDER BY k, u LIMIT :limit)"
    f" SELECT {', '.join(f'users.{c}' for c in USER_COLUMNS.split(', '))} FROM page"
    " JOIN users ON users.username = page.u ORDER BY page.k, page.u"
)
"""user.search (Directory.search_users): the first ``limit`` of each of two index ranges, in
index order (a username prefix; a lowercased display-name prefix of users whose username
does not match, so nobody is found twice), read from the indexes alone, merged by (matched
text, username), and only then the page's rows. Pinned to their partial indexes: without
statistics SQLite may not pick them. ``start`` is the larger of the prefix and the cursor's
key, so a later page starts its ranges at the cursor."""


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
        # Processes starting at once on a new file race for the switch to WAL,
        # and SQLite answers the loser `database is locked` at once instead of
        # waiting out the busy timeout (it would deadlock): retry until then.
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                self._open_once()
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
            time.sleep(OPEN_RETRY_SECONDS)  # on the database thread, before anything else uses it

    def _open_once(self) -> None:
        conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            # A deleted message's text is overwritten; zeroing freed page bytes
            # keeps it out of the file too (docs/messages.md, what a delete keeps).
            conn.execute("PRAGMA secure_delete=ON")
            # The profiles migration fills search_name with Python's lowercasing (storage.rows.search_key).
            conn.create_function("hubbub_lower", 1, search_key, deterministic=True)
            # The search migration indexes existing messages' words as new ones are (protocol.search).
            conn.create_function("hubbub_index_text", 1, fts5_text, deterministic=True)
            # BEGIN IMMEDIATE takes the write lock before reading the version, so
            # processes starting at once on one file migrate it exactly once.
            with write_transaction(conn):
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                for target, script in enumerate(MIGRATIONS[version:], start=version + 1):
                    # One statement at a time: executescript() would commit the lock away.
                    for statement in filter(None, (part.strip() for part in script.split(";"))):
                        conn.execute(statement)
                    conn.execute(f"PRAGMA user_version={target}")
        except BaseException:
            conn.close()
            raise
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
            with write_transaction(conn):
                return fn(conn)

        return await self.run(wrapped)

    async def close(self) -> None:
        def _close(conn: sqlite3.Connection) -> None:
            conn.close()

        if self._conn is not None:
            await self.run(_close)
            self._conn = None
        self._executor.shutdown(wait=True)


async def open_sqlite(
    path: Path,
    busy_timeout: float,
    *,
    index_idle_seconds: float = INDEX_IDLE_SECONDS,
    index_max_pending: int = INDEX_MAX_PENDING,
) -> tuple[SqliteDatabase, SqliteDirectory, SqliteMessageLog]:
    """Open (creating and migrating) the embedded database and both stores on it,
    and index the messages a crash left unindexed (storage/sqlite_index.py)."""
    db = SqliteDatabase(path, busy_timeout)
    await db.open()
    try:
        await db.run(index_transaction)
    except BaseException:
        await db.close()
        raise
    log = SqliteMessageLog(db, index_idle_seconds=index_idle_seconds, index_max_pending=index_max_pending)
    return db, SqliteDirectory(db), log


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
                "INSERT INTO users (username, display_name, password_hash, created_at, search_name)"
                f" VALUES (?, ?, ?, ?, ?) RETURNING {USER_COLUMNS}",
                (username, display_name, password_hash, now, search_key(display_name)),
            )
            return user_record(cur.fetchone())

        try:
            return await self.db.transaction(insert)
        except sqlite3.IntegrityError:
            raise Conflict(f"username {username!r} is taken") from None

    async def get_user(self, user_id: int) -> UserRecord | None:
        row = await self.db.run(
            lambda c: c.execute(f"SELECT {USER_COLUMNS} FROM users WHERE id = ?", (user_id,)).fetchone()
        )
        return user_record(row) if row else None

    async def get_user_by_username(self, username: str) -> UserRecord | None:
        row = await self.db.run(
            lambda c: c.execute(f"SELECT {USER_COLUMNS} FROM users WHERE username = ?", (username,)).fetchone()
        )
        return user_record(row) if row else None

    async def get_users(self, user_ids: Sequence[int]) -> list[UserRecord]:
        rows = await self.db.fetch_for_ids(
            f"SELECT {USER_COLUMNS} FROM users WHERE id IN ({{ids}}) ORDER BY id", user_ids
        )
        return [user_record(r) for r in rows]

    async def set_last_seen(self, user_id: int, ts: int) -> None:
        await self.db.run(lambda c: c.execute("UPDATE users SET last_seen_at = ? WHERE id = ?", (ts, user_id)))

    async def set_last_seen_many(self, seen: Mapping[int, int]) -> None:
        if not seen:
            return
        rows = sorted((ts, user_id) for user_id, ts in seen.items())
        # One transaction: one commit (one fsync) for the whole batch, not one per user.
        await self.db.transaction(lambda c: c.executemany("UPDATE users SET last_seen_at = ? WHERE id = ?", rows))

    async def sessions_of(self, user_ids: Sequence[int]) -> dict[int, UserSession]:
        distinct = sorted(set(user_ids))
        if not distinct:
            return {}
        marks = ",".join("?" * len(distinct))

        def read(c: sqlite3.Connection) -> dict[int, UserSession]:
            # Both reads on one thread hop, in one read transaction: the user and
            # their memberships as of one moment.
            with read_snapshot(c):
                users = c.execute(f"SELECT {USER_COLUMNS} FROM users WHERE id IN ({marks})", distinct).fetchall()
                conversations: dict[int, list[int]] = {}
                for user_id, conversation_id in c.execute(
                    f"SELECT user_id, conversation_id FROM memberships WHERE user_id IN ({marks})"
                    " ORDER BY user_id, conversation_id",
                    distinct,
                ):
                    conversations.setdefault(user_id, []).append(conversation_id)
            return {
                row[0]: UserSession(user=user_record(row), conversation_ids=tuple(conversations.get(row[0], ())))
                for row in users
            }

        return await self.db.run(read)

    async def update_profile(self, user_id: int, update: ProfileUpdate) -> UserRecord | None:
        pairs = profile_assignments(update)
        if not pairs:
            return await self.get_user(user_id)
        assignments = ", ".join(f"{column} = ?" for column, _ in pairs)
        return await self._update_user(assignments, [value for _, value in pairs], user_id)

    async def _update_user(self, assignments: str, values: list[Any], user_id: int) -> UserRecord | None:
        """``UPDATE users SET <assignments>`` of one user, returning the row as stored."""
        sql = f"UPDATE users SET {assignments} WHERE id = ? RETURNING {USER_COLUMNS}"
        row = await self.db.transaction(lambda c: c.execute(sql, (*values, user_id)).fetchone())
        return user_record(row) if row else None

    async def search_users(self, prefix: str, *, after: SearchPosition | None, limit: int) -> list[UserRecord]:
        low, high = prefix_bounds(prefix.lower())
        params = {"low": low, "start": low, "high": high, "limit": limit, "key": "", "username": ""}
        if after is not None:
            params.update(start=max(low, after.key), key=after.key, username=after.username)
        rows = await self.db.run(lambda c: c.execute(SEARCH_USERS_SQL, params).fetchall())
        return [user_record(r) for r in rows]

    async def list_users(self, *, after_id: int, limit: int) -> list[UserRecord]:
        rows = await self.db.run(
            lambda c: c.execute(
                f"SELECT {USER_COLUMNS} FROM users WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit)
            ).fetchall()
        )
        return [user_record(r) for r in rows]

    async def list_channels(self, *, after_id: int, limit: int) -> list[ConversationRecord]:
        rows = await self.db.run(
            lambda c: c.execute(
                f"SELECT {CONVERSATION_COLUMNS} FROM conversations c"
                " WHERE c.kind = 'channel' AND c.id > ? ORDER BY c.id LIMIT ?",
                (after_id, limit),
            ).fetchall()
        )
        return [conversation_record(r) for r in rows]

    async def channel_by_name(self, name: str) -> ConversationRecord | None:
        row = await self.db.run(
            lambda c: c.execute(
                f"SELECT {CONVERSATION_COLUMNS} FROM conversations c WHERE c.kind = 'channel' AND c.name = ?", (name,)
            ).fetchone()
        )
        return conversation_record(row) if row else None

    async def contacts_of(self, user_id: int) -> list[int]:
        rows = await self.db.run(
            lambda c: c.execute(
                "SELECT DISTINCT other.user_id FROM memberships mine"
                " JOIN memberships other ON other.conversation_id = mine.conversation_id"
                " WHERE mine.user_id = ? ORDER BY other.user_id",
                (user_id,),
            ).fetchall()
        )
        ids = [r[0] for r in rows]
        return ids if user_id in ids else sorted([*ids, user_id])

    async def set_password(self, user_id: int, password_hash: str) -> UserRecord | None:
        return await self._update_user(
            "password_hash = ?, token_generation = token_generation + 1", [password_hash], user_id
        )

    async def end_sessions(self, user_id: int) -> UserRecord | None:
        return await self._update_user("token_generation = token_generation + 1", [], user_id)

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
                "INSERT INTO memberships (conversation_id, user_id, joined_at, read_seq, role)"
                " VALUES (?, ?, ?, 0, 'owner')",
                (row[0], creator_id, now),
            )
            return conversation_record(row)

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
        return conversation_record(row) if row else None

    async def public_channels(self) -> list[ConversationRecord]:
        rows = await self.db.run(
            lambda c: c.execute(
                f"SELECT {CONVERSATION_COLUMNS} FROM conversations c"
                " WHERE c.kind = 'channel' AND c.private = 0 ORDER BY c.name"
            ).fetchall()
        )
        return [conversation_record(r) for r in rows]

    async def conversations_of(self, user_id: int) -> list[ConversationRecord]:
        rows = await self.db.run(
            lambda c: c.execute(
                f"SELECT {CONVERSATION_COLUMNS} FROM memberships m JOIN conversations c ON c.id = m.conversation_id"
                " WHERE m.user_id = ? ORDER BY c.id",
                (user_id,),
            ).fetchall()
        )
        return [conversation_record(r) for r in rows]

    async def is_member(self, conversation_id: int, user_id: int) -> bool:
        row = await self.db.run(
            lambda c: c.execute(
                "SELECT 1 FROM memberships WHERE conversation_id = ? AND user_id = ?", (conversation_id, user_id)
            ).fetchone()
        )
        return row is not None

    async def add_member(self, conversation_id: int, user_id: int, now: int, *, read_seq: int = 0) -> bool:
        cur = await self.db.run(
            lambda c: c.execute(
                "INSERT INTO memberships (conversation_id, user_id, joined_at, read_seq) VALUES (?, ?, ?, ?)"
                " ON CONFLICT DO NOTHING",
                (conversation_id, user_id, now, read_seq),
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

    async def members_by_username(self, conversation_id: int, usernames: Sequence[str]) -> dict[str, int]:
        distinct = sorted(set(usernames))
        if not distinct:
            return {}
        sql = (
            "SELECT u.username, u.id FROM users u JOIN memberships m ON m.user_id = u.id AND m.conversation_id = ?"
            f" WHERE u.username IN ({','.join('?' * len(distinct))})"
        )
        rows = await self.db.run(lambda c: c.execute(sql, (conversation_id, *distinct)).fetchall())
        return {username: user_id for username, user_id in rows}

    async def open_dm(self, member_ids: Sequence[int], creator_id: int, now: int) -> tuple[ConversationRecord, bool]:
        key = dm_key(member_ids)

        def open_(c: sqlite3.Connection) -> tuple[ConversationRecord, bool]:
            row = c.execute(f"SELECT {CONVERSATION_COLUMNS} FROM conversations c WHERE c.dm_key = ?", (key,)).fetchone()
            if row:
                return conversation_record(row), False
            row = c.execute(
                "INSERT INTO conversations (kind, name, topic, private, created_by, created_at, dm_key)"
                f" VALUES ('dm', NULL, '', 1, ?, ?, ?) RETURNING {CONVERSATION_FIELDS}",
                (creator_id, now, key),
            ).fetchone()
            c.executemany(
                "INSERT INTO memberships (conversation_id, user_id, joined_at, read_seq) VALUES (?, ?, ?, 0)",
                [(row[0], uid, now) for uid in sorted(set(member_ids))],
            )
            return conversation_record(row), True

        return await self.db.transaction(open_)

    async def memberships_of(self, user_id: int) -> list[Membership]:
        rows = await self.db.run(
            lambda c: c.execute(
                f"SELECT {MEMBERSHIP_COLUMNS} FROM memberships m JOIN conversations c ON c.id = m.conversation_id"
                " WHERE m.user_id = ? ORDER BY c.id",
                (user_id,),
            ).fetchall()
        )
        return [membership_record(r) for r in rows]

    async def memberships_of_many(self, user_ids: Sequence[int]) -> dict[int, list[Membership]]:
        rows = await self.db.fetch_for_ids(
            f"SELECT {MEMBERSHIP_COLUMNS}, m.user_id FROM memberships m"
            " JOIN conversations c ON c.id = m.conversation_id WHERE m.user_id IN ({ids}) ORDER BY m.user_id, c.id",
            user_ids,
        )
        found: dict[int, list[Membership]] = {}
        for r in rows:
            found.setdefault(r[-1], []).append(membership_record(r))
        return found

    async def member_state(self, conversation_id: int, user_id: int) -> MemberState | None:
        row = await self.db.run(
            lambda c: c.execute(
                "SELECT read_seq, muted, role FROM memberships WHERE conversation_id = ? AND user_id = ?",
                (conversation_id, user_id),
            ).fetchone()
        )
        return member_state(row[0], row[1], row[2]) if row else None

    async def mark_read(self, conversation_id: int, user_id: int, seq: int, *, unset_as: int) -> ReadMark | None:
        def mark(c: sqlite3.Connection) -> ReadMark | None:
            # One conditional write: a position already at or past ``seq`` is not
            # touched, so racing marks only ever move it forward.
            row = c.execute(
                "UPDATE memberships SET read_seq = max(?, coalesce(read_seq, ?))"
                " WHERE conversation_id = ? AND user_id = ? AND (read_seq IS NULL OR read_seq < ?)"
                " RETURNING read_seq, muted, role",
                (seq, unset_as, conversation_id, user_id, seq),
            ).fetchone()
            if row is not None:
                return ReadMark(state=member_state(row[0], row[1], row[2]), moved=True)
            row = c.execute(
                "SELECT read_seq, muted, role FROM memberships WHERE conversation_id = ? AND user_id = ?",
                (conversation_id, user_id),
            ).fetchone()
            return None if row is None else ReadMark(state=member_state(row[0], row[1], row[2]), moved=False)

        return await self.db.transaction(mark)

    async def set_muted(self, conversation_id: int, user_id: int, muted: bool) -> MemberState | None:
        row = await self.db.run(
            lambda c: c.execute(
                "UPDATE memberships SET muted = ? WHERE conversation_id = ? AND user_id = ?"
                " RETURNING read_seq, muted, role",
                (int(muted), conversation_id, user_id),
            ).fetchone()
        )
        return member_state(row[0], row[1], row[2]) if row else None

    async def init_read_positions(self, user_id: int, positions: Mapping[int, int]) -> None:
        if not positions:
            return
        await self.db.transaction(
            lambda c: c.executemany(
                "UPDATE memberships SET read_seq = ? WHERE conversation_id = ? AND user_id = ? AND read_seq IS NULL",
                [(seq, conversation_id, user_id) for conversation_id, seq in sorted(positions.items())],
            )
        )

    # -- roles and channel administration (issue 12) ------------------------

    async def roles_of(self, user_id: int, conversation_ids: Sequence[int]) -> dict[int, Role]:
        distinct = sorted(set(conversation_ids))
        if not distinct:
            return {}
        sql = (
            "SELECT conversation_id, role FROM memberships"
            f" WHERE user_id = ? AND conversation_id IN ({','.join('?' * len(distinct))})"
        )
        rows = await self.db.run(lambda c: c.execute(sql, (user_id, *distinct)).fetchall())
        return {conversation_id: role for conversation_id, role in rows}

    async def member_roles(self, conversation_id: int) -> dict[int, Role]:
        rows = await self.db.run(
            lambda c: c.execute(
                "SELECT user_id, role FROM memberships WHERE conversation_id = ? ORDER BY user_id", (conversation_id,)
            ).fetchall()
        )
        return {user_id: role for user_id, role in rows}

    async def update_channel(
        self, conversation_id: int, actor_id: int, update: ChannelEdit, check: AdminCheck
    ) -> ConversationRecord | None:
        def update_(c: sqlite3.Connection) -> ConversationRecord | None:
            record = _checked(c, conversation_id, actor_id, 0, check)
            if record is None:
                return None
            pairs = channel_assignments(update)
            if not pairs:
                return record
            row = c.execute(
                f"UPDATE conversations SET {', '.join(f'{column} = ?' for column, _ in pairs)}"
                f" WHERE id = ? RETURNING {CONVERSATION_FIELDS}",
                (*(value for _, value in pairs), conversation_id),
            ).fetchone()
            return conversation_record(row)

        try:
            return await self.db.transaction(update_)
        except sqlite3.IntegrityError:
            raise Conflict(f"channel name {update.name!r} is taken") from None

    async def set_role(self, conversation_id: int, actor_id: int, user_id: int, role: Role, check: AdminCheck) -> bool:
        def set_(c: sqlite3.Connection) -> bool:
            if _checked(c, conversation_id, actor_id, user_id, check) is None:
                return False
            cur = c.execute(
                "UPDATE memberships SET role = ? WHERE conversation_id = ? AND user_id = ? AND role != ?",
                (role, conversation_id, user_id, role),
            )
            return cur.rowcount == 1

        return await self.db.transaction(set_)

    async def remove_member_as(self, conversation_id: int, actor_id: int, user_id: int, check: AdminCheck) -> bool:
        def remove(c: sqlite3.Connection) -> bool:
            if _checked(c, conversation_id, actor_id, user_id, check) is None:
                return False
            cur = c.execute(
                "DELETE FROM memberships WHERE conversation_id = ? AND user_id = ?", (conversation_id, user_id)
            )
            return cur.rowcount == 1

        return await self.db.transaction(remove)

    async def rename_dm(self, conversation_id: int, name: str | None) -> ConversationRecord | None:
        row = await self.db.transaction(
            lambda c: c.execute(
                f"UPDATE conversations SET dm_name = ? WHERE id = ? AND kind = 'dm' RETURNING {CONVERSATION_FIELDS}",
                (name, conversation_id),
            ).fetchone()
        )
        return conversation_record(row) if row else None

    async def conversations_after(
        self, after_id: int, limit: int, *, overridden_only: bool
    ) -> list[ConversationRecord]:
        where = "c.id > ?" + (_OVERRIDDEN if overridden_only else "")
        rows = await self.db.run(
            lambda c: c.execute(
                f"SELECT {CONVERSATION_COLUMNS} FROM conversations c WHERE {where} ORDER BY c.id LIMIT ?",
                (after_id, limit),
            ).fetchall()
        )
        return [conversation_record(r) for r in rows]

    # -- administration (issue 15) --------------------------------------------

    async def set_disabled(self, user_id: int, disabled: bool, now: int) -> UserRecord | None:
        if disabled:
            sql = (
                "UPDATE users SET disabled_at = coalesce(disabled_at, :now),"
                " token_generation = token_generation + (disabled_at IS NULL) WHERE id = :id"
            )
        else:
            sql = "UPDATE users SET disabled_at = NULL WHERE id = :id AND deleted_at IS NULL"

        def set_(c: sqlite3.Connection) -> UserRecord | None:
            c.execute(sql, {"id": user_id, "now": now})
            return _user(c, user_id)

        return await self.db.transaction(set_)

    async def disabled_since(self, ts: int, limit: int = 1000) -> list[UserRecord]:
        rows = await self.db.run(
            lambda c: c.execute(
                f"SELECT {USER_COLUMNS} FROM users INDEXED BY users_disabled"
                " WHERE disabled_at >= ? ORDER BY disabled_at, id LIMIT ?",
                (ts, limit),
            ).fetchall()
        )
        return [user_record(r) for r in rows]

    async def set_workspace_role(
        self, user_id: int, role: WorkspaceRole, *, keep_an_admin: bool = False
    ) -> UserRecord | None:
        def set_(c: sqlite3.Connection) -> UserRecord | None:
            # BEGIN IMMEDIATE: the one writer, so no other change slips between the count and the update.
            user = _user(c, user_id)
            if user is None or user.deleted_at is not None:
                return None
            if keep_an_admin and role != "admin" and user.workspace_role == "admin":
                (others,) = c.execute(
                    "SELECT count(*) FROM users INDEXED BY users_workspace_admins"
                    " WHERE workspace_role = 'admin' AND id != ? AND disabled_at IS NULL",
                    (user_id,),
                ).fetchone()
                if others == 0:
                    raise LastAdmin(f"user {user_id} is the workspace's last active admin")
            c.execute("UPDATE users SET workspace_role = ? WHERE id = ?", (role, user_id))
            return _user(c, user_id)

        return await self.db.transaction(set_)

    async def workspace_admins(self) -> list[UserRecord]:
        rows = await self.db.run(
            lambda c: c.execute(
                f"SELECT {USER_COLUMNS} FROM users WHERE workspace_role = 'admin' ORDER BY id"
            ).fetchall()
        )
        return [user_record(r) for r in rows]

    async def tombstone_user(self, now: int) -> UserRecord:
        def get_or_create(c: sqlite3.Connection) -> UserRecord:
            c.execute(_INSERT_TOMBSTONE_SQL, tombstone_values(now))
            row = c.execute(f"SELECT {USER_COLUMNS} FROM users WHERE username = ?", (TOMBSTONE_USERNAME,)).fetchone()
            return user_record(row)

        user = await self.db.transaction(get_or_create)
        if user.deleted_at is None:
            raise Conflict(f"username {TOMBSTONE_USERNAME!r} is held by a live account ({user.id})")
        return user

    async def delete_user(self, user_id: int, now: int) -> UserRecord | None:
        def delete(c: sqlite3.Connection) -> UserRecord | None:
            user = _user(c, user_id)
            if user is None or user.deleted_at is not None:
                return user
            c.execute(_HAND_OVER_OWNERSHIP_SQL, (user_id,))
            c.execute("DELETE FROM memberships WHERE user_id = ?", (user_id,))
            c.execute(_DELETE_USER_SQL, deleted_user_values(user_id, now))
            return _user(c, user_id)

        try:
            return await self.db.transaction(delete)
        except sqlite3.IntegrityError:  # an account from before issue 15 registered as deleted-<id>
            raise Conflict(f"username {deleted_username(user_id)!r} is taken") from None

    async def record_audit(self, actor_id: int | None, action: str, target: Mapping[str, Any], now: int) -> AuditEntry:
        row = await self.db.transaction(
            lambda c: c.execute(
                f"INSERT INTO audit_log (ts, actor_id, action, target) VALUES (?, ?, ?, ?) RETURNING {AUDIT_COLUMNS}",
                (now, actor_id, action, audit_target(target)),
            ).fetchone()
        )
        return audit_record(row)

    async def audit_entries(self, after_id: int, limit: int) -> list[AuditEntry]:
        rows = await self.db.run(
            lambda c: c.execute(
                f"SELECT {AUDIT_COLUMNS} FROM audit_log WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit)
            ).fetchall()
        )
        return [audit_record(r) for r in rows]


_OVERRIDDEN = " AND (c.retention_max_age_days > 0 OR c.retention_max_messages > 0)"
"""The channels with a retention override (the partial index conversations_retention)."""


def _user(c: sqlite3.Connection, user_id: int) -> UserRecord | None:
    row = c.execute(f"SELECT {USER_COLUMNS} FROM users WHERE id = ?", (user_id,)).fetchone()
    return user_record(row) if row else None


_INSERT_TOMBSTONE_SQL = TOMBSTONE_SQL.format("?1", "?2", "?3", "?4", "?5")
_HAND_OVER_OWNERSHIP_SQL = HAND_OVER_OWNERSHIP_SQL.format("?1")
_DELETE_USER_SQL = DELETE_USER_SQL.format("?1", "?2", "?3", "?4", "?5", "?6")


def _checked(
    c: sqlite3.Connection, conversation_id: int, actor_id: int, user_id: int, check: AdminCheck
) -> ConversationRecord | None:
    """The conversation once ``check`` passed on it and the standing, read in the caller's
    transaction (BEGIN IMMEDIATE: the one writer, so nothing changes them before it commits)."""
    row = c.execute(f"SELECT {CONVERSATION_FIELDS} FROM conversations WHERE id = ?", (conversation_id,)).fetchone()
    if row is None:
        return None
    record = conversation_record(row)
    check(record, standing(c.execute(_STANDING_SQL, (conversation_id, actor_id, user_id)).fetchone()))
    return record


_STANDING_SQL = STANDING_SQL.format("?1", "?2", "?3")


class SqliteMessageLog:
    name = "sqlite"
    gapless = True
    ordered_appends = True

    def __init__(
        self,
        db: SqliteDatabase,
        max_batch: int = 256,
        *,
        index_idle_seconds: float = INDEX_IDLE_SECONDS,
        index_max_pending: int = INDEX_MAX_PENDING,
    ) -> None:
        self.db = db
        # One group: the file's one writer commits whatever queued meanwhile, every conversation together.
        self._batches = GroupCommit(self.name, self._store_batch, key=one_group, max_batch=max_batch)
        self.index = DeferredIndex(db.run, idle=index_idle_seconds, max_pending=index_max_pending)
        """The search index's transactions, off the send path (storage/sqlite_index.py)."""

    async def ping(self) -> None:
        await self.db.ping()

    async def close(self) -> None:
        await self._batches.close()
        await self.index.close()

    async def append(self, message: NewMessage, deadline: float | None = None) -> Appended:
        return await self._batches.append(message, deadline)

    async def _store_batch(self, batch: list[NewMessage]) -> list[Appended]:
        """The whole batch in one transaction: one fsync for all of it; its index entries later."""
        outcomes = await self.db.transaction(functools.partial(_append_batch, batch=batch))
        self.index.added(sum(1 for o in outcomes if not o.duplicate))
        return outcomes

    async def get_message(self, conversation_id: int, message_id: str) -> MessageRecord | None:
        row = await self.db.run(lambda c: _message_row(c, conversation_id, message_id))
        return message_record(row) if row else None

    async def change_message(
        self, conversation_id: int, message_id: str, change: MessageChange
    ) -> tuple[MessageRecord, bool] | None:
        # ``change`` runs on the database thread inside the transaction, which
        # is what serialises it with every other write: it is pure by contract,
        # and whatever it raises rolls the transaction back and reaches the caller.
        return await self.db.transaction(
            functools.partial(_change_one, conversation_id=conversation_id, message_id=message_id, change=change)
        )

    async def history(
        self,
        conversation_id: int,
        *,
        before: int | None,
        after: int | None,
        limit: int,
        order: HistoryOrder,
        thread_root_id: str | None = None,
        include_replies: bool = True,
    ) -> list[MessageRecord]:
        read = HistoryRead(
            conversation_id=conversation_id,
            before=before,
            after=after,
            limit=limit,
            order=order,
            thread_root_id=thread_root_id,
            include_replies=include_replies,
        )
        found = await self.db.run(functools.partial(_history, read=read))
        return [message_record(r) for r in found]

    async def history_many(self, reads: Sequence[HistoryRead]) -> dict[HistoryRead, list[MessageRecord]]:
        distinct = list(dict.fromkeys(reads))
        if not distinct:
            return {}
        # One thread hop for the batch: each read is an index range of its own.
        found = await self.db.run(lambda c: [_history(c, read) for read in distinct])
        return {read: [message_record(r) for r in rows] for read, rows in zip(distinct, found, strict=True)}

    async def pins(self, conversation_id: int, limit: int) -> list[MessageRecord]:
        found = await self.db.run(lambda c: c.execute(PINS_SQL, (conversation_id, limit)).fetchall())
        return [message_record(r) for r in found]

    async def changes(self, conversation_id: int, *, after_rev: int, limit: int) -> ChangesPage:
        return await self.db.run(
            functools.partial(_changes, conversation_id=conversation_id, after_rev=after_rev, limit=limit)
        )

    async def heads(self, conversation_ids: Sequence[int]) -> dict[int, Head]:
        rows = await self.db.fetch_for_ids(
            "SELECT conversation_id, last_seq, last_rev, purged_seq FROM conversation_seq"
            " WHERE conversation_id IN ({ids})",
            conversation_ids,
        )
        return {
            conversation_id: Head(last_seq=seq, last_rev=rev, oldest_seq=purged + 1)
            for conversation_id, seq, rev, purged in rows
        }

    async def unread(self, user_id: int, positions: Mapping[int, int | None], cap: int) -> dict[int, Unread]:
        if not positions:
            return {}
        ask = UnreadAsk(user_id=user_id, positions=tuple(sorted(positions.items())))
        return (await self.db.run(functools.partial(_unread, asks=[ask], cap=cap)))[ask]

    async def unread_many(self, asks: Sequence[UnreadAsk], cap: int) -> dict[UnreadAsk, dict[int, Unread]]:
        if not asks:
            return {}
        return await self.db.run(functools.partial(_unread, asks=list(dict.fromkeys(asks)), cap=cap))

    async def search(self, query: MessageQuery) -> list[SearchHit]:
        # Read your writes: the messages acknowledged before the search are
        # indexed first (a search is rare; the index transaction is cheap).
        self.index.caught_up()
        return await self.db.run(functools.partial(_index_and_search, query=query))

    async def purge(
        self, conversation_id: int, *, before_ts: int | None, keep_last: int | None, limit: int
    ) -> PurgeResult:
        # One short write transaction per batch: appends and changes queue
        # behind it on the one writer for as long as ``limit`` rows take.
        return await self.db.transaction(
            functools.partial(
                _purge, conversation_id=conversation_id, before_ts=before_ts, keep_last=keep_last, limit=limit
            )
        )

    async def reattribute(self, sender_id: int, to_id: int, limit: int) -> int:
        # No index leads with sender_id (one would cost every send): each call
        # scans for its batch, an admin's one-off cost (docs/operations.md).
        cur = await self.db.transaction(
            lambda c: c.execute(
                "UPDATE messages SET sender_id = :to, client_msg_id = id WHERE (conversation_id, seq) IN"
                " (SELECT conversation_id, seq FROM messages WHERE sender_id = :sender LIMIT :limit)",
                {"to": to_id, "sender": sender_id, "limit": limit},
            )
        )
        moved: int = cur.rowcount
        return moved


UNREAD_SQL = (
    "SELECT count(*), coalesce(sum(mentioned), 0) FROM ("
    " SELECT mention_all IS NOT NULL OR (mentions <> '[]'"
    " AND instr(',' || trim(mentions, '[]') || ',', :needle) > 0) AS mentioned"
    " FROM messages INDEXED BY messages_unread"
    " WHERE conversation_id = :conversation AND seq > :read_seq AND sender_id <> :user"
    " AND deleted = 0 AND (thread_root_id IS NULL OR also_in_channel = 1)"
    " LIMIT :cap)"
)
"""One conversation's unread and mention counts (MessageLog.unread): a range of the
partial index messages_unread after the read position, at most ``cap`` rows of it.
A mention is found by a string search (``:needle``, storage.rows.mention_needle):
json_each per row made a 500-conversation count twice as slow."""


def _unread(c: sqlite3.Connection, asks: Sequence[UnreadAsk], cap: int) -> dict[UnreadAsk, dict[int, Unread]]:
    """Every ask's heads and counts on one thread hop, in one read transaction:
    the heads (one select for all the asks' conversations) and the counts are one snapshot."""
    ids = sorted({conversation_id for ask in asks for conversation_id, _ in ask.positions})
    with read_snapshot(c):
        heads: dict[int, Head] = {}
        for at in range(0, len(ids), SQLITE_IDS_PER_STATEMENT):
            chunk = ids[at : at + SQLITE_IDS_PER_STATEMENT]
            for conversation_id, last_seq, last_rev, purged_seq in c.execute(
                "SELECT conversation_id, last_seq, last_rev, purged_seq FROM conversation_seq"
                f" WHERE conversation_id IN ({','.join('?' * len(chunk))})",
                chunk,
            ):
                heads[conversation_id] = Head(last_seq=last_seq, last_rev=last_rev, oldest_seq=purged_seq + 1)
        result: dict[UnreadAsk, dict[int, Unread]] = {}
        for ask in asks:
            user_id = ask.user_id
            found: dict[int, Unread] = {}
            for conversation_id, read_seq in ask.positions:
                head = heads.get(conversation_id)
                if head is None:
                    continue
                unread = mentioned = 0
                if read_seq is not None and read_seq < head.last_seq:  # nothing to count at the head: no read
                    params = {
                        "user": user_id,
                        "needle": mention_needle(user_id),
                        "conversation": conversation_id,
                        "read_seq": read_seq,
                        "cap": cap,
                    }
                    unread, mentioned = c.execute(UNREAD_SQL, params).fetchone()
                found[conversation_id] = Unread(head=head, unread_count=unread, mention_count=mentioned)
            result[ask] = found
    return result


SQLITE_IDS_PER_STATEMENT = 30_000
"""Bound parameters per ``IN (...)`` of a batched read (SQLite's limit is 32,766 since 3.32)."""


PINS_SQL = (
    f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id = ? AND pinned_ts IS NOT NULL"
    " ORDER BY pinned_ts DESC, seq DESC LIMIT ?"
)
"""(conversation id, limit): the pinned messages, latest pin first (index messages_pins)."""
CHANGES_SQL = f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id = ? AND rev > ? ORDER BY rev LIMIT ?"
"""(conversation id, after rev, limit): the changes page (index messages_rev)."""


def _history(c: sqlite3.Connection, read: HistoryRead) -> list[Any]:
    """One ``history`` read's rows (``MessageLog.history``'s arguments as a ``HistoryRead``)."""
    sql = _history_sql(read.order, thread=read.thread_root_id is not None, include_replies=read.include_replies)
    thread = () if read.thread_root_id is None else (read.thread_root_id,)
    return c.execute(sql, (read.conversation_id, *seq_range(read.before, read.after), *thread, read.limit)).fetchall()


@functools.cache
def _history_sql(order: HistoryOrder, *, thread: bool, include_replies: bool) -> str:
    """The history read of one shape; its parameters, in the order they appear:
    conversation id, after, before, the thread root's id when asked for, limit."""
    return history_sql(
        order,
        ("?", "?", "?", "?"),
        thread_root_id="?" if thread else None,
        include_replies=include_replies,
        thread_index_hint="INDEXED BY messages_thread",
    )


_STATE_ASSIGNMENTS = ", ".join(f"{column} = ?" for column in MESSAGE_STATE_COLUMNS)


def _message_row(c: sqlite3.Connection, conversation_id: int, message_id: str) -> Any:
    return c.execute(
        f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id = ? AND id = ?", (conversation_id, message_id)
    ).fetchone()


def _next_rev(c: sqlite3.Connection, conversation_id: int) -> int:
    """Take the conversation's next revision (inside the caller's transaction)."""
    row = c.execute(
        "UPDATE conversation_seq SET last_rev = last_rev + 1 WHERE conversation_id = ? RETURNING last_rev",
        (conversation_id,),
    ).fetchone()
    if row is None:  # every append creates the counter before its message, so a message implies one
        raise StoreUnavailable("sqlite", f"conversation {conversation_id} has messages but no counter")
    rev: int = row[0]
    return rev


def _store_state(c: sqlite3.Connection, record: MessageRecord) -> None:
    c.execute(
        f"UPDATE messages SET {_STATE_ASSIGNMENTS} WHERE conversation_id = ? AND seq = ?",
        (*message_state_values(record), record.conversation_id, record.seq),
    )


def _change_one(
    c: sqlite3.Connection, conversation_id: int, message_id: str, change: MessageChange
) -> tuple[MessageRecord, bool] | None:
    row = _message_row(c, conversation_id, message_id)
    if row is None:
        return None
    current = message_record(row)
    changed = change(current)
    if changed is None:
        return current, False
    stored = msgspec.structs.replace(changed, rev=_next_rev(c, conversation_id))
    _store_state(c, stored)
    if (stored.text, stored.deleted) != (current.text, current.deleted):
        _reindex(c, current, stored)
    return stored, True


def _changes(c: sqlite3.Connection, conversation_id: int, after_rev: int, limit: int) -> ChangesPage:
    # One read transaction, so the horizon and the page are one snapshot even
    # when another process writes the file between the two reads.
    with read_snapshot(c):
        rows = c.execute(CHANGES_SQL, (conversation_id, after_rev, limit)).fetchall()
        head = c.execute(
            "SELECT last_rev, purged_seq FROM conversation_seq WHERE conversation_id = ?", (conversation_id,)
        ).fetchone()
    return ChangesPage(
        messages=[message_record(r) for r in rows],
        horizon=head[0] if head else 0,
        oldest_seq=head[1] + 1 if head else 1,
    )


def _append_batch(c: sqlite3.Connection, batch: list[NewMessage]) -> list[Appended]:
    indexed: list[tuple[int, str]] = []
    rowids = _BatchRowids(c)
    outcomes = [_append_one(c, m, indexed, rowids) for m in batch]
    # The index transaction indexes the batch later (storage/sqlite_index.py),
    # except a message at or below the watermark (an imported old message, a
    # clock stepped back), which it would never reach: that one now.
    through = watermark(c)
    now = sorted((rowid, fts5_text(text)) for rowid, text in indexed if rowid <= through)
    if now:
        # Last, in one statement, in rowid order: FTS5 writes its pending words
        # out as a new segment whenever a later statement of the transaction
        # opens a statement savepoint (any INSERT or UPDATE of an ordinary
        # table that may abort does) or a rowid is below the previous one.
        c.executemany(INDEX_MESSAGE_SQL, now)
    return outcomes


def _append_one(c: sqlite3.Connection, m: NewMessage, indexed: list[tuple[int, str]], rowids: _BatchRowids) -> Appended:
    """Store ``m`` unless it is a resend; its index entry (search rowid, text)
    goes onto ``indexed``, which the caller indexes after the batch's rows or leaves to the index transaction;
    ``rowids`` is the batch's ``_next_search_rowid`` memory."""
    row = c.execute(
        f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id = ? AND sender_id = ? AND client_msg_id = ?",
        (m.conversation_id, m.sender_id, m.client_msg_id),
    ).fetchone()
    if row:
        return Appended(record=message_record(row), duplicate=True)
    seq, rev = c.execute(
        "INSERT INTO conversation_seq (conversation_id, last_seq, last_rev) VALUES (?, 1, 1)"
        " ON CONFLICT (conversation_id) DO UPDATE SET last_seq = last_seq + 1, last_rev = last_rev + 1"
        " RETURNING last_seq, last_rev",
        (m.conversation_id,),
    ).fetchone()
    record = new_message_record(m, seq, rev)
    search_rowid = _next_search_rowid(c, m.ts, rowids)
    c.execute(_INSERT_MESSAGE_SQL, (*message_values(record), search_rowid))
    indexed.append((search_rowid, record.text))
    root = None if m.thread_root_id is None else _add_reply_to_root(c, m.thread_root_id, record)
    return Appended(record=record, duplicate=False, root=root)


_MESSAGE_MARKS = ", ".join("?" * len(MESSAGE_COLUMNS.split(",")))
_INSERT_MESSAGE_SQL = f"INSERT INTO messages ({MESSAGE_COLUMNS}, search_rowid) VALUES ({_MESSAGE_MARKS}, ?)"


def _add_reply_to_root(c: sqlite3.Connection, root_id: str, reply: MessageRecord) -> MessageRecord | None:
    """The reply's root updated by it under a revision of its own, in the reply's
    transaction; None when the root is not stored in the conversation."""
    row = _message_row(c, reply.conversation_id, root_id)
    if row is None:
        return None
    root = msgspec.structs.replace(with_reply(message_record(row), reply), rev=_next_rev(c, reply.conversation_id))
    _store_state(c, root)
    return root


# -- retention (RETENTION_MIGRATION) --------------------------------------------


def _purge(
    c: sqlite3.Connection, conversation_id: int, before_ts: int | None, keep_last: int | None, limit: int
) -> PurgeResult:
    """MessageLog.purge in the caller's write transaction: the expired prefix's
    words out of the index (FTS5 ``delete`` takes what was indexed; a message
    above the watermark was not), its rows out, the counter's ``purged_seq`` up
    to its last seq."""
    head = c.execute(
        "SELECT last_seq, purged_seq FROM conversation_seq WHERE conversation_id = ?", (conversation_id,)
    ).fetchone()
    if head is None:
        return PurgeResult(purged=0, oldest_seq=1, more=False)
    last_seq, purged_seq = head
    rows = c.execute(
        "SELECT seq, ts, search_rowid, text, deleted FROM messages WHERE conversation_id = ? ORDER BY seq LIMIT ?",
        (conversation_id, limit + 1),
    ).fetchall()
    # Gapless, and only the purge removes rows: the stored seqs are purged_seq+1 .. last_seq.
    expired = expired_prefix([(seq, ts) for seq, ts, *_ in rows], count_below(last_seq, keep_last), before_ts)
    gone = rows[: min(expired, limit)]
    if not gone:
        return PurgeResult(purged=0, oldest_seq=purged_seq + 1, more=False)
    through = watermark(c)
    c.executemany(
        UNINDEX_MESSAGE_SQL,
        [(rowid, fts5_text(text)) for _, _, rowid, text, deleted in gone if not deleted and rowid <= through],
    )
    last = gone[-1][0]
    c.execute("DELETE FROM messages WHERE conversation_id = ? AND seq <= ?", (conversation_id, last))
    c.execute("UPDATE conversation_seq SET purged_seq = ? WHERE conversation_id = ?", (last, conversation_id))
    return PurgeResult(purged=len(gone), oldest_seq=last + 1, more=expired > limit)


# -- message search (SEARCH_MIGRATION) -----------------------------------------


class _BatchRowids:
    """A batch's memory for ``_next_search_rowid``: the largest search rowid
    stored before the batch, and the rowid the batch last took per millisecond.
    The batch holds the write lock, so nobody else takes one meanwhile."""

    __slots__ = ("last", "top")

    def __init__(self, c: sqlite3.Connection) -> None:
        (top,) = c.execute("SELECT max(search_rowid) FROM messages").fetchone()
        self.top: int = -1 if top is None else int(top)
        self.last: dict[int, int] = {}


def _next_search_rowid(c: sqlite3.Connection, ts: int, rowids: _BatchRowids) -> int:
    """A new message's search rowid: the next free one of its millisecond.

    A millisecond after every stored rowid (time moving on: nearly every
    message) starts at its base without a probe; an index probe for the first
    message of an older millisecond in the batch; the batch's later ones of a
    millisecond follow from ``rowids.last``."""
    base = sqlite_rowid_base(ts)
    last = rowids.last.get(base)
    if last is not None:
        rowid = last + 1
    elif base > rowids.top:
        rowid = base
    else:
        row = c.execute(
            "SELECT max(search_rowid) FROM messages WHERE search_rowid >= ? AND search_rowid < ?",
            (base, base + (1 << SQLITE_ROWID_TS_SHIFT)),
        ).fetchone()
        rowid = base if row[0] is None else int(row[0]) + 1
    rowids.last[base] = rowid
    return rowid


def _reindex(c: sqlite3.Connection, before: MessageRecord, after: MessageRecord) -> None:
    """Replace a changed message's words in the index (in the change's transaction):
    the old ones out (FTS5 ``delete`` takes exactly what was indexed), the new ones
    in unless it is now a tombstone. A message above the watermark is not in the
    index yet: the index transaction will read it as it is then."""
    (search_rowid,) = c.execute(
        "SELECT search_rowid FROM messages WHERE conversation_id = ? AND seq = ?", (after.conversation_id, after.seq)
    ).fetchone()
    if search_rowid > watermark(c):
        return
    if not before.deleted:
        c.execute(UNINDEX_MESSAGE_SQL, (search_rowid, fts5_text(before.text)))
    if not after.deleted:
        c.execute(INDEX_MESSAGE_SQL, (search_rowid, fts5_text(after.text)))


_SEARCH_FILTERS = (
    " WHERE message_search MATCH :match AND message_search.rowid >= :low AND message_search.rowid < :high"
    " AND m.conversation_id IN (SELECT value FROM json_each(:conversations)) AND m.deleted = 0"
    " AND m.ts >= :after_ts AND m.ts < :before_ts AND (:sender IS NULL OR m.sender_id = :sender)"
    " AND (:threads_only = 0 OR m.thread_root_id IS NOT NULL)"
)
_SEARCH_COLUMNS = (
    f"SELECT {', '.join(f'm.{c.strip()}' for c in MESSAGE_COLUMNS.split(','))}, message_search.rowid AS hit"
)
_SEARCH_TABLES = (
    " FROM message_search CROSS JOIN messages AS m INDEXED BY messages_search_rowid"
    " ON m.search_rowid = message_search.rowid"
)
_SEARCH_FROM = _SEARCH_COLUMNS + _SEARCH_TABLES
SEARCH_NEWEST_SQL = f"{_SEARCH_FROM}{_SEARCH_FILTERS} ORDER BY message_search.rowid DESC LIMIT :limit"
"""``newest``: the index read backwards from the cursor (or the date range's
end), each hit joined to its row by ``messages_search_rowid`` and filtered
(membership, sender, thread), until a page is found."""
SEARCH_RELEVANCE_SQL = (
    f"SELECT * FROM ({_SEARCH_COLUMNS}, message_search.rank AS score{_SEARCH_TABLES}{_SEARCH_FILTERS}"
    " ORDER BY message_search.rowid DESC LIMIT :window) ORDER BY score, hit DESC LIMIT :limit OFFSET :offset"
)
"""``relevance``: the newest ``window`` matches (read as ``newest`` reads them),
by FTS5's bm25 rank (fewer, rarer words in a shorter text first), then newest."""


def _index_and_search(c: sqlite3.Connection, query: MessageQuery) -> list[SearchHit]:
    """The index transaction when messages wait for it (any process's), then the search."""
    index_transaction(c)
    return _search(c, query)


def _search(c: sqlite3.Connection, query: MessageQuery) -> list[SearchHit]:
    low = sqlite_rowid_base(query.after_ts) if query.after_ts is not None else 0
    high = sqlite_rowid_base(query.before_ts) if query.before_ts is not None else NO_SEQ_ABOVE
    if query.order == "newest" and query.after is not None:
        high = min(high, sqlite_position(query.after))
    params = {
        "match": fts5_match(query.terms),
        "low": low,
        "high": high,
        "conversations": json.dumps(sorted(set(query.conversation_ids))),
        "after_ts": NO_SEQ_BELOW if query.after_ts is None else query.after_ts,
        "before_ts": NO_SEQ_ABOVE if query.before_ts is None else query.before_ts,
        "sender": query.sender_id,
        "threads_only": int(query.threads_only),
        "limit": query.limit,
        "offset": query.offset,
        "window": query.window,
    }
    sql = SEARCH_NEWEST_SQL if query.order == "newest" else SEARCH_RELEVANCE_SQL
    rows = c.execute(sql, params).fetchall()
    return [SearchHit(record=message_record(r), position=str(r[_WIDTH])) for r in rows]


_WIDTH = len(MESSAGE_COLUMNS.split(","))
"""How many columns a message row has; a statement's other columns come after them."""


async def reindex_sqlite(db: SqliteDatabase) -> int:
    """Rebuild the search index from ``messages`` (``hubbub reindex``); how many messages it holds now."""

    def rebuild(c: sqlite3.Connection) -> int:
        c.execute("INSERT INTO message_search (message_search) VALUES ('delete-all')")
        cur = c.execute(
            "INSERT INTO message_search (rowid, text)"
            " SELECT search_rowid, hubbub_index_text(text) FROM messages WHERE deleted = 0"
        )
        count: int = cur.rowcount
        # Every stored message is indexed now (storage/sqlite_index.py).
        c.execute("UPDATE search_indexed SET through = (SELECT coalesce(max(search_rowid), 0) FROM messages)")
        # One segment: the deleted messages' words, still in older segments, are gone from the file.
        c.execute("INSERT INTO message_search (message_search) VALUES ('optimize')")
        return count

    return await db.transaction(rebuild)


# mypy proves each backend implements its interface (storage/base.py).
_directory: type[Directory] = SqliteDirectory
_messages: type[MessageLog] = SqliteMessageLog
