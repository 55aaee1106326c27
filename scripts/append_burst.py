"""The PostgreSQL message log alone, in process: bursts of appends into many
conversations submitted at once (what the group commit sees from 100 busy
senders), timed, and the statements they took counted with asyncpg's query
logger. BENCHMARKS.md (group commit across conversations) records its runs.

    .venv/bin/python scripts/append_burst.py postgresql://postgres@127.0.0.1:5432/DB LABEL

Use a database of its own (it migrates it and writes messages there). To run
another commit's storage code, put an export of it first on PYTHONPATH
(a folder ``hubbub/`` holding its ``protocol``, ``server`` and ``storage``).
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
import uuid

import asyncpg

from hubbub.storage.postgres import PostgresMessageLog, PostgresPools, migrate
from hubbub.storage.records import NewMessage

HOUSEKEEPING = ("pg_advisory_unlock_all()", "typeinfo", "'jit'")
"""asyncpg's own statements (the reset on release, type introspection): not counted."""
BURSTS = ((100, 1), (100, 10))
"""(conversations, messages each) of a burst."""
ROUNDS = 7


async def main(dsn: str, label: str) -> None:
    await migrate(dsn)
    queries: list[str] = []

    def logged(record: asyncpg.connection.LoggedQuery) -> None:
        if not any(marker in record.query for marker in HOUSEKEEPING):
            queries.append(record.query)

    async def init(conn: asyncpg.Connection) -> None:
        conn.add_query_logger(logged)

    pool = await asyncpg.create_pool(dsn, min_size=2, max_size=10, init=init)
    log = PostgresMessageLog(PostgresPools(pool, None))
    tag = uuid.uuid4().hex[:6]
    try:
        for conversations, each in BURSTS:
            times: list[float] = []
            statements: list[int] = []
            messages: list[NewMessage] = []
            for n in range(ROUNDS):
                first = 10_000 * (n + 1) + (0 if each == 1 else 500)
                messages = [
                    NewMessage(
                        conversation_id=first + c,
                        sender_id=1,
                        text="hello world " * 8,
                        client_msg_id=f"{tag}-{n}-{c}-{k}",
                        ts=1,
                    )
                    for k in range(each)
                    for c in range(conversations)
                ]
                queries.clear()
                started = time.perf_counter()
                await asyncio.gather(*(log.append(m) for m in messages))
                times.append(time.perf_counter() - started)
                await asyncio.sleep(0)  # the query logger's callbacks
                statements.append(len(queries))
            median = statistics.median(times)
            print(
                f"{label} {conversations}x{each}: median {median * 1000:.1f} ms/burst"
                f" = {len(messages) / median:,.0f} msg/s; statements/burst {statistics.median(statements)}"
            )
    finally:
        await log.close()
        await pool.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
