"""PostgreSQL backend (asyncpg): the directory, and optionally the message log.

Versioned SQL migrations live in storage/migrations/postgres/ and are applied
under a session advisory lock, so several instances starting at once apply
each migration exactly once. Browsing public channels and searching users, which tolerate replica lag, may go
to a read replica (storage/replica.py; everything else reads the primary, docs/storage.md).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Mapping, Sequence
from importlib import resources
from typing import TYPE_CHECKING, Any, TypeVar

import asyncpg
import msgspec
from asyncpg import Record
from asyncpg.pool import PoolConnectionProxy

from hubbub.protocol.search import index_text
from hubbub.storage.base import AdminCheck, Directory, HistoryOrder, MessageChange, MessageLog
from hubbub.storage.batching import GroupCommit, Stored, by_conversation
from hubbub.storage.errors import Conflict, LastAdmin, StoreUnavailable, describe
from hubbub.storage.pool_usage import PoolUsage, asyncpg_usage, counted_acquire
from hubbub.storage.records import (
    REPLIERS_KEPT,
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
from hubbub.storage.replica import ReplicaRoute
from hubbub.storage.rows import (
    CONVERSATION_COLUMNS,
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
    ids_json,
    member_state,
    membership_record,
    mention_needle,
    message_record,
    message_state_values,
    new_message_ids,
    prefix_bounds,
    profile_assignments,
    search_key,
    seq_range,
    standing,
    tombstone_values,
    user_record,
)
from hubbub.storage.search_sql import parse_ts_position, ts_position, tsquery

T = TypeVar("T")
if TYPE_CHECKING:
    Conn = PoolConnectionProxy[Record]  # generic only in the stubs
else:
    Conn = PoolConnectionProxy

MIGRATION_LOCK_ID = 0x48554242  # "HUBB": the advisory lock serialising migrations

# Errors that mean "the server or this connection is gone (now)", as opposed
# to a bad query. InternalClientError is here because asyncpg raises it for a
# connection whose server already sent its farewell (pg_terminate_backend, a
# restart): the FATAL message arrives while the connection idles in the pool,
# leaves its protocol in the error-consuming state, and the socket's EOF comes
# a few milliseconds later; a query on it in between fails with "cannot switch
# to state 12; another operation (2) is in progress". The connection is dead,
# not shared: no other operation runs on it.
_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
)
# Interruptions after which a connection's state is unknown: it is terminated, never reused.
_INTERRUPTED: tuple[type[BaseException], ...] = (asyncio.CancelledError, *_CONNECTION_ERRORS)


def migrations() -> list[tuple[str, str]]:
    """(version, sql) of every migration, in order."""
    folder = resources.files("hubbub.storage") / "migrations" / "postgres"
    files = sorted((f for f in folder.iterdir() if f.name.endswith(".sql")), key=lambda f: f.name)
    return [(f.name.removesuffix(".sql"), f.read_text()) for f in files]


async def migrate(dsn: str, timeout: float = 30.0, search_config: str = "simple") -> list[str]:
    """Apply pending migrations, then index the messages stored before search
    (``index_unindexed``: a no-op once done); return the versions applied now."""
    conn = await asyncpg.connect(dsn, timeout=timeout)
    applied_now: list[str] = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_ID)
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version TEXT PRIMARY KEY, applied_at TIMESTAMPTZ"
                " NOT NULL DEFAULT now())"
            )
            done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
            for version, sql in migrations():
                if version in done:
                    continue
                async with conn.transaction():
                    await conn.execute(sql)
                    await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)
                applied_now.append(version)
            await index_unindexed(conn, search_config)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_ID)
    finally:
        await conn.close()
    return applied_now


async def keep_session(conn: object) -> None:
    """The pools' ``reset``: nothing beyond what asyncpg always does on release
    (roll back a transaction left open, drop listener callbacks).

    asyncpg's default reset is a second round trip after every query
    (``SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL``):
    17% of the server's samples in a reconnect storm (BENCHMARKS.md). It undoes
    session state, and no pooled connection here makes any: settings are
    ``SET LOCAL`` inside a transaction (``fetch_search``), the migration's
    advisory lock is taken on ``migrate``'s own connection, retention's purge
    lock (server/retention_lock.py) is unlocked before its pooled connection
    goes back, or that connection is terminated, cursors live inside transactions,
    nothing LISTENs. Code that changes session state on a pooled connection
    must undo it itself (tests/test_postgres_pools.py checks the release)."""


class PostgresPools:
    """The primary pool and, when configured, a read-replica pool with the
    route that sends reads to the primary while the replica fails, and the
    lookup lane: a small pool of the primary for the batched reads and writes
    of server/lookups.py only.

    The lane exists so that ``auth`` never queues behind the requests it
    precedes: in a reconnect storm thousands of catch-up requests wait for the
    primary pool, and a batch of 500 authentications waiting behind them timed
    out all 500 at once (issue 13). There is at most one batch in flight per
    kind of lookup (``auth``'s sessions, presence's member counts, the catch-up's
    memberships, unread counts, public channels, heads and history pages), each
    one short statement, so a batch waits on a pool of two for at most a few others."""

    def __init__(
        self,
        primary: asyncpg.Pool,
        replica: asyncpg.Pool | None,
        replica_route: ReplicaRoute | None = None,
        *,
        lookups: asyncpg.Pool | None = None,
    ) -> None:
        self.primary = primary
        self.replica = replica or primary
        self.replica_route = replica_route if replica is not None else None
        self.lookups = lookups or primary

    @classmethod
    async def open(
        cls,
        dsn: str,
        replica_dsn: str | None,
        *,
        min_size: int,
        max_size: int,
        timeout: float,
        replica_timeout: float = 1.0,
        replica_retry: float = 5.0,
        lookup_max: int = 0,
    ) -> PostgresPools:
        """``lookup_max``: the lookup lane's size (0: no lane, the lookups share the primary pool)."""

        async def create(target: str, min_size: int = min_size, max_size: int = max_size) -> asyncpg.Pool:
            try:
                pool = await asyncpg.create_pool(
                    target,
                    min_size=min_size,
                    max_size=max_size,
                    reset=keep_session,
                    timeout=timeout,
                    command_timeout=timeout,
                    max_inactive_connection_lifetime=300,
                    # No JIT: every query here is short, and a large listing's
                    # estimate (MessageLog.unread over hundreds of conversations)
                    # crosses jit_above_cost, where compiling took 90 ms of a 30 ms query.
                    server_settings={"jit": "off"},
                )
            except _CONNECTION_ERRORS as exc:
                raise StoreUnavailable("postgres", f"cannot connect: {describe(exc)}") from exc
            if pool is None:
                raise RuntimeError("asyncpg.create_pool returned no pool")
            return pool

        primary = await create(dsn)
        opened = [primary]
        try:
            lookups = await create(dsn, min(min_size, lookup_max), lookup_max) if lookup_max else None
            if lookups is not None:
                opened.append(lookups)
            if not replica_dsn:
                return cls(primary, None, lookups=lookups)
            # start-up fails naming the replica (server/startup.py): leave nothing open
            replica = await create(replica_dsn)
        except BaseException:
            for pool in opened:
                await pool.close()
            raise
        route = ReplicaRoute("postgres", timeout_seconds=replica_timeout, retry_seconds=replica_retry)
        return cls(primary, replica, route, lookups=lookups)

    async def close(self) -> None:
        if self.replica is not self.primary:
            await self.replica.close()
        if self.lookups is not self.primary:
            await self.lookups.close()
        await self.primary.close()

    def usage(self) -> list[PoolUsage]:
        """Every pool's usage, for hubbub_pool_* (``primary``, and ``lookups``, ``replica`` when open)."""
        usage = [asyncpg_usage(self.primary, "primary")]
        if self.lookups is not self.primary:
            usage.append(asyncpg_usage(self.lookups, "lookups"))
        if self.replica is not self.primary:
            usage.append(asyncpg_usage(self.replica, "replica"))
        return usage


async def _run(pool: asyncpg.Pool, fn: Callable[[Conn], Awaitable[T]], *, retry: bool) -> T:
    """Run ``fn`` on a pooled connection, translating store faults to StoreUnavailable.

    Reads retry once, on a fresh connection: after a database restart every
    pooled connection is dead, so a fault expires them all (asyncpg replaces
    expired connections on their next acquire, and closes those in use when
    they are released) instead of retrying on the next dead one. Writes do not
    retry (the first attempt may have committed): they answer unavailable.

    The caller bounds the whole call, retries included (server/guarded.py);
    that bound holds because a connection interrupted mid-query is terminated
    here at once. Left to asyncpg, releasing it would first cancel the query
    on the server, which waits for an answer a frozen server never gives.
    Integrity violations pass through: callers turn them into Conflict.
    """
    attempts = 2 if retry else 1
    for attempt in range(attempts):
        try:
            async with counted_acquire(pool) as conn:
                try:
                    return await fn(conn)
                except _INTERRUPTED:
                    conn.terminate()
                    raise
        except asyncpg.IntegrityConstraintViolationError:
            raise
        except _CONNECTION_ERRORS as exc:
            if not isinstance(exc, TimeoutError):
                # A slow server is not a dead one: only a broken connection
                # condemns its siblings.
                await pool.expire_connections()
            if attempt + 1 == attempts:
                raise StoreUnavailable("postgres", describe(exc)) from exc
        except asyncpg.PostgresError as exc:
            # The server refused the statement: read-only after a failover,
            # disk full, cancelled, serialization failure, bad data. Not the
            # client's doing and not ours to answer `internal`.
            raise StoreUnavailable("postgres", describe(exc)) from exc
    raise AssertionError("unreachable")


