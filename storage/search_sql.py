"""Search terms in each engine's query language, and the SQL stores' search positions.

The terms come from protocol.search.parse: every word is letters and digits
only, normalised, so quoting it is all the escaping either engine needs, and
nothing a user typed reaches SQLite's MATCH or PostgreSQL's ``to_tsquery``
syntax as an operator.
"""

from __future__ import annotations

from hubbub.protocol.search import Term, index_text
from hubbub.storage.records import InvalidPosition

SQLITE_ROWID_TS_SHIFT = 20
"""SQLite's search rowid is ``ts << 20`` plus a counter of the messages of that
millisecond: rowid order is ts order, so ``newest`` reads the index backwards."""
SQLITE_MAX_TS = (1 << 42) - 1
"""Largest ts the rowid holds (year 2109); later (or negative) ts are clamped into range."""


def fts5_match(terms: tuple[Term, ...]) -> str:
    """An FTS5 MATCH expression: each term a quoted phrase (``"a b"``), a prefix
    one with ``*`` after it, all AND-ed (juxtaposed)."""
    parts = []
    for term in terms:
        phrase = '"' + " ".join(term.words) + '"'
        parts.append(phrase + "*" if term.prefix else phrase)
    return " ".join(parts)


def fts5_text(text: str) -> str:
    """What SQLite's FTS5 table is given for a message's text: ASCII text as it
    is, other text as ``index_text`` cuts it. On ASCII the table's tokenizer
    (``unicode61``) cuts and folds exactly as protocol.search does (letters and
    digits, lowercased; ``_`` and the rest separate words), so the index holds
    the same words at the same positions without the Python pass over every
    message sent (tests/unit/test_search_text.py checks it word for word).
    Every write of the index goes through here, so an FTS5 ``delete`` is given
    what its insert was; text indexed as ``index_text(text)`` before holds the
    same tokens, so either deletes it."""
    return text if text.isascii() else index_text(text)


def tsquery(terms: tuple[Term, ...]) -> str:
    """A ``to_tsquery`` expression: each word a quoted lexeme, a phrase's words
    joined by ``<->`` (followed by), a prefix ``:*``, the terms AND-ed (``&``)."""
    parts = []
    for term in terms:
        lexemes = [f"'{word}'" for word in term.words]
        if term.prefix:
            lexemes[-1] += ":*"
        parts.append("(" + " <-> ".join(lexemes) + ")")
    return " & ".join(parts)


def sqlite_rowid_base(ts: int) -> int:
    """The smallest search rowid of a message sent at ``ts``."""
    return min(max(ts, 0), SQLITE_MAX_TS) << SQLITE_ROWID_TS_SHIFT


def sqlite_position(position: str) -> int:
    """A SQLite search position (a rowid); InvalidPosition when it is none."""
    if not position.isdigit() or len(position) > 19:
        raise InvalidPosition(position)
    return int(position)


def ts_position(ts: int, conversation_id: int, seq: int) -> str:
    """A PostgreSQL search position: the hit's place in (ts, conversation, seq) order."""
    return f"{ts}.{conversation_id}.{seq}"


def parse_ts_position(position: str) -> tuple[int, int, int]:
    parts = position.split(".")
    if len(parts) != 3 or not all(p.isdigit() and len(p) <= 19 for p in parts):
        raise InvalidPosition(position)
    ts, conversation_id, seq = (int(p) for p in parts)
    if max(ts, conversation_id, seq) >= 2**63:
        raise InvalidPosition(position)
    return ts, conversation_id, seq
