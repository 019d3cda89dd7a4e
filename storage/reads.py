"""Reads of committed state, as functions over an open session file.

Every function takes a :class:`ReadSource` (a :class:`storage.file.SessionFile`)
and reads through its reader connection only, so it sees committed state and
never waits for the writer (WAL). Reads that run several queries do so inside
one ``snapshot()``. SQLite failures surface as storage errors
(:class:`ReadConnection`), never as ``sqlite3`` ones. Nothing here writes.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from storage.cursors import decode_int, encode_int
from storage.errors import InvalidInput, NotFound, StorageError, from_sqlite
from storage.rows import (
    ATTACHMENT_SELECT,
    MESSAGE_SELECT,
    SESSION_SELECT,
    AttachmentRow,
    MessageRow,
    SessionRow,
    attachment_doc,
    message_doc,
    prefixed,
    scalar,
    session_doc,
    split_message,
)
from storage.txn import Event

_END = 2**62


def _classify(exc: sqlite3.Error) -> StorageError:
    """Map a SQLite failure to a storage error the HTTP layer can explain."""
    return from_sqlite(exc)


class _Cursor:
    """A reader cursor whose SQLite failures surface as storage errors."""

    __slots__ = ("_cur",)

    def __init__(self, cur: sqlite3.Cursor) -> None:
        self._cur = cur

    def fetchone(self) -> Any:
        try:
            return self._cur.fetchone()
        except sqlite3.Error as exc:
            raise _classify(exc) from exc

    def fetchall(self) -> list[Any]:
        try:
            return self._cur.fetchall()
        except sqlite3.Error as exc:
            raise _classify(exc) from exc

    def fetchmany(self, size: int) -> list[Any]:
        try:
            return self._cur.fetchmany(size)
        except sqlite3.Error as exc:
            raise _classify(exc) from exc

    def close(self) -> None:
        """Finish the statement early (rows not fetched are never read)."""
        self._cur.close()

    def __iter__(self) -> Iterator[Any]:
        return iter(self.fetchall())


class ReadConnection:
    """The reader connection of a :class:`SessionFile`.

    Every read goes through here, so a damaged or unreadable file raises
    :class:`Unavailable` (or :class:`StorageFull`) instead of a raw
    ``sqlite3`` error, whichever query hits the bad page.
    """

    __slots__ = ("_conn",)

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> _Cursor:
        try:
            return _Cursor(self._conn.execute(sql, params))
        except sqlite3.Error as exc:
            raise _classify(exc) from exc

    def set_trace_callback(self, callback: Callable[[str], object] | None) -> None:
        """Pass every statement run to ``callback`` (for tests and debugging)."""
        self._conn.set_trace_callback(callback)

    @property
    def raw(self) -> sqlite3.Connection:
        """The connection itself, for a caller that maps SQLite errors on its own."""
        return self._conn


class ReadSource(Protocol):
    """What reads need of an open session file."""

    @property
    def sid(self) -> str: ...
    @property
    def reader(self) -> ReadConnection: ...
    def snapshot(self) -> contextlib.AbstractContextManager[None]: ...


@dataclass(slots=True)
class Page:
    """One page of messages, oldest first, with cursors for its neighbours."""

    items: list[dict[str, Any]]
    before: str | None
    after: str | None


def read_session(f: ReadSource) -> dict[str, Any]:
    """The Session document as committed."""
    raw = f.reader.execute(f"SELECT {SESSION_SELECT} FROM session").fetchone()
    return session_doc(SessionRow._make(raw))


def event_seq(f: ReadSource) -> int:
    """The seq of the last committed event (0 before the first)."""
    return int(scalar(f.reader.execute("SELECT event_seq FROM session")))


def read_message(f: ReadSource, mid: str) -> dict[str, Any]:
    """Live message ``mid``'s document; :class:`NotFound` if unknown or deleted."""
    raw = f.reader.execute(f"SELECT {MESSAGE_SELECT} FROM messages WHERE id = ?", (mid,)).fetchone()
    row = None if raw is None else MessageRow._make(raw)
    if row is None or row.deleted_at is not None:
        raise NotFound(f"message {mid!r} not found", details={"message_id": mid})
    return message_doc(row, f.sid)


