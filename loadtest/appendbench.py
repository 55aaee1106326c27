"""``python -m hubbub.loadtest.appendbench``: what the embedded store's group
commit costs per batch of appends, with the search index and without it.

Appends ``--batches`` batches of ``--size`` messages (after ``--warmup``
batches) into a fresh SQLite file, each batch as the store's group commit
writes it (``storage.sqlite._append_batch`` inside ``BEGIN IMMEDIATE`` ...
``COMMIT``, on the connection ``SqliteDatabase`` opened and migrated, so with
its pragmas: WAL, ``synchronous=FULL``, ``secure_delete``), the messages
spread over ``--conversations`` conversations, each 6-16 words drawn with
Zipf frequencies from the search benchmark's vocabulary. Prints, per batch:

- ``work``: CPU time of the batch's statements (median and mean, ms);
- ``commit``: wall time of its ``COMMIT`` (the WAL write and fsync; median
  and mean, ms);
- ``wal``: KiB the batch added to the write-ahead log, which is the pages
  the commit writes and syncs (checkpoints are off during the run, so this
  is exact and the same on every run of the same revision);
- ``index``: for a store that indexes in a deferred index transaction
  (storage/sqlite_index.py), that transaction run after every
  ``--index-every`` batches (default: as often as the store's
  ``sqlite_index_max_pending`` default makes it under a continuous load),
  its CPU and WAL per batch of appends (0 for a store that indexes in the
  batch's own commit).

``--no-index`` replaces the FTS5 table by a view whose inserts do nothing
(and the words are not cut), so the difference is what indexing costs.
``--fts5`` gives the table other options (``columnsize=0``, ...) and
``--automerge`` its automerge setting, for trying them. The store code is
whatever ``hubbub`` is on ``PYTHONPATH``, so one copy of this tool measures
another revision's store (BENCHMARKS.md, The send path with indexing on).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from hubbub.loadtest.wordgen import texts, vocabulary
from hubbub.storage import sqlite as store
from hubbub.storage.records import NewMessage

START_TS = 1_800_000_000_000


def _no_index(conn: sqlite3.Connection) -> None:
    if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'message_search'").fetchone() is None:
        return  # a revision before search
    conn.execute("DROP TABLE message_search")
    conn.execute("CREATE VIEW message_search AS SELECT 0 AS rowid, '' AS text")
    conn.execute("CREATE TRIGGER message_search_nothing INSTEAD OF INSERT ON message_search BEGIN SELECT 1; END")


def run(args: argparse.Namespace, directory: Path | None = None) -> dict[str, object]:
    """One run in a fresh file (in ``directory``, else a new temporary one): the figures per batch."""
    path = (directory or Path(tempfile.mkdtemp(prefix="hubbub-appendbench-"))) / "bench.db"
    db = store.SqliteDatabase(path, 5.0)
    asyncio.run(db.open())
    conn = db._conn
    assert conn is not None
    # --no-index also skips cutting the words (the store module's functions,
    # put back before returning: the tool runs inside test processes too).
    originals = {name: getattr(store, name) for name in ("index_text", "fts5_text") if hasattr(store, name)}
    if args.no_index:
        _no_index(conn)
        for name in originals:
            setattr(store, name, lambda text: "")
    elif args.fts5 or args.automerge:
        options = "".join(f", {option}" for option in args.fts5)
        conn.execute("DROP TABLE message_search")
        conn.execute(
            f"CREATE VIRTUAL TABLE message_search USING fts5(text, content=''{options},"
            " tokenize='unicode61 remove_diacritics 2')"
        )
        if args.automerge:
            conn.execute("INSERT INTO message_search (message_search, rank) VALUES ('automerge', ?)", (args.automerge,))
    conn.execute("PRAGMA wal_autocheckpoint=0")
    try:
        return _measure(args, db, conn, Path(f"{path}-wal"))
    finally:
        for name, function in originals.items():
            setattr(store, name, function)


def _index_transaction() -> Callable[[sqlite3.Connection], int] | None:
    """The store's deferred index transaction; None for a revision that indexes in the batch's commit."""
    # The store module's own name for it (a module of the tree measured, not this one's).
    found: Callable[[sqlite3.Connection], int] | None = getattr(store, "index_transaction", None)
    return found


def _index_every(args: argparse.Namespace) -> int:
    """Batches between two index transactions; 0 when the store has none (or --no-index)."""
    if args.no_index or _index_transaction() is None:
        return 0
    if args.index_every:
        return int(args.index_every)
    most: int = getattr(store, "INDEX_MAX_PENDING")  # noqa: B009 (the measured tree's, as above)
    return max(1, -(-most // int(args.size)))


def _measure(
    args: argparse.Namespace, db: store.SqliteDatabase, conn: sqlite3.Connection, wal: Path
) -> dict[str, object]:
    words = texts((args.warmup + args.batches) * args.size, vocabulary(args.seed), args.seed)
    work: list[float] = []
    commit: list[float] = []
    wal_bytes: list[int] = []
    index_cpu = 0.0
    index_bytes = 0
    every = _index_every(args)
    index_transaction = _index_transaction()
    n = 0
    for number in range(args.warmup + args.batches):
        batch = []
        for _ in range(args.size):
            n += 1
            batch.append(
                NewMessage(
                    conversation_id=1 + n % args.conversations,
                    sender_id=1 + n % 7,
                    text=next(words),
                    client_msg_id=f"c{n}",
                    ts=START_TS + n,
                )
            )
        before = wal.stat().st_size if wal.exists() else 0
        cpu = time.thread_time()
        conn.execute("BEGIN IMMEDIATE")
        store._append_batch(conn, batch)
        worked = time.thread_time()
        wall = time.perf_counter()
        conn.execute("COMMIT")
        committed = time.perf_counter()
        if number >= args.warmup:
            work.append((worked - cpu) * 1e3)
            commit.append((committed - wall) * 1e3)
            wal_bytes.append(wal.stat().st_size - before)
        last = number == args.warmup + args.batches - 1
        if index_transaction and every and ((number + 1) % every == 0 or number + 1 == args.warmup or last):
            before = wal.stat().st_size
            cpu = time.thread_time()
            index_transaction(conn)
            if number >= args.warmup:
                index_cpu += time.thread_time() - cpu
                index_bytes += wal.stat().st_size - before
    asyncio.run(db.close())
    return {
        "work_ms_median": round(statistics.median(work), 3),
        "work_ms_mean": round(statistics.fmean(work), 3),
        "commit_ms_median": round(statistics.median(commit), 3),
        "commit_ms_mean": round(statistics.fmean(commit), 3),
        "wal_kib_per_batch": round(statistics.fmean(wal_bytes) / 1024, 2),
        "index_every": every,
        "index_ms_per_batch": round(index_cpu * 1e3 / args.batches, 3),
        "index_wal_kib_per_batch": round(index_bytes / 1024 / args.batches, 2),
    }


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--size", type=int, default=27, help="appends per batch (what 64 sends in flight formed)")
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--conversations", type=int, default=100)
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--no-index", action="store_true", help="no FTS5 insert (the cost without search)")
    parser.add_argument("--fts5", action="append", default=[], help="an FTS5 option, e.g. columnsize=0 (repeatable)")
    parser.add_argument("--automerge", type=int, default=0, help="the FTS5 table's automerge (default: FTS5's, 4)")
    parser.add_argument(
        "--index-every", type=int, default=0, help="batches per deferred index transaction (default: the store's bound)"
    )
    return parser.parse_args(argv)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="hubbub-appendbench-") as directory:
        print(json.dumps(run(arguments(), Path(directory))))


if __name__ == "__main__":
    main()