SEARCH_USERS_SQL = (
    'WITH by_username AS (SELECT username COLLATE "C" AS k, username COLLATE "C" AS u, username AS name FROM users'
    ' WHERE searchable AND username COLLATE "C" >= $6 AND username COLLATE "C" < $2'
    ' AND (username COLLATE "C" > $3 OR (username COLLATE "C" = $3 AND username COLLATE "C" > $4))'
    ' ORDER BY username COLLATE "C" LIMIT $5),'
    ' by_name AS (SELECT search_name COLLATE "C" AS k, username COLLATE "C" AS u, username AS name FROM users'
    ' WHERE searchable AND search_name COLLATE "C" >= $6 AND search_name COLLATE "C" < $2'
    ' AND NOT (username COLLATE "C" >= $1 AND username COLLATE "C" < $2)'
    ' AND (search_name COLLATE "C" > $3 OR (search_name COLLATE "C" = $3 AND username COLLATE "C" > $4))'
    ' ORDER BY search_name COLLATE "C", username COLLATE "C" LIMIT $5),'
    " page AS (SELECT k, u, name FROM by_username UNION ALL SELECT k, u, name FROM by_name ORDER BY k, u LIMIT $5)"
    f" SELECT {', '.join(f'users.{c}' for c in USER_COLUMNS.split(', '))} FROM page"
    # On name, in the column's own collation: so the join reads the username index.
    " JOIN users ON users.username = page.name ORDER BY page.k, page.u"
)
"""user.search (Directory.search_users), as SQLite's: the first ``limit`` of each of two index
ranges in index order (users_search_username, users_search_name of migration 0005, both in
code point order, COLLATE "C", as SQLite and Python compare; index-only scans once the table
is vacuumed), merged by (matched text, username), then the page's rows by username; ``$6`` is
the larger of the prefix and the cursor's key, where the ranges start (the cursor itself is a
filter, not a row comparison, which PostgreSQL would take as the range's start instead)."""


