"""A user's cross-session search index: one SQLite FTS5 file per user.

Where it lives: ``<data dir>/users/<h>/<hash of the user>/search.db``, one per
user, so a query reads one user's index only (never another user's messages,
never a session file) and the index moves with the user (cluster mode's
per-user directory can own it later). Schema: ``USER_SEARCH_MIGRATIONS``.

What is in it: one row per live, finished message of each of the user's
sessions (``docs``: session id, message id, seq, role, created_at, content),
with an external-content FTS5 index over the content kept exact by triggers,
and per session the event ``seq`` it is up to date with (``indexed``). It is
fed off the write path from each session's committed event log
(:func:`changes_from_events`, applied with :meth:`UserIndex.apply`), or
rebuilt from a session's messages (:func:`session_docs`,
:meth:`UserIndex.rebuild_session`) when the log no longer reaches back far
enough, for a session it has never seen (an import), and by
``roost-admin reindex``. It is a cache: losing it loses nothing.

Storage returns data: a hit's snippet is ``{"text", "spans"}`` as in
:mod:`storage.search`.
"""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from storage import reads, userrank
from storage.errors import InvalidQuery, NotFound, from_sqlite
from storage.layout import DataDir, connect, make_dirs_durable
from storage.reads import ReadConnection, ReadSource
from storage.rows import UNFINISHED, dumps, json_batch, scalar
from storage.schema import USER_SEARCH_MIGRATIONS, migrate
from storage.search import SNIPPET_CLOSE, SNIPPET_OPEN, fts_query, snippet_spans
from storage.txn import Event


def user_index_path(datadir: DataDir, user: str) -> Path:
    """The search file of ``user`` (any string: it is hashed, never a path itself)."""
    h = hashlib.sha256(user.encode()).hexdigest()[:32]
    return datadir.root / "users" / h[:2] / h / "search.db"


# what one indexing batch reads at most (message contents, event frames): a
# catch-up over big messages (imports) holds about this much, not a whole session
BATCH_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class Doc:
    """One searchable message."""

    message_id: str
    seq: int
    role: str
    created_at: str
    content: str


@dataclass(frozen=True, slots=True)
class Change:
    """Put ``doc`` in the index (``doc`` set), or take ``message_id`` out (``doc`` None)."""

    message_id: str
    doc: Doc | None


# one event's change, ready for the index: (event seq, message id, upsert row or None)
FedChange = tuple[int, str, "tuple[Any, ...] | None"]


@dataclass(frozen=True, slots=True)
class Fed:
    """What one session committed, ready for :meth:`UserIndex.apply_fed`.

    ``first_seq``..``last_seq`` are the events' seqs (without a gap). ``puts``
    (upsert rows) and ``drops`` (message ids) apply all of them (one per
    message: its last change wins); ``changes`` keeps each event's own change
    for applying only those after a mark.
    """

    sid: str
    first_seq: int
    last_seq: int
    puts: list[tuple[Any, ...]]
    drops: list[str]
    changes: list[FedChange]


def _collapse(changes: Iterable[FedChange]) -> tuple[list[tuple[Any, ...]], list[str]]:
    final: dict[str, tuple[Any, ...] | None] = {}
    for _seq, mid, row in changes:
        final[mid] = row  # a message's last change is its state
    puts = [row for row in final.values() if row is not None]
    drops = [mid for mid, row in final.items() if row is None]
    return puts, drops


def prepare_fed(sid: str, events: Sequence[Event]) -> Fed | None:
    """The index's view of durable ``events`` of session ``sid`` (in seq order):
    decoded and tokenized (the Python half of indexing, for the event loop).
    None when their seqs have a gap (index the session from its file). Pure."""
    changes: list[FedChange] = []
    first = prev = -1
    for ev in events:
        if ev.seq is None:
            continue
        if prev >= 0 and ev.seq != prev + 1:
            return None
        if first < 0:
            first = ev.seq
        prev = ev.seq
        ch = _change_of(ev)
        if ch is not None:
            row = None if ch.doc is None else _upsert_row(sid, ch.doc)
            changes.append((ev.seq, ch.message_id, row))
    if first < 0:
        return None
    puts, drops = _collapse(changes)
    return Fed(sid, first, prev, puts, drops, changes)


def _doc_of(msg: dict[str, Any]) -> Doc | None:
    if msg.get("deleted") or msg.get("status") in UNFINISHED:
        return None
    return Doc(msg["id"], int(msg["seq"]), msg["role"], msg["created_at"], msg["content"])


