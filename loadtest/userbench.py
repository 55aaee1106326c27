"""``python -m hubbub.loadtest.userbench``: the latency of ``user.search``'s store
query (``Directory.search_users``) over a directory of many users.

Fills a fresh directory (SQLite in a temporary file, or a PostgreSQL
database given by ``--dsn``, which must be empty and is left filled) with
``--users`` accounts in bulk (one transaction, as ``create_user`` stores
them: the lowercased ``search_name`` included; one in ten hidden from
search), then times ``--queries`` searches for prefixes of one to three
characters taken from the stored usernames and display names (so most
match), each as the handler asks for its default page: 21 rows. Prints
p50, p99 and the mean rows returned.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from pathlib import Path

import asyncpg

from hubbub.storage.base import Directory
from hubbub.storage.postgres import PostgresDirectory, PostgresPools, migrate
from hubbub.storage.rows import search_key
from hubbub.storage.sqlite import open_sqlite

FIRST = [
    "Ada",
    "Alan",
    "Grace",
    "Linus",
    "Barbara",
    "Ken",
    "Edsger",
    "Margaret",
    "Donald",
    "Frances",
    "Élodie",
    "Øyvind",
]
LAST = ["Lovelace", "Turing", "Hopper", "Torvalds", "Liskov", "Thompson", "Dijkstra", "Hamilton", "Knuth", "Allen"]
PAGE = 21
"""What the handler asks the store for at the default limit of 20: one more, to know whether a page follows."""


def users(count: int, seed: int) -> list[tuple[str, str, str, int, str, bool]]:
    """(username, display_name, password_hash, created_at, search_name, searchable) of ``count`` users."""
    rng = random.Random(seed)
    rows = []
    for n in range(count):
        first, last = rng.choice(FIRST), rng.choice(LAST)
        username = f"{first.lower()[:3]}{last.lower()[:4]}{n}".encode("ascii", "ignore").decode()
        display = f"{first} {last}"
        rows.append(
            (username or f"u{n}", display, "argon2$bench", 1_700_000_000_000 + n, search_key(display), n % 10 != 0)
        )
    return rows


def prefixes(rows: list[tuple[str, str, str, int, str, bool]], count: int, seed: int) -> list[str]:
    rng = random.Random(seed + 1)
    picked = []
    for _ in range(count):
        username, display_name = rng.choice(rows)[:2]
        source = rng.choice((username, display_name))
        picked.append(source[: rng.randint(1, 3)])
    return picked


async def fill_sqlite(path: Path, rows: list[tuple[str, str, str, int, str, bool]]) -> Directory:
    db, directory, _ = await open_sqlite(path, 30.0)
    sql = (
        "INSERT INTO users (username, display_name, password_hash, created_at, search_name, searchable)"
        " VALUES (?, ?, ?, ?, ?, ?)"
    )
    await db.transaction(lambda c: c.executemany(sql, rows))
    return directory


async def fill_postgres(dsn: str, rows: list[tuple[str, str, str, int, str, bool]]) -> tuple[Directory, PostgresPools]:
    await migrate(dsn)
    conn = await asyncpg.connect(dsn)
    try:
        columns = ["username", "display_name", "password_hash", "created_at", "search_name", "searchable"]
        await conn.copy_records_to_table("users", records=rows, columns=columns)
        await conn.execute("VACUUM ANALYZE users")  # as autovacuum would soon after a bulk load
    finally:
        await conn.close()
    pools = await PostgresPools.open(dsn, None, min_size=1, max_size=2, timeout=30)
    return PostgresDirectory(pools), pools


async def measure(directory: Directory, queries: list[str]) -> tuple[float, float, float]:
    """p50 and p99 in milliseconds, and the mean rows returned."""
    for query in queries[:50]:  # warm the caches and the connection
        await directory.search_users(query, after=None, limit=PAGE)
    latencies, returned = [], []
    for query in queries:
        start = time.perf_counter()
        found = await directory.search_users(query, after=None, limit=PAGE)
        latencies.append((time.perf_counter() - start) * 1000)
        returned.append(len(found))
    cuts = statistics.quantiles(latencies, n=100)
    return cuts[49], cuts[98], statistics.fmean(returned)


async def run(store: str, dsn: str, count: int, query_count: int, seed: int) -> str:
    rows = users(count, seed)
    queries = prefixes(rows, query_count, seed)
    if store == "sqlite":
        with tempfile.TemporaryDirectory() as folder:
            directory = await fill_sqlite(Path(folder) / "bench.db", rows)
            p50, p99, mean = await measure(directory, queries)
    else:
        directory, pools = await fill_postgres(dsn, rows)
        try:
            p50, p99, mean = await measure(directory, queries)
        finally:
            await pools.close()
    searches = f"{count} users, {query_count} searches of 1-3 characters"
    return f"{store}: {searches}: p50 {p50:.3f} ms, p99 {p99:.3f} ms, {mean:.1f} rows on average"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--dsn", default="", help="an empty PostgreSQL database (--store postgres)")
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=2_000)
    parser.add_argument("--seed", type=int, default=12)
    args = parser.parse_args()
    if args.store == "postgres" and not args.dsn:
        parser.error("--store postgres needs --dsn")
    print(asyncio.run(run(args.store, args.dsn, args.users, args.queries, args.seed)))


if __name__ == "__main__":
    main()