class PostgresDirectory:
    name = "postgres"

    def __init__(self, pools: PostgresPools) -> None:
        self.pools = pools

    async def _primary(self, fn: Callable[[Conn], Awaitable[T]], *, write: bool = False) -> T:
        return await _run(self.pools.primary, fn, retry=not write)

    async def _lane(self, fn: Callable[[Conn], Awaitable[T]], *, write: bool = False) -> T:
        """On the lookup lane (``PostgresPools.lookups``): the batched calls of server/lookups.py."""
        return await _run(self.pools.lookups, fn, retry=not write)

    async def _replica(self, fn: Callable[[Conn], Awaitable[T]], *, lane: bool = False) -> T:
        """A read that tolerates lag: on the replica, or the primary while the replica fails (storage/replica.py).
        ``lane``: the primary's lookup lane instead of its pool (a batched call of server/lookups.py)."""
        pools = self.pools
        primary = pools.lookups if lane else pools.primary
        route = pools.replica_route
        if route is None:
            return await _run(primary, fn, retry=True)
        return await route.read(lambda: _run(pools.replica, fn, retry=True), lambda: _run(primary, fn, retry=True))

    async def ping(self) -> None:
        await self._primary(lambda c: c.fetchval("SELECT 1"))

    async def close(self) -> None:
        """The pools are shared and closed by storage.factory.Stores."""

    async def create_user(self, username: str, display_name: str, password_hash: str, now: int) -> UserRecord:
        try:
            row = await self._primary(
                lambda c: c.fetchrow(
                    "INSERT INTO users (username, display_name, password_hash, created_at, search_name)"
                    f" VALUES ($1, $2, $3, $4, $5) RETURNING {USER_COLUMNS}",
                    username,
                    display_name,
                    password_hash,
                    now,
                    search_key(display_name),
                ),
                write=True,
            )
        except asyncpg.UniqueViolationError:
            raise Conflict(f"username {username!r} is taken") from None
        if row is None:
            raise RuntimeError(f"INSERT INTO users ... RETURNING gave no row for {username!r}")
        return user_record(row)

    async def get_user(self, user_id: int) -> UserRecord | None:
        row = await self._primary(lambda c: c.fetchrow(f"SELECT {USER_COLUMNS} FROM users WHERE id = $1", user_id))
        return user_record(row) if row else None

    async def get_user_by_username(self, username: str) -> UserRecord | None:
        row = await self._primary(
            lambda c: c.fetchrow(f"SELECT {USER_COLUMNS} FROM users WHERE username = $1", username)
        )
        return user_record(row) if row else None

    async def get_users(self, user_ids: Sequence[int]) -> list[UserRecord]:
        ids = sorted(set(user_ids))
        if not ids:
            return []
        # The primary: dm.open and invites check that users exist, which must see new accounts.
        rows = await self._primary(
            lambda c: c.fetch(f"SELECT {USER_COLUMNS} FROM users WHERE id = ANY($1::bigint[]) ORDER BY id", ids)
        )
        return [user_record(r) for r in rows]

    async def set_last_seen(self, user_id: int, ts: int) -> None:
        await self._primary(
            lambda c: c.execute("UPDATE users SET last_seen_at = $1 WHERE id = $2", ts, user_id), write=True
        )

    async def set_last_seen_many(self, seen: Mapping[int, int]) -> None:
        if not seen:
            return
        ids = sorted(seen)  # one lock order for every batch
        await self._lane(
            lambda c: c.execute(
                "UPDATE users SET last_seen_at = v.ts FROM unnest($1::bigint[], $2::bigint[]) AS v(id, ts)"
                " WHERE users.id = v.id",
                ids,
                [seen[i] for i in ids],
            ),
            write=True,
        )

    async def sessions_of(self, user_ids: Sequence[int]) -> dict[int, UserSession]:
        ids = sorted(set(user_ids))
        if not ids:
            return {}
        # One statement, one round trip: the users and (memberships_by_user, index
        # only) their conversations. The primary: a raised token generation must count.
        rows = await self._lane(
            lambda c: c.fetch(
                f"SELECT {USER_COLUMNS}, ARRAY(SELECT m.conversation_id FROM memberships m"
                " WHERE m.user_id = users.id ORDER BY m.conversation_id) FROM users WHERE id = ANY($1::bigint[])",
                ids,
            )
        )
        return {r[0]: UserSession(user=user_record(r), conversation_ids=tuple(r[-1])) for r in rows}

    async def update_profile(self, user_id: int, update: ProfileUpdate) -> UserRecord | None:
        pairs = profile_assignments(update)
        if not pairs:
            return await self.get_user(user_id)
        assignments = ", ".join(f"{column} = ${n}" for n, (column, _) in enumerate(pairs, start=2))
        return await self._update_user(assignments, [value for _, value in pairs], user_id)

    async def _update_user(self, assignments: str, values: list[Any], user_id: int) -> UserRecord | None:
        """``UPDATE users SET <assignments>`` of user ``$1`` (values from ``$2``), returning the row as stored."""
        sql = f"UPDATE users SET {assignments} WHERE id = $1 RETURNING {USER_COLUMNS}"
        row = await self._primary(lambda c: c.fetchrow(sql, user_id, *values), write=True)
        return user_record(row) if row else None

    async def search_users(self, prefix: str, *, after: SearchPosition | None, limit: int) -> list[UserRecord]:
        low, high = prefix_bounds(prefix.lower())
        key, username = (after.key, after.username) if after is not None else ("", "")
        # The replica: a directory search tolerates its lag.
        start = max(low, key)
        rows = await self._replica(lambda c: c.fetch(SEARCH_USERS_SQL, low, high, key, username, limit, start))
        return [user_record(r) for r in rows]

    # The primary for administration: an operator acts on what was just written.

    async def list_users(self, *, after_id: int, limit: int) -> list[UserRecord]:
        rows = await self._primary(
            lambda c: c.fetch(f"SELECT {USER_COLUMNS} FROM users WHERE id > $1 ORDER BY id LIMIT $2", after_id, limit)
        )
        return [user_record(r) for r in rows]

    async def list_channels(self, *, after_id: int, limit: int) -> list[ConversationRecord]:
        rows = await self._primary(
            lambda c: c.fetch(
                f"SELECT {CONVERSATION_COLUMNS} FROM conversations c"
                " WHERE c.kind = 'channel' AND c.id > $1 ORDER BY c.id LIMIT $2",
                after_id,
                limit,
            )
        )
        return [conversation_record(r) for r in rows]

    async def channel_by_name(self, name: str) -> ConversationRecord | None:
        row = await self._primary(
            lambda c: c.fetchrow(
                f"SELECT {CONVERSATION_COLUMNS} FROM conversations c WHERE c.kind = 'channel' AND c.name = $1", name
            )
        )
        return conversation_record(row) if row else None

    async def contacts_of(self, user_id: int) -> list[int]:
        rows = await self._primary(
            lambda c: c.fetch(
                "SELECT DISTINCT other.user_id FROM memberships mine"
                " JOIN memberships other ON other.conversation_id = mine.conversation_id"
                " WHERE mine.user_id = $1 ORDER BY other.user_id",
                user_id,
            )
        )
        ids = [r[0] for r in rows]
        return ids if user_id in ids else sorted([*ids, user_id])

    async def set_password(self, user_id: int, password_hash: str) -> UserRecord | None:
        return await self._update_user(
            "password_hash = $2, token_generation = token_generation + 1", [password_hash], user_id
        )

    async def end_sessions(self, user_id: int) -> UserRecord | None:
        return await self._update_user("token_generation = token_generation + 1", [], user_id)

    async def create_channel(
        self, name: str, topic: str, private: bool, creator_id: int, now: int
    ) -> ConversationRecord:
        async def insert(c: Conn) -> asyncpg.Record:
            async with c.transaction():
                row = await c.fetchrow(
                    "INSERT INTO conversations AS c (kind, name, topic, private, created_by, created_at)"
                    f" VALUES ('channel', $1, $2, $3, $4, $5) RETURNING {CONVERSATION_COLUMNS}",
                    name,
                    topic,
                    private,
                    creator_id,
                    now,
                )
                if row is None:
                    raise RuntimeError(f"INSERT INTO conversations ... RETURNING gave no row for channel {name!r}")
                await c.execute(
                    "INSERT INTO memberships (conversation_id, user_id, joined_at, read_seq, role)"
                    " VALUES ($1, $2, $3, 0, 'owner')",
                    row["id"],
                    creator_id,
                    now,
                )
                return row

        try:
            return conversation_record(await self._primary(insert, write=True))
        except asyncpg.UniqueViolationError:
            raise Conflict(f"channel name {name!r} is taken") from None

    async def get_conversation(self, conversation_id: int) -> ConversationRecord | None:
        row = await self._primary(
            lambda c: c.fetchrow(f"SELECT {CONVERSATION_COLUMNS} FROM conversations c WHERE c.id = $1", conversation_id)
        )
        return conversation_record(row) if row else None

    async def public_channels(self) -> list[ConversationRecord]:
        # The lane without a replica: the server asks only through server/listings.py's
        # batch, which in a storm must not queue behind the requests on the primary pool.
        rows = await self._replica(
            lambda c: c.fetch(
                f"SELECT {CONVERSATION_COLUMNS} FROM conversations c"
                " WHERE c.kind = 'channel' AND NOT c.private ORDER BY c.name"
            ),
            lane=True,
        )
        return [conversation_record(r) for r in rows]

    async def conversations_of(self, user_id: int) -> list[ConversationRecord]:
        rows = await self._primary(
            lambda c: c.fetch(
                f"SELECT {CONVERSATION_COLUMNS} FROM memberships m JOIN conversations c ON c.id = m.conversation_id"
                " WHERE m.user_id = $1 ORDER BY c.id",
                user_id,
            )
        )
        return [conversation_record(r) for r in rows]

    async def is_member(self, conversation_id: int, user_id: int) -> bool:
        found = await self._primary(
            lambda c: c.fetchval(
                "SELECT 1 FROM memberships WHERE conversation_id = $1 AND user_id = $2", conversation_id, user_id
            )
        )
        return found is not None

    async def add_member(self, conversation_id: int, user_id: int, now: int, *, read_seq: int = 0) -> bool:
        status = await self._primary(
            lambda c: c.execute(
                "INSERT INTO memberships (conversation_id, user_id, joined_at, read_seq) VALUES ($1, $2, $3, $4)"
                " ON CONFLICT DO NOTHING",
                conversation_id,
                user_id,
                now,
                read_seq,
            ),
            write=True,
        )
        return bool(status == "INSERT 0 1")

    async def remove_member(self, conversation_id: int, user_id: int) -> bool:
        status = await self._primary(
            lambda c: c.execute(
                "DELETE FROM memberships WHERE conversation_id = $1 AND user_id = $2", conversation_id, user_id
            ),
            write=True,
        )
        return bool(status == "DELETE 1")

    async def member_ids(self, conversation_id: int) -> list[int]:
        rows = await self._primary(
            lambda c: c.fetch(
                "SELECT user_id FROM memberships WHERE conversation_id = $1 ORDER BY user_id", conversation_id
            )
        )
        return [r["user_id"] for r in rows]

    async def members_of_many(self, conversation_ids: Sequence[int]) -> dict[int, list[int]]:
        ids = sorted(set(conversation_ids))
        if not ids:
            return {}
        rows = await self._primary(
            lambda c: c.fetch(
                "SELECT conversation_id, user_id FROM memberships WHERE conversation_id = ANY($1::bigint[])"
                " ORDER BY conversation_id, user_id",
                ids,
            )
        )
        result: dict[int, list[int]] = {}
        for r in rows:
            result.setdefault(r["conversation_id"], []).append(r["user_id"])
        return result

    async def member_counts(self, conversation_ids: Sequence[int]) -> dict[int, int]:
        ids = sorted(set(conversation_ids))
        if not ids:
            return {}
        # The lane: the server asks only through server/lookups.py's batches (presence, typing).
        rows = await self._lane(
            lambda c: c.fetch(
                "SELECT conversation_id, count(*) AS members FROM memberships"
                " WHERE conversation_id = ANY($1::bigint[]) GROUP BY conversation_id",
                ids,
            )
        )
        return {r["conversation_id"]: r["members"] for r in rows}

    async def members_by_username(self, conversation_id: int, usernames: Sequence[str]) -> dict[str, int]:
        names = sorted(set(usernames))
        if not names:
            return {}
        rows = await self._primary(
            lambda c: c.fetch(
                "SELECT u.username, u.id FROM users u JOIN memberships m ON m.user_id = u.id"
                " WHERE m.conversation_id = $1 AND u.username = ANY($2::text[])",
                conversation_id,
                names,
            )
        )
        return {r["username"]: r["id"] for r in rows}

    async def open_dm(self, member_ids: Sequence[int], creator_id: int, now: int) -> tuple[ConversationRecord, bool]:
        key = dm_key(member_ids)
        members = sorted(set(member_ids))

        async def open_(c: Conn) -> tuple[asyncpg.Record, bool]:
            async with c.transaction():
                # ON CONFLICT makes two people opening the same DM at once meet in one row.
                row = await c.fetchrow(
                    "INSERT INTO conversations AS c (kind, name, topic, private, created_by, created_at, dm_key)"
                    " VALUES ('dm', NULL, '', TRUE, $1, $2, $3) ON CONFLICT (dm_key) DO NOTHING"
                    f" RETURNING {CONVERSATION_COLUMNS}",
                    creator_id,
                    now,
                    key,
                )
                if row is None:
                    existing = await c.fetchrow(
                        f"SELECT {CONVERSATION_COLUMNS} FROM conversations c WHERE c.dm_key = $1", key
                    )
                    if existing is None:  # the conflicting row is committed: only a deletion since hides it
                        raise RuntimeError(f"the DM {key!r} conflicted on insert, then could not be read")
                    return existing, False
                await c.executemany(
                    "INSERT INTO memberships (conversation_id, user_id, joined_at, read_seq) VALUES ($1, $2, $3, 0)",
                    [(row["id"], uid, now) for uid in members],
                )
                return row, True

        row, created = await self._primary(open_, write=True)
        return conversation_record(row), created

    async def memberships_of(self, user_id: int) -> list[Membership]:
        rows = await self._primary(
            lambda c: c.fetch(
                f"SELECT {MEMBERSHIP_COLUMNS} FROM memberships m JOIN conversations c ON c.id = m.conversation_id"
                " WHERE m.user_id = $1 ORDER BY c.id",
                user_id,
            )
        )
        return [membership_record(r) for r in rows]

    async def memberships_of_many(self, user_ids: Sequence[int]) -> dict[int, list[Membership]]:
        ids = sorted(set(user_ids))
        if not ids:
            return {}
        # The lane: the server asks only through server/lookups.py's batches (a storm's catch-up).
        rows = await self._lane(
            lambda c: c.fetch(
                f"SELECT {MEMBERSHIP_COLUMNS}, m.user_id FROM memberships m JOIN conversations c"
                " ON c.id = m.conversation_id WHERE m.user_id = ANY($1::bigint[]) ORDER BY m.user_id, c.id",
                ids,
            )
        )
        found: dict[int, list[Membership]] = {}
        for r in rows:
            found.setdefault(r[-1], []).append(membership_record(r))
        return found

    async def member_state(self, conversation_id: int, user_id: int) -> MemberState | None:
        row = await self._primary(
            lambda c: c.fetchrow(
                "SELECT read_seq, muted, role FROM memberships WHERE conversation_id = $1 AND user_id = $2",
                conversation_id,
                user_id,
            )
        )
        return member_state(row[0], row[1], row[2]) if row else None

    async def mark_read(self, conversation_id: int, user_id: int, seq: int, *, unset_as: int) -> ReadMark | None:
        async def mark(c: Conn) -> ReadMark | None:
            row = await c.fetchrow(MARK_READ_SQL, conversation_id, user_id, seq, unset_as)
            if row is not None:
                return ReadMark(state=member_state(row[0], row[1], row[2]), moved=True)
            # Not moved: read the row in a statement of its own, whose snapshot
            # sees the mark that a racing statement committed while this one waited.
            row = await c.fetchrow(
                "SELECT read_seq, muted, role FROM memberships WHERE conversation_id = $1 AND user_id = $2",
                conversation_id,
                user_id,
            )
            return None if row is None else ReadMark(state=member_state(row[0], row[1], row[2]), moved=False)

        return await self._primary(mark, write=True)

    async def set_muted(self, conversation_id: int, user_id: int, muted: bool) -> MemberState | None:
        row = await self._primary(
            lambda c: c.fetchrow(
                "UPDATE memberships SET muted = $3 WHERE conversation_id = $1 AND user_id = $2"
                " RETURNING read_seq, muted, role",
                conversation_id,
                user_id,
                muted,
            ),
            write=True,
        )
        return member_state(row[0], row[1], row[2]) if row else None

    async def init_read_positions(self, user_id: int, positions: Mapping[int, int]) -> None:
        if not positions:
            return
        ids = sorted(positions)
        await self._primary(
            lambda c: c.execute(
                "UPDATE memberships m SET read_seq = p.seq FROM unnest($2::bigint[], $3::bigint[]) AS p(id, seq)"
                " WHERE m.conversation_id = p.id AND m.user_id = $1 AND m.read_seq IS NULL",
                user_id,
                ids,
                [positions[i] for i in ids],
            ),
            write=True,
        )

    # -- roles and channel administration (issue 12) ------------------------

    async def roles_of(self, user_id: int, conversation_ids: Sequence[int]) -> dict[int, Role]:
        ids = sorted(set(conversation_ids))
        if not ids:
            return {}
        rows = await self._primary(
            lambda c: c.fetch(
                "SELECT conversation_id, role FROM memberships"
                " WHERE user_id = $1 AND conversation_id = ANY($2::bigint[])",
                user_id,
                ids,
            )
        )
        return {r["conversation_id"]: r["role"] for r in rows}

    async def member_roles(self, conversation_id: int) -> dict[int, Role]:
        rows = await self._primary(
            lambda c: c.fetch(
                "SELECT user_id, role FROM memberships WHERE conversation_id = $1 ORDER BY user_id", conversation_id
            )
        )
        return {r["user_id"]: r["role"] for r in rows}

    async def update_channel(
        self, conversation_id: int, actor_id: int, update: ChannelEdit, check: AdminCheck
    ) -> ConversationRecord | None:
        pairs = channel_assignments(update)

        async def update_(c: Conn) -> asyncpg.Record | None:
            async with c.transaction():
                row = await _checked(c, conversation_id, actor_id, 0, check)
                if row is None or not pairs:
                    return row
                assignments = ", ".join(f"{column} = ${n}" for n, (column, _) in enumerate(pairs, start=2))
                return await c.fetchrow(
                    f"UPDATE conversations AS c SET {assignments} WHERE c.id = $1 RETURNING {CONVERSATION_COLUMNS}",
                    conversation_id,
                    *(value for _, value in pairs),
                )

        try:
            row = await self._primary(update_, write=True)
        except asyncpg.UniqueViolationError:
            raise Conflict(f"channel name {update.name!r} is taken") from None
        return conversation_record(row) if row else None

    async def set_role(self, conversation_id: int, actor_id: int, user_id: int, role: Role, check: AdminCheck) -> bool:
        async def set_(c: Conn) -> str | None:
            async with c.transaction():
                if await _checked(c, conversation_id, actor_id, user_id, check) is None:
                    return None
                status: str = await c.execute(
                    "UPDATE memberships SET role = $3 WHERE conversation_id = $1 AND user_id = $2 AND role <> $3",
                    conversation_id,
                    user_id,
                    role,
                )
                return status

        return await self._primary(set_, write=True) == "UPDATE 1"

    async def remove_member_as(self, conversation_id: int, actor_id: int, user_id: int, check: AdminCheck) -> bool:
        async def remove(c: Conn) -> str | None:
            async with c.transaction():
                if await _checked(c, conversation_id, actor_id, user_id, check) is None:
                    return None
                status: str = await c.execute(
                    "DELETE FROM memberships WHERE conversation_id = $1 AND user_id = $2", conversation_id, user_id
                )
                return status

        return await self._primary(remove, write=True) == "DELETE 1"

    async def rename_dm(self, conversation_id: int, name: str | None) -> ConversationRecord | None:
        row = await self._primary(
            lambda c: c.fetchrow(
                "UPDATE conversations AS c SET dm_name = $2 WHERE c.id = $1 AND c.kind = 'dm'"
                f" RETURNING {CONVERSATION_COLUMNS}",
                conversation_id,
                name,
            ),
            write=True,
        )
        return conversation_record(row) if row else None

    async def conversations_after(
        self, after_id: int, limit: int, *, overridden_only: bool
    ) -> list[ConversationRecord]:
        where = "c.id > $1" + (_OVERRIDDEN if overridden_only else "")
        rows = await self._primary(
            lambda c: c.fetch(
                f"SELECT {CONVERSATION_COLUMNS} FROM conversations c WHERE {where} ORDER BY c.id LIMIT $2",
                after_id,
                limit,
            )
        )
        return [conversation_record(r) for r in rows]

    # -- administration (issue 15) --------------------------------------------

    async def set_disabled(self, user_id: int, disabled: bool, now: int) -> UserRecord | None:
        async def set_(c: Conn) -> Record | None:
            async with c.transaction():
                if disabled:
                    await c.execute(
                        "UPDATE users SET disabled_at = coalesce(disabled_at, $2),"
                        " token_generation = token_generation + (disabled_at IS NULL)::int WHERE id = $1",
                        user_id,
                        now,
                    )
                else:
                    await c.execute("UPDATE users SET disabled_at = NULL WHERE id = $1 AND deleted_at IS NULL", user_id)
                return await c.fetchrow(_GET_USER_SQL, user_id)

        row = await self._primary(set_, write=True)
        return user_record(row) if row else None

    async def disabled_since(self, ts: int, limit: int = 1000) -> list[UserRecord]:
        rows = await self._primary(
            lambda c: c.fetch(
                f"SELECT {USER_COLUMNS} FROM users WHERE disabled_at >= $1 ORDER BY disabled_at, id LIMIT $2",
                ts,
                limit,
            )
        )
        return [user_record(r) for r in rows]

    async def set_workspace_role(
        self, user_id: int, role: WorkspaceRole, *, keep_an_admin: bool = False
    ) -> UserRecord | None:
        async def set_(c: Conn) -> Record | None:
            async with c.transaction():
                # Every workspace role change takes this lock first, so two admins
                # demoting each other at once cannot both pass the count.
                await c.execute("SELECT pg_advisory_xact_lock($1)", WORKSPACE_ROLE_LOCK_ID)
                row = await c.fetchrow(_GET_USER_SQL + " FOR UPDATE", user_id)
                if row is None or row["deleted_at"] is not None:
                    return None
                if keep_an_admin and role != "admin" and row["workspace_role"] == "admin":
                    others = await c.fetchval(
                        "SELECT count(*) FROM users WHERE workspace_role = 'admin' AND id <> $1"
                        " AND disabled_at IS NULL",
                        user_id,
                    )
                    if others == 0:
                        raise LastAdmin(f"user {user_id} is the workspace's last active admin")
                return await c.fetchrow(
                    f"UPDATE users SET workspace_role = $2 WHERE id = $1 RETURNING {USER_COLUMNS}", user_id, role
                )

        row = await self._primary(set_, write=True)
        return user_record(row) if row else None

    async def workspace_admins(self) -> list[UserRecord]:
        rows = await self._primary(
            lambda c: c.fetch(f"SELECT {USER_COLUMNS} FROM users WHERE workspace_role = 'admin' ORDER BY id")
        )
        return [user_record(r) for r in rows]

    async def tombstone_user(self, now: int) -> UserRecord:
        async def get_or_create(c: Conn) -> Record | None:
            async with c.transaction():
                await c.execute(_TOMBSTONE_SQL, *tombstone_values(now))
                return await c.fetchrow(f"SELECT {USER_COLUMNS} FROM users WHERE username = $1", TOMBSTONE_USERNAME)

        row = await self._primary(get_or_create, write=True)
        if row is None:
            raise RuntimeError("the tombstone user was neither created nor found")
        user = user_record(row)
        if user.deleted_at is None:
            raise Conflict(f"username {TOMBSTONE_USERNAME!r} is held by a live account ({user.id})")
        return user

    async def delete_user(self, user_id: int, now: int) -> UserRecord | None:
        async def delete(c: Conn) -> Record | None:
            async with c.transaction():
                row = await c.fetchrow(_GET_USER_SQL + " FOR UPDATE", user_id)
                if row is None or row["deleted_at"] is not None:
                    return row
                # The channels' rows first, in id order, as every channel
                # administration change locks them (_checked): the ownership
                # hand-over sees, and is seen by, every such change.
                await c.execute(
                    "SELECT 1 FROM conversations WHERE id IN (SELECT conversation_id FROM memberships"
                    " WHERE user_id = $1) ORDER BY id FOR NO KEY UPDATE",
                    user_id,
                )
                await c.execute(_HAND_OVER_OWNERSHIP_SQL, user_id)
                await c.execute("DELETE FROM memberships WHERE user_id = $1", user_id)
                await c.execute(_DELETE_USER_SQL, *deleted_user_values(user_id, now))
                return await c.fetchrow(_GET_USER_SQL, user_id)

        try:
            row = await self._primary(delete, write=True)
        except asyncpg.UniqueViolationError:  # an account from before issue 15 registered as deleted-<id>
            raise Conflict(f"username {deleted_username(user_id)!r} is taken") from None
        return user_record(row) if row else None

    async def record_audit(self, actor_id: int | None, action: str, target: Mapping[str, Any], now: int) -> AuditEntry:
        row = await self._primary(
            lambda c: c.fetchrow(
                "INSERT INTO audit_log (ts, actor_id, action, target) VALUES ($1, $2, $3, $4::jsonb)"
                " RETURNING id, ts, actor_id, action, target::text",
                now,
                actor_id,
                action,
                audit_target(target),
            ),
            write=True,
        )
        if row is None:
            raise RuntimeError("INSERT INTO audit_log ... RETURNING gave no row")
        return audit_record(row)

    async def audit_entries(self, after_id: int, limit: int) -> list[AuditEntry]:
        rows = await self._primary(
            lambda c: c.fetch(
                "SELECT id, ts, actor_id, action, target::text FROM audit_log WHERE id > $1 ORDER BY id LIMIT $2",
                after_id,
                limit,
            )
        )
        return [audit_record(r) for r in rows]