def page(
    f: ReadSource,
    *,
    view: str = "active",
    limit: int = 25,
    before: str | None = None,
    after: str | None = None,
) -> Page:
    """A page of live messages, oldest first.

    ``view="all"`` walks the log by ``seq``; ``view="active"`` walks the
    path from the root to the active leaf by depth, and each item carries
    ``siblings: {index, count}``. Both are keyset scans on a primary key,
    so a page costs the same at any depth. Without a cursor the page is
    the newest one. ``before``/``after`` in the result are null when there
    is nothing older/newer. Raises :class:`InvalidInput` for a bad view or
    both cursors, and for a cursor that does not decode.
    """
    if before is not None and after is not None:
        raise InvalidInput("give either before or after, not both")
    # every row is (message columns…, position, sibling count)
    if view == "all":
        kind, key = "s", "m.seq"
        src = f"SELECT {prefixed('m')}, m.seq, NULL FROM messages m WHERE m.deleted_at IS NULL"
    elif view == "active":
        kind, key = "d", "ap.depth"
        src = (
            f"SELECT {prefixed('m')}, ap.depth, "
            "CASE WHEN m.parent_seq IS NULL THEN (SELECT root_count FROM session) "
            "ELSE p.child_count END "
            "FROM active_path ap JOIN messages m ON m.seq = ap.seq "
            "LEFT JOIN messages p ON p.seq = m.parent_seq WHERE m.deleted_at IS NULL"
        )
    else:
        raise InvalidInput("view must be 'active' or 'all'", details={"view": view})
    with f.snapshot():
        return _page(f, view, kind, key, src, limit, before, after)


def _page(
    f: ReadSource,
    view: str,
    kind: str,
    key: str,
    src: str,
    limit: int,
    before: str | None,
    after: str | None,
) -> Page:
    conn = f.reader
    if after is not None:
        pos = decode_int(kind, after)
        raws = conn.execute(
            f"{src} AND {key} > ? ORDER BY {key} ASC LIMIT ?", (pos, limit + 1)
        ).fetchall()
        newer = len(raws) > limit
        raws = raws[:limit]
    else:
        # no cursor: start past the end, so the newest page is a keyset search too
        pos = decode_int(kind, before) if before is not None else _END
        raws = conn.execute(
            f"{src} AND {key} < ? ORDER BY {key} DESC LIMIT ?", (pos, limit + 1)
        ).fetchall()
        older = len(raws) > limit
        raws = raws[:limit][::-1]
    if not raws:
        return Page([], None, None)
    items = []
    positions = []
    for raw in raws:
        row, (position, sibling_count) = split_message(raw)
        doc = message_doc(row, f.sid)
        if view == "active":
            doc["siblings"] = {"index": row.sibling_index, "count": sibling_count}
        items.append(doc)
        positions.append(position)
    first, last = positions[0], positions[-1]
    if after is not None:
        older = _exists(f, src, key, "<", first)
    else:
        newer = before is not None and _exists(f, src, key, ">", last)
    return Page(
        items,
        encode_int(kind, first) if older else None,
        encode_int(kind, last) if newer else None,
    )


def _exists(f: ReadSource, src: str, key: str, op: str, pos: int) -> bool:
    return (
        f.reader.execute(f"SELECT 1 FROM ({src} AND {key} {op} ?) LIMIT 1", (pos,)).fetchone()
        is not None
    )


def events_since(
    f: ReadSource, since: int, limit: int = 1000, max_bytes: int | None = None
) -> list[Event] | None:
    """Committed events with ``seq > since``, oldest first, at most ``limit``
    (and with ``max_bytes``, no more once their frames add up to it: at least one).

    Returns None when events after ``since`` were already pruned, so the
    client must refetch instead of replaying (``resync``).
    """
    with f.snapshot():
        return _events_since(f, since, limit, max_bytes)


