"""One session's SQLite file: schema, reads, and the mutations of the write path.

A :class:`SessionFile` holds two connections: the writer, used only by its
owner (the session actor) one batch at a time, and a reader for committed
state (WAL: readers never wait for the writer). All methods are synchronous;
the caller decides which thread runs them.

Mutations are functions ``op(txn) -> result`` run by :meth:`SessionFile.run_batch`
inside one ``BEGIN IMMEDIATE`` transaction, each op in its own savepoint so that
a failing op leaves no trace while the others commit together (group commit).
Every change records an event row with the next per-session event ``seq`` in
the same transaction; the encoded events are handed back only once COMMIT has
returned, so the caller can publish them (output gate).

Durability (``synchronous`` FULL or EXTRA): the writer runs SQLite at
``synchronous=NORMAL``, so COMMIT writes the WAL without waiting for the disk,
and :meth:`SessionFile.run_batch` with ``sync=False`` leaves the ``fdatasync``
of the WAL (:meth:`SessionFile.wal_fd`) to the caller, who must keep every
reply, event and read of the new state back until it has returned: the
session actor does it asynchronously, so the event loop never waits for a
disk flush. With ``sync=True`` (the default) the batch runs at SQLite's own
``FULL`` and is durable when COMMIT returns, before anyone can read it.
Automatic checkpoints are off on the writer (they would flush the disk inside
a COMMIT); the owner calls :meth:`SessionFile.checkpoint` off the event loop.
"""

from __future__ import annotations

import contextlib
import html
import os
import shutil
import sqlite3
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import orjson

from storage.attachments import attachment_url
from storage.cursors import decode_int, encode_int
from storage.errors import (
    Conflict,
    InvalidInput,
    InvalidQuery,
    NotFound,
    PreconditionFailed,
    StorageError,
    Unavailable,
    from_os_error,
    from_sqlite,
)
from storage.ids import uuid7
from storage.layout import DataDir, connect, fsync_path
from storage.schema import SESSION_MIGRATIONS, migrate

T = TypeVar("T")
_END = 2**62

ROLES = ("user", "assistant", "system", "tool")
STATUSES = ("pending", "streaming", "complete", "error", "cancelled", "interrupted")
UNFINISHED = ("pending", "streaming")

_MSG_COLS = (
    "seq, id, parent_seq, parent_id, depth, sibling_index, child_count, role, content, parts, "
    "status, client_id, request_hash, model_id, provider_id, fallback_notice, tool_name, "
    "tool_call, tool_result, attachments, metadata, error, created_at, updated_at, version, "
    "deleted_at"
)
_SESSION_COLS = (
    "id, owner, title, metadata, created_at, updated_at, message_count, last_message_at, "
    "active_leaf_seq, active_leaf_id, root_count, event_seq"
)


def dumps(value: Any) -> str:
    """JSON text for a column."""
    return orjson.dumps(value).decode()


def _loads(text: str | None) -> Any:
    return None if text is None else orjson.loads(text)


@dataclass(slots=True, frozen=True)
class Event:
    """A committed change, encoded once as a JSON frame ``{"type", "seq", ...}``.

    ``seq`` is None for an ephemeral frame (a streaming delta): it is published
    in order with the durable events of its transaction but not logged.
    """

    seq: int | None
    type: str
    frame: bytes


@dataclass(slots=True)
class MessageDraft:
    """What a caller asks to append. Validation of shapes happens before this."""

    role: str
    content: str
    parts: list[Any] | None = None
    client_id: str | None = None
    parent_id: str | None = None
    tool_name: str | None = None
    tool_call: Any = None
    tool_result: Any = None
    # ids of attachments of this session; op_append checks that they exist and
    # stores the message's ``attachments`` as refs {id, name, mime, size, sha256, url}
    attachments: list[str] | None = None
    metadata: dict[str, Any] | None = None
    status: str = "complete"
    model_id: str | None = None
    provider_id: str | None = None
    request_hash: str | None = None
    explicit_parent: bool = field(default=False)


def message_doc(row: sqlite3.Row | tuple[Any, ...], session_id: str) -> dict[str, Any]:
    """The API shape of a ``messages`` row selected with ``_MSG_COLS``."""
    (
        seq,
        mid,
        _pseq,
        parent_id,
        _depth,
        _sib,
        _cc,
        role,
        content,
        parts,
        status,
        client_id,
        _rh,
        model_id,
        provider_id,
        fallback_notice,
        tool_name,
        tool_call,
        tool_result,
        attachments,
        metadata,
        error,
        created_at,
        updated_at,
        version,
        deleted_at,
    ) = row
    return {
        "id": mid,
        "session_id": session_id,
        "seq": seq,
        "role": role,
        "content": content,
        "parts": _loads(parts),
        "status": status,
        "parent_id": parent_id,
        "client_id": client_id,
        "model_id": model_id,
        "provider_id": provider_id,
        "fallback_notice": fallback_notice,
        "tool_name": tool_name,
        "tool_call": _loads(tool_call),
        "tool_result": _loads(tool_result),
        "attachments": _loads(attachments) or [],
        "metadata": _loads(metadata) or {},
        "error": _loads(error),
        "created_at": created_at,
        "updated_at": updated_at,
        "version": version,
        "deleted": deleted_at is not None,
    }


def session_doc(row: tuple[Any, ...]) -> dict[str, Any]:
    """The API shape of a ``session`` row selected with ``_SESSION_COLS``."""
    (
        sid,
        _owner,
        title,
        metadata,
        created_at,
        updated_at,
        count,
        last_at,
        _leaf_seq,
        leaf_id,
        _roots,
        _eseq,
    ) = row
    return {
        "id": sid,
        "title": title,
        "metadata": _loads(metadata) or {},
        "created_at": created_at,
        "updated_at": updated_at,
        "message_count": count,
        "last_message_at": last_at,
        "active_leaf_id": leaf_id,
    }


