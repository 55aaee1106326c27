"""Message search for the MongoDB message log: an index kept in PostgreSQL.

The MongoDB topology always has PostgreSQL beside it (the directory), and
PostgreSQL has a real full-text engine, so the search index lives there
(table ``message_search``, migration 0006) rather than in a MongoDB text
index (one per collection, no phrase positions, no prefixes, and a
``$text`` query cannot be paged by a stable cursor) or in a second search
service to run. docs/storage.md (Search) says why at more length.

``IndexedMessageLog`` is the MongoDB log with the index beside it:

- appends: the index rows of a batch are written by the same group commit
  that stores the batch in MongoDB (``MongoMessageLog.after_batch``), before
  any of its sends is acknowledged; if the index write fails, the batch
  answers ``unavailable`` and the client's resend (a duplicate) writes them;
- changes: an edit replaces the row's words, a delete removes the row,
  before the change is acknowledged;
- searches: the index finds the hits, MongoDB gives their current state, and
  a hit whose message is deleted or edited since the row was written (the
  row's ``edited_ts`` is not the message's) is dropped, so a stale row (an
  index write that failed after MongoDB's) never shows deleted or
  edited-away text. ``hubbub reindex`` rebuilds the index from MongoDB.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import msgspec
from asyncpg import Record

from hubbub.protocol.search import index_text
from hubbub.storage.base import HistoryOrder, MessageChange, MessageLog
from hubbub.storage.mongo import MongoMessageLog
from hubbub.storage.postgres import Conn, PostgresPools, _run, fetch_search, search_statement
from hubbub.storage.records import (
    Appended,
    ChangesPage,
    Head,
    HistoryRead,
    MessageQuery,
    MessageRecord,
    NewMessage,
    PurgeResult,
    SearchHit,
    Unread,
    UnreadAsk,
)
from hubbub.storage.search_sql import ts_position

MAX_SEARCH_ROUNDS = 4
"""Index reads one ``newest`` search makes at most when stale rows were dropped from a page."""

_STORE_SQL = (
    "WITH gone AS (DELETE FROM message_search"
    " WHERE (conversation_id, seq) IN (SELECT * FROM unnest($10::bigint[], $11::bigint[])))"
    " INSERT INTO message_search (conversation_id, seq, id, sender_id, ts, is_reply, edited_ts, search)"
    " SELECT b.cid, b.seq, b.id, b.sender, b.ts, b.reply, b.edited, to_tsvector($1::regconfig, b.words)"
    " FROM unnest($2::bigint[], $3::bigint[], $4::text[], $5::bigint[], $6::bigint[], $7::bool[], $8::bigint[],"
    " $9::text[]) AS b(cid, seq, id, sender, ts, reply, edited, words)"
    " ON CONFLICT (conversation_id, seq) DO UPDATE SET edited_ts = excluded.edited_ts, search = excluded.search"
    " WHERE coalesce(excluded.edited_ts, 0) >= coalesce(message_search.edited_ts, 0)"
)
"""A batch's index write in one statement, so one round trip (it is atomic on
its own: no BEGIN and COMMIT around it): rows for the messages not deleted,
where an older state (a late resend's) never replaces a newer edit's, and no
row for the tombstones ($10, $11). The two sets never share a message, so
the insert and the delete, which see the same snapshot, never meet."""


class PostgresSearchIndex:
    """The ``message_search`` table: what the index holds of each message not deleted."""

    def __init__(self, pools: PostgresPools, search_config: str) -> None:
        self.pools = pools
        self.search_config = search_config

    async def store(self, records: Sequence[MessageRecord]) -> None:
        """Index each message as it now is: its words, or no row for a tombstone."""
        # One row per message: a batch may carry one twice (a resend of a message earlier in it).
        latest = list({(r.conversation_id, r.seq): r for r in records}.values())
        live = [r for r in latest if not r.deleted]
        gone = [r for r in latest if r.deleted]

        async def write(c: Conn) -> None:
            await c.execute(
                _STORE_SQL,
                self.search_config,
                [r.conversation_id for r in live],
                [r.seq for r in live],
                [r.id for r in live],
                [r.sender_id for r in live],
                [r.ts for r in live],
                [r.thread_root_id is not None for r in live],
                [r.edited_ts for r in live],
                [index_text(r.text) for r in live],
                [r.conversation_id for r in gone],
                [r.seq for r in gone],
            )

        if records:
            await _run(self.pools.primary, write, retry=False)

    async def forget_below(self, conversation_id: int, oldest_seq: int) -> None:
        """Remove the rows of the conversation's messages below ``oldest_seq`` (purged by retention)."""
        await _run(
            self.pools.primary,
            lambda c: c.execute(
                "DELETE FROM message_search WHERE conversation_id = $1 AND seq < $2", conversation_id, oldest_seq
            ),
            retry=False,
        )

    async def move(self, keys: Sequence[tuple[int, int]], to_id: int) -> None:
        """Index rows of these (conversation id, seq) get sender ``to_id`` (account deletion)."""
        if keys:
            await _run(
                self.pools.primary,
                lambda c: c.execute(
                    "UPDATE message_search SET sender_id = $3 WHERE (conversation_id, seq) IN"
                    " (SELECT * FROM unnest($1::bigint[], $2::bigint[]))",
                    [k[0] for k in keys],
                    [k[1] for k in keys],
                    to_id,
                ),
                retry=False,
            )

    async def find(self, query: MessageQuery) -> list[Record]:
        """Index rows of the hits: conversation_id, seq, id, sender_id, ts, edited_ts."""
        sql, args = search_statement(query, self.search_config, "message_search")
        return await _run(self.pools.primary, functools.partial(fetch_search, sql=sql, args=args), retry=True)


class IndexedMessageLog:
    """The MongoDB message log, searched through ``PostgresSearchIndex``."""

    def __init__(self, log: MongoMessageLog, index: PostgresSearchIndex) -> None:
        self.log = log
        self.index = index
        self.name = log.name
        self.gapless = log.gapless
        self.ordered_appends = log.ordered_appends
        log.after_batch = self._index_batch

    async def _index_batch(self, outcomes: Sequence[Appended]) -> None:
        # Duplicates too: the resend of a batch whose index write failed writes it.
        await self.index.store([o.record for o in outcomes])

    async def ping(self) -> None:
        await self.log.ping()

    async def close(self) -> None:
        await self.log.close()

    async def append(self, message: NewMessage, deadline: float | None = None) -> Appended:
        return await self.log.append(message, deadline)

    async def get_message(self, conversation_id: int, message_id: str) -> MessageRecord | None:
        return await self.log.get_message(conversation_id, message_id)

    async def change_message(
        self, conversation_id: int, message_id: str, change: MessageChange
    ) -> tuple[MessageRecord, bool] | None:
        before: list[MessageRecord] = []

        def remembering(current: MessageRecord) -> MessageRecord | None:
            before[:] = [current]
            return change(current)

        outcome = await self.log.change_message(conversation_id, message_id, remembering)
        if outcome is not None and outcome[1] and before:
            old, new = before[0], outcome[0]
            if (old.text, old.deleted, old.edited_ts) != (new.text, new.deleted, new.edited_ts):
                await self.index.store([new])
        return outcome

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
        return await self.log.history(
            conversation_id,
            before=before,
            after=after,
            limit=limit,
            order=order,
            thread_root_id=thread_root_id,
            include_replies=include_replies,
        )

    async def history_many(self, reads: Sequence[HistoryRead]) -> dict[HistoryRead, list[MessageRecord]]:
        return await self.log.history_many(reads)

    async def pins(self, conversation_id: int, limit: int) -> list[MessageRecord]:
        return await self.log.pins(conversation_id, limit)

    async def changes(self, conversation_id: int, *, after_rev: int, limit: int) -> ChangesPage:
        return await self.log.changes(conversation_id, after_rev=after_rev, limit=limit)

    async def heads(self, conversation_ids: Sequence[int]) -> dict[int, Head]:
        return await self.log.heads(conversation_ids)

    async def unread(self, user_id: int, positions: Mapping[int, int | None], cap: int) -> dict[int, Unread]:
        return await self.log.unread(user_id, positions, cap)

    async def unread_many(self, asks: Sequence[UnreadAsk], cap: int) -> dict[UnreadAsk, dict[int, Unread]]:
        return await self.log.unread_many(asks, cap)

    async def reattribute(self, sender_id: int, to_id: int, limit: int) -> int:
        # The index first: should MongoDB's write fail after it, the messages are
        # still the sender's, and the next call moves both again.
        found = await self.log.sender_messages(sender_id, limit)
        await self.index.move([(cid, seq) for cid, seq, _ in found], to_id)
        return await self.log.move_messages([message_id for _, _, message_id in found], sender_id, to_id)

    async def search(self, query: MessageQuery) -> list[SearchHit]:
        hits: list[SearchHit] = []
        for _ in range(MAX_SEARCH_ROUNDS):
            rows = await self.index.find(query)
            records = await self.log.get_messages([(r["conversation_id"], r["id"]) for r in rows])
            for row in rows:
                record = records.get(row["id"])
                # Only the state the row indexed: not deleted, not edited since.
                if record is not None and not record.deleted and record.edited_ts == row["edited_ts"]:
                    position = ts_position(row["ts"], row["conversation_id"], row["seq"])
                    hits.append(SearchHit(record=record, position=position))
            if len(hits) >= query.limit or len(rows) < query.limit or query.order != "newest":
                return hits[: query.limit]
            # Stale rows were dropped: read on from the last row, for the page's remaining hits.
            last = rows[-1]
            query = _after(query, ts_position(last["ts"], last["conversation_id"], last["seq"]))
        return hits[: query.limit]

    async def purge(
        self, conversation_id: int, *, before_ts: int | None, keep_last: int | None, limit: int
    ) -> PurgeResult:
        """MongoDB first, then the index's rows below the new oldest seq: if that
        write fails, a search drops the stale rows' hits (their messages are gone
        from MongoDB), and the next purge of the conversation removes them,
        since it forgets below the oldest seq whenever one was ever purged."""
        result = await self.log.purge(conversation_id, before_ts=before_ts, keep_last=keep_last, limit=limit)
        if result.oldest_seq > 1:
            await self.index.forget_below(conversation_id, result.oldest_seq)
        return result


def _after(query: MessageQuery, position: str) -> MessageQuery:
    return msgspec.structs.replace(query, after=position)


async def reindex_mongo(log: MongoMessageLog, index: PostgresSearchIndex, batch: int = 1000) -> int:
    """Rebuild the index from MongoDB (``hubbub reindex``): empty it, then index
    every message, a batch at a time; how many messages it indexed."""
    await _run(index.pools.primary, lambda c: c.execute("TRUNCATE message_search"), retry=False)
    total = 0
    async for records in log.all_messages(batch):
        await index.store(records)
        total += sum(1 for r in records if not r.deleted)
    return total


# mypy proves the composition implements the interface (storage/base.py).
_messages: type[MessageLog] = IndexedMessageLog
