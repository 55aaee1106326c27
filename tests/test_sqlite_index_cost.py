"""The embedded store's search index costs one FTS5 segment per index
transaction, not one per message (storage/sqlite_index.py ``index_tail``;
BENCHMARKS.md, The send path with indexing on): FTS5 writes its pending words
out whenever a later statement of the transaction opens a statement
savepoint, or a rowid is below the previous one, so the entries are written
last, in rowid order. The group commit's batch writes none
(tests/test_sqlite_deferred_index.py counts many batches to one segment)."""

from __future__ import annotations

import functools
import sqlite3
from pathlib import Path

from hubbub.protocol.search import parse
from hubbub.storage.records import MessageQuery, NewMessage
from hubbub.storage.search_sql import SQLITE_ROWID_TS_SHIFT
from hubbub.storage.sqlite import _append_batch, open_sqlite
from hubbub.storage.sqlite_index import index_transaction

NOW = 1_800_000_000_000


def segments(c: sqlite3.Connection) -> int:
    """How many segments the FTS5 index has (one row per segment and leaf's first term in ``_idx``)."""
    (count,) = c.execute("SELECT count(DISTINCT segid) FROM message_search_idx").fetchone()
    return int(count)


async def test_a_batch_of_appends_is_one_index_segment_and_all_found(tmp_path: Path) -> None:
    db, _, log = await open_sqlite(tmp_path / "cost.db", 5.0)
    try:
        # Two conversations, ts out of order within the batch: the entries are written in rowid order.
        batch = [
            NewMessage(
                conversation_id=1 + n % 2, sender_id=1, text=f"word{n} common", client_msg_id=f"m{n}", ts=NOW - n
            )
            for n in range(10)
        ]
        outcomes = await db.transaction(functools.partial(_append_batch, batch=batch))
        assert [o.duplicate for o in outcomes] == [False] * 10
        assert await db.run(segments) == 0, "the batch's commit writes no index (storage/sqlite_index.py)"
        assert await db.run(index_transaction) == 10
        assert await db.run(segments) == 1
        query = MessageQuery(terms=tuple(parse("common")), conversation_ids=(1, 2), limit=20)
        hits = await log.search(query)
        assert sorted(h.record.text for h in hits) == sorted(m.text for m in batch)
        assert [h.record.ts for h in hits] == sorted((m.ts for m in batch), reverse=True)
    finally:
        await db.close()


async def test_messages_of_one_millisecond_take_consecutive_search_rowids_across_batches(tmp_path: Path) -> None:
    db, _, log = await open_sqlite(tmp_path / "rowids.db", 5.0)
    try:

        def batch(first: int) -> list[NewMessage]:
            return [
                NewMessage(conversation_id=1, sender_id=1, text=f"same ms {n}", client_msg_id=f"s{n}", ts=NOW)
                for n in range(first, first + 4)
            ]

        for first in (0, 4):  # the second batch's first message probes past the first batch's
            await db.transaction(functools.partial(_append_batch, batch=batch(first)))
        rowids = await db.run(lambda c: [r[0] for r in c.execute("SELECT search_rowid FROM messages ORDER BY seq")])
        base = NOW << SQLITE_ROWID_TS_SHIFT
        assert rowids == [base + n for n in range(8)]
        query = MessageQuery(terms=tuple(parse("same")), conversation_ids=(1,), limit=20)
        assert [h.record.text for h in await log.search(query)] == [f"same ms {n}" for n in reversed(range(8))]
    finally:
        await db.close()
