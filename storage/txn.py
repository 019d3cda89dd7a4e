"""One write transaction: the session state it changes, its write-behind buffer, its events.

:class:`Txn` is what every op (``op(txn) -> result``, see :mod:`storage.ops`)
gets from :meth:`storage.file.SessionFile.run_batch`. It holds the in-memory
:class:`SessionState` (the session row plus the active leaf's depth and child
count), buffers the hot writes (new message rows, active-path rows, events,
child counts) and applies them before anything reads :attr:`Txn.conn`, and
records :class:`Event` frames that are handed out only after COMMIT (output
gate). Nothing here commits; the file does.
"""

from __future__ import annotations

import functools
import operator
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any, Generic, TypeVar

import orjson

from storage.errors import NotFound, Unavailable
from storage.rows import (
    MESSAGE_SELECT,
    NEW_MESSAGE_INSERT,
    SESSION_COLUMNS,
    SESSION_SELECT,
    MessageRow,
    SessionRow,
    message_doc,
    new_message_values,
    scalar,
    session_doc,
)

T = TypeVar("T")


@dataclass(slots=True, frozen=True)
class Event:
    """A committed change, encoded once as a JSON frame ``{"type", "seq", ...}``.

    ``seq`` is None for an ephemeral frame (a streaming delta): it is published
    in order with the durable events of its transaction but not logged.
    """

    seq: int | None
    type: str
    frame: bytes


class BulkOp(Generic[T]):
    """An op marked as bulk work (many rows, or one that may block).

    The session actor runs a batch holding one on a worker thread with
    ``sync=True`` instead of on the event loop; for
    :meth:`storage.file.SessionFile.run_batch` it is an op like any other.
    """

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[Txn], T]) -> None:
        self.fn = fn

    def __call__(self, txn: Txn) -> T:
        return self.fn(txn)


def feed_delta(message_id: str, offset: int, text: str) -> bytes:
    """The ``message.delta`` frame of the event feed (ephemeral: no ``seq``): ``text``
    of reply ``message_id`` starting at code point ``offset``. The one builder of it."""
    return orjson.dumps(
        {"type": "message.delta", "message_id": message_id, "offset": offset, "text": text}
    )