_ATT_COLS = "id, name, mime, size, sha256, created_at"


def attachment_doc(row: sqlite3.Row | tuple[Any, ...], session_id: str) -> dict[str, Any]:
    """The API shape of an ``attachments`` row selected with ``_ATT_COLS``."""
    aid, name, mime, size, sha256, created_at = row
    return {
        "id": aid,
        "name": name,
        "mime": mime,
        "size": size,
        "sha256": sha256,
        "url": attachment_url(session_id, aid),
        "created_at": created_at,
    }


def attachment_refs(txn: Txn, ids: Sequence[str]) -> list[dict[str, Any]]:
    """The refs a message stores for attachment ``ids``, in the given order.

    Raises :class:`InvalidInput` naming every id that is not an attachment of
    this session.
    """
    found: dict[str, dict[str, Any]] = {}
    for aid in dict.fromkeys(ids):
        row = txn.conn.execute(f"SELECT {_ATT_COLS} FROM attachments WHERE id = ?", (aid,))
        r = row.fetchone()
        if r is not None:
            doc = attachment_doc(r, txn.session_id)
            del doc["created_at"]
            found[aid] = doc
    missing = [aid for aid in dict.fromkeys(ids) if aid not in found]
    if missing:
        raise InvalidInput("unknown attachment id", details={"attachments": missing})
    return [found[aid] for aid in ids]


def _part_attachment_ids(parts: list[Any] | None) -> list[str]:
    return [
        p["attachment_id"]
        for p in parts or []
        if isinstance(p, dict) and p.get("type") == "attachment" and "attachment_id" in p
    ]


@dataclass(slots=True)
class Page:
    """One page of messages, oldest first, with cursors for its neighbours."""

    items: list[dict[str, Any]]
    before: str | None
    after: str | None


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


# --------------------------------------------------------------------------- creation


def create_session_file(
    datadir: DataDir,
    sid: str,
    *,
    owner: str,
    title: str | None,
    metadata: dict[str, Any],
    now: str,
    synchronous: str = "FULL",
    populate: Callable[[sqlite3.Connection, str, str], None] | None = None,
) -> dict[str, Any]:
    """Create session ``sid`` atomically and return its Session document.

    The file is built in a temporary folder and renamed into place, so a crash
    leaves either no session or a complete one. ``populate(conn, sid, now)``,
    if given, fills the new file in the same transaction as the session row
    (import); if it raises, nothing is created. Raises :class:`Conflict` if the
    session exists, :class:`StorageFull` when the disk is full (nothing is left
    behind), :class:`Unavailable` for other file-system failures.
    """
    try:
        return _create_session_file(
            datadir,
            sid,
            owner=owner,
            title=title,
            metadata=metadata,
            now=now,
            synchronous=synchronous,
            populate=populate,
        )
    except sqlite3.Error as exc:
        raise _classify(exc) from exc
    except OSError as exc:
        raise from_os_error(exc) from exc


