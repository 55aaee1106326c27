"""``python -m hubbub.loadtest.searchbench``: the latency of ``message.search``'s
store query (``MessageLog.search``) over a message log of many messages.

Fills a fresh message log (SQLite in a temporary file or ``--path``, or a
PostgreSQL database given by ``--dsn``, which must be empty and is left
filled; a file or database an earlier run filled is reused as it is) with
``--messages`` messages in bulk, as the stores index them (SQLite: rows with
their ``search_rowid`` and the FTS5 entries; PostgreSQL: rows with their
``tsvector``, the GIN index built after the load, then ``VACUUM ANALYZE``),
spread over ``--conversations`` conversations, each message 6-16 words drawn
from a vocabulary of 20,000 with Zipf frequencies (the commonest word is in
about one message in five, the rarest in a few dozen). The searcher is a
member of ``--member-of`` of the conversations. Then times ``--queries``
searches of each kind, as the handler asks for its default page (21 hits):

- ``rare``, ``medium``, ``common``: one word of Zipf rank 5,000-20,000,
  200-2,000 and 1-20;
- ``two words``: a common and a medium word, AND-ed;
- ``prefix``: the first 3 letters of a medium word, ``*``;
- ``phrase``: two adjacent words of a stored message;

newest first, and each also by relevance (the newest 1,000 matches ranked,
``search_relevance_window``'s default). Prints p50 and p99 per kind and over
all, in milliseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg

from hubbub.loadtest.wordgen import texts, vocabulary
from hubbub.protocol.search import parse
from hubbub.storage.base import MessageLog
from hubbub.storage.postgres import PostgresMessageLog, PostgresPools, migrate
from hubbub.storage.records import MessageQuery, NewMessage, SearchOrder
from hubbub.storage.rows import MESSAGE_COLUMNS, message_values, new_message_record
from hubbub.storage.search_sql import sqlite_rowid_base
from hubbub.storage.sqlite import SqliteDatabase, open_sqlite

PAGE = 21
"""What the handler asks the store for at the default limit of 20: one more, to know whether a page follows."""
START_TS = 1_700_000_000_000
CHUNK = 50_000
ORDERS: tuple[SearchOrder, ...] = ("newest", "relevance")


def queries(words: list[str], sample: list[str], count: int, seed: int) -> dict[str, list[str]]:
    rng = random.Random(seed + 1)

    def phrase() -> str:
        text = rng.choice(sample).split()
        at = rng.randrange(len(text) - 1)
        return f'"{text[at]} {text[at + 1]}"'

    return {
        "rare": [rng.choice(words[5_000:]) for _ in range(count)],
        "medium": [rng.choice(words[200:2_000]) for _ in range(count)],
        "common": [rng.choice(words[:20]) for _ in range(count)],
        "two words": [f"{rng.choice(words[:20])} {rng.choice(words[200:2_000])}" for _ in range(count)],
        "prefix": [rng.choice(words[200:2_000])[:3] + "*" for _ in range(count)],
        "phrase": [phrase() for _ in range(count)],
    }


def rows(count: int, conversations: int, words: list[str], seed: int) -> Iterator[tuple[int, int, str, int]]:
    """(conversation id, seq, text, ts) of every message: round robin over the conversations, 10 ms apart."""
    for n, text in enumerate(texts(count, words, seed)):
        yield n % conversations + 1, n // conversations + 1, text, START_TS + n * 10


def _new_record(cid: int, seq: int, text: str, ts: int) -> tuple[object, ...]:
    record = new_message_record(
        NewMessage(conversation_id=cid, sender_id=1 + seq % 50, text=text, client_msg_id=f"b{cid}-{seq}", ts=ts),
        seq,
        seq,
    )
    return tuple(message_values(record))


async def fill_sqlite(
    path: Path, count: int, conversations: int, words: list[str], seed: int
) -> tuple[SqliteDatabase, MessageLog]:
    db, _, log = await open_sqlite(path, 60.0)
    marks = ", ".join("?" * len(MESSAGE_COLUMNS.split(",")))
    insert = f"INSERT INTO messages ({MESSAGE_COLUMNS}, search_rowid) VALUES ({marks}, ?)"
    source = rows(count, conversations, words, seed)
    while chunk := list(itertools.islice(source, CHUNK)):
        # Each message alone in its millisecond: its rowid is its ts's base (storage.search_sql).
        values = [(*_new_record(*r), sqlite_rowid_base(r[3])) for r in chunk]
        entries = [(sqlite_rowid_base(r[3]), r[2]) for r in chunk]

        def load(
            c: sqlite3.Connection, values: list[tuple[object, ...]] = values, entries: list[tuple[int, str]] = entries
        ) -> None:
            c.executemany(insert, values)
            c.executemany("INSERT INTO message_search (rowid, text) VALUES (?, ?)", entries)

        await db.transaction(load)
    last = [
        (cid, (count - cid) // conversations + 1, (count - cid) // conversations + 1)
        for cid in range(1, conversations + 1)
    ]
    await db.transaction(
        lambda c: c.executemany(
            "INSERT INTO conversation_seq (conversation_id, last_seq, last_rev) VALUES (?, ?, ?)", last
        )
    )
    await db.run(lambda c: c.execute("ANALYZE"))
    return db, log


async def fill_postgres(
    dsn: str, count: int, conversations: int, words: list[str], seed: int
) -> tuple[PostgresPools, MessageLog]:
    await migrate(dsn)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("DROP INDEX messages_search")  # built once after the load, as CREATE INDEX does fastest
        columns = [c.strip() for c in MESSAGE_COLUMNS.split(",")]
        source = rows(count, conversations, words, seed)
        while chunk := list(itertools.islice(source, CHUNK)):
            records = [_new_record(*r) for r in chunk]
            await conn.copy_records_to_table("messages", records=records, columns=columns)
        # The generated words are lowercase ASCII separated by spaces: index_text leaves them as they are.
        await conn.execute("UPDATE messages SET search = to_tsvector('simple', text)")
        await conn.execute("CREATE INDEX messages_search ON messages USING gin (search)")
        await conn.execute(
            "INSERT INTO conversation_seq (conversation_id, last_seq, last_rev)"
            " SELECT conversation_id, max(seq), max(seq) FROM messages GROUP BY conversation_id"
        )
        await conn.execute("VACUUM ANALYZE messages")  # as autovacuum would soon after a bulk load
    finally:
        await conn.close()
    pools = await PostgresPools.open(dsn, None, min_size=1, max_size=2, timeout=60)
    return pools, PostgresMessageLog(pools)


async def measure(
    log: MessageLog, kinds: dict[str, list[str]], member_of: tuple[int, ...], order: SearchOrder
) -> dict[str, tuple[float, float]]:
    """p50 and p99 in milliseconds per kind and over ``all``."""

    def query(text: str) -> MessageQuery:
        return MessageQuery(terms=tuple(parse(text)), conversation_ids=member_of, order=order, limit=PAGE)

    for text in itertools.islice(itertools.chain(*kinds.values()), 0, None, 10):  # warm the caches
        await log.search(query(text))
    results: dict[str, tuple[float, float]] = {}
    every: list[float] = []
    for kind, texts_ in kinds.items():
        latencies = []
        for text in texts_:
            start = time.perf_counter()
            await log.search(query(text))
            latencies.append((time.perf_counter() - start) * 1000)
        cuts = statistics.quantiles(latencies, n=100)
        results[kind] = (cuts[49], cuts[98])
        every += latencies
    cuts = statistics.quantiles(every, n=100)
    results["all"] = (cuts[49], cuts[98])
    return results


def report(store: str, order: str, results: dict[str, tuple[float, float]]) -> str:
    parts = [f"{kind} p50 {p50:.2f} / p99 {p99:.2f}" for kind, (p50, p99) in results.items()]
    return f"{store} {order}: " + "; ".join(parts) + " (ms)"


async def run(
    store: str, dsn: str, path: str, count: int, conversations: int, member: int, query_count: int, seed: int
) -> None:
    words = vocabulary(seed)
    sample = list(texts(200, words, seed + 7))
    kinds = queries(words, sample, query_count, seed)
    member_of = tuple(range(1, conversations + 1, max(1, conversations // member)))[:member]
    print(f"{count} messages in {conversations} conversations, searcher in {len(member_of)}, {query_count} per kind")
    start = time.perf_counter()
    if store == "sqlite":
        with tempfile.TemporaryDirectory() as folder:
            file = Path(path) if path else Path(folder) / "bench.db"
            log: MessageLog
            if file.exists():  # --path of an earlier run: filled already
                db, _, log = await open_sqlite(file, 60.0)
            else:
                db, log = await fill_sqlite(file, count, conversations, words, seed)
            print(f"loaded in {time.perf_counter() - start:.0f} s", flush=True)
            try:
                for order in ORDERS:
                    print(report(store, order, await measure(log, kinds, member_of, order)), flush=True)
            finally:
                await log.close()
                await db.close()
        return
    if await _filled(dsn):  # an earlier run's database
        pools = await PostgresPools.open(dsn, None, min_size=1, max_size=2, timeout=60)
        log = PostgresMessageLog(pools)
    else:
        pools, log = await fill_postgres(dsn, count, conversations, words, seed)
    print(f"loaded in {time.perf_counter() - start:.0f} s", flush=True)
    try:
        for order in ORDERS:
            print(report(store, order, await measure(log, kinds, member_of, order)), flush=True)
    finally:
        await log.close()
        await pools.close()


async def _filled(dsn: str) -> bool:
    conn = await asyncpg.connect(dsn)
    try:
        exists = await conn.fetchval("SELECT to_regclass('messages') IS NOT NULL")
        return bool(exists) and bool(await conn.fetchval("SELECT EXISTS (SELECT 1 FROM messages)"))
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument(
        "--dsn",
        default="",
        help="an empty PostgreSQL database (--store postgres); one filled by an earlier run is reused",
    )
    parser.add_argument("--path", default="", help="SQLite file to fill and keep (reused when it exists)")
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--conversations", type=int, default=1_000)
    parser.add_argument("--member-of", type=int, default=100, help="conversations the searcher is a member of")
    parser.add_argument("--queries", type=int, default=200, help="searches of each kind")
    parser.add_argument("--seed", type=int, default=15)
    args = parser.parse_args()
    if args.store == "postgres" and not args.dsn:
        parser.error("--store postgres needs --dsn")
    asyncio.run(
        run(args.store, args.dsn, args.path, args.messages, args.conversations, args.member_of, args.queries, args.seed)
    )


if __name__ == "__main__":
    main()
