"""BM25 for a cross-session search, ranked in Python over its window of matches.

Why not FTS5's ``bm25()``: it works out each phrase's IDF by walking the
phrase's whole doclist on every query (about 20 ms for a word in 400,000 of
1M messages), however few rows are ranked. Here the IDF comes from document
counts kept per index (:class:`DocFreqs`), and each message of the window is
scored from its own text (:func:`normalize`): the same formula, constants
and tie order as FTS5's ``bm25()`` (:func:`score_window`), so for ASCII text
the scores are FTS5's own (the tests compare them).

What is approximate, and how much:

- A phrase's document count may be a little stale: it is recounted once the
  index has seen more row changes since the count than ``DF_SLACK`` of it
  (1%), and at once after another connection wrote the file.
- Text that is not ASCII is tokenized here like FTS5's ``unicode61
  remove_diacritics 2`` (lower case, marks dropped, non-word characters
  separate), not by it: a rare mismatch changes a score (a match always
  counts at least once), never which messages match (FTS5 decides that).
- A plain-words query with a word that is not ASCII, or has no letters or
  digits, is not ranked here (:func:`phrases` returns None): the caller ranks
  it with FTS5.

Pure apart from :class:`DocFreqs` (which reads its connection).
"""

from __future__ import annotations

import math
import re
import sqlite3
import unicodedata
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from storage.search import phrase_expr, query_words

# FTS5's bm25() constants (fts5_aux.c)
K1 = 1.2
B = 0.75
# a phrase's cached document count is reused while the index saw at most this share
# of it in row changes since it was counted
DF_SLACK = 0.01
DF_CACHE_SIZE = 4096
# rank with FTS5's bm25() while the phrases' doclists are at most this many times the
# window (see fts5_is_cheaper)
FTS5_RATIO = 64

# ASCII as unicode61 sees it: letters and digits are token characters (lowered),
# everything else separates tokens; bytes >= 128 are kept (only text that is not
# ASCII has them, and it takes the other path)
_ASCII = bytes(
    (ch + 32 if 65 <= ch <= 90 else ch) if (chr(ch).isalnum() or ch >= 128) else 32
    for ch in range(256)
)
_NOT_TOKEN = re.compile(r"[\W_]+")


@dataclass(frozen=True, slots=True)
class Phrase:
    """One phrase of a plain-words query: its FTS5 expression, and the bytes it is
    in a normalized text (:func:`normalize`; a prefix phrase has no closing space)."""

    expr: str
    pattern: bytes


def _tokens(text: str) -> list[bytes]:
    if text.isascii():
        return text.encode().translate(_ASCII).split()
    folded = unicodedata.normalize("NFD", text.lower())
    folded = "".join(ch for ch in folded if not unicodedata.combining(ch))
    return _NOT_TOKEN.sub(" ", folded).encode().split()


def normalize(text: str) -> tuple[bytes, int]:
    """``text`` as its tokens, lowered, each with a space either side
    (``b" tok1  tok2 "``), and how many there are. Pure."""
    toks = _tokens(text)
    return b" " + b"  ".join(toks) + b" ", len(toks)


def stored_tokens(text: str) -> tuple[bytes | None, int]:
    """What the index keeps of ``text``'s tokens (``docs.norm``, ``docs.ntok``): the
    count, and tokens (:func:`normalize`) only when the text is not ASCII (ASCII
    text is tokenized again when scored, at C speed; keeping every row's tokens
    would make the file ~60% larger). Pure."""
    if text.isascii():
        return None, len(_tokens(text))
    return normalize(text)


def phrases(q: str) -> list[Phrase] | None:
    """The phrases of plain-words query ``q`` (as :func:`storage.search.fts_query`
    makes them, in order), or None when this module would not rank them as FTS5
    does: a word that is not ASCII, or has no letter or digit. Pure."""
    out = []
    for word, prefix in query_words(q):
        if not word.isascii():
            return None
        toks = _tokens(word)
        if not toks:
            return None
        pattern = b" " + b"  ".join(toks) + (b"" if prefix else b" ")
        out.append(Phrase(phrase_expr(word, prefix), pattern))
    return out or None


def fts5_is_cheaper(doc_freqs: Sequence[int], window: int) -> bool:
    """Whether FTS5's ``bm25()`` ranks a window of at most ``window`` matches of
    phrases matching ``doc_freqs`` rows each more cheaply than :func:`score_window`.

    The costs (CPU on a 1M-message index, loaded machine, docs/performance.md):
    ``bm25()`` walks every phrase's doclist (~60 ns an entry) and scores each match
    from the index (~2.5 µs); here each match's row is read and scored (~6-7.5 µs).
    So FTS5 wins unless the doclists are longer than ``FTS5_RATIO`` times the
    window. Pure."""
    if not doc_freqs:
        return True
    matches = min(window, *doc_freqs)
    return sum(doc_freqs) <= FTS5_RATIO * matches