_OVERRIDDEN = " AND (c.retention_max_age_days > 0 OR c.retention_max_messages > 0)"
"""The channels with a retention override (the partial index conversations_retention, migration 0009)."""


WORKSPACE_ROLE_LOCK_ID = 0x48554243
"""The transaction advisory lock serialising workspace role changes (the last-admin rule)."""
_GET_USER_SQL = f"SELECT {USER_COLUMNS} FROM users WHERE id = $1"
_TOMBSTONE_SQL = TOMBSTONE_SQL.format("$1", "$2", "$3", "$4", "$5")
_HAND_OVER_OWNERSHIP_SQL = HAND_OVER_OWNERSHIP_SQL.format("$1")
_DELETE_USER_SQL = DELETE_USER_SQL.format("$1", "$2", "$3", "$4", "$5", "$6")


MARK_READ_SQL = (
    "UPDATE memberships SET read_seq = GREATEST($3, COALESCE(read_seq, $4))"
    " WHERE conversation_id = $1 AND user_id = $2 AND (read_seq IS NULL OR read_seq < $3)"
    " RETURNING read_seq, muted, role"
)
"""Directory.mark_read's conditional write: only forward, so racing marks never
move a position back (the row lock orders them, and one that waited re-checks
the condition on the row as the other left it)."""