@dataclass(slots=True)
class SessionState:
    """The session row, plus the active leaf's depth and child count.

    The actor is the only writer of its file, so the state is kept in memory
    between transactions: an append reads nothing but what it must. The first
    fields are :class:`storage.rows.SessionRow`'s, in order (checked at import),
    so the state is itself a valid argument of :func:`storage.rows.session_doc`.
    """

    id: str
    owner: str
    title: str | None
    metadata: str
    created_at: str
    updated_at: str
    message_count: int
    last_message_at: str | None
    active_leaf_seq: int | None
    active_leaf_id: str | None
    root_count: int
    event_seq: int
    pinned: int
    archived: int
    folder: str | None
    tags: str
    title_source: str | None
    temporary: int
    expires_at: str | None
    settings: str
    leaf_depth: int
    leaf_child_count: int
    next_seq: int = 1

    @classmethod
    def load(cls, conn: sqlite3.Connection) -> SessionState:
        """The state as the file has it; raises :class:`Unavailable` without a session row."""
        raw = conn.execute(f"SELECT {SESSION_SELECT} FROM session").fetchone()
        if raw is None:
            raise Unavailable("session file has no session row")
        row = SessionRow._make(raw)
        depth, children = -1, 0
        if row.active_leaf_seq is not None:
            depth, children = conn.execute(
                "SELECT depth, child_count FROM messages WHERE seq = ?", (row.active_leaf_seq,)
            ).fetchone()
        return cls(
            **row._asdict(),
            leaf_depth=depth,
            leaf_child_count=children,
            # rows are never removed (deletes leave tombstones), so seq grows by one
            next_seq=scalar(conn.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM messages")),
        )

    def copy(self) -> SessionState:
        """An independent copy (the state is mutable; ops change a copy)."""
        return SessionState(*_state_values(self))


# the columns of the session row a transaction may change (id, owner, created_at never do)
SESSION_UPDATE_COLUMNS = tuple(c for c in SESSION_COLUMNS if c not in ("id", "owner", "created_at"))
SESSION_UPDATE_SQL = "UPDATE session SET " + ", ".join(f"{c} = ?" for c in SESSION_UPDATE_COLUMNS)
_STATE_FIELDS = tuple(f.name for f in fields(SessionState))
if _STATE_FIELDS[: len(SESSION_COLUMNS)] != SESSION_COLUMNS:  # caught at import, not in use
    raise TypeError("SessionState's first fields must be SessionRow's, in order")
_state_values = operator.attrgetter(*_STATE_FIELDS)
# the values of SESSION_UPDATE_COLUMNS of a SessionState, in that order (for SESSION_UPDATE_SQL)
session_update_values = operator.attrgetter(*SESSION_UPDATE_COLUMNS)

_CHUNK = 16  # rows per multi-row INSERT (one SQLite step, one GIL round trip)


@functools.cache
def _insert_sql(table: str, cols: str, n: int) -> str:
    """``INSERT INTO table (cols) VALUES (?, …), …`` for ``n`` rows (memoized: a C-level hit)."""
    one = "(" + ", ".join("?" * (cols.count(",") + 1)) + ")"
    return f"INSERT INTO {table} ({cols}) VALUES " + ", ".join([one] * n)


def _insert_rows(
    conn: sqlite3.Connection, table: str, cols: str, rows: Sequence[Sequence[Any]]
) -> None:
    """Insert ``rows`` with as few statements as possible (chunks of ``_CHUNK``)."""
    if len(rows) == 1:  # the usual append: the row as it is, no flattening
        conn.execute(_insert_sql(table, cols, 1), rows[0])
        return
    for i in range(0, len(rows), _CHUNK):
        chunk = rows[i : i + _CHUNK]
        conn.execute(_insert_sql(table, cols, len(chunk)), [v for row in chunk for v in row])


class RedoSafely(Exception):
    """An op failed after buffering writes: rerun the batch flushing after each op."""


class Txn:
    """The view of one write transaction that mutation functions get.

    ``state`` is the session row as of this point of the transaction; ops
    change it in memory and the batch writes it once, before COMMIT.

    Write-behind: the hot writes (new messages, active-path rows, events,
    child counts) are buffered and written at the end of the batch with a
    few multi-row statements, so a batch of appends costs a handful of
    SQLite calls rather than several per message. Reading :attr:`conn`
    applies the buffer first, so an op that queries always sees its own
    and earlier ops' writes.
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        session_id: str,
        now: str,
        event_retention: int,
        state: SessionState,
        *,
        multi: bool = False,
        safe: bool = False,
    ) -> None:
        self._conn = conn
        self._safe = safe
        self.event_retention = event_retention
        self.session_id = session_id
        self.now = now
        self.state = state
        self.events: list[Event] = []
        self.session_changed = False
        self._rows: list[MessageRow] = []
        self._row_by_seq: dict[int, int] = {}  # seq -> index in _rows, while buffered
        self._bumps: list[int] = []
        self._paths: list[tuple[int, int]] = []
        self._event_rows: list[tuple[int, str, bytes, str]] = []
        self._prune_to: int | None = None
        # per-op bookkeeping when several ops share the transaction
        self._multi = multi
        self._op_mark: tuple[int, int, int, int] | None = None
        self._op_savepoint = False
        self._op_buffered = False

    # -- the buffer
    @property
    def conn(self) -> sqlite3.Connection:
        """The connection, with every buffered write applied first."""
        if self._op_mark is not None and not self._op_savepoint:
            self._flush(self._op_mark)  # earlier ops' writes stay outside the savepoint
            self._conn.execute("SAVEPOINT op")
            self._op_savepoint = True
        self._flush(None)
        if self._op_mark is not None:
            self._op_mark = (0, 0, 0, 0)
        return self._conn

    def _flush(self, upto: tuple[int, int, int, int] | None) -> None:
        rows, bumps, paths, events = upto or (
            len(self._rows),
            len(self._bumps),
            len(self._paths),
            len(self._event_rows),
        )
        conn = self._conn
        if rows:
            values = list(map(new_message_values, self._rows[:rows]))
            _insert_rows(conn, "messages", NEW_MESSAGE_INSERT, values)
            del self._rows[:rows]
            if self._rows:  # a partial flush: the rest moved up
                self._row_by_seq = {r.seq: i for i, r in enumerate(self._rows)}
            else:
                self._row_by_seq.clear()
        for parent in self._bumps[:bumps]:
            conn.execute(
                "UPDATE messages SET child_count = child_count + 1 WHERE seq = ?", (parent,)
            )
        del self._bumps[:bumps]
        if paths:
            _insert_rows(conn, "active_path", "depth, seq", self._paths[:paths])
            del self._paths[:paths]
        if events:
            _insert_rows(conn, "events", "seq, type, frame, created_at", self._event_rows[:events])
            del self._event_rows[:events]
        if upto is None and self._prune_to is not None:
            conn.execute("DELETE FROM events WHERE seq <= ?", (self._prune_to,))
            self._prune_to = None

    def add_message_row(self, row: MessageRow) -> None:
        """Buffer a new ``messages`` row; its defaulted columns must hold the schema defaults.

        Only :data:`storage.rows.NEW_MESSAGE_COLUMNS` are written; the row's other
        values must be :data:`storage.rows.NEW_MESSAGE_DEFAULTS`, so the row is
        what the file will hold.
        """
        self._row_by_seq[row.seq] = len(self._rows)
        self._rows.append(row)
        self._op_buffered = True

    def bump_children(self, parent_seq: int) -> None:
        """Count one more child of ``parent_seq``."""
        at = self._row_by_seq.get(parent_seq)
        if at is not None:  # not yet written: count it in the buffered row itself
            pending = self._rows[at]
            self._rows[at] = pending._replace(child_count=pending.child_count + 1)
        else:
            self._bumps.append(parent_seq)
        self._op_buffered = True

    def add_path(self, depth: int, seq: int) -> None:
        self._paths.append((depth, seq))
        self._op_buffered = True

    # -- ops within a batch
    def begin_op(self) -> None:
        if self._multi:
            self._op_mark = (
                len(self._rows),
                len(self._bumps),
                len(self._paths),
                len(self._event_rows),
            )
            self._op_savepoint = False
        self._op_buffered = False

    def fail_op(self) -> None:
        """Undo the op that just failed, or ask for a safe rerun if it cannot be.

        An op that buffered writes may have changed an earlier op's buffered
        row, which cannot be told apart afterwards: the batch is then rerun in
        safe mode, where every op's writes are applied inside its savepoint
        before the next op starts, so the buffer holds only the failed op's.
        """
        if self._op_buffered and not self._safe:
            raise RedoSafely
        if self._op_savepoint:
            self._conn.execute("ROLLBACK TO op")
            self._conn.execute("RELEASE op")
        self._rows.clear()
        self._row_by_seq.clear()
        self._bumps.clear()
        self._paths.clear()
        self._event_rows.clear()
        self._prune_to = None
        self._op_savepoint = False

    def apply(self) -> None:
        """Apply the buffered writes now (safe mode: at the end of each op)."""
        self.conn  # noqa: B018

    def end_op(self) -> None:
        if self._op_savepoint:
            self._conn.execute("RELEASE op")
        self._op_mark = None
        self._op_savepoint = False

    def finish(self) -> None:
        """Apply everything still buffered (before the session row and COMMIT)."""
        self._op_mark = None
        self._flush(None)

    def session_doc(self) -> dict[str, Any]:
        """The Session document of the state as of this point of the transaction."""
        return session_doc(self.state)

    def emit(self, type_: str, payload: dict[str, Any]) -> Event:
        """Record an event with the next seq; it is published only after COMMIT."""
        self.state.event_seq += 1
        seq = self.state.event_seq
        frame = orjson.dumps({"type": type_, "seq": seq, **payload})
        self._event_rows.append((seq, type_, frame, self.now))
        self._op_buffered = True
        if seq % 256 == 0:
            self._prune_to = seq - self.event_retention
        ev = Event(seq, type_, frame)
        self.events.append(ev)
        return ev

    def ephemeral(self, type_: str, frame: bytes) -> None:
        """Queue an unlogged frame, published after COMMIT in order with events."""
        self.events.append(Event(None, type_, frame))

    # -- messages
    def message_row(self, mid: str) -> MessageRow:
        """Live message ``mid``'s row; :class:`NotFound` if unknown or deleted."""
        raw = self.conn.execute(
            f"SELECT {MESSAGE_SELECT} FROM messages WHERE id = ?", (mid,)
        ).fetchone()
        row = None if raw is None else MessageRow._make(raw)
        if row is None or row.deleted_at is not None:
            raise NotFound(f"message {mid!r} not found", details={"message_id": mid})
        return row

    def message(self, mid: str) -> dict[str, Any]:
        """Live message ``mid``'s document; :class:`NotFound` if unknown or deleted."""
        return message_doc(self.message_row(mid), self.session_id)

    def message_by_seq(self, seq: int) -> dict[str, Any]:
        """The document of the message at ``seq`` (which must exist)."""
        raw = self.conn.execute(
            f"SELECT {MESSAGE_SELECT} FROM messages WHERE seq = ?", (seq,)
        ).fetchone()
        return message_doc(MessageRow._make(raw), self.session_id)

    def set_active_leaf(self, leaf_seq: int | None) -> bool:
        """Point the active path at ``leaf_seq``; return whether the leaf changed.

        Only the part of the path that differs from the current one is
        rewritten: O(length of the divergence).
        """
        st = self.state
        if st.active_leaf_seq == leaf_seq:
            return False
        new_rows: list[tuple[int, int]] = []
        node = leaf_seq
        common_depth = -1
        while node is not None:
            parent, depth = self.conn.execute(
                "SELECT parent_seq, depth FROM messages WHERE seq = ?", (node,)
            ).fetchone()
            on_path = self.conn.execute(
                "SELECT seq FROM active_path WHERE depth = ?", (depth,)
            ).fetchone()
            if on_path is not None and on_path == (node,):
                common_depth = depth
                break
            new_rows.append((depth, node))
            node = parent
        self.conn.execute("DELETE FROM active_path WHERE depth > ?", (common_depth,))
        self.conn.executemany("INSERT INTO active_path (depth, seq) VALUES (?, ?)", new_rows)
        st.active_leaf_seq, st.active_leaf_id = leaf_seq, None
        st.leaf_depth, st.leaf_child_count = -1, 0
        if leaf_seq is not None:
            st.active_leaf_id, st.leaf_depth, st.leaf_child_count = self.conn.execute(
                "SELECT id, depth, child_count FROM messages WHERE seq = ?", (leaf_seq,)
            ).fetchone()
        self.session_changed = True
        return True

    def touch_session(self) -> None:
        self.state.updated_at = self.now
        self.session_changed = True