def _create_session_file(
    datadir: DataDir,
    sid: str,
    *,
    owner: str,
    title: str | None,
    metadata: dict[str, Any],
    now: str,
    synchronous: str,
    populate: Callable[[sqlite3.Connection, str, str], None] | None,
) -> dict[str, Any]:
    final = datadir.session_dir(sid)
    if final.exists():
        raise Conflict(f"session {sid!r} already exists", details={"id": sid})
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{sid}.{uuid.uuid4().hex}.tmp"
    tmp.mkdir()
    try:
        conn = connect(tmp / "session.db", synchronous=synchronous)
        try:
            migrate(conn, SESSION_MIGRATIONS, what="session file")
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "INSERT INTO session (id, owner, title, metadata, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (sid, owner, title, dumps(metadata), now, now),
            )
            if populate is not None:
                populate(conn, sid, now)
            row = conn.execute(f"SELECT {_SESSION_COLS} FROM session").fetchone()
            conn.execute("COMMIT")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()
        try:
            os.rename(tmp, final)
        except OSError as exc:
            raise Conflict(f"session {sid!r} already exists", details={"id": sid}) from exc
        fsync_path(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return session_doc(tuple(row))


def remove_session_files(datadir: DataDir, sid: str) -> bool:
    """Remove session ``sid``'s folder; return whether it existed.

    The folder is first renamed into ``trash/`` (atomic), so the session is gone
    at once even if removing its files takes a while or is interrupted.
    """
    src = datadir.session_dir(sid)
    dst = datadir.trash / f"{sid}.{uuid.uuid4().hex}"
    try:
        os.rename(src, dst)
    except FileNotFoundError:
        return False
    fsync_path(src.parent)
    shutil.rmtree(dst, ignore_errors=True)
    return True


# --------------------------------------------------------------------------- transactions


@dataclass(slots=True)
class SessionState:
    """The session row, plus the active leaf's depth and child count.

    The actor is the only writer of its file, so the state is kept in memory
    between transactions: an append reads nothing but what it must.
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
    leaf_depth: int
    leaf_child_count: int
    next_seq: int = 1

    @classmethod
    def load(cls, conn: sqlite3.Connection) -> SessionState:
        row = conn.execute(f"SELECT {_SESSION_COLS} FROM session").fetchone()
        if row is None:
            raise Unavailable("session file has no session row")
        depth, children = -1, 0
        if row[8] is not None:
            depth, children = conn.execute(
                "SELECT depth, child_count FROM messages WHERE seq = ?", (row[8],)
            ).fetchone()
        return cls(
            id=row[0],
            owner=row[1],
            title=row[2],
            metadata=row[3],
            created_at=row[4],
            updated_at=row[5],
            message_count=row[6],
            last_message_at=row[7],
            active_leaf_seq=row[8],
            active_leaf_id=row[9],
            root_count=row[10],
            event_seq=row[11],
            leaf_depth=depth,
            leaf_child_count=children,
            # rows are never removed (deletes leave tombstones), so seq grows by one
            next_seq=conn.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM messages").fetchone()[0],
        )

    def row(self) -> tuple[Any, ...]:
        return (
            self.id,
            self.owner,
            self.title,
            self.metadata,
            self.created_at,
            self.updated_at,
            self.message_count,
            self.last_message_at,
            self.active_leaf_seq,
            self.active_leaf_id,
            self.root_count,
            self.event_seq,
        )

    def copy(self) -> SessionState:
        return SessionState(
            self.id,
            self.owner,
            self.title,
            self.metadata,
            self.created_at,
            self.updated_at,
            self.message_count,
            self.last_message_at,
            self.active_leaf_seq,
            self.active_leaf_id,
            self.root_count,
            self.event_seq,
            self.leaf_depth,
            self.leaf_child_count,
            self.next_seq,
        )


_MSG_INSERT = (
    "seq, id, parent_seq, parent_id, depth, sibling_index, child_count, role, content, parts, "
    "status, client_id, request_hash, model_id, provider_id, tool_name, tool_call, tool_result, "
    "attachments, metadata, created_at, updated_at"
)
_CHUNK = 16  # rows per multi-row INSERT (one SQLite step, one GIL round trip)


_INSERT_SQL: dict[tuple[str, str, int], str] = {}


def _insert_sql(table: str, cols: str, n: int) -> str:
    """``INSERT INTO table (cols) VALUES (?, …), …`` for ``n`` rows (memoized)."""
    sql = _INSERT_SQL.get((table, cols, n))
    if sql is None:
        one = "(" + ", ".join("?" * (cols.count(",") + 1)) + ")"
        sql = f"INSERT INTO {table} ({cols}) VALUES " + ", ".join([one] * n)
        _INSERT_SQL[(table, cols, n)] = sql
    return sql


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


class _RedoSafely(Exception):
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
        self._rows: list[list[Any]] = []
        self._row_by_seq: dict[int, list[Any]] = {}
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
            _insert_rows(conn, "messages", _MSG_INSERT, self._rows[:rows])
            for r in self._rows[:rows]:
                del self._row_by_seq[r[0]]
            del self._rows[:rows]
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

    def add_message_row(self, row: list[Any]) -> None:
        """Buffer a new ``messages`` row (columns of ``_MSG_INSERT``)."""
        self._rows.append(row)
        self._row_by_seq[row[0]] = row
        self._op_buffered = True

    def bump_children(self, parent_seq: int) -> None:
        """Count one more child of ``parent_seq``."""
        pending = self._row_by_seq.get(parent_seq)
        if pending is not None:
            pending[6] += 1  # not yet written: count it in the row itself
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
            raise _RedoSafely
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
        return session_doc(self.state.row())

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
    def message_row(self, mid: str) -> tuple[Any, ...]:
        row = self.conn.execute(f"SELECT {_MSG_COLS} FROM messages WHERE id = ?", (mid,)).fetchone()
        if row is None or row[25] is not None:
            raise NotFound(f"message {mid!r} not found", details={"message_id": mid})
        return tuple(row)

    def message(self, mid: str) -> dict[str, Any]:
        return message_doc(self.message_row(mid), self.session_id)

    def message_by_seq(self, seq: int) -> dict[str, Any]:
        row = self.conn.execute(
            f"SELECT {_MSG_COLS} FROM messages WHERE seq = ?", (seq,)
        ).fetchone()
        return message_doc(row, self.session_id)

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
            if on_path is not None and on_path[0] == node:
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


# --------------------------------------------------------------------------- mutations


def op_append(draft: MessageDraft) -> Callable[[Txn], tuple[dict[str, Any], bool]]:
    """Append a message; the result is ``(message, created)``.

    With a ``client_id`` seen before, the stored message is returned with
    ``created=False`` when the request hash matches, else :class:`Conflict`.
    Without ``parent_id`` the parent is the active leaf; with ``parent_id``
    explicitly null (``explicit_parent``) the message is a new root, which is
    how the first message of a chat is edited. The new message becomes the
    active leaf either way.
    """

    def run(txn: Txn) -> tuple[dict[str, Any], bool]:
        if draft.client_id is not None:
            row = txn.conn.execute(
                f"SELECT {_MSG_COLS} FROM messages WHERE client_id = ?", (draft.client_id,)
            ).fetchone()
            if row is not None:
                if row[12] != draft.request_hash:
                    raise Conflict(
                        "client_id was already used for a different message",
                        details={"client_id": draft.client_id, "message_id": row[1]},
                    )
                return message_doc(row, txn.session_id), False
        st = txn.state
        parent_seq: int | None
        parent_id: str | None
        if draft.parent_id is not None:
            prow = txn.conn.execute(
                "SELECT seq, depth, child_count, deleted_at FROM messages WHERE id = ?",
                (draft.parent_id,),
            ).fetchone()
            if prow is None or prow[3] is not None:
                raise InvalidInput(
                    "parent_id does not name a message of this session",
                    details={"parent_id": draft.parent_id},
                )
            parent_seq, parent_id, depth, sibling_index = (
                prow[0],
                draft.parent_id,
                prow[1] + 1,
                prow[2],
            )
        elif st.active_leaf_seq is not None and not draft.explicit_parent:
            parent_seq, parent_id = st.active_leaf_seq, st.active_leaf_id
            depth, sibling_index = st.leaf_depth + 1, st.leaf_child_count
        else:
            parent_seq, parent_id, depth, sibling_index = None, None, 0, st.root_count
        refs = None
        wanted = [*(draft.attachments or []), *_part_attachment_ids(draft.parts)]
        if wanted:
            refs = attachment_refs(txn, wanted)[: len(draft.attachments or [])]
        mid = uuid7()
        parts = None if draft.parts is None else dumps(draft.parts)
        tool_call = None if draft.tool_call is None else dumps(draft.tool_call)
        tool_result = None if draft.tool_result is None else dumps(draft.tool_result)
        attachments = None if not refs else dumps(refs)
        metadata = dumps(draft.metadata or {})
        seq = st.next_seq
        st.next_seq += 1
        row = [
            seq, mid, parent_seq, parent_id, depth, sibling_index, 0, draft.role, draft.content,
            parts, draft.status, draft.client_id, draft.request_hash, draft.model_id,
            draft.provider_id, draft.tool_name, tool_call, tool_result, attachments, metadata,
            txn.now, txn.now,
        ]  # fmt: skip
        txn.add_message_row(row)
        if parent_seq is None:
            st.root_count += 1
        else:
            txn.bump_children(parent_seq)
        branched = parent_seq != st.active_leaf_seq
        if branched:
            txn.set_active_leaf(seq)
        else:  # the common case: the active branch grows by one
            txn.add_path(depth, seq)
            st.active_leaf_seq, st.active_leaf_id = seq, mid
            st.leaf_depth, st.leaf_child_count = depth, 0
        st.message_count += 1
        st.last_message_at = st.updated_at = txn.now
        txn.session_changed = True
        # the stored row in _MSG_COLS order: fallback_notice and error are null, version 1
        msg = message_doc((*row[:15], None, *row[15:20], None, *row[20:], 1, None), txn.session_id)
        txn.emit("message.created", {"message": msg})
        if branched:
            txn.emit("session.updated", {"session": txn.session_doc()})
        return msg, True

    return run


def op_update_message(
    mid: str,
    changes: dict[str, Any],
    *,
    if_match: int | None = None,
) -> Callable[[Txn], dict[str, Any]]:
    """Change some of a message's fields and bump its ``version``.

    ``changes`` may hold ``content``, ``parts``, ``metadata``, ``status``,
    ``error``, ``model_id``, ``provider_id``, ``fallback_notice``. A stale
    ``if_match`` raises :class:`PreconditionFailed`.
    """
    json_cols = {"parts", "metadata", "error"}
    allowed = {"content", "status", "model_id", "provider_id", "fallback_notice"} | json_cols

    def run(txn: Txn) -> dict[str, Any]:
        row = txn.message_row(mid)
        if if_match is not None and row[24] != if_match:
            raise PreconditionFailed(
                "the message changed since that version",
                details={"current_version": row[24], "if_match": if_match},
            )
        if changes.get("parts"):
            attachment_refs(txn, _part_attachment_ids(changes["parts"]))
        sets, args = [], []
        for key, value in changes.items():
            if key not in allowed:
                raise InvalidInput(f"field {key!r} cannot be changed")
            sets.append(f"{key} = ?")
            args.append(dumps(value) if key in json_cols and value is not None else value)
        sets += ["version = version + 1", "updated_at = ?"]
        args += [txn.now, mid]
        txn.conn.execute(f"UPDATE messages SET {', '.join(sets)} WHERE id = ?", args)
        txn.touch_session()
        msg = txn.message(mid)
        txn.emit("message.updated", {"message": msg})
        return msg

    return run


def op_delete_message(mid: str) -> Callable[[Txn], None]:
    """Replace a message with a tombstone that keeps the tree whole.

    Its content and data are erased; it disappears from listings and reads.
    If it was the active leaf, the leaf moves to its nearest live ancestor.
    """

    def run(txn: Txn) -> None:
        row = txn.message_row(mid)
        seq = row[0]
        txn.conn.execute(
            "UPDATE messages SET content = '', parts = NULL, tool_call = NULL, "
            "tool_result = NULL, attachments = NULL, metadata = '{}', error = NULL, "
            "deleted_at = ?, updated_at = ?, version = version + 1 WHERE seq = ?",
            (txn.now, txn.now, seq),
        )
        st = txn.state
        st.message_count -= 1
        txn.touch_session()
        leaf = st.active_leaf_seq
        if seq == leaf:
            node = row[2]
            while node is not None:
                parent, deleted = txn.conn.execute(
                    "SELECT parent_seq, deleted_at FROM messages WHERE seq = ?", (node,)
                ).fetchone()
                if deleted is None:
                    break
                node = parent
            txn.set_active_leaf(node)
        txn.emit("message.deleted", {"message_id": mid})
        if leaf == seq:
            txn.emit("session.updated", {"session": txn.session_doc()})

    return run


def op_update_session(
    *,
    title: str | None = None,
    set_title: bool = False,
    metadata: dict[str, Any] | None = None,
    active_leaf_id: str | None = None,
) -> Callable[[Txn], dict[str, Any]]:
    """Change a session's title, metadata or active branch; return the Session.

    ``active_leaf_id`` may name any live message: the path then follows the
    most recent live children below it down to a leaf, so naming a sibling
    switches to that branch as it was last left.
    """

    def run(txn: Txn) -> dict[str, Any]:
        if set_title:
            txn.state.title = title
        if metadata is not None:
            txn.state.metadata = dumps(metadata)
        if active_leaf_id is not None:
            row = txn.conn.execute(
                "SELECT seq, deleted_at FROM messages WHERE id = ?", (active_leaf_id,)
            ).fetchone()
            if row is None or row[1] is not None:
                raise InvalidInput(
                    "active_leaf_id does not name a message of this session",
                    details={"active_leaf_id": active_leaf_id},
                )
            node = row[0]
            while True:
                child = txn.conn.execute(
                    "SELECT seq FROM messages WHERE parent_seq = ? AND deleted_at IS NULL "
                    "ORDER BY seq DESC LIMIT 1",
                    (node,),
                ).fetchone()
                if child is None:
                    break
                node = child[0]
            txn.set_active_leaf(node)
        txn.touch_session()
        doc = txn.session_doc()
        txn.emit("session.updated", {"session": doc})
        return doc

    return run


def op_add_attachment(
    *, name: str, mime: str, size: int, sha256: str
) -> Callable[[Txn], dict[str, Any]]:
    """Record an attachment whose blob is already on disk; return its document.

    No event is recorded: an attachment becomes visible to others only through
    the message that references it.
    """

    def run(txn: Txn) -> dict[str, Any]:
        aid = uuid7()
        txn.conn.execute(
            f"INSERT INTO attachments ({_ATT_COLS}) VALUES (?, ?, ?, ?, ?, ?)",
            (aid, name, mime, size, sha256, txn.now),
        )
        return attachment_doc((aid, name, mime, size, sha256, txn.now), txn.session_id)

    return run


# --------------------------------------------------------------------------- search

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
    terms = []
    for word in q.split():
        prefix = word.endswith("*") and word.strip("*") != ""
        word = word.rstrip("*") if prefix else word
        terms.append('"' + word.replace('"', '""') + '"' + ("*" if prefix else ""))
    if not terms:
        raise InvalidQuery("the query is empty")
    return " ".join(terms)


def snippet_html(text: str) -> str:
    """HTML-escape a snippet and turn the match markers into ``<mark>`` tags."""
    return (
        html.escape(text, quote=True)
        .replace(SNIPPET_OPEN, "<mark>")
        .replace(SNIPPET_CLOSE, "</mark>")
    )


# --------------------------------------------------------------------------- the file


class SessionFile:
    """An open session database: a writer connection and a reader connection.

    Not thread-safe by itself: the owner must not run two write batches at
    once, nor two reads at once from different threads. ``close()`` is
    idempotent.
    """

    def __init__(
        self,
        datadir: DataDir,
        sid: str,
        *,
        synchronous: str = "FULL",
        event_retention: int = 10_000,
    ) -> None:
        """Open session ``sid``; raise :class:`NotFound` if it does not exist.

        Runs pending migrations. Raises :class:`Unavailable` if the file is
        damaged or from a newer Roost.
        """
        self.sid = sid
        # FULL/EXTRA: commits must reach the disk before anyone sees them; the writer
        # runs at NORMAL and the WAL is fdatasynced after COMMIT (see the module doc)
        self.durable = synchronous in ("FULL", "EXTRA")
        self.synchronous = synchronous
        self._wal_fd: int | None = None
        self.event_retention = event_retention
        self.path: Path = datadir.session_db(sid)
        if not self.path.exists():
            raise NotFound(f"session {sid!r} not found", details={"session_id": sid})
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._snapshot_depth = 0
        self._state: SessionState | None = None
        try:
            self._writer = connect(self.path, synchronous=synchronous)
            migrate(self._writer, SESSION_MIGRATIONS, what="session file")
            self._writer.execute("PRAGMA wal_autocheckpoint=0")
            if self.durable:
                self._writer.execute("PRAGMA synchronous=NORMAL")
            row = self._writer.execute(f"SELECT {_SESSION_COLS} FROM session").fetchone()
            if row is None:
                raise Unavailable("session file has no session row")
            self.owner: str = row[1]
            self._reader = connect(self.path, synchronous=synchronous, cache_kib=512)
        except sqlite3.Error as exc:
            self.close()
            raise _classify(exc) from exc
        except BaseException:
            self.close()
            raise

    @property
    def closed(self) -> bool:
        return self._writer is None

    def close(self) -> None:
        """Close both connections (the last one checkpoints). Safe to call twice."""
        if self._wal_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._wal_fd)
            self._wal_fd = None
        for conn in (self._reader, self._writer):
            if conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
        self._reader = self._writer = None

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        """Make the reads inside the block see one committed state. Reentrant."""
        if self._snapshot_depth == 0:
            self.reader.execute("BEGIN")
        self._snapshot_depth += 1
        try:
            yield
        finally:
            self._snapshot_depth -= 1
            if self._snapshot_depth == 0 and self._reader is not None:
                self.reader.execute("COMMIT")

    @property
    def reader(self) -> ReadConnection:
        """The reader (committed state); raises storage errors, never ``sqlite3`` ones."""
        if self._reader is None:
            raise Unavailable(f"session {self.sid!r} is closed")
        return ReadConnection(self._reader)

    @property
    def writer(self) -> sqlite3.Connection:
        if self._writer is None:
            raise Unavailable(f"session {self.sid!r} is closed")
        return self._writer

    # -- the write path

    def run_batch(
        self, ops: Sequence[Callable[[Txn], Any]], now: str, *, sync: bool = True
    ) -> tuple[list[Any], list[Event], dict[str, Any] | None]:
        """Run ``ops`` in one transaction; return (results, events, session or None).

        Each op runs in a savepoint: one that raises (a :class:`StorageError`
        or a bug) is rolled back alone and its slot in ``results`` holds the
        exception. A SQLite failure, including at COMMIT, rolls everything
        back and is raised as a :class:`StorageError`: the caller must
        then treat the file's state as unknown and reopen it. The third item
        is the session document when an op changed the session row.

        With ``sync=False`` on a durable file the commit is not yet on disk
        when this returns: the caller must ``fdatasync`` :meth:`wal_fd` before
        anything that reflects it leaves the process (module doc).
        """
        full = sync and self.durable
        if full:
            self.writer.execute("PRAGMA synchronous=FULL")
        try:
            try:
                return self._run_batch(ops, now, safe=False)
            except _RedoSafely:
                return self._run_batch(ops, now, safe=True)
        finally:
            if full and self._writer is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._writer.execute("PRAGMA synchronous=NORMAL")

    def wal_fd(self) -> int:
        """A descriptor of the WAL file, to ``fdatasync`` commits made with ``sync=False``.

        Opened on first use, after a commit (the WAL exists then) and kept until
        :meth:`close`. SQLite deletes the WAL only when its last connection
        closes, so the descriptor stays the file's while this object is open.
        """
        if self._wal_fd is None:
            if self._writer is None:
                raise Unavailable(f"session {self.sid!r} is closed")
            self._wal_fd = os.open(f"{self.path}-wal", os.O_RDONLY | os.O_CLOEXEC)
        return self._wal_fd

    def checkpoint(self) -> tuple[int, int]:
        """Copy committed WAL frames into the database (PASSIVE: never blocks a reader).

        Flushes the disk twice (the WAL, then the database): run it off the
        event loop, between batches. Returns ``(frames in the WAL, frames copied)``.
        """
        try:
            row = self.writer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:
            raise _classify(exc) from exc
        return int(row[1]), int(row[2])

    def _run_batch(
        self, ops: Sequence[Callable[[Txn], Any]], now: str, *, safe: bool
    ) -> tuple[list[Any], list[Event], dict[str, Any] | None]:
        conn = self.writer
        if self._state is None:
            self._state = SessionState.load(conn)
        single = len(ops) == 1
        txn = Txn(
            conn,
            self.sid,
            now,
            self.event_retention,
            self._state.copy(),
            multi=not single,
            safe=safe,
        )
        results: list[Any] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for op in ops:
                    mark = len(txn.events)
                    # a lone op that fails rolls everything back: nothing to restore
                    saved = txn.state if single else txn.state.copy()
                    changed = txn.session_changed
                    txn.begin_op()
                    try:
                        results.append(op(txn))
                        if safe and not single:
                            txn.apply()
                    except sqlite3.Error:
                        raise
                    except _RedoSafely:
                        raise
                    except Exception as exc:  # the op's own failure: undo it alone
                        if single:
                            conn.execute("ROLLBACK")
                        else:
                            txn.fail_op()
                        del txn.events[mark:]
                        txn.state, txn.session_changed = saved, changed
                        results.append(exc)
                    if not single and conn.in_transaction:
                        txn.end_op()
                if not conn.in_transaction:  # a single op failed: nothing to commit
                    return results, [], None
                txn.finish()
                sess = None
                if txn.session_changed or txn.events:
                    st = txn.state
                    conn.execute(
                        "UPDATE session SET title = ?, metadata = ?, updated_at = ?, "
                        "message_count = ?, last_message_at = ?, active_leaf_seq = ?, "
                        "active_leaf_id = ?, root_count = ?, event_seq = ?",
                        (
                            st.title,
                            st.metadata,
                            st.updated_at,
                            st.message_count,
                            st.last_message_at,
                            st.active_leaf_seq,
                            st.active_leaf_id,
                            st.root_count,
                            st.event_seq,
                        ),
                    )
                    sess = txn.session_doc()
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            self._state = None  # the file decides what is true now
            raise _classify(exc) from exc
        except BaseException:
            self._state = None
            raise
        self._state = txn.state
        return results, txn.events, sess

    def recover_unfinished(self, now: str) -> list[Event]:
        """Mark replies left ``pending``/``streaming`` by a crash as ``interrupted``.

        Only the owner calls this, on activation, when no reply of this
        session can be running. Text streamed so far is kept.
        """

        rows = self.writer.execute(
            "SELECT id FROM messages WHERE status IN ('pending', 'streaming')"
        ).fetchall()
        if not rows:  # the usual case: no write transaction at all
            return []

        def op(txn: Txn) -> None:
            for (mid,) in rows:
                op_update_message(mid, {"status": "interrupted"})(txn)

        _, events, _ = self.run_batch([op], now)
        return events

    # -- reads (committed state)

    def read_session(self) -> dict[str, Any]:
        row = self.reader.execute(f"SELECT {_SESSION_COLS} FROM session").fetchone()
        return session_doc(row)

    def event_seq(self) -> int:
        return int(self.reader.execute("SELECT event_seq FROM session").fetchone()[0])

    def read_message(self, mid: str) -> dict[str, Any]:
        row = self.reader.execute(
            f"SELECT {_MSG_COLS} FROM messages WHERE id = ?", (mid,)
        ).fetchone()
        if row is None or row[25] is not None:
            raise NotFound(f"message {mid!r} not found", details={"message_id": mid})
        return message_doc(row, self.sid)

    def page(
        self,
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
        is nothing older/newer.
        """
        if before is not None and after is not None:
            raise InvalidInput("give either before or after, not both")
        if view == "all":
            kind, key = "s", "m.seq"
            src = f"SELECT {_prefixed('m')}, NULL, NULL FROM messages m WHERE m.deleted_at IS NULL"
        elif view == "active":
            kind, key = "d", "ap.depth"
            src = (
                f"SELECT {_prefixed('m')}, ap.depth, "
                "CASE WHEN m.parent_seq IS NULL THEN (SELECT root_count FROM session) "
                "ELSE p.child_count END "
                "FROM active_path ap JOIN messages m ON m.seq = ap.seq "
                "LEFT JOIN messages p ON p.seq = m.parent_seq WHERE m.deleted_at IS NULL"
            )
        else:
            raise InvalidInput("view must be 'active' or 'all'", details={"view": view})
        with self.snapshot():
            return self._page(view, kind, key, src, limit, before, after)

    def _page(
        self,
        view: str,
        kind: str,
        key: str,
        src: str,
        limit: int,
        before: str | None,
        after: str | None,
    ) -> Page:
        conn = self.reader
        if after is not None:
            pos = decode_int(kind, after)
            rows = conn.execute(
                f"{src} AND {key} > ? ORDER BY {key} ASC LIMIT ?", (pos, limit + 1)
            ).fetchall()
            newer = len(rows) > limit
            rows = rows[:limit]
        else:
            # no cursor: start past the end, so the newest page is a keyset search too
            pos = decode_int(kind, before) if before is not None else _END
            rows = conn.execute(
                f"{src} AND {key} < ? ORDER BY {key} DESC LIMIT ?", (pos, limit + 1)
            ).fetchall()
            older = len(rows) > limit
            rows = rows[:limit][::-1]
        items = []
        for row in rows:
            doc = message_doc(row[:26], self.sid)
            if view == "active":
                doc["siblings"] = {"index": row[5], "count": row[27]}
            items.append(doc)
        if not items:
            return Page([], None, None)
        first = items[0]["seq"] if view == "all" else rows[0][26]
        last = items[-1]["seq"] if view == "all" else rows[-1][26]
        if after is not None:
            older = self._exists(src, key, "<", first)
        else:
            newer = before is not None and self._exists(src, key, ">", last)
        return Page(
            items,
            encode_int(kind, first) if older else None,
            encode_int(kind, last) if newer else None,
        )

    def _exists(self, src: str, key: str, op: str, pos: int) -> bool:
        return (
            self.reader.execute(
                f"SELECT 1 FROM ({src} AND {key} {op} ?) LIMIT 1", (pos,)
            ).fetchone()
            is not None
        )

    def events_since(self, since: int, limit: int = 1000) -> list[Event] | None:
        """Committed events with ``seq > since``, oldest first, at most ``limit``.

        Returns None when events after ``since`` were already pruned, so the
        client must refetch instead of replaying (``resync``).
        """
        with self.snapshot():
            return self._events_since(since, limit)

    def _events_since(self, since: int, limit: int) -> list[Event] | None:
        conn = self.reader
        current = conn.execute("SELECT event_seq FROM session").fetchone()[0]
        if since > current:
            return None
        if since < current:
            first = conn.execute("SELECT MIN(seq) FROM events").fetchone()[0]
            if first is None or first > since + 1:
                return None
        rows = conn.execute(
            "SELECT seq, type, frame FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
            (since, limit),
        ).fetchall()
        return [Event(r[0], r[1], bytes(r[2])) for r in rows]

    def read_attachment(self, aid: str) -> dict[str, Any]:
        """Attachment ``aid``'s document; :class:`NotFound` if this session has none such."""
        row = self.reader.execute(
            f"SELECT {_ATT_COLS} FROM attachments WHERE id = ?", (aid,)
        ).fetchone()
        if row is None:
            raise NotFound(f"attachment {aid!r} not found", details={"attachment_id": aid})
        return attachment_doc(row, self.sid)

    def search(self, q: str, *, limit: int = 20, raw: bool = False) -> list[dict[str, Any]]:
        """Live, finished messages matching ``q`` (see :func:`fts_query`), best first.

        Each item is ``{message, snippet, score}``: ``snippet`` is HTML with the
        matches in ``<mark>`` and everything else escaped; ``score`` is the
        BM25 relevance (higher is better). Messages still streaming are not
        indexed until their reply ends. Raises :class:`InvalidQuery` when
        ``q`` is not a valid query.
        """
        expr = fts_query(q, raw=raw)
        sql = (
            f"SELECT {_prefixed('m')}, "
            f"snippet(messages_fts, 0, '{SNIPPET_OPEN}', '{SNIPPET_CLOSE}', '…', 24), "
            "messages_fts.rank "
            "FROM messages_fts JOIN messages m ON m.seq = messages_fts.rowid "
            "WHERE messages_fts MATCH ? AND m.deleted_at IS NULL "
            "ORDER BY messages_fts.rank LIMIT ?"
        )
        try:
            rows = self.reader.raw.execute(sql, (expr, limit)).fetchall()
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_ERROR:
                raise InvalidQuery(
                    f"the search query is not valid: {exc}", details={"query": q[:200]}
                ) from exc
            raise _classify(exc) from exc
        except sqlite3.Error as exc:
            raise _classify(exc) from exc
        return [
            {
                "message": message_doc(r[:26], self.sid),
                "snippet": snippet_html(r[26]),
                "score": -float(r[27]),
            }
            for r in rows
        ]


def _prefixed(alias: str) -> str:
    return ", ".join(f"{alias}.{c.strip()}" for c in _MSG_COLS.split(","))


# --------------------------------------------------------------------------- replies


def _first_reply(txn: Txn, user_seq: int) -> dict[str, Any] | None:
    row = txn.conn.execute(
        f"SELECT {_MSG_COLS} FROM messages WHERE parent_seq = ? AND role = 'assistant' "
        "ORDER BY seq LIMIT 1",
        (user_seq,),
    ).fetchone()
    return None if row is None else message_doc(row, txn.session_id)


def op_chat(
    user: MessageDraft, *, model_id: str | None = None
) -> Callable[[Txn], tuple[dict[str, Any], dict[str, Any], bool]]:
    """Append a user message and a ``pending`` assistant reply below it, atomically.

    Returns ``(user_message, assistant_message, created)``. A repeated
    ``client_id`` with the same request returns the stored pair with
    ``created=False`` (a reply is added if the first attempt has none).
    """

    def run(txn: Txn) -> tuple[dict[str, Any], dict[str, Any], bool]:
        user_msg, created = op_append(user)(txn)
        if not created:
            reply = _first_reply(txn, user_msg["seq"])
            if reply is not None:
                return user_msg, reply, False
        draft = MessageDraft(
            role="assistant",
            content="",
            status="pending",
            parent_id=user_msg["id"],
            model_id=model_id,
        )
        reply, _ = op_append(draft)(txn)
        return user_msg, reply, created

    return run


def op_regenerate(mid: str, *, model_id: str | None = None) -> Callable[[Txn], dict[str, Any]]:
    """Add a ``pending`` assistant message: a sibling of assistant ``mid``, or a
    child of user ``mid``. It becomes the active leaf; nothing is removed."""

    def run(txn: Txn) -> dict[str, Any]:
        row = txn.message_row(mid)
        role, parent_id = row[7], row[3]
        if role == "assistant":
            if parent_id is None:
                raise InvalidInput("this assistant message has no parent to answer")
        elif role == "user":
            parent_id = mid
        else:
            raise InvalidInput(
                f"only user and assistant messages can be regenerated, not {role}",
                details={"role": role},
            )
        draft = MessageDraft(
            role="assistant", content="", status="pending", parent_id=parent_id, model_id=model_id
        )
        return op_append(draft)(txn)[0]

    return run


def op_stream(
    mid: str,
    text: str,
    *,
    parts: list[Any] | None,
    status: str,
    error: dict[str, Any] | None = None,
    info: dict[str, Any] | None = None,
) -> Callable[[Txn], dict[str, Any] | None]:
    """Append ``text`` to a streaming reply and set its status.

    The text goes to subscribers as an ephemeral ``message.delta`` (offset =
    length of the text before it); a durable ``message.updated`` event is
    recorded only when the status changes (first text, and the end), after
    the delta. Returns the message when an event was recorded.
    """

    def run(txn: Txn) -> dict[str, Any] | None:
        row = txn.message_row(mid)
        sets = [
            "content = content || ?",
            "parts = ?",
            "status = ?",
            "version = version + 1",
            "updated_at = ?",
        ]
        args: list[Any] = [text, None if parts is None else dumps(parts), status, txn.now]
        if error is not None:
            sets.append("error = ?")
            args.append(dumps(error))
        for key in ("model_id", "provider_id", "fallback_notice"):
            if info and info.get(key) is not None:
                sets.append(f"{key} = ?")
                args.append(info[key])
        args.append(row[0])
        txn.conn.execute(f"UPDATE messages SET {', '.join(sets)} WHERE seq = ?", args)
        if text:
            delta = {
                "type": "message.delta",
                "message_id": mid,
                "offset": len(row[8]),
                "text": text,
            }
            txn.ephemeral("message.delta", orjson.dumps(delta))
        if row[10] == status:
            return None
        if status not in UNFINISHED:
            txn.touch_session()
        msg = txn.message_by_seq(row[0])
        txn.emit("message.updated", {"message": msg})
        return msg

    return run


class BulkOp(Generic[T]):
    """An op marked as bulk work (many rows, or one that may block).

    The session actor runs a batch holding one on a worker thread with
    ``sync=True`` instead of on the event loop; for :meth:`SessionFile.run_batch`
    it is an op like any other.
    """

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[Txn], T]) -> None:
        self.fn = fn

    def __call__(self, txn: Txn) -> T:
        return self.fn(txn)


