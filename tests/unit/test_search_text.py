"""The text rules of message.search (protocol/search.py) and their translation
into each engine's syntax (storage/search_sql.py), without a store."""

from __future__ import annotations

import random
import sqlite3

import pytest

from hubbub.protocol.search import (
    MAX_QUERY_TERMS,
    QueryError,
    Term,
    highlights,
    index_text,
    matches,
    normalise,
    parse,
    relevance,
    words,
)
from hubbub.storage.records import InvalidPosition
from hubbub.storage.search_sql import (
    SQLITE_MAX_TS,
    fts5_match,
    fts5_text,
    parse_ts_position,
    sqlite_position,
    sqlite_rowid_base,
    ts_position,
    tsquery,
)


def test_words_are_letters_and_digits_folded() -> None:
    assert [s.word for s in words("Éclair, DÉJÀ-vu_2 straße №5")] == ["eclair", "deja", "vu", "2", "strasse", "5"]
    assert [(s.start, s.end) for s in words("ab  cd")] == [(0, 2), (4, 6)]
    assert normalise("Ñandú") == "nandu"
    assert index_text("Hello, World! x_y") == "hello world x y"
    assert words("!!! ... ---") == []


@pytest.mark.parametrize(
    "text", ["Hello, World! x_y 42", "MiXeD-case_words and 3.14", "", "  ", "Déjà vu", "ǅemal ﬁne"]
)
def test_index_text_is_the_normalised_words_ascii_fast_path_included(text: str) -> None:
    assert index_text(text) == " ".join(s.word for s in words(text))


def test_parse_words_prefixes_phrases() -> None:
    assert parse("deploy") == [Term(("deploy",))]
    assert parse("Depl*") == [Term(("depl",), prefix=True)]
    assert parse('"release notes" deploy') == [Term(("release", "notes")), Term(("deploy",))]
    assert parse('"release no"*') == [Term(("release", "no"), prefix=True)]
    assert parse("foo-bar") == [Term(("foo", "bar"))], "punctuation inside a term: a phrase"
    assert parse('"unclosed phrase') == [Term(("unclosed", "phrase"))]
    assert parse("a a A") == [Term(("a",))], "each term once"


@pytest.mark.parametrize("query", ["", "   ", "!!!", '""', "* *", "-"])
def test_a_query_without_words_is_refused(query: str) -> None:
    with pytest.raises(QueryError):
        parse(query)


def test_too_many_terms_and_short_prefixes_are_refused() -> None:
    assert len(parse(" ".join(f"w{n}" for n in range(MAX_QUERY_TERMS)))) == MAX_QUERY_TERMS
    with pytest.raises(QueryError):
        parse(" ".join(f"w{n}" for n in range(MAX_QUERY_TERMS + 1)))
    with pytest.raises(QueryError):
        parse("a*")


def test_store_operators_are_plain_words() -> None:
    assert parse("cats OR dogs NEAR(x) text:y -z") == [
        Term(("cats",)),
        Term(("or",)),
        Term(("dogs",)),
        Term(("near", "x")),
        Term(("text", "y")),
        Term(("z",)),
    ]


def test_highlights_are_code_point_offsets_of_every_matched_word() -> None:
    text = "Café 🎉 at the café, cafeteria later"
    assert highlights(text, parse("cafe")) == [(0, 4), (14, 18)], "🎉 is one code point"
    assert highlights(text, parse("caf*")) == [(0, 4), (14, 18), (20, 29)]
    assert highlights(text, parse('"the cafe"')) == [(10, 13), (14, 18)]
    assert highlights(text, parse("nothing")) == []
    for start, end in highlights(text, parse("caf*")):
        assert normalise(text[start:end]).startswith("caf")


def test_matches_needs_every_term_and_phrases_in_order() -> None:
    text = "the release notes are out"
    assert matches(text, parse("release out"))
    assert matches(text, parse('"release notes"'))
    assert not matches(text, parse('"notes release"'))
    assert not matches(text, parse("release missing"))
    assert matches(text, parse('"release no"*'))
    assert relevance("zebra zebra", parse("zebra")) > relevance("zebra " + "x " * 30, parse("zebra"))


def test_engine_syntax_quotes_every_word() -> None:
    terms = tuple(parse('"release notes" depl* x'))
    assert fts5_match(terms) == '"release notes" "depl"* "x"'
    assert tsquery(terms) == "('release' <-> 'notes') & ('depl':*) & ('x')"


def test_positions_round_trip_and_refuse_forgeries() -> None:
    assert parse_ts_position(ts_position(1_700_000_000_000, 7, 42)) == (1_700_000_000_000, 7, 42)
    assert sqlite_position("123") == 123
    for bad in ("", "1.2", "a", "-1", "1" * 20):
        with pytest.raises(InvalidPosition):
            sqlite_position(bad)
    for bad in ("", "1.2", "1.2.x", "1.2.3.4", "-1.2.3", f"{2**63}.1.1"):
        with pytest.raises(InvalidPosition):
            parse_ts_position(bad)


def test_sqlite_rowids_keep_time_order() -> None:
    assert sqlite_rowid_base(1) - sqlite_rowid_base(0) == 1 << 20
    assert sqlite_rowid_base(-5) == 0
    assert sqlite_rowid_base(SQLITE_MAX_TS + 10) == sqlite_rowid_base(SQLITE_MAX_TS) < 2**63


def _fts5_tokens(conn: sqlite3.Connection, text: str) -> list[tuple[str, int]]:
    """The (word, position) entries SQLite's FTS5 table (SEARCH_MIGRATION's tokenizer) makes of ``text``."""
    conn.execute("DELETE FROM t")
    conn.execute("INSERT INTO t (rowid, text) VALUES (1, ?)", (text,))
    return conn.execute("SELECT term, offset FROM v ORDER BY offset").fetchall()


ASCII_SAMPLES = [
    "Hello, World! x_y 42",
    "MiXeD-case_words and 3.14 -- e-mail: a.b@c.d",
    "tabs\tand\nnew\rlines\x00nul\x1fctl\x7fdel",
    "punctuation!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~end",
    "",
    "   ",
    "CamelCase ALLCAPS lower 007 0x1F",
]


@pytest.mark.parametrize("text", [*ASCII_SAMPLES, "".join(chr(n) for n in range(128)) * 2])
def test_fts5_is_given_ascii_text_as_is_and_indexes_the_same_words(text: str) -> None:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE VIRTUAL TABLE t USING fts5(text, tokenize='unicode61 remove_diacritics 2')")
    conn.execute("CREATE VIRTUAL TABLE v USING fts5vocab(t, instance)")
    assert fts5_text(text) == text
    assert _fts5_tokens(conn, text) == _fts5_tokens(conn, index_text(text))
    assert [word for word, _ in _fts5_tokens(conn, text)] == index_text(text).split()


def test_fts5_is_given_other_text_cut_by_index_text() -> None:
    assert fts5_text("Déjà VU, straße") == index_text("Déjà VU, straße") == "deja vu strasse"


def test_fts5_indexes_random_ascii_text_as_index_text_cuts_it() -> None:
    rng = random.Random(15)
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE VIRTUAL TABLE t USING fts5(text, tokenize='unicode61 remove_diacritics 2')")
    conn.execute("CREATE VIRTUAL TABLE v USING fts5vocab(t, instance)")
    for _ in range(300):
        text = "".join(chr(rng.randrange(128)) for _ in range(rng.randrange(1, 80)))
        assert _fts5_tokens(conn, text) == _fts5_tokens(conn, index_text(text)), repr(text)