def changes_from_events(events: Iterable[Event]) -> list[Change]:
    """What the committed events mean for the index, in order. Pure.

    ``message.created`` / ``message.updated`` put the message in (or take it
    out while it is unfinished, or once deleted); ``message.deleted`` takes it
    out; other events change nothing here.
    """
    return [ch for ev in events if (ch := _change_of(ev)) is not None]


def _change_of(ev: Event) -> Change | None:
    if ev.type in ("message.created", "message.updated"):
        msg = orjson.loads(ev.frame)["message"]
        return Change(msg["id"], _doc_of(msg))
    if ev.type == "message.deleted":
        return Change(orjson.loads(ev.frame)["message_id"], None)
    return None


def session_docs(
    f: ReadSource, after_seq: int, limit: int, max_bytes: int = BATCH_BYTES
) -> tuple[list[Doc], bool]:
    """Live, finished messages of a session with ``seq > after_seq``, in seq
    order: at most ``limit``, and none more once their contents add up to
    ``max_bytes`` (at least one). Also whether more may follow (the batch is full)."""
    cur = f.reader.execute(
        "SELECT id, seq, role, created_at, content FROM messages WHERE seq > ? "
        "AND deleted_at IS NULL AND status NOT IN ('pending', 'streaming') "
        "ORDER BY seq LIMIT ?",
        (after_seq, limit),
    )
    out: list[Doc] = []
    size = 0
    try:
        while rows := cur.fetchmany(16):
            for mid, seq, role, at, content in rows:
                out.append(Doc(mid, seq, role, at, content))
                size += len(content)
                if size >= max_bytes:
                    return out, True
    finally:
        cur.close()
    return out, len(out) >= limit


def index_events(
    f: ReadSource, since: int, limit: int, max_bytes: int = BATCH_BYTES
) -> tuple[list[Event] | None, bool]:
    """The events to index after ``since`` (:func:`storage.reads.events_since`,
    bounded by count and by bytes), and whether more may follow."""
    events = reads.events_since(f, since, limit, max_bytes)
    if events is None:
        return None, False
    full = len(events) >= limit or sum(len(e.frame) for e in events) >= max_bytes
    return events, full


def iter_session_docs(conn: sqlite3.Connection, batch: int = 1000) -> Iterator[Doc]:
    """Every live, finished message of the session file open on ``conn`` (admin reindex)."""
    last = 0
    while True:
        rows = conn.execute(
            "SELECT id, seq, role, created_at, content FROM messages WHERE seq > ? "
            "AND deleted_at IS NULL AND status NOT IN ('pending', 'streaming') "
            "ORDER BY seq LIMIT ?",
            (last, batch),
        ).fetchall()
        if not rows:
            return
        for mid, seq, role, created_at, content in rows:
            last = seq
            yield Doc(mid, seq, role, created_at, content)


