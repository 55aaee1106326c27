"""The two kinds of explicit transaction the SQLite store opens on its connection.

The connection runs in autocommit mode (``isolation_level=None``): Python's
sqlite3 module opens no transaction of its own, so every multi-statement
unit says which kind it needs, here and nowhere else.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def write_transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back on any error.

    IMMEDIATE takes the file's write lock before the first read, so what the
    body reads cannot change under it in another process before it commits
    (a migration's version, a count and the update that follows it)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


@contextmanager
def read_snapshot(conn: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN`` ... ``COMMIT`` around reads: every read in the body sees one
    snapshot of the file, even while another process writes it (in WAL mode a
    deferred transaction's snapshot starts at its first read)."""
    conn.execute("BEGIN")
    try:
        yield
    finally:
        conn.execute("COMMIT")