def idf(rows: int, hits: int) -> float:
    """FTS5's IDF of a phrase in ``hits`` of ``rows`` rows (never below 1e-6; a
    count a little stale may exceed ``rows``: it is taken as ``rows``)."""
    hits = min(hits, rows)
    value = math.log((rows - hits + 0.5) / (hits + 0.5))
    return value if value > 0.0 else 1e-6


def score_window(
    rows: Iterable[tuple[int, bytes | None, int | None, str | None]],
    patterns: Sequence[bytes],
    idfs: Sequence[float],
    avgdl: float,
) -> list[tuple[float, int]]:
    """``(-score, rowid)`` of each row ``(rowid, norm, ntok, text)`` (``norm`` and
    ``ntok`` as :func:`stored_tokens` keeps them, or both None: made from ``text``),
    sorted: best first, ties in rowid order (FTS5's ``ORDER BY rank``). ``score``
    is FTS5's BM25 (positive)."""
    weights = list(zip(patterns, idfs, strict=True))
    # a phrase of one token is counted in the ASCII text with its separators merely
    # doubled; one of several tokens needs them collapsed to one (normalize)
    quick = all(pattern.count(b" ") <= 2 for pattern in patterns)
    memo: dict[tuple[int, ...], float] = {}  # (length, tf...) -> -score
    out = []
    for rowid, norm, ntok, text in rows:
        if norm is None or ntok is None:
            if quick and ntok is not None and text is not None:
                norm = b" " + text.encode().translate(_ASCII).replace(b" ", b"  ") + b" "
            else:
                norm, ntok = normalize(text or "")
        key = (ntok, *map(norm.count, patterns))
        neg = memo.get(key)
        if neg is None:
            score = 0.0
            for (_, w), tf in zip(weights, key[1:], strict=True):
                tf = tf or 1  # FTS5 matched it: at least once
                score += w * ((tf * (K1 + 1.0)) / (tf + K1 * (1 - B + B * ntok / avgdl)))
            neg = memo[key] = -score
        out.append((neg, rowid))
    out.sort()
    return out


def read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    """The SQLite varint at ``buf[pos:]`` and the position after it. Pure."""
    value = 0
    for i in range(8):
        byte = buf[pos + i]
        value = (value << 7) | (byte & 0x7F)
        if byte < 0x80:
            return value, pos + i + 1
    return (value << 8) | buf[pos + 8], pos + 9


def averages(conn: sqlite3.Connection, table: str) -> tuple[int, int] | None:
    """``(rows, tokens)`` of FTS5 table ``table`` (one column) from its averages
    record; None when it has none yet (an empty index)."""
    found = conn.execute(f"SELECT block FROM {table}_data WHERE id = 1").fetchone()
    if found is None or not found[0]:
        return None
    blob = bytes(found[0])
    rows, pos = read_varint(blob, 0)
    tokens, _ = read_varint(blob, pos)
    return rows, tokens


class DocFreqs:
    """How many rows of one FTS5 table match each phrase, counted on demand and
    reused within ``DF_SLACK`` (see the module docstring). One owner at a time,
    like its connection. ``changes`` is a count that grows by at least one per row
    written to the table (``sqlite3.Connection.total_changes``); call
    :meth:`clear` when another connection may have written it."""

    def __init__(self, table: str, *, size: int = DF_CACHE_SIZE) -> None:
        self._sql = f"SELECT count(*) FROM {table} WHERE {table} MATCH ?"
        self._known: OrderedDict[str, tuple[int, int]] = OrderedDict()
        self._size = size

    def clear(self) -> None:
        self._known.clear()

    def get(self, conn: sqlite3.Connection, expr: str, changes: int) -> int:
        """The rows matching phrase ``expr``, counted within ``DF_SLACK``."""
        known = self._known.get(expr)
        if known is not None and changes - known[1] <= known[0] * DF_SLACK:
            self._known.move_to_end(expr)
            return known[0]
        (count,) = conn.execute(self._sql, (expr,)).fetchone()
        self._known[expr] = (int(count), changes)
        self._known.move_to_end(expr)
        while len(self._known) > self._size:
            self._known.popitem(last=False)
        return int(count)
