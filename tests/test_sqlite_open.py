"""Processes starting at once on one new embedded database all open it.

The switch to WAL on a fresh file needs an exclusive lock, and SQLite answers
`database is locked` at once, without waiting out the busy timeout, to a
connection that would otherwise deadlock; two `hubbub serve` on one new data
dir (as tests/test_shared_store.py and the soak start them) then failed at
random with `startup_failed`.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from multiprocessing.synchronize import Barrier
from pathlib import Path

from hubbub.storage.sqlite import SqliteDatabase

PROCESSES = 4
ROUNDS = 12


def _open_after(barrier: Barrier, path: str, results: multiprocessing.Queue[str]) -> None:
    async def main() -> None:
        db = SqliteDatabase(Path(path), 5.0)
        barrier.wait()
        try:
            await db.open()
            results.put("ok")
        except Exception as exc:
            results.put(repr(exc))
        finally:
            await db.close()

    asyncio.run(main())


def test_processes_opening_one_new_database_at_once_all_succeed(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    failures: list[str] = []
    for round_ in range(ROUNDS):
        barrier = context.Barrier(PROCESSES)
        results: multiprocessing.Queue[str] = context.Queue()
        path = str(tmp_path / f"{round_}.db")
        workers = [context.Process(target=_open_after, args=(barrier, path, results)) for _ in range(PROCESSES)]
        for worker in workers:
            worker.start()
        outcomes = [results.get(timeout=30) for _ in workers]
        for worker in workers:
            worker.join(timeout=30)
        failures += [outcome for outcome in outcomes if outcome != "ok"]
    assert failures == []
