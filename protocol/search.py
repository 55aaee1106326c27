"""The text rules of ``message.search``: what a query means, what a word is,
and where a query's words are in a message (its highlights).

Pure rules, no store: every store indexes and matches words as they are cut
here, so a query means the same on SQLite FTS5, PostgreSQL and the index the
MongoDB topology keeps (docs/storage.md, Search).

A **word** is a run of letters and digits (Unicode categories L and N; ``_``
and every other character separate words), compared case-folded and without
diacritics (``Éclair`` and ``eclair`` are one word), which is what SQLite's
``unicode61 remove_diacritics 2`` tokenizer does. A **query** is terms, all
of which must match (AND):

- a word: ``deploy``;
- a prefix: a word ending in ``*`` matches every word that starts with it
  (``depl*`` finds ``deploy`` and ``deployment``);
- a phrase: words in double quotes match those words one after another
  (``"release notes"``); a phrase's last word may end in ``*``.

Everything else is not syntax: punctuation inside a term separates words
(``foo-bar`` is the phrase ``"foo bar"``), an unclosed quote runs to the end
of the query, and no FTS operator (``OR``, ``NEAR``, ``-``, ``:``, column
filters) means anything, so no query can reach a store's own query syntax.
A query without a word is refused (``QueryError``, ``bad_request``).
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Sequence
from typing import NamedTuple

MAX_QUERY_TERMS = 16
"""Most terms one query may have (``QueryError`` beyond): each is an index lookup."""
MIN_PREFIX_CHARS = 2
"""Shortest prefix term: a one-letter prefix would read a large part of the index."""

_WORD = re.compile(r"[^\W_]+")
"""A run of letters and digits (``\\w`` without the underscore)."""
_TERM = re.compile(r'"([^"]*)("?)(\*?)|([^\s"]+)')
"""A quoted phrase (its closing quote optional, then an optional ``*``), or a run of non-space, non-quote characters."""


class QueryError(ValueError):
    """A query that means nothing: no word, too many terms, too short a prefix."""


class Term(NamedTuple):
    words: tuple[str, ...]
    """Normalised words (``normalise``), one after another; one for a word or a prefix."""
    prefix: bool = False
    """The last word matches every word that starts with it."""


class Span(NamedTuple):
    """A word of a text: ``[start, end)`` in code points, and its normalised form."""

    start: int
    end: int
    word: str


def normalise(word: str) -> str:
    """A word as every store compares it: case-folded, without diacritics."""
    decomposed = unicodedata.normalize("NFKD", word.casefold())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def words(text: str) -> list[Span]:
    """Every word of ``text``, in order."""
    return [Span(m.start(), m.end(), normalise(m.group())) for m in _WORD.finditer(text)]


def index_text(text: str) -> str:
    """``text`` as a store indexes it: its normalised words, separated by spaces.

    What PostgreSQL's ``to_tsvector`` reads, so its parser sees the words
    cut as they are here (and as SQLite's tokenizer cuts them). On the send
    path: ASCII text, the common case, has no diacritics and folds by
    ``lower()``, so it skips the per-word Unicode normalisation (the same
    words, about ten times faster)."""
    if text.isascii():
        return " ".join(_WORD.findall(text.lower()))
    return " ".join(span.word for span in words(text))


def parse(query: str) -> list[Term]:
    """The terms of ``query``, in order, each once; QueryError when it has none or too many."""
    terms: list[Term] = []
    for match in _TERM.finditer(query):
        phrase, _closed, star, bare = match.groups()
        if bare is not None:
            term = Term(tuple(normalise(w) for w in _WORD.findall(bare)), prefix=bare.endswith("*"))
        else:
            term = Term(tuple(normalise(w) for w in _WORD.findall(phrase)), prefix=bool(star))
        if not term.words:
            continue
        if term.prefix and len(term.words[-1]) < MIN_PREFIX_CHARS:
            raise QueryError(f"a prefix needs at least {MIN_PREFIX_CHARS} letters or digits before '*'")
        if term not in terms:
            terms.append(term)
    if not terms:
        raise QueryError("query: no word to search for (words are letters and digits)")
    if len(terms) > MAX_QUERY_TERMS:
        raise QueryError(f"query: more than {MAX_QUERY_TERMS} terms")
    return terms


def _word_matches(word: str, wanted: str, prefix: bool) -> bool:
    return word.startswith(wanted) if prefix else word == wanted


def _phrase_at(spans: list[Span], at: int, term: Term) -> bool:
    """Whether ``term``'s words are the words of ``spans`` from index ``at`` on."""
    if at + len(term.words) > len(spans):
        return False
    last = len(term.words) - 1
    return all(
        _word_matches(spans[at + n].word, wanted, term.prefix and n == last) for n, wanted in enumerate(term.words)
    )


def highlights(text: str, terms: Sequence[Term]) -> list[tuple[int, int]]:
    """Where ``terms`` match in ``text``: ``[start, end)`` code point offsets of
    each matched word (a phrase's every word), in text order, each once."""
    spans = words(text)
    marked: set[int] = set()
    for at in range(len(spans)):
        for term in terms:
            if _phrase_at(spans, at, term):
                marked.update(range(at, at + len(term.words)))
    return [(spans[n].start, spans[n].end) for n in sorted(marked)]


def matches(text: str, terms: Sequence[Term]) -> bool:
    """Whether ``text`` matches every term: what a store's index answers, checked on the text itself."""
    spans = words(text)
    return all(any(_phrase_at(spans, at, term) for at in range(len(spans))) for term in terms)


def relevance(text: str, terms: Sequence[Term]) -> float:
    """A score of how well ``text`` matches (more matched words in a shorter
    text is better), for a store without a ranking of its own."""
    spans = words(text)
    if not spans:
        return 0.0
    return len(highlights(text, terms)) / (1.0 + math.log(len(spans)))