def op_index_search(limit: int = 1000) -> BulkOp[bool]:
    """Index up to ``limit`` messages above the search watermark; True if more remain.

    New messages are not indexed by the write that adds them (that would
    double the cost of an append); this catches the index up. Unfinished
    replies are passed over: the trigger indexes them when they finish.
    """

    def run(txn: Txn) -> bool:
        conn = txn.conn
        (mark,) = conn.execute("SELECT indexed_seq FROM search_index").fetchone()
        rows = conn.execute(
            "SELECT seq, content, status, deleted_at FROM messages WHERE seq > ? "
            "ORDER BY seq LIMIT ?",
            (mark, limit),
        ).fetchall()
        if not rows:
            return False
        conn.executemany(
            "INSERT INTO messages_fts (rowid, content) VALUES (?, ?)",
            [(r[0], r[1]) for r in rows if r[3] is None and r[2] not in UNFINISHED],
        )
        conn.execute("UPDATE search_index SET indexed_seq = ?", (rows[-1][0],))
        return len(rows) == limit

    return BulkOp(run)


def read_history(f: SessionFile, parent_id: str | None, limit: int) -> list[dict[str, Any]]:
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
        f" SELECT {_prefixed('m')} FROM chain JOIN messages m ON m.seq = chain.seq"
        " WHERE m.deleted_at IS NULL ORDER BY chain.n DESC",
        (parent_id, limit),
    ).fetchall()
    return [message_doc(r, f.sid) for r in rows]


