"""What only PostgreSQL's message log does to keep revisions right
(docs/messages.md; the contract every store keeps is
tests/test_message_changes_contract.py): the counter row lock orders appends
and changes of several server instances, the horizon of ``changes`` never
passes a change whose transaction is still open, the root update of a reply
is the rule of storage/threads.py although it runs in PL/pgSQL, and a batch
is one statement, replies included."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Sequence

import asyncpg
import msgspec
import pytest

from hubbub.storage.base import MessageChange
from hubbub.storage.postgres import (
    _APPEND_BATCH_SQL,
    PostgresMessageLog,
    PostgresPools,
    _rows_json,
    migrate,
)
from hubbub.storage.records import REPLIERS_KEPT, Appended, MessageRecord, NewMessage, Reaction
from hubbub.storage.threads import with_reply
from tests.backends import truncate_postgres

CONVERSATION = 1
THUMBS = "👍"


@pytest.fixture
async def dsn(postgres_database: str) -> str:
    await migrate(postgres_database)
    await truncate_postgres(postgres_database)
    return postgres_database


async def open_log(dsn: str) -> tuple[PostgresPools, PostgresMessageLog]:
    """A message log with a pool of its own, as one server instance has."""
    pools = await PostgresPools.open(dsn, None, min_size=1, max_size=10, timeout=10)
    return pools, PostgresMessageLog(pools)


@pytest.fixture
async def log(dsn: str) -> AsyncIterator[PostgresMessageLog]:
    pools, opened = await open_log(dsn)
    try:
        yield opened
    finally:
        await opened.close()
        await pools.close()


@pytest.fixture
async def other_log(dsn: str) -> AsyncIterator[PostgresMessageLog]:
    """A second server instance on the same database."""
    pools, opened = await open_log(dsn)
    try:
        yield opened
    finally:
        await opened.close()
        await pools.close()


def message(client_msg_id: str, *, sender: int = 1, ts: int = 1_000, root: str | None = None) -> NewMessage:
    return NewMessage(
        conversation_id=CONVERSATION,
        sender_id=sender,
        text=f"text of {client_msg_id}",
        client_msg_id=client_msg_id,
        ts=ts,
        thread_root_id=root,
    )


def reacting(user_id: int) -> MessageChange:
    """The pure change adding ``user_id``'s 👍 (a reaction handler's shape)."""

    def change(current: MessageRecord) -> MessageRecord:
        users = next((r.user_ids for r in current.reactions if r.emoji == THUMBS), ())
        others = tuple(r for r in current.reactions if r.emoji != THUMBS)
        return msgspec.structs.replace(current, reactions=(*others, Reaction(emoji=THUMBS, user_ids=(*users, user_id))))

    return change


def revs_of(outcomes: Sequence[Appended | tuple[MessageRecord, bool] | None]) -> list[int]:
    """Every revision the outcomes of appends and changes used."""
    revs: list[int] = []
    for outcome in outcomes:
        if isinstance(outcome, Appended):
            revs.append(outcome.record.rev)
            if outcome.root is not None:
                revs.append(outcome.root.rev)
        elif outcome is not None:
            revs.append(outcome[0].rev)
    return revs


async def test_two_instances_changing_and_appending_at_once_never_share_a_rev(
    log: PostgresMessageLog, other_log: PostgresMessageLog
) -> None:
    root = (await log.append(message("root"))).record
    instances = (log, other_log)
    reactions = [instances[user % 2].change_message(CONVERSATION, root.id, reacting(user)) for user in range(100, 120)]
    # Replies update the very row the reactions change, plain messages only the counter.
    appends = [
        instances[n % 2].append(message(f"m{n}", sender=n, root=root.id if n % 3 == 0 else None)) for n in range(20)
    ]
    outcomes = await asyncio.gather(*(task for pair in zip(reactions, appends, strict=True) for task in pair))

    revs = sorted(revs_of(outcomes))
    replies = sum(1 for n in range(20) if n % 3 == 0)
    assert len(revs) == 20 + 20 + replies
    assert revs == list(range(2, 2 + len(revs))), "every rev used once, none skipped (each change committed)"
    final = await log.get_message(CONVERSATION, root.id)
    assert final is not None
    assert sorted(final.reactions[0].user_ids) == list(range(100, 120)), "no reaction lost"
    assert final.reply_count == replies
    heads = await other_log.heads([CONVERSATION])
    assert (heads[CONVERSATION].last_seq, heads[CONVERSATION].last_rev) == (21, revs[-1])
    page = await other_log.changes(CONVERSATION, after_rev=0, limit=100)
    assert page.horizon == revs[-1]
    assert [m.rev for m in page.messages] == sorted({m.rev for m in page.messages})


async def blocked_by(dsn: str, holder_pid: int) -> None:
    """Return once some connection waits for a lock that the backend ``holder_pid`` holds."""
    watcher = await asyncpg.connect(dsn)  # its own: pg_stat_activity is read once per transaction
    try:
        while not await watcher.fetchval(  # noqa: ASYNC110 - PostgreSQL announces no lock wait
            "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))", holder_pid
        ):
            await asyncio.sleep(0.01)
    finally:
        await watcher.close()


async def test_the_horizon_stays_below_a_change_whose_transaction_is_open(dsn: str, log: PostgresMessageLog) -> None:
    first = (await log.append(message("a"))).record
    second = (await log.append(message("b"))).record
    assert (first.rev, second.rev) == (1, 2)

    raw = await asyncpg.connect(dsn)
    try:
        transaction = raw.transaction()
        await transaction.start()
        held = await raw.fetchval(
            "UPDATE conversation_seq SET last_rev = last_rev + 1 WHERE conversation_id = $1 RETURNING last_rev",
            CONVERSATION,
        )
        await raw.execute(
            "UPDATE messages SET text = 'edited', rev = $2 WHERE conversation_id = $1 AND id = $3",
            CONVERSATION,
            held,
            first.id,
        )
        assert held == 3
        # A change of this instance meanwhile waits for the counter row, behind the open one.
        waiting = asyncio.create_task(log.change_message(CONVERSATION, second.id, reacting(7)))
        await asyncio.wait_for(blocked_by(dsn, raw.get_server_pid()), 10)

        page = await log.changes(CONVERSATION, after_rev=0, limit=10)
        assert page.horizon == 2 < held
        assert [(m.id, m.rev, m.text) for m in page.messages] == [
            (first.id, 1, first.text),
            (second.id, 2, second.text),
        ]
        assert not waiting.done()

        await transaction.commit()
    finally:
        await raw.close()
    changed = await asyncio.wait_for(waiting, 10)
    assert changed is not None and changed[0].rev == 4

    page = await log.changes(CONVERSATION, after_rev=2, limit=10)
    assert page.horizon == 4
    assert [(m.id, m.rev) for m in page.messages] == [(first.id, 3), (second.id, 4)]
    assert page.messages[0].text == "edited"


async def test_a_reply_updates_its_root_by_the_rule_of_storage_threads(log: PostgresMessageLog) -> None:
    root = (await log.append(message("root", sender=1, ts=1_000))).record
    # Repeated repliers, more of them than a root keeps, and a reply older than the one before it.
    senders_and_ts = [(2, 1_010), (3, 1_020), (2, 1_030), (4, 1_005), (5, 1_040), (6, 1_050), (7, 1_060), (3, 1_070)]
    # Sent together: most go in one batch, where one root is updated several times in one statement.
    outcomes = await asyncio.gather(
        *(log.append(message(f"r{n}", sender=s, ts=ts, root=root.id)) for n, (s, ts) in enumerate(senders_and_ts))
    )

    expected = root
    for outcome in sorted(outcomes, key=lambda o: o.record.seq):
        assert outcome.root is not None
        assert outcome.root.rev == outcome.record.rev + 1, "the root's change is the next rev after the reply"
        expected = msgspec.structs.replace(with_reply(expected, outcome.record), rev=outcome.root.rev)
        assert outcome.root == expected
    assert await log.get_message(CONVERSATION, root.id) == expected
    assert expected.repliers == (3, 7, 6, 5, 4), "the five latest distinct, newest first"


async def test_a_reply_to_a_missing_root_is_stored_alone(log: PostgresMessageLog) -> None:
    before = (await log.append(message("before"))).record
    orphan = await log.append(message("orphan", root="no-such-root"))
    after = (await log.append(message("after"))).record
    assert orphan.root is None and orphan.record.thread_root_id == "no-such-root"
    assert (before.rev, orphan.record.rev, after.rev) == (1, 2, 3), "the reply used one rev, its own"


async def test_appending_does_not_read_the_conversation_back(dsn: str) -> None:
    """A batch finds duplicates through the idempotency index, never by
    scanning the conversation: the plans a session caches while the table is
    small (a fresh deployment) must not become a scan of every earlier
    message once the conversation is long."""
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)  # one session: the one whose plans are cached
    assert pool is not None
    log = PostgresMessageLog(PostgresPools(pool, None))
    try:
        for n in range(20):  # batches of one, past PostgreSQL's five custom plans: generic plans from here on
            await log.append(message(f"warm-{n}"))
        filler = await asyncpg.connect(dsn)  # the conversation grows to 5,020 messages behind those plans' back
        try:
            await filler.execute(
                "INSERT INTO messages (conversation_id, seq, id, sender_id, text, client_msg_id, ts, rev)"
                " SELECT $1::bigint, g, md5(g::text), 1, 'filler', 'filler-' || g, 1000, g"
                " FROM generate_series(21, 5020) AS g",
                CONVERSATION,
            )
            await filler.execute(
                "UPDATE conversation_seq SET last_seq = 5020, last_rev = 5020 WHERE conversation_id = $1", CONVERSATION
            )
        finally:
            await filler.close()
        batch = [message(f"m{n}") for n in range(50)]
        async with pool.acquire() as conn:
            explained = await conn.fetchval(
                "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + _APPEND_BATCH_SQL,
                _rows_json(batch),  # the messages, their search words (migration 0006) among them
                CONVERSATION,
                REPLIERS_KEPT,
                "simple",
            )
        plan = json.loads(explained)[0]["Plan"]
        touched = plan["Shared Hit Blocks"] + plan["Shared Read Blocks"]
        # An insert touches its heap page and five index paths (the search GIN's pending list one), a dozen pages;
        # scanning the conversation for each message would be over a hundred.
        assert touched < 30 * len(batch), f"{touched} pages touched to append {len(batch)} messages"
        assert (await log.heads([CONVERSATION]))[CONVERSATION].last_seq == 5070
    finally:
        await log.close()
        await pool.close()


def appending_function(statement: str) -> str:
    """The one hubbub_append_* function ``statement`` calls."""
    (called,) = re.findall(r"hubbub_append_\w+", statement)
    return str(called)


def pools_statements(statements: list[str]) -> list[str]:
    """``statements`` without asyncpg's reset of a connection released to its pool."""
    return [s for s in statements if not s.startswith("SELECT pg_advisory_unlock_all();")]


async def test_a_batch_is_one_statement_with_or_without_replies(dsn: str) -> None:
    statements: list[str] = []

    def record(query: asyncpg.connection.LoggedQuery) -> None:
        statements.append(query.query)

    async def log_statements(conn: asyncpg.Connection) -> None:
        conn.add_query_logger(record)

    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1, init=log_statements)
    assert pool is not None
    log = PostgresMessageLog(PostgresPools(pool, None))
    try:
        root = (await log.append(message("root"))).record
        statements.clear()
        # Appended together: one batch (the flusher starts after every one queued).
        plain = await asyncio.gather(*(log.append(message(f"p{n}")) for n in range(10)))
        # No reply in it: the set-based function (migration 0011).
        assert [appending_function(s) for s in pools_statements(statements)] == ["hubbub_append_many"]
        statements.clear()
        replies = await asyncio.gather(*(log.append(message(f"r{n}", root=root.id)) for n in range(10)))
        assert [appending_function(s) for s in pools_statements(statements)] == ["hubbub_append_batch"]
        assert [o.record.seq for o in plain + replies] == list(range(2, 22))
        assert [o.root.reply_count for o in replies if o.root is not None] == list(range(1, 11))
    finally:
        await log.close()
        await pool.close()