async def _checked(c: Conn, conversation_id: int, actor_id: int, user_id: int, check: AdminCheck) -> Record | None:
    """The conversation's row once ``check`` passed on it and the standing, in the caller's
    transaction. The row is locked first, so every change of the channel's memberships
    and settings that checks a rule waits for the one before it to commit, and the
    standing it reads (a fresh snapshot per statement, READ COMMITTED) is current. FOR NO
    KEY UPDATE: it excludes the other changes that take it, not the KEY SHARE lock of the
    foreign-key checks of joins and invitations going on meanwhile."""
    row = await c.fetchrow(
        f"SELECT {CONVERSATION_COLUMNS} FROM conversations c WHERE c.id = $1 FOR NO KEY UPDATE", conversation_id
    )
    if row is None:
        return None
    found = await c.fetchrow(_STANDING_SQL, conversation_id, actor_id, user_id)
    if found is None:
        raise RuntimeError("the standing query gave no row")
    check(conversation_record(row), standing(found))
    return row


_STANDING_SQL = STANDING_SQL.format("$1", "$2", "$3")


class PostgresMessageLog:
    """Messages in PostgreSQL: seq and rev from a per-conversation counter row.

    Every transaction that changes a conversation's messages (an append
    batch, a change) locks its counter row (``conversation_seq``) first, and
    only then touches message rows: that row lock orders them, on any
    instance, so seqs are gapless, revisions commit in increasing order (the
    horizon of ``changes`` is the counter as one snapshot sees it) and the
    one lock order rules out deadlocks (docs/messages.md).
    Within this process, appends are group-committed across conversations
    (storage/batching.py): what waits while a flush is in flight goes in the
    next, each conversation's appends in submission order. So concurrent
    appends keep their order (a connection's sends can be pipelined), and a
    flush of any number of conversations is one statement, one transaction,
    one commit: ``hubbub_append_many`` (migration 0011, set-based) when it
    holds no reply, else ``_APPEND_BATCHES_SQL``, the ``hubbub_append_batch``
    function (migration 0008) once per conversation, replies and their roots'
    updates included. Both lock the counter rows in ascending conversation id
    (the lock order across conversations) before touching a message.
    """

    name = "postgres"
    gapless = True
    ordered_appends = True

    def __init__(self, pools: PostgresPools, max_batch: int = 256, *, search_config: str = "simple") -> None:
        self.pools = pools
        self.search_config = search_config
        """The text search configuration of ``messages.search`` (migration 0006)."""
        self._batches = GroupCommit(
            self.name, self._store_batch, key=by_conversation, max_batch=max_batch, max_flights=APPEND_FLIGHTS
        )

    async def ping(self) -> None:
        await _run(self.pools.primary, lambda c: c.fetchval("SELECT 1"), retry=True)

    async def close(self) -> None:
        """The pools are shared and closed by storage.factory.Stores; pending appends finish first."""
        await self._batches.close()

    async def append(self, message: NewMessage, deadline: float | None = None) -> Appended:
        return await self._batches.append(message, deadline)

    async def _store_batch(self, batch: list[NewMessage]) -> list[Stored | BaseException]:
        """One flush, whatever the number of conversations in it: one statement
        (one transaction, one commit) on one pooled connection."""
        return await _run(
            self.pools.primary,
            functools.partial(_append_batches, messages=batch, search_config=self.search_config),
            retry=False,
        )

    async def get_message(self, conversation_id: int, message_id: str) -> MessageRecord | None:
        row = await _run(
            self.pools.primary, lambda c: c.fetchrow(_GET_MESSAGE_SQL, conversation_id, message_id), retry=True
        )
        return message_record(row) if row else None

    async def change_message(
        self, conversation_id: int, message_id: str, change: MessageChange
    ) -> tuple[MessageRecord, bool] | None:
        return await _run(
            self.pools.primary,
            functools.partial(
                _change_message,
                conversation_id=conversation_id,
                message_id=message_id,
                change=change,
                search_config=self.search_config,
            ),
            retry=False,
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
        args: tuple[object, ...] = (conversation_id, *seq_range(before, after), limit)
        if thread_root_id is not None:
            sql = _THREAD_SQL[order]
            args = (*args, thread_root_id)
        else:
            sql = (_HISTORY_SQL if include_replies else _TIMELINE_SQL)[order]
        rows = await _run(self.pools.primary, lambda c: c.fetch(sql, *args), retry=True)
        return [message_record(r) for r in rows]

    async def history_many(self, reads: Sequence[HistoryRead]) -> dict[HistoryRead, list[MessageRecord]]:
        distinct = list(dict.fromkeys(reads))
        if not distinct:
            return {}
        bounds = [seq_range(r.before, r.after) for r in distinct]
        args = (
            list(range(len(distinct))),
            [r.conversation_id for r in distinct],
            [after for after, _ in bounds],
            [before for _, before in bounds],
            [r.limit for r in distinct],
            [r.order == "desc" for r in distinct],
            [r.thread_root_id for r in distinct],
            [r.include_replies for r in distinct],
        )
        # The lookup lane: the server asks only through server/lookups.py's batches.
        rows = await _run(self.pools.lookups, lambda c: c.fetch(_HISTORY_MANY_SQL, *args), retry=True)
        found: dict[HistoryRead, list[MessageRecord]] = {read: [] for read in distinct}
        for r in rows:
            found[distinct[r[_WIDTH]]].append(message_record(r))
        for read, records in found.items():  # each read's rows in its order (the union's is no promise)
            records.sort(key=lambda m: m.seq, reverse=read.order == "desc")
        return found

    async def pins(self, conversation_id: int, limit: int) -> list[MessageRecord]:
        rows = await _run(self.pools.primary, lambda c: c.fetch(_PINS_SQL, conversation_id, limit), retry=True)
        return [message_record(r) for r in rows]

    async def changes(self, conversation_id: int, *, after_rev: int, limit: int) -> ChangesPage:
        rows = await _run(
            self.pools.primary, lambda c: c.fetch(_CHANGES_SQL, conversation_id, after_rev, limit), retry=True
        )
        # The horizon is on every row (one without a message when nothing
        # changed), NULL when the conversation has no counter row yet.
        horizon = rows[0][_WIDTH] if rows else None
        purged = rows[0][_WIDTH + 1] if rows else None
        return ChangesPage(
            messages=[message_record(r) for r in rows if r[0] is not None],
            horizon=horizon or 0,
            oldest_seq=(purged or 0) + 1,
        )

    async def heads(self, conversation_ids: Sequence[int]) -> dict[int, Head]:
        ids = sorted(set(conversation_ids))
        if not ids:
            return {}
        # The lookup lane: the server asks only through server/lookups.py's batches.
        rows = await _run(
            self.pools.lookups,
            lambda c: c.fetch(
                "SELECT conversation_id, last_seq, last_rev, purged_seq FROM conversation_seq"
                " WHERE conversation_id = ANY($1::bigint[])",
                ids,
            ),
            retry=True,
        )
        return {
            r["conversation_id"]: Head(last_seq=r["last_seq"], last_rev=r["last_rev"], oldest_seq=r["purged_seq"] + 1)
            for r in rows
        }

    async def unread(self, user_id: int, positions: Mapping[int, int | None], cap: int) -> dict[int, Unread]:
        ids = sorted(positions)
        if not ids:
            return {}
        rows = await _run(
            self.pools.primary,
            lambda c: c.fetch(UNREAD_SQL, ids, [positions[i] for i in ids], user_id, cap, mention_needle(user_id)),
            retry=True,
        )
        return {
            r[0]: Unread(
                head=Head(last_seq=r[1], last_rev=r[2], oldest_seq=r[5] + 1), unread_count=r[3], mention_count=r[4]
            )
            for r in rows
        }

    async def unread_many(self, asks: Sequence[UnreadAsk], cap: int) -> dict[UnreadAsk, dict[int, Unread]]:
        distinct = list(dict.fromkeys(asks))
        numbers: list[int] = []
        ids: list[int] = []
        positions: list[int | None] = []
        users: list[int] = []
        needles: list[str] = []
        for n, ask in enumerate(distinct):
            for conversation_id, read_seq in ask.positions:
                numbers.append(n)
                ids.append(conversation_id)
                positions.append(read_seq)
                users.append(ask.user_id)
                needles.append(mention_needle(ask.user_id))
        result: dict[UnreadAsk, dict[int, Unread]] = {ask: {} for ask in distinct}
        if not ids:
            return result
        # The lookup lane: the server asks only through server/lookups.py's batches.
        rows = await _run(
            self.pools.lookups,
            lambda c: c.fetch(UNREAD_MANY_SQL, numbers, ids, positions, users, needles, cap),
            retry=True,
        )
        for r in rows:
            result[distinct[r[0]]][r[1]] = Unread(
                head=Head(last_seq=r[2], last_rev=r[3], oldest_seq=r[6] + 1), unread_count=r[4], mention_count=r[5]
            )
        return result

    async def reattribute(self, sender_id: int, to_id: int, limit: int) -> int:
        # No index leads with sender_id (one would cost every send): each call
        # scans for its batch, an admin's one-off cost (docs/operations.md).
        status = await _run(
            self.pools.primary,
            lambda c: c.execute(
                "UPDATE messages SET sender_id = $2, client_msg_id = id WHERE (conversation_id, seq) IN"
                " (SELECT conversation_id, seq FROM messages WHERE sender_id = $1 LIMIT $3)",
                sender_id,
                to_id,
                limit,
            ),
            retry=False,
        )
        return int(status.split()[-1])

    async def search(self, query: MessageQuery) -> list[SearchHit]:
        sql, args = search_statement(query, self.search_config, "messages")
        rows = await _run(self.pools.primary, functools.partial(fetch_search, sql=sql, args=args), retry=True)
        return [SearchHit(record=message_record(r), position=ts_position(r[6], r[0], r[1])) for r in rows]

    async def purge(
        self, conversation_id: int, *, before_ts: int | None, keep_last: int | None, limit: int
    ) -> PurgeResult:
        return await _run(
            self.pools.primary,
            functools.partial(
                _purge, conversation_id=conversation_id, before_ts=before_ts, keep_last=keep_last, limit=limit
            ),
            retry=False,
        )


UNREAD_SQL = (
    "SELECT h.conversation_id, h.last_seq, h.last_rev, coalesce(u.unread, 0), coalesce(u.mentioned, 0), h.purged_seq"
    " FROM unnest($1::bigint[], $2::bigint[]) AS p(id, read_seq)"
    " JOIN conversation_seq h ON h.conversation_id = p.id"
    " LEFT JOIN LATERAL (SELECT count(*) AS unread, count(*) FILTER (WHERE t.mentioned) AS mentioned FROM ("
    "  SELECT m.mention_all IS NOT NULL OR (m.mentions <> '[]'"
    "   AND strpos(',' || btrim(m.mentions, '[]') || ',', $5) > 0) AS mentioned"
    # p.read_seq < h.last_seq first: a one-time filter, so a conversation read up to its head reads no message.
    "  FROM messages m WHERE p.read_seq < h.last_seq AND m.conversation_id = p.id AND m.seq > p.read_seq"
    "  AND m.sender_id <> $3 AND NOT m.deleted AND (m.thread_root_id IS NULL OR m.also_in_channel)"
    "  LIMIT $4) t) u ON TRUE"
)
"""MessageLog.unread in one statement: every conversation's head, and for those
read short of it, a range of the partial index messages_unread (migration 0006)
after the read position, at most ``$4`` rows of it (the cap; a mention found by a
string search for ``$5``, storage.rows.mention_needle), in no particular
order (a count needs none, and an ORDER BY made the planner sort a bitmap scan);
an index-only scan once the table is vacuumed."""

UNREAD_MANY_SQL = (
    "SELECT p.ask, h.conversation_id, h.last_seq, h.last_rev, coalesce(u.unread, 0), coalesce(u.mentioned, 0),"
    " h.purged_seq"
    " FROM unnest($1::int[], $2::bigint[], $3::bigint[], $4::bigint[], $5::text[])"
    " AS p(ask, id, read_seq, user_id, needle)"
    " JOIN conversation_seq h ON h.conversation_id = p.id"
    " LEFT JOIN LATERAL (SELECT count(*) AS unread, count(*) FILTER (WHERE t.mentioned) AS mentioned FROM ("
    "  SELECT m.mention_all IS NOT NULL OR (m.mentions <> '[]'"
    "   AND strpos(',' || btrim(m.mentions, '[]') || ',', p.needle) > 0) AS mentioned"
    "  FROM messages m WHERE p.read_seq < h.last_seq AND m.conversation_id = p.id AND m.seq > p.read_seq"
    "  AND m.sender_id <> p.user_id AND NOT m.deleted AND (m.thread_root_id IS NULL OR m.also_in_channel)"
    "  LIMIT $6) t) u ON TRUE"
)
"""MessageLog.unread_many: ``UNREAD_SQL`` for many asks in one statement, each
(ask number, conversation, read position, user, mention needle) a row of the
unnest, so each counts its own user's unread tail (the same range of
messages_unread as ``UNREAD_SQL``)."""


_MARKS = ("$1", "$2", "$3", "$4")
_HISTORY_SQL: dict[HistoryOrder, str] = {order: history_sql(order, _MARKS) for order in ("desc", "asc")}
_TIMELINE_SQL: dict[HistoryOrder, str] = {
    order: history_sql(order, _MARKS, include_replies=False) for order in ("desc", "asc")
}
_THREAD_SQL: dict[HistoryOrder, str] = {
    order: history_sql(order, _MARKS, thread_root_id="$5") for order in ("desc", "asc")
}


def _history_branch(order: HistoryOrder, *, thread: bool) -> str:
    """One shape of ``_HISTORY_MANY_SQL``'s reads: ``history_sql``'s range of one
    index in one direction, gated by the read's own shape (a one-time filter, so
    a read of another shape reads nothing here)."""
    direction = "DESC" if order == "desc" else "ASC"
    gate = "p.descending" if order == "desc" else "NOT p.descending"
    which = (
        "thread_root_id = p.root"  # messages_thread_replies
        if thread
        else "p.root IS NULL AND (p.replies OR thread_root_id IS NULL OR also_in_channel)"
    )
    return (
        f"(SELECT {MESSAGE_COLUMNS} FROM messages WHERE {gate} AND {which}"
        " AND conversation_id = p.cid AND seq > p.after_seq AND seq < p.before_seq"
        f" ORDER BY seq {direction} LIMIT p.lim)"
    )


_HISTORY_MANY_SQL = (
    "SELECT m.*, p.n FROM unnest($1::int[], $2::bigint[], $3::bigint[], $4::bigint[], $5::int[], $6::bool[],"
    " $7::text[], $8::bool[]) AS p(n, cid, after_seq, before_seq, lim, descending, root, replies)"
    " CROSS JOIN LATERAL ("
    + " UNION ALL ".join(_history_branch(order, thread=thread) for thread in (False, True) for order in ("asc", "desc"))
    + ") AS m"
)
"""MessageLog.history_many in one statement: each read (its number, conversation,
seq range, limit, direction, thread root or None, whether replies count) a row of
the unnest, read as ``history`` reads it, the row's number after the message's
columns; a read's rows come back in no promised order (sorted by the caller)."""
_GET_MESSAGE_SQL = f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id = $1 AND id = $2"
_PINS_SQL = (
    f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id = $1 AND pinned_ts IS NOT NULL"
    " ORDER BY pinned_ts DESC, rev DESC LIMIT $2"
)
# One statement, so the horizon (the counter) and the messages come from one
# snapshot: a change whose transaction has bumped the counter but not
# committed is in neither, and every change below the counter is committed
# (the counter row lock orders them). The one-row base keeps the horizon when
# no message changed.
_CHANGES_SQL = (
    "SELECT m.*, h.horizon, h.purged FROM"
    " (SELECT s.last_rev AS horizon, s.purged_seq AS purged FROM (SELECT 1) AS one"
    "  LEFT JOIN conversation_seq s ON s.conversation_id = $1) AS h"
    f" LEFT JOIN LATERAL (SELECT {MESSAGE_COLUMNS} FROM messages"
    "  WHERE conversation_id = $1 AND rev > $2 ORDER BY rev LIMIT $3) AS m ON true"
    " ORDER BY m.rev"
)
_WIDTH = len(MESSAGE_COLUMNS.split(","))
"""How many columns a message row has; a statement's other columns come after them."""
_STATE_ASSIGNMENTS = ", ".join(f"{column} = ${n}" for n, column in enumerate(MESSAGE_STATE_COLUMNS, start=3))
_SEARCH_MARK = len(MESSAGE_STATE_COLUMNS) + 3
_STORE_CHANGE_SQL = (
    f"UPDATE messages SET {_STATE_ASSIGNMENTS},"
    f" search = to_tsvector(${_SEARCH_MARK + 1}::regconfig, ${_SEARCH_MARK}::text)"
    f" WHERE conversation_id = $1 AND id = $2 RETURNING {MESSAGE_COLUMNS}"
)
"""A change's new state, and its words (NULL for a tombstone: to_tsvector of NULL is NULL) in the index."""
_APPENDED_COLUMNS = ", ".join(f"(a.message).{column.strip()}" for column in MESSAGE_COLUMNS.split(","))


_ROWS = (
    "json_to_record($1::json) AS x(c bigint[], id text[], sender bigint[], text text[], cmid text[], ts bigint[],"
    " root text[], also boolean[], mentions text[], mention_all text[], words text[],"
    " gcid bigint[], lo integer[], hi integer[])"
)
"""A flush's messages as ``$1``, one JSON object of arrays (``_rows_json``),
turned into the appending functions' array arguments by PostgreSQL. Not one
array parameter each: asyncpg checks every element of an array parameter
against ``collections.abc`` types in Python (16 ``ABCMeta.__instancecheck__``
calls per message over the ten arrays), where msgspec encodes the object in C
and ``json_to_record`` reads it once, a JSON array into each array column
(BENCHMARKS.md, "The send path on PostgreSQL")."""

_APPEND_BATCH_SQL = (
    # MESSAGE_COLUMNS' order, then whether it is a duplicate, then whether it is the previous reply's root.
    f"SELECT {_APPENDED_COLUMNS}, a.duplicate, a.is_root FROM {_ROWS}"
    " CROSS JOIN LATERAL hubbub_append_batch($2, x.id, x.sender, x.text, x.cmid, x.ts, x.root, x.also, x.mentions,"
    " x.mention_all, $3::integer, x.words, $4::regconfig) AS a"
)


async def _append_batch(c: Conn, messages: list[NewMessage], search_config: str) -> list[Stored]:
    """Store one conversation's ``messages`` in one statement, in order (see
    migrations 0004 and 0006); duplicates return their original, new replies their
    updated root."""
    cid = messages[0].conversation_id
    if any(m.conversation_id != cid for m in messages):
        raise ValueError(f"a batch of conversation {cid} holds messages of another conversation")
    rows = await c.fetch(_APPEND_BATCH_SQL, _rows_json(messages), cid, REPLIERS_KEPT, search_config)
    return _appended(rows)


_SLICED = (
    "x.id[g.lo:g.hi], x.sender[g.lo:g.hi], x.text[g.lo:g.hi], x.cmid[g.lo:g.hi], x.ts[g.lo:g.hi],"
    " x.root[g.lo:g.hi], x.also[g.lo:g.hi], x.mentions[g.lo:g.hi], x.mention_all[g.lo:g.hi], $2::integer,"
    " x.words[g.lo:g.hi], $3::regconfig"
)
_APPEND_BATCHES_SQL = (
    f"SELECT {_APPENDED_COLUMNS}, a.duplicate, a.is_root FROM {_ROWS}"
    " CROSS JOIN LATERAL unnest(x.gcid, x.lo, x.hi) WITH ORDINALITY AS g(cid, lo, hi, n)"
    f" CROSS JOIN LATERAL hubbub_append_batch(g.cid, {_SLICED}) WITH ORDINALITY AS a(duplicate, is_root, message, k)"
    " ORDER BY g.n, a.k"
)
"""One flush of several conversations in one statement: ``gcid`` the
conversations in ascending id, ``lo``/``hi`` where each one's messages are
in the message arrays (1-based, inclusive), then ``hubbub_append_batch``'s
arguments over all messages. The function runs once per conversation, in
the order of ``gcid``, so counter rows are locked in ascending conversation
id: two instances' flushes wait for each other, never deadlock. One statement
is one implicit transaction: it commits whole or not at all."""

APPEND_FLIGHTS = 4
"""Flushes of the PostgreSQL group commit in flight at once, each on its own
pooled connection and with other conversations (storage/batching.py): while
one commits the next is being stored, and a burst of more than a batch (256
messages) is stored by several server processes side by side rather than by
one statement after another. Four of the pool's ten (by default) at most, so
the others serve everything else."""

_ISOLATED_ERRORS: tuple[type[BaseException], ...] = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError)
"""Errors a statement raises because of the data of some message in it: the
statement rolled back (the server refused it), so the flush is redone one
conversation at a time, and only that conversation's sends fail."""