def read_by_client_id_prefix(f: SessionFile, prefix: str) -> dict[str, Any] | None:
    """The newest live message whose ``client_id`` starts with ``prefix``, or None.

    A range scan on the ``client_id`` index (no LIKE, so no escaping): the
    upper bound is ``prefix`` with its last character incremented.
    """
    if not prefix:
        raise ValueError("prefix must not be empty")
    upper = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    row = f.reader.execute(
        f"SELECT {_MSG_COLS} FROM messages WHERE client_id >= ? AND client_id < ? "
        "AND deleted_at IS NULL ORDER BY seq DESC LIMIT 1",
        (prefix, upper),
    ).fetchone()
    return None if row is None else message_doc(row, f.sid)


def read_siblings(f: SessionFile, mid: str, limit: int) -> list[dict[str, Any]]:
    """Message ``mid`` and its siblings (same parent), by sibling index, at most ``limit``.

    Each item is ``{id, role, status, deleted, created_at}``; tombstones are
    kept so positions match ``siblings.index`` of the active view. Raises
    ``NotFound`` for an unknown message. Uses the parent index: O(siblings).
    """
    row = f.reader.execute("SELECT parent_seq FROM messages WHERE id = ?", (mid,)).fetchone()
    if row is None:
        raise NotFound(f"message {mid!r} not found", details={"message_id": mid})
    rows = f.reader.execute(
        "SELECT id, role, status, deleted_at, created_at FROM messages"
        " WHERE parent_seq IS ? ORDER BY seq LIMIT ?",  # seq order is sibling order
        (row[0], limit),
    ).fetchall()
    return [
        {"id": r[0], "role": r[1], "status": r[2], "deleted": r[3] is not None, "created_at": r[4]}
        for r in rows
    ]
