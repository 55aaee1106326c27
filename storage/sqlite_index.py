"""SQLite's search index kept off the send path: the deferred index (docs/storage.md, Search).

A group commit stores its batch's rows without their FTS5 entries, so the
fsync that acknowledges the sends writes no index pages; a later *index
transaction* indexes every message sent since the last one, many batches in
one FTS5 segment. What is indexed is recorded in the file, not in memory:

    a message is in the FTS5 index exactly when it is not deleted and its
    ``search_rowid`` is at or below the watermark ``search_indexed.through``.

Every writer keeps to that rule inside its own transaction, whichever
process it is in: an append whose rowid is at or below the watermark (an
imported old message, a clock that stepped back) indexes it at once; an edit
or delete of a message above it leaves the index alone (the index
transaction reads its text as it is then), one at or below it replaces the
words as before; retention removes the words only of purged messages at or
below it. The index transaction indexes the rows above the watermark and
raises it to the largest rowid stored, in one transaction, so a crash loses
both or neither: the rows above the watermark are the unindexed tail, which
the store indexes when it opens (``open_sqlite``), and a search indexes before
it reads (``SqliteMessageLog.search``), so a message is found as soon as its
send is acknowledged, by any process on the file.

The index transaction runs with ``synchronous=NORMAL``: it does not wait
for its own fsync. In WAL mode that keeps the file consistent (a lost or
torn transaction fails its frames' checksums and is not replayed, watermark
and entries together), a later ``synchronous=FULL`` commit's fsync of the
WAL file makes it durable too, and should it be lost, the tail is indexed
again at the next open: the index is rebuilt from ``messages``, never the
other way round.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable

from hubbub.storage import supervision
from hubbub.storage.errors import StoreUnavailable
from hubbub.storage.search_sql import fts5_text
from hubbub.storage.sqlite_transactions import write_transaction

INDEX_IDLE_SECONDS = 0.05
"""The index transaction runs once no batch was stored this long: the default of
the setting ``sqlite_index_idle_seconds`` (server/config.py, README)."""
INDEX_MAX_PENDING = 2000
"""... or at once when this many messages wait: ``sqlite_index_max_pending``'s default."""

Run = Callable[[Callable[[sqlite3.Connection], int]], Awaitable[int]]
"""``SqliteDatabase.run``: a function of the connection, on the database thread."""

INDEX_MESSAGE_SQL = "INSERT INTO message_search (rowid, text) VALUES (?, ?)"
UNINDEX_MESSAGE_SQL = "INSERT INTO message_search (message_search, rowid, text) VALUES ('delete', ?, ?)"
"""FTS5's ``delete`` of a contentless table: it needs exactly the text that was indexed (``fts5_text``)."""

_TAIL_SQL = (
    "SELECT search_rowid, text FROM messages INDEXED BY messages_search_rowid"
    " WHERE search_rowid > ? AND deleted = 0 ORDER BY search_rowid"
)
"""The unindexed tail, in rowid order (a smaller rowid than the previous one makes FTS5 start a segment)."""


def watermark(c: sqlite3.Connection) -> int:
    """The largest search rowid the index covers (read in the caller's transaction)."""
    (through,) = c.execute("SELECT through FROM search_indexed").fetchone()
    return int(through)


def behind(c: sqlite3.Connection) -> bool:
    """Whether messages are stored above the watermark (two index lookups, no transaction)."""
    (top,) = c.execute("SELECT max(search_rowid) FROM messages").fetchone()
    return top is not None and int(top) > watermark(c)


def index_tail(c: sqlite3.Connection) -> int:
    """Index the messages above the watermark and raise it past every stored
    rowid, in the caller's write transaction; how many messages it indexed."""
    through = watermark(c)
    (top,) = c.execute("SELECT max(search_rowid) FROM messages").fetchone()
    if top is None or top <= through:
        return 0
    entries = [(rowid, fts5_text(text)) for rowid, text in c.execute(_TAIL_SQL, (through,))]
    # The watermark first: the entries' insert is then the transaction's last
    # statement, so FTS5 writes them as one segment at commit.
    c.execute("UPDATE search_indexed SET through = ?", (top,))
    c.executemany(INDEX_MESSAGE_SQL, entries)
    return len(entries)


def index_transaction(c: sqlite3.Connection) -> int:
    """The index transaction: ``index_tail`` in a write transaction of its own
    that does not wait for its fsync (module docstring); 0 at once when
    nothing is behind."""
    if not behind(c):
        return 0
    c.execute("PRAGMA synchronous=NORMAL")
    try:
        with write_transaction(c):
            indexed = index_tail(c)
    finally:
        c.execute("PRAGMA synchronous=FULL")
    return indexed


class DeferredIndex:
    """When the index transaction runs: once no batch has been stored for
    ``idle`` seconds, or at once when ``max_pending`` messages wait, whichever
    comes first. ``pending`` counts this process's unindexed appends; other
    processes' appends are indexed by their own, by a search, or at open."""

    def __init__(self, run: Run, *, idle: float, max_pending: int) -> None:
        self._run = run
        self.idle = idle
        self.max_pending = max_pending
        self.pending = 0
        self.transactions = 0
        """Index transactions run so far (what the counting test divides by)."""
        self._timer: asyncio.TimerHandle | None = None
        self._flight: asyncio.Task[None] | None = None
        self._on_failure = supervision.current_hook()
        self._failures = 0
        self._settled = asyncio.Event()
        self._settled.set()

    async def settled(self) -> None:
        """Return once nothing of this process waits for the index transaction (tests await it)."""
        await self._settled.wait()

    def added(self, count: int) -> None:
        """A batch stored ``count`` messages not yet indexed (on the event loop)."""
        if count <= 0:
            return
        self.pending += count
        self._settled.clear()
        if self.pending >= self.max_pending:
            self._start()
        else:
            self._arm(self.idle)

    def caught_up(self) -> None:
        """An index transaction of someone else's (a search's, queued now on the
        database thread after every batch stored so far) will index what waits."""
        self.pending = 0
        if self._flight is None:
            self._disarm()
            self._settled.set()

    def _arm(self, delay: float) -> None:
        self._disarm()
        self._timer = asyncio.get_running_loop().call_later(delay, self._start)

    def _start(self) -> None:
        self._disarm()
        if self._flight is None:  # one at a time; a running one re-arms when more came meanwhile
            self._flight = asyncio.get_running_loop().create_task(self._index())

    async def _index(self) -> None:
        try:
            # What this process stored until now is indexed by this transaction
            # (the database thread runs it after every batch already queued).
            self.pending = 0
            await self._run(index_transaction)
            self.transactions += 1
            self._failures = 0
        except Exception as exc:
            # The tail stays in the file: a search, the next try or the next open indexes it.
            self._failures += 1
            if not isinstance(exc, StoreUnavailable):
                supervision.report("search_index", exc, self._on_failure, consecutive=self._failures)
            self.pending = max(self.pending, 1)
            self._flight = None
            self._arm(supervision.backoff(self._failures))
            return
        self._flight = None
        if self.pending >= self.max_pending:
            self._start()
        elif self.pending and self._timer is None:
            self._arm(self.idle)
        elif not self.pending:
            self._settled.set()

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def close(self) -> None:
        """Index what is pending now (a clean shutdown leaves no tail)."""
        self._disarm()
        if self._flight is not None:
            await asyncio.gather(self._flight, return_exceptions=True)
        self._disarm()  # a failed flight re-armed itself
        try:
            await self._run(index_transaction)
        except Exception as exc:  # the next open indexes the tail
            supervision.report("search_index", exc, self._on_failure)
        self.pending = 0
        self._settled.set()
