"""SQLite's deferred search index (storage/sqlite_index.py; docs/storage.md,
Search): a batch commits without its FTS5 entries, an index transaction
indexes many batches as one segment (when the writer is idle, or at once past
the pending bound), the watermark in the file says what is indexed, and

- a search finds a message as soon as its send was acknowledged;
- an edit, delete or purge of a message not yet indexed is right at once
  (never found by deleted or edited-away text);
- a message below the watermark (an imported old one) is indexed by its append;
- a process killed with unindexed messages leaves them to the next open;
- another process on the same file sees and keeps the same rule."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from pathlib import Path

import msgspec

from hubbub.protocol.search import parse
from hubbub.storage.records import MessageQuery, NewMessage
from hubbub.storage.sqlite import SqliteDatabase, SqliteMessageLog, open_sqlite, reindex_sqlite
from hubbub.storage.sqlite_index import watermark

NOW = 1_800_000_000_000
NEVER = 3600.0
"""An idle bound no test reaches: the index transaction runs only when a test makes it."""


def segments(c: sqlite3.Connection) -> int:
    (count,) = c.execute("SELECT count(DISTINCT segid) FROM message_search_idx").fetchone()
    return int(count)


def top_rowid(c: sqlite3.Connection) -> int:
    (top,) = c.execute("SELECT max(search_rowid) FROM messages").fetchone()
    return int(top)


def message(n: int, text: str, *, room: int = 1, ts: int | None = None) -> NewMessage:
    return NewMessage(
        conversation_id=room, sender_id=1, text=text, client_msg_id=f"m{n}", ts=NOW + n if ts is None else ts
    )


def query(words: str, *rooms: int) -> MessageQuery:
    return MessageQuery(terms=tuple(parse(words)), conversation_ids=rooms or (1,), limit=50)


async def texts(log: SqliteMessageLog, words: str, *rooms: int) -> list[str]:
    return [h.record.text for h in await log.search(query(words, *rooms))]


async def unindexed_store(path: Path, **bounds: float) -> tuple[SqliteDatabase, SqliteMessageLog]:
    db, _, log = await open_sqlite(
        path, 5.0, index_idle_seconds=bounds.get("idle", NEVER), index_max_pending=int(bounds.get("most", 10**6))
    )
    return db, log


async def test_many_batches_are_one_index_transaction_and_one_segment_found_right_after_the_ack(
    tmp_path: Path,
) -> None:
    db, log = await unindexed_store(tmp_path / "h.db")
    try:
        for n in range(30):  # one at a time: 30 batches, 30 commits
            await log.append(message(n, f"alpha {n}"))
        assert await db.run(segments) == 0, "no batch wrote an index entry"
        assert await db.run(watermark) == 0
        assert log.index.pending == 30
        # Acknowledged, so found: the search runs the index transaction first.
        found = await texts(log, "alpha")
        assert found == [f"alpha {n}" for n in reversed(range(30))]
        assert await db.run(segments) == 1, "the 30 batches' entries are one segment"
        assert await db.run(watermark) == await db.run(top_rowid)
        await log.append(message(30, "alpha 30"))
        assert (await texts(log, "alpha"))[0] == "alpha 30"
        assert await db.run(segments) == 2
        assert await db.run(lambda c: c.execute("PRAGMA synchronous").fetchone()[0]) == 2, "FULL again after it"
    finally:
        await log.close()
        await db.close()


async def test_the_index_transaction_runs_once_the_writer_is_idle(tmp_path: Path) -> None:
    db, log = await unindexed_store(tmp_path / "h.db", idle=0.01)
    try:
        await asyncio.gather(*(log.append(message(n, f"beta {n}")) for n in range(40)))
        await log.index.settled()
        assert log.index.transactions == 1 and log.index.pending == 0
        assert await db.run(watermark) == await db.run(top_rowid)
        assert await db.run(segments) == 1
    finally:
        await log.close()
        await db.close()


async def test_the_index_transaction_runs_at_once_past_the_pending_bound(tmp_path: Path) -> None:
    db, log = await unindexed_store(tmp_path / "h.db", most=5)
    try:
        for n in range(4):
            await log.append(message(n, f"gamma {n}"))
        assert log.index.transactions == 0
        await log.append(message(4, "gamma 4"))  # the fifth: not idle, but the bound
        await log.index.settled()
        assert log.index.transactions == 1
        assert await db.run(watermark) == await db.run(top_rowid)
        assert await db.run(segments) == 1
    finally:
        await log.close()
        await db.close()


def edit(text: str) -> object:
    return lambda m: msgspec.structs.replace(m, text=text, edited_ts=m.ts + 1)


def delete(m: object) -> object:
    return msgspec.structs.replace(m, text="", deleted=True)  # type: ignore[type-var]


async def test_edits_deletes_and_purges_of_unindexed_messages_are_right_at_once(tmp_path: Path) -> None:
    db, log = await unindexed_store(tmp_path / "h.db")
    try:
        edited = await log.append(message(1, "before words"))
        deleted = await log.append(message(2, "doomed words"))
        kept = await log.append(message(3, "kept words", room=2))
        purged = await log.append(message(4, "expired words", room=3))
        assert await db.run(watermark) == 0, "none of them indexed yet"
        await log.change_message(1, edited.record.id, edit("after words"))  # type: ignore[arg-type]
        await log.change_message(1, deleted.record.id, delete)  # type: ignore[arg-type]
        assert (await log.purge(3, before_ts=NOW + 10, keep_last=None, limit=10)).purged == 1
        assert await db.run(watermark) == 0, "still none indexed: the changes left the index alone"
        assert await texts(log, "before", 1, 2, 3) == []
        assert await texts(log, "doomed", 1, 2, 3) == []
        assert await texts(log, "expired", 1, 2, 3) == []
        assert await texts(log, "after", 1, 2, 3) == ["after words"]
        assert await texts(log, "words", 1, 2, 3) == ["kept words", "after words"]
        # Indexed now: the same changes go through the index, as before.
        await log.change_message(2, kept.record.id, edit("changed text"))  # type: ignore[arg-type]
        assert await texts(log, "kept", 1, 2, 3) == []
        assert await texts(log, "changed", 1, 2, 3) == ["changed text"]
        await log.change_message(1, edited.record.id, delete)  # type: ignore[arg-type]
        assert await texts(log, "words", 1, 2, 3) == []
        await db.run(lambda c: c.execute("INSERT INTO message_search (message_search) VALUES ('integrity-check')"))
        assert purged.record.id not in {h.record.id for h in await log.search(query("words", 3))}
    finally:
        await log.close()
        await db.close()


async def test_a_message_below_the_watermark_is_indexed_by_its_own_append(tmp_path: Path) -> None:
    db, log = await unindexed_store(tmp_path / "h.db")
    try:
        await log.append(message(10, "recent"))
        assert await texts(log, "recent") == ["recent"]  # indexed: the watermark is at its rowid
        through = await db.run(watermark)
        old = await log.append(message(11, "imported long ago", ts=NOW - 86_400_000))  # an import, or a clock behind
        assert await db.run(segments) == 2, "its append wrote its entry"
        assert await db.run(watermark) == through
        assert log.index.pending == 1  # counted (a later index transaction finds nothing), but already indexed
        await log.change_message(1, old.record.id, edit("imported and edited"))  # type: ignore[arg-type]
        assert await texts(log, "long") == []
        assert await texts(log, "imported") == ["imported and edited"]
    finally:
        await log.close()
        await db.close()


async def test_a_clean_close_indexes_the_tail_and_reindex_moves_the_watermark(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    db, log = await unindexed_store(path)
    for n in range(5):
        await log.append(message(n, f"delta {n}"))
    await log.close()
    assert await db.run(watermark) == await db.run(top_rowid)
    await db.run(lambda c: c.execute("UPDATE search_indexed SET through = 0"))  # as if nothing were indexed
    assert await reindex_sqlite(db) == 5
    assert await db.run(watermark) == await db.run(top_rowid)
    await db.close()


CRASHING_WRITER = """
import asyncio, sys
from pathlib import Path
from hubbub.storage.records import NewMessage
from hubbub.storage.sqlite import open_sqlite