async def _append_batches(c: Conn, messages: list[NewMessage], search_config: str) -> list[Stored | BaseException]:
    """Store a flush of any number of conversations in one statement, each
    conversation's messages in order; the outcomes in the order of ``messages``."""
    groups: dict[int, list[int]] = {}
    for i, m in enumerate(messages):
        groups.setdefault(m.conversation_id, []).append(i)
    order = [i for cid in sorted(groups) for i in groups[cid]]
    ordered = [messages[i] for i in order]
    try:
        if not any(m.thread_root_id for m in ordered):
            stored: list[Stored | BaseException] = list(await _append_set(c, ordered, search_config))
        elif len(groups) == 1:
            stored = list(await _append_batch(c, ordered, search_config))
        else:
            stored = list(await _append_many(c, ordered, search_config))
    except _ISOLATED_ERRORS:
        stored = []
        for cid in sorted(groups):
            stored.extend(await _append_conversation(c, [messages[i] for i in groups[cid]], search_config))
    outcomes: list[Stored | BaseException | None] = [None] * len(messages)
    for i, outcome in zip(order, stored, strict=True):
        outcomes[i] = outcome
    return [o for o in outcomes if o is not None]


_APPEND_SET_SQL = (
    f"SELECT {_APPENDED_COLUMNS}, a.duplicate, a.is_root FROM {_ROWS}"
    " CROSS JOIN LATERAL hubbub_append_many(x.c, x.id, x.sender, x.text, x.cmid, x.ts, x.also, x.mentions,"
    " x.mention_all, x.words, $2::regconfig) AS a"
)
"""A flush without replies, any number of conversations, set-based (migration 0011)."""