class UserIndex:
    """One user's search file. Synchronous; the owner serializes use (one
    thread at a time). ``close()`` is idempotent. Raises storage errors."""

    def __init__(self, path: Path, *, synchronous: str = "NORMAL") -> None:
        make_dirs_durable(path.parent)
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._doc_freqs = userrank.DocFreqs("docs_fts")
        self._data_version: object = None
        try:
            self._conn = connect(path, synchronous=synchronous, cache_kib=4096)
            migrate(self._conn, USER_SEARCH_MIGRATIONS, what="user search index")
        except sqlite3.Error as exc:
            self.close()
            raise from_sqlite(exc, path=path) from exc

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("the user search index is closed")
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def watermark(self, sid: str) -> int | None:
        """The event seq session ``sid`` is indexed up to; None if it is not indexed."""
        cur = self.conn.execute("SELECT event_seq FROM indexed WHERE session_id = ?", (sid,))
        found = cur.fetchone()
        if found is None:
            return None
        (mark,) = found
        return int(mark)

    def _write(self, fn: Any) -> None:
        conn = self.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                fn(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise from_sqlite(exc, path=self.path) from exc

    def apply(self, sid: str, changes: Sequence[Change], event_seq: int) -> None:
        """Apply ``changes`` of session ``sid`` and note it is up to ``event_seq``, atomically."""

        final: dict[str, Doc | None] = {}
        for ch in changes:
            final[ch.message_id] = ch.doc  # a message's last change is its state

        def run(conn: sqlite3.Connection) -> None:
            _drop_rows(conn, sid, [mid for mid, doc in final.items() if doc is None])
            _put_rows(conn, [_upsert_row(sid, doc) for doc in final.values() if doc is not None])
            _mark(conn, sid, event_seq)

        self._write(run)

    def apply_fed(self, fed: Sequence[Fed]) -> list[str]:
        """Apply what several sessions committed (:func:`prepare_fed`), all in one
        transaction.

        A session's events are applied only where they continue what the index
        holds of it: the index has a mark for the session and the events begin
        at most one past it. Events at or below the mark are skipped (already
        indexed). Returns the sessions that could not be applied that way (no
        mark yet, or a gap before their first event): index those from their
        files (:meth:`apply`, :meth:`rebuild_session`). All or nothing: on an
        error nothing of ``fed`` is applied.

        Built for the write pool beside a busy event loop: the Python work
        (decoding frames, tokens) was done by :func:`prepare_fed`, so this is a
        few statements per session, each running in SQLite without the GIL.
        """
        left: list[str] = []

        def run(conn: sqlite3.Connection) -> None:
            left.clear()
            marks = dict(
                conn.execute(
                    "SELECT session_id, event_seq FROM indexed "
                    "WHERE session_id IN (SELECT value FROM json_each(?))",
                    (orjson.dumps([f.sid for f in fed]).decode(),),
                ).fetchall()
            )
            for f in fed:
                mark = marks.get(f.sid)
                if mark is None or f.first_seq > mark + 1:
                    left.append(f.sid)
                    continue
                if f.last_seq <= mark:
                    continue
                if f.first_seq == mark + 1:
                    puts, drops = f.puts, f.drops
                else:  # partly indexed already (rare): only the events after the mark
                    puts, drops = _collapse([c for c in f.changes if c[0] > mark])
                _drop_rows(conn, f.sid, drops)
                _put_rows(conn, puts)
                _mark(conn, f.sid, f.last_seq)

        self._write(run)
        return left

    def rebuild_session(
        self, sid: str, docs: Iterable[Doc], event_seq: int, *, first: bool = True
    ) -> None:
        """Replace what the index holds of ``sid`` by ``docs`` (``first``: drop the old
        rows first; later batches of one rebuild pass False), up to ``event_seq``."""

        def run(conn: sqlite3.Connection) -> None:
            if first:
                conn.execute("DELETE FROM docs WHERE session_id = ?", (sid,))
            _put_rows(conn, [_upsert_row(sid, doc) for doc in docs])
            _mark(conn, sid, event_seq)

        self._write(run)

    def drop_session(self, sid: str) -> None:
        """Forget session ``sid`` (deleted). Idempotent."""

        def run(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM docs WHERE session_id = ?", (sid,))
            conn.execute("DELETE FROM indexed WHERE session_id = ?", (sid,))

        self._write(run)

    def sessions(self) -> list[str]:
        """The sessions the index knows."""
        return [str(s) for (s,) in self.conn.execute("SELECT session_id FROM indexed")]

    def count(self) -> int:
        return int(scalar(self.conn.execute("SELECT COUNT(*) FROM docs")))

    def search(
        self, q: str, *, limit: int, offset: int = 0, raw: bool = False
    ) -> list[dict[str, Any]]:
        """Messages matching ``q`` (:func:`storage.search.fts_query`), best first (BM25),
        from position ``offset``: ``[{session_id, message_id, seq, role, created_at,
        snippet: {text, spans}, score}]``. ``InvalidQuery`` for a query that is not valid.

        The ranking covers at most the ``RANK_WINDOW`` newest matches (by when they were
        indexed): a query matching more (a common word) returns the best of those, so
        its cost stays bounded however many messages the user has; a query matching
        fewer is ranked over all of them. Paging (``offset``) stays within that window.
        Snippets and rows are made for the returned hits only. Plain words are ranked
        by :mod:`storage.userrank` (FTS5's BM25 without its per-query document
        counts); FTS5 syntax (``raw``), and words it does not rank, by FTS5's bm25().
        All of it reads one snapshot of the index.
        """
        expr = fts_query(q, raw=raw)
        parts = None if raw else userrank.phrases(q)
        conn = self.conn
        try:
            conn.execute("BEGIN")
            try:
                found = None
                if parts is not None:
                    found = self._search_ranked(expr, parts, limit, offset)
                if found is None:
                    found = self._search_fts(expr, limit, offset)
            finally:
                conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_ERROR:
                raise InvalidQuery(
                    f"the search query is not valid: {exc}", details={"query": q[:200]}
                ) from exc
            raise from_sqlite(exc, path=self.path) from exc
        except sqlite3.Error as exc:
            raise from_sqlite(exc, path=self.path) from exc
        return [
            {
                "session_id": sid,
                "message_id": mid,
                "seq": seq,
                "role": role,
                "created_at": created_at,
                "snippet": snippet_spans(snippet),
                "score": score,
            }
            for sid, mid, seq, role, created_at, snippet, score in found
        ]

    def _search_fts(self, expr: str, limit: int, offset: int) -> list[tuple[Any, ...]]:
        floor = self.conn.execute(_WINDOW_FLOOR, (expr, RANK_WINDOW - 1)).fetchone()
        rows = self.conn.execute(_TOP_HITS, (expr, floor[0] if floor else 0, limit, offset))
        return [(*hit, -float(rank)) for *hit, rank in rows]

    def _search_ranked(
        self, expr: str, parts: list[userrank.Phrase], limit: int, offset: int
    ) -> list[tuple[Any, ...]] | None:
        """The page, ranked by :mod:`storage.userrank`; None when FTS5 would rank
        this query more cheaply (short doclists: :func:`userrank.fts5_is_cheaper`)."""
        conn = self.conn
        totals = userrank.averages(conn, "docs_fts")  # (the snapshot starts here)
        if totals is None or totals[0] <= 0:
            return []
        n_rows, n_tokens = totals
        version = scalar(conn.execute("PRAGMA data_version"))
        if version != self._data_version:  # another connection wrote the file since
            self._doc_freqs.clear()
            self._data_version = version
        changes = conn.total_changes
        dfs = [self._doc_freqs.get(conn, p.expr, changes) for p in parts]
        if userrank.fts5_is_cheaper(dfs, RANK_WINDOW):
            return None
        idfs = [userrank.idf(n_rows, df) for df in dfs]
        window = conn.execute(_WINDOW, (expr, RANK_WINDOW)).fetchall()
        ranked = userrank.score_window(window, [p.pattern for p in parts], idfs, n_tokens / n_rows)[
            offset : offset + limit
        ]
        if not ranked:
            return []
        ids = [rowid for _, rowid in ranked]
        rows = conn.execute(_PAGE, (expr, min(ids), max(ids), orjson.dumps(ids).decode()))
        by_id = {rowid: hit for rowid, *hit in rows}
        return [(*by_id[rowid], -neg) for neg, rowid in ranked if rowid in by_id]


# A search ranks at most this many of its newest matches (see UserIndex.search): BM25
# costs a few microseconds per match, so ranking all 500,000 matches of a common word
# in 1M messages would take seconds; this keeps every query at milliseconds.
RANK_WINDOW = 2000

# the rowid of the RANK_WINDOW-th newest match (none: fewer matches, rank them all);
# FTS5 walks its doclist from the end and stops there, without ranking
_WINDOW_FLOOR = (
    "SELECT rowid FROM docs_fts WHERE docs_fts MATCH ? ORDER BY rowid DESC LIMIT 1 OFFSET ?"
)

# rank the matches at or above the floor (FTS5 takes the rowid bound); ``ORDER BY rank``
# alone lets FTS5 sort them itself, so the join and the snippet are made for the
# returned page only (a second sort key made SQLite sort every match, each with its
# row and snippet: 150 ms for a common word in 100,000 messages)
_TOP_HITS = (
    "SELECT d.session_id, d.message_id, d.seq, d.role, d.created_at, "
    f"snippet(docs_fts, 0, '{SNIPPET_OPEN}', '{SNIPPET_CLOSE}', '…', 24), docs_fts.rank "
    "FROM docs_fts JOIN docs d ON d.id = docs_fts.rowid "
    "WHERE docs_fts MATCH ?1 AND docs_fts.rowid >= ?2 ORDER BY docs_fts.rank LIMIT ?3 OFFSET ?4"
)

# plain words (storage.userrank): the window is the RANK_WINDOW newest matches with
# their tokens (or their text, for ASCII text and rows from v1), read in one walk of the
# doclists from the end (no floor query first)
_WINDOW = (
    "SELECT f.rowid, d.norm, d.ntok, iif(d.norm IS NULL, d.content, NULL) "
    "FROM docs_fts f JOIN docs d ON d.id = f.rowid "
    "WHERE docs_fts MATCH ? ORDER BY f.rowid DESC LIMIT ?"
)

# the page's rows and snippets: FTS5 walks the page's rowid range (one seek per
# doclist) and the rows outside the page are dropped before their snippet is made
# (``+`` keeps the IN list from becoming one doclist seek per rowid, ~0.3 ms each)
_PAGE = (
    "SELECT f.rowid, d.session_id, d.message_id, d.seq, d.role, d.created_at, "
    f"snippet(docs_fts, 0, '{SNIPPET_OPEN}', '{SNIPPET_CLOSE}', '…', 24) "
    "FROM docs_fts f JOIN docs d ON d.id = f.rowid "
    "WHERE docs_fts MATCH ?1 AND f.rowid >= ?2 AND f.rowid <= ?3 "
    "AND +f.rowid IN (SELECT value FROM json_each(?4))"
)


_UPSERT_SQL = (
    "INSERT INTO docs (session_id, message_id, seq, role, created_at, content, ntok, norm) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(session_id, message_id) DO UPDATE SET "
    "content = excluded.content, ntok = excluded.ntok, norm = excluded.norm "
    "WHERE content IS NOT excluded.content OR ntok IS NULL"
)
# _UPSERT_SQL for a JSON array of rows in one statement; ``norm`` travels as text
_UPSERT_MANY_SQL = (
    "INSERT INTO docs (session_id, message_id, seq, role, created_at, content, ntok, norm) "
    "SELECT value->>0, value->>1, value->>2, value->>3, value->>4, value->>5, value->>6, "
    "CAST(value->>7 AS BLOB) FROM json_each(?) WHERE true "
    "ON CONFLICT(session_id, message_id) DO UPDATE SET "
    "content = excluded.content, ntok = excluded.ntok, norm = excluded.norm "
    "WHERE content IS NOT excluded.content OR ntok IS NULL"
)
_DROP_MANY_SQL = (
    "DELETE FROM docs WHERE session_id = ? AND message_id IN (SELECT value FROM json_each(?))"
)


def _put_rows(conn: sqlite3.Connection, rows: Sequence[tuple[Any, ...]]) -> None:
    """Upsert ``rows`` (:func:`_upsert_row`), each message at most once: in one
    statement (:func:`storage.rows.json_batch`) where it can be."""
    batch = json_batch(rows)
    if batch is not None:
        conn.execute(_UPSERT_MANY_SQL, (batch,))
    else:
        conn.executemany(_UPSERT_SQL, rows)


def _drop_rows(conn: sqlite3.Connection, sid: str, message_ids: Sequence[str]) -> None:
    """Take ``message_ids`` of session ``sid`` out of the index (one statement)."""
    if message_ids:
        conn.execute(_DROP_MANY_SQL, (sid, dumps(list(message_ids))))


def _upsert_row(sid: str, doc: Doc) -> tuple[Any, ...]:
    norm, ntok = userrank.stored_tokens(doc.content)
    return (sid, doc.message_id, doc.seq, doc.role, doc.created_at, doc.content, ntok, norm)


def _mark(conn: sqlite3.Connection, sid: str, event_seq: int) -> None:
    conn.execute(
        "INSERT INTO indexed (session_id, event_seq) VALUES (?, ?) "
        "ON CONFLICT(session_id) DO UPDATE SET event_seq = excluded.event_seq",
        (sid, event_seq),
    )


class _FileSource:
    """A :class:`storage.reads.ReadSource` over a read-only connection of a session
    file no actor has open."""

    def __init__(self, sid: str, conn: sqlite3.Connection) -> None:
        self.sid = sid
        self._conn = conn

    @property
    def reader(self) -> ReadConnection:
        return ReadConnection(self._conn)

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        self._conn.execute("BEGIN")
        try:
            yield
        finally:
            self._conn.execute("COMMIT")


def catch_up_file(idx: UserIndex, path: Path, sid: str, *, batch: int = 500) -> None:
    """Bring ``idx`` up to date with session ``sid``'s file at ``path``, read
    directly (for a session no actor has open: all its commits are on disk).
    Raises ``NotFound`` when the file is gone, storage errors otherwise."""
    if not path.exists():
        raise NotFound(f"session {sid!r} not found", details={"session_id": sid})
    try:
        conn = connect(path, readonly=True, cache_kib=512)
    except sqlite3.Error as exc:
        raise from_sqlite(exc, path=path) from exc
    try:
        src = _FileSource(sid, conn)
        mark = idx.watermark(sid)
        while True:
            if mark is not None:
                events, more = index_events(src, mark, batch)
                if events is not None:
                    if not events:
                        return
                    upto = events[-1].seq or mark
                    idx.apply(sid, changes_from_events(events), upto)
                    mark = upto
                    if not more:
                        return
                    continue
            with src.snapshot():
                upto = int(scalar(src.reader.execute("SELECT event_seq FROM session")))
                after, first = 0, True
                while True:
                    docs, more = session_docs(src, after, 2000)
                    idx.rebuild_session(sid, docs, upto, first=first)
                    first = False
                    if not more:
                        return
                    after = docs[-1].seq
    except sqlite3.Error as exc:
        raise from_sqlite(exc, path=path) from exc
    finally:
        conn.close()