async def main() -> None:
    db, _, log = await open_sqlite(Path(sys.argv[1]), 5.0, index_idle_seconds=3600, index_max_pending=10**6)
    for n in range(5):
        await log.append(NewMessage(conversation_id=1, sender_id=1, text=f"epsilon {n}", client_msg_id=f"e{n}",
                                    ts=1_800_000_000_000 + n))
    print("acked", flush=True)
    await asyncio.Event().wait()  # until killed

asyncio.run(main())
"""


async def test_a_killed_process_leaves_its_unindexed_messages_to_the_next_open(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    writer = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CRASHING_WRITER, str(path), stdout=asyncio.subprocess.PIPE
    )
    try:
        assert writer.stdout is not None
        assert await asyncio.wait_for(writer.stdout.readline(), 60) == b"acked\n"
        with sqlite3.connect(path) as look:  # the acknowledged rows are in the file, unindexed
            assert watermark(look) == 0 and top_rowid(look) > 0
    finally:
        writer.kill()
        await writer.wait()
    db, log = await unindexed_store(path)
    try:
        assert await db.run(watermark) == await db.run(top_rowid), "the open indexed the tail"
        assert await db.run(segments) == 1
        assert await texts(log, "epsilon") == [f"epsilon {n}" for n in reversed(range(5))]
    finally:
        await log.close()
        await db.close()


async def test_two_processes_on_one_file_keep_one_rule(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    first_db, first = await unindexed_store(path)
    second_db, second = await unindexed_store(path)
    try:
        sent = await first.append(message(1, "shared secret"))
        # The other process finds it at once: its search indexes the file's tail, whoever wrote it.
        assert await texts(second, "secret") == ["shared secret"]
        # The first process edits it, now indexed by the second: it reads the watermark in its transaction.
        await first.change_message(1, sent.record.id, edit("shared news"))  # type: ignore[arg-type]
        assert await texts(first, "secret") == [] and await texts(second, "secret") == []
        assert await texts(second, "news") == ["shared news"]
    finally:
        await second.close()
        await first.close()
        await second_db.close()
        await first_db.close()
