"""Full-text search of one session: the query language and the ranked hits.

:func:`fts_query` turns what a user typed into an FTS5 expression;
:func:`search` runs it over the committed messages of a session file. Storage
returns data, not markup: a hit's snippet is ``{"text", "spans"}``, the plain
snippet text and the code-point ``[start, end)`` ranges of the matches in it;
the HTTP layer renders it (``server.wire.snippet_html``).
"""

from __future__ import annotations

import sqlite3
from typing import Any

from storage.errors import InvalidQuery, from_sqlite
from storage.reads import ReadSource
from storage.rows import message_doc, prefixed, split_message

# private-use code points SQLite puts around each match in the snippet text
SNIPPET_OPEN = "\ue000"
SNIPPET_CLOSE = "\ue001"


def fts_query(q: str, *, raw: bool = False) -> str:
    """The FTS5 expression for the user's query ``q``.

    By default ``q`` is plain words: each whitespace-separated word becomes a
    quoted FTS5 string (so ``"``, ``*``, ``NEAR(``, ``AND`` are just text) and
    all of them must match; a word ending in ``*`` matches as a prefix. With
    ``raw`` the text is FTS5 query syntax, passed through. Raises
    :class:`InvalidQuery` for a query without words.
    """
    if raw:
        if not q.strip():
            raise InvalidQuery("the query is empty")
        return q
    terms = [phrase_expr(word, prefix) for word, prefix in query_words(q)]
    if not terms:
        raise InvalidQuery("the query is empty")
    return " ".join(terms)


def query_words(q: str) -> list[tuple[str, bool]]:
    """The words of plain-words query ``q`` as ``(text, prefix)``: a word ending in
    ``*`` (and not only stars) is a prefix, its stars dropped. Pure."""
    out = []
    for word in q.split():
        prefix = word.endswith("*") and word.strip("*") != ""
        out.append((word.rstrip("*") if prefix else word, prefix))
    return out


def phrase_expr(word: str, prefix: bool) -> str:
    """The FTS5 string of one word of a plain-words query (quoted: no syntax in it)."""
    return '"' + word.replace('"', '""') + '"' + ("*" if prefix else "")


def snippet_spans(marked: str) -> dict[str, Any]:
    """``{"text", "spans"}`` of a snippet whose matches SQLite wrapped in the markers.

    ``text`` is ``marked`` without the markers; ``spans`` lists ``[start, end]``
    code-point offsets into ``text``, in order. An unclosed match ends at the
    end of the text; a stray close marker is dropped. Pure.
    """
    text: list[str] = []
    spans: list[list[int]] = []
    n = 0
    start: int | None = None
    for ch in marked:
        if ch == SNIPPET_OPEN:
            if start is None:
                start = n
        elif ch == SNIPPET_CLOSE:
            if start is not None:
                spans.append([start, n])
                start = None
        else:
            text.append(ch)
            n += 1
    if start is not None:
        spans.append([start, n])
    return {"text": "".join(text), "spans": spans}


def search(f: ReadSource, q: str, *, limit: int = 20, raw: bool = False) -> list[dict[str, Any]]:
    """Live, finished messages matching ``q`` (see :func:`fts_query`), best first.

    Each item is ``{message, snippet, score}``: ``snippet`` is
    ``{"text", "spans"}`` (:func:`snippet_spans`); ``score`` is the BM25
    relevance (higher is better). Messages still streaming are not indexed
    until their reply ends. Raises :class:`InvalidQuery` when ``q`` is not a
    valid query.
    """
    expr = fts_query(q, raw=raw)
    sql = (
        f"SELECT {prefixed('m')}, "
        f"snippet(messages_fts, 0, '{SNIPPET_OPEN}', '{SNIPPET_CLOSE}', '…', 24), "
        "messages_fts.rank "
        "FROM messages_fts JOIN messages m ON m.seq = messages_fts.rowid "
        "WHERE messages_fts MATCH ? AND m.deleted_at IS NULL "
        "ORDER BY messages_fts.rank LIMIT ?"
    )
    try:
        rows = f.reader.raw.execute(sql, (expr, limit)).fetchall()
    except sqlite3.OperationalError as exc:
        if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_ERROR:
            raise InvalidQuery(
                f"the search query is not valid: {exc}", details={"query": q[:200]}
            ) from exc
        raise from_sqlite(exc) from exc
    except sqlite3.Error as exc:
        raise from_sqlite(exc) from exc
    items = []
    for raw_row in rows:
        row, (snippet, rank) = split_message(raw_row)
        items.append(
            {
                "message": message_doc(row, f.sid),
                "snippet": snippet_spans(snippet),
                "score": -float(rank),
            }
        )
    return items