async def _append_set(c: Conn, ordered: list[NewMessage], search_config: str) -> list[Stored]:
    """``_APPEND_SET_SQL`` over ``ordered`` (no replies): one row per message, in order."""
    return _appended(await c.fetch(_APPEND_SET_SQL, _rows_json(ordered), search_config))


async def _append_many(c: Conn, ordered: list[NewMessage], search_config: str) -> list[Stored]:
    """``_APPEND_BATCHES_SQL`` over ``ordered``: sorted by conversation, each conversation's in submission order."""
    cids: list[int] = []
    lo: list[int] = []
    hi: list[int] = []
    for position, m in enumerate(ordered, start=1):
        if cids and cids[-1] == m.conversation_id:
            hi[-1] = position
        else:
            cids.append(m.conversation_id)
            lo.append(position)
            hi.append(position)
    rows_json = _rows_json(ordered, gcid=cids, lo=lo, hi=hi)
    return _appended(await c.fetch(_APPEND_BATCHES_SQL, rows_json, REPLIERS_KEPT, search_config))


async def _append_conversation(c: Conn, messages: list[NewMessage], search_config: str) -> list[Stored | BaseException]:
    """One conversation's messages when the flush they were in was refused: in one
    statement, or, if that is refused too, one at a time, each refusal that
    message's outcome (``unavailable``, as every refused statement is)."""
    try:
        return list(await _append_batch(c, messages, search_config))
    except _ISOLATED_ERRORS:
        pass
    outcomes: list[Stored | BaseException] = []
    for m in messages:
        outcomes.append(await _append_alone(c, m, search_config))
    return outcomes


async def _append_alone(c: Conn, m: NewMessage, search_config: str) -> Stored | BaseException:
    for _ in range(3):
        try:
            (result,) = await _append_batch(c, [m], search_config)
        except asyncpg.UniqueViolationError:
            # Not a resend (the function meets those with ON CONFLICT, behind
            # the counter lock of any instance): a fresh id taken already. The
            # statement rolled back (counter included); the next try draws new ids.
            continue
        except _ISOLATED_ERRORS as exc:
            return StoreUnavailable("postgres", describe(exc))
        return result
    return StoreUnavailable("postgres", "append kept conflicting")


_encode_rows = msgspec.json.Encoder().encode