def _events_since(
    f: ReadSource, since: int, limit: int, max_bytes: int | None = None
) -> list[Event] | None:
    conn = f.reader
    current = scalar(conn.execute("SELECT event_seq FROM session"))
    if since > current:
        return None
    if since < current:
        first = scalar(conn.execute("SELECT MIN(seq) FROM events"))
        if first is None or first > since + 1:
            return None
    cur = conn.execute(
        "SELECT seq, type, frame FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
        (since, limit),
    )
    if max_bytes is None:
        return [Event(seq, type_, bytes(frame)) for seq, type_, frame in cur.fetchall()]
    out: list[Event] = []
    size = 0
    try:
        while size < max_bytes and (rows := cur.fetchmany(16)):
            for seq, type_, frame in rows:
                out.append(Event(seq, type_, bytes(frame)))
                size += len(frame)
                if size >= max_bytes:
                    break
    finally:
        cur.close()
    return out


def read_attachment(f: ReadSource, aid: str) -> dict[str, Any]:
    """Attachment ``aid``'s document; :class:`NotFound` if this session has none such."""
    raw = f.reader.execute(
        f"SELECT {ATTACHMENT_SELECT} FROM attachments WHERE id = ?", (aid,)
    ).fetchone()
    if raw is None:
        raise NotFound(f"attachment {aid!r} not found", details={"attachment_id": aid})
    return attachment_doc(AttachmentRow._make(raw), f.sid)


def read_history(f: ReadSource, parent_id: str | None, limit: int) -> list[dict[str, Any]]:
    """``parent_id`` and its ancestors, oldest first, at most ``limit`` messages.

    This is the context a reply below ``parent_id`` answers; tombstones are
    left out. One recursive query, O(limit) whatever the depth.
    """
    if parent_id is None:
        return []
    rows = f.reader.execute(
        "WITH RECURSIVE chain(seq, n) AS ("
        " SELECT seq, 0 FROM messages WHERE id = ?"
        " UNION ALL SELECT m.parent_seq, chain.n + 1 FROM messages m JOIN chain"
        " ON m.seq = chain.seq WHERE m.parent_seq IS NOT NULL AND chain.n + 1 < ?)"
        f" SELECT {prefixed('m')} FROM chain JOIN messages m ON m.seq = chain.seq"
        " WHERE m.deleted_at IS NULL ORDER BY chain.n DESC",
        (parent_id, limit),
    ).fetchall()
    return [message_doc(MessageRow._make(r), f.sid) for r in rows]


def read_by_client_id_prefix(f: ReadSource, prefix: str) -> dict[str, Any] | None:
    """The newest live message whose ``client_id`` starts with ``prefix``, or None.

    A range scan on the ``client_id`` index (no LIKE, so no escaping): the
    upper bound is ``prefix`` with its last character incremented. Raises
    ``ValueError`` for an empty prefix.
    """
    if not prefix:
        raise ValueError("prefix must not be empty")
    upper = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    raw = f.reader.execute(
        f"SELECT {MESSAGE_SELECT} FROM messages WHERE client_id >= ? AND client_id < ? "
        "AND deleted_at IS NULL ORDER BY seq DESC LIMIT 1",
        (prefix, upper),
    ).fetchone()
    return None if raw is None else message_doc(MessageRow._make(raw), f.sid)


def read_siblings(f: ReadSource, mid: str, limit: int) -> list[dict[str, Any]]:
    """Message ``mid`` and its siblings (same parent), by sibling index, at most ``limit``.

    Each item is ``{id, role, status, deleted, created_at}``; tombstones are
    kept so positions match ``siblings.index`` of the active view. Raises
    ``NotFound`` for an unknown message. Uses the parent index: O(siblings).
    """
    found = f.reader.execute("SELECT parent_seq FROM messages WHERE id = ?", (mid,)).fetchone()
    if found is None:
        raise NotFound(f"message {mid!r} not found", details={"message_id": mid})
    (parent_seq,) = found
    rows = f.reader.execute(
        "SELECT id, role, status, deleted_at, created_at FROM messages"
        " WHERE parent_seq IS ? ORDER BY seq LIMIT ?",  # seq order is sibling order
        (parent_seq, limit),
    ).fetchall()
    return [
        {
            "id": sib_id,
            "role": role,
            "status": status,
            "deleted": deleted_at is not None,
            "created_at": created_at,
        }
        for sib_id, role, status, deleted_at, created_at in rows
    ]