def _rows_json(messages: list[NewMessage], **groups: list[int]) -> str:
    """``_ROWS``'s JSON: each message's column, fresh ids, and ``groups``'
    arrays (``gcid``, ``lo``, ``hi`` of ``_APPEND_BATCHES_SQL``) when given."""
    return _encode_rows(
        {
            "c": [m.conversation_id for m in messages],
            "id": new_message_ids(len(messages)),
            "sender": [m.sender_id for m in messages],
            "text": [m.text for m in messages],
            "cmid": [m.client_msg_id for m in messages],
            "ts": [m.ts for m in messages],
            "root": [m.thread_root_id for m in messages],
            "also": [m.also_in_channel for m in messages],
            # Most messages mention nobody: their column without a call each.
            "mentions": [ids_json(m.mentions) if m.mentions else "[]" for m in messages],
            "mention_all": [m.mention_all for m in messages],
            "words": [index_text(m.text) for m in messages],
            **groups,
        }
    ).decode()


def _appended(rows: Sequence[Record]) -> list[Stored]:
    """The outcomes of ``hubbub_append_batch``'s rows: one per message, each
    followed by its root's row when it is a new reply whose root exists."""
    outcomes: list[Stored] = []
    for row in rows:
        record = message_record(row)
        if row[_WIDTH + 1]:  # is_root
            outcomes[-1] = msgspec.structs.replace(outcomes[-1], root=record)
        else:
            outcomes.append(Appended(record=record, duplicate=row[_WIDTH]))
    return outcomes


class _RollBack(Exception):
    """Leaves a change's transaction rolled back, with the outcome to return."""

    def __init__(self, outcome: tuple[MessageRecord, bool] | None) -> None:
        super().__init__()
        self.outcome = outcome


async def _change_message(
    c: Conn, *, conversation_id: int, message_id: str, change: MessageChange, search_config: str
) -> tuple[MessageRecord, bool] | None:
    """One transaction: take the next revision (locking the counter row, the
    one lock order), read the message as the last committed change left it,
    store ``change``'s result. No message, None from ``change`` or an
    exception from it roll back: no revision used."""
    try:
        async with c.transaction():
            rev = await c.fetchval(
                "UPDATE conversation_seq SET last_rev = last_rev + 1 WHERE conversation_id = $1 RETURNING last_rev",
                conversation_id,
            )
            if rev is None:  # no counter row: the conversation has no message
                raise _RollBack(None)
            # A statement after the lock is granted: its snapshot holds every change committed before.
            row = await c.fetchrow(_GET_MESSAGE_SQL, conversation_id, message_id)
            if row is None:
                raise _RollBack(None)
            current = message_record(row)
            new = change(current)
            if new is None:
                raise _RollBack((current, False))
            values = message_state_values(msgspec.structs.replace(new, rev=rev))
            words = None if new.deleted else index_text(new.text)
            stored = await c.fetchrow(_STORE_CHANGE_SQL, conversation_id, message_id, *values, words, search_config)
    except _RollBack as rolled_back:
        return rolled_back.outcome
    if stored is None:  # the row was read under the counter lock, which the purge takes too
        raise RuntimeError(f"message {message_id!r} of conversation {conversation_id} vanished during a change")
    return message_record(stored), True


# -- retention (migration 0009) --------------------------------------------------


async def _purge(
    c: Conn, *, conversation_id: int, before_ts: int | None, keep_last: int | None, limit: int
) -> PurgeResult:
    """MessageLog.purge in one transaction: the counter row locked first (the one
    lock order: an append or change of the conversation waits for this short
    transaction, and one in flight is waited for), the expired prefix's rows
    deleted (their search vectors with them), ``purged_seq`` raised."""
    async with c.transaction():
        head = await c.fetchrow(
            "SELECT last_seq, purged_seq FROM conversation_seq WHERE conversation_id = $1 FOR UPDATE",
            conversation_id,
        )
        if head is None:
            return PurgeResult(purged=0, oldest_seq=1, more=False)
        rows = await c.fetch(
            "SELECT seq, ts FROM messages WHERE conversation_id = $1 ORDER BY seq LIMIT $2", conversation_id, limit + 1
        )
        # Gapless, and only the purge removes rows: the stored seqs are purged_seq+1 .. last_seq.
        below = count_below(head["last_seq"], keep_last)
        expired = expired_prefix([(r["seq"], r["ts"]) for r in rows], below, before_ts)
        gone = min(expired, limit)
        if gone == 0:
            return PurgeResult(purged=0, oldest_seq=head["purged_seq"] + 1, more=False)
        last = rows[gone - 1]["seq"]
        await c.execute("DELETE FROM messages WHERE conversation_id = $1 AND seq <= $2", conversation_id, last)
        await c.execute("UPDATE conversation_seq SET purged_seq = $2 WHERE conversation_id = $1", conversation_id, last)
    return PurgeResult(purged=gone, oldest_seq=last + 1, more=expired > limit)


# -- message search (migration 0006) --------------------------------------------


def search_statement(query: MessageQuery, search_config: str, table: str) -> tuple[str, tuple[object, ...]]:
    """The SQL and arguments of ``query`` over ``table``: ``messages`` (the PostgreSQL
    log, selecting ``MESSAGE_COLUMNS``) or ``message_search`` (the MongoDB
    topology's index, selecting its own columns). The GIN index finds the
    matches; ``newest`` keeps the top page of them by (ts, conversation, seq)."""
    after = (NO_SEQ_ABOVE, 0, 0) if query.after is None else parse_ts_position(query.after)
    columns = MESSAGE_COLUMNS if table == "messages" else _INDEX_COLUMNS
    reply = "thread_root_id IS NOT NULL" if table == "messages" else "is_reply"
    tombstone = " AND NOT deleted" if table == "messages" else ""
    newest = "ts DESC, conversation_id DESC, seq DESC"
    matches = (
        f" FROM {table}, to_tsquery($1::regconfig, $2) AS q"
        f" WHERE search @@ q AND conversation_id = ANY($3::bigint[]){tombstone}"
        " AND ts >= $4 AND ts < $5 AND ($6::bigint IS NULL OR sender_id = $6)"
        f" AND (NOT $7 OR {reply}) AND (ts, conversation_id, seq) < ($8, $9, $10)"
    )
    if query.order == "newest":
        sql = f"SELECT {columns}{matches} ORDER BY {newest} LIMIT $11 OFFSET $12"
    else:
        # The newest ``window`` matches, ranked (1: divided by 1 + log(length), as bm25 favours short texts).
        sql = (
            f"SELECT {columns} FROM (SELECT {columns}, search{matches} ORDER BY {newest} LIMIT $13) AS w,"
            f" to_tsquery($1::regconfig, $2) AS q ORDER BY ts_rank(w.search, q, 1) DESC, {newest} LIMIT $11 OFFSET $12"
        )
    args: tuple[object, ...] = (
        search_config,
        tsquery(query.terms),
        sorted(set(query.conversation_ids)),
        NO_SEQ_BELOW if query.after_ts is None else query.after_ts,
        NO_SEQ_ABOVE if query.before_ts is None else query.before_ts,
        query.sender_id,
        query.threads_only,
        *after,
        query.limit,
        query.offset,
    )
    return sql, args if query.order == "newest" else (*args, query.window)


async def fetch_search(c: Conn, *, sql: str, args: tuple[object, ...]) -> list[Record]:
    """Run a search planned for its own words: asyncpg prepares statements, and
    PostgreSQL's generic plan of a prepared statement cannot know how common
    the words are (a common word wants ``messages_by_ts`` walked backwards, a
    rare one the GIN index: 0.3 against 2,000 ms the wrong way round, BENCHMARKS.md)."""
    async with c.transaction():
        await c.execute("SET LOCAL plan_cache_mode = force_custom_plan")
        return await c.fetch(sql, *args)


_INDEX_COLUMNS = "conversation_id, seq, id, sender_id, ts, edited_ts"
"""What the MongoDB topology's index returns of a hit: where it is, and which edit it indexed."""
UNINDEXED_BATCH = 2000
"""Rows ``index_unindexed`` indexes per statement."""


async def index_unindexed(conn: asyncpg.Connection[Record] | Conn, search_config: str) -> int:
    """Index the messages stored before migration 0006 (or by a server that
    predates it), a batch at a time; how many it indexed. Each batch is one
    transaction of its own, so a long backfill holds no lock for long."""
    total = 0
    while True:
        rows = await conn.fetch(
            "SELECT conversation_id, seq, text FROM messages WHERE search IS NULL AND NOT deleted"
            " ORDER BY conversation_id, seq LIMIT $1",
            UNINDEXED_BATCH,
        )
        if not rows:
            return total
        await conn.execute(
            "UPDATE messages SET search = to_tsvector($1::regconfig, batch.words)"
            " FROM unnest($2::bigint[], $3::bigint[], $4::text[]) AS batch(conversation_id, seq, words)"
            " WHERE messages.conversation_id = batch.conversation_id AND messages.seq = batch.seq",
            search_config,
            [r[0] for r in rows],
            [r[1] for r in rows],
            [index_text(r[2]) for r in rows],
        )
        total += len(rows)


async def reindex_postgres(conn: asyncpg.Connection[Record] | Conn, search_config: str) -> int:
    """Redo every message's search vector (``hubbub reindex``, e.g. after a new
    ``postgres_search_config``): mark them all unindexed, then index them."""
    await conn.execute("UPDATE messages SET search = NULL WHERE search IS NOT NULL")
    return await index_unindexed(conn, search_config)


# mypy proves each backend implements its interface (storage/base.py).
_directory: type[Directory] = PostgresDirectory
_messages: type[MessageLog] = PostgresMessageLog
