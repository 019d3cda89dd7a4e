"""One open session file: its writer and reader connections and the write path.

A :class:`SessionFile` holds two connections: the writer, used only by its
owner (the session actor) one batch at a time, and a reader for committed
state (WAL: readers never wait for the writer). All methods are synchronous;
the caller decides which thread runs them.

Mutations are ops (:mod:`storage.ops`) run by :meth:`SessionFile.run_batch`
inside one ``BEGIN IMMEDIATE`` transaction, each op in its own savepoint so that
a failing op leaves no trace while the others commit together (group commit).
Every change records an event row with the next per-session event ``seq`` in
the same transaction; the encoded events are handed back only once COMMIT has
returned, so the caller can publish them (output gate). Reads are functions of
:mod:`storage.reads` and :mod:`storage.search`; the methods here delegate.

Durability (``synchronous`` FULL or EXTRA): the writer runs SQLite at
``synchronous=NORMAL``, so COMMIT writes the WAL without waiting for the disk,
and :meth:`SessionFile.run_batch` with ``sync=False`` leaves the ``fdatasync``
of the WAL (:meth:`SessionFile.wal_fd`) to the caller, who must keep every
reply, event and read of the new state back until it has returned: the
session actor does it asynchronously, so the event loop never waits for a
disk flush. With ``sync=True`` (the default) the batch runs at SQLite's own
``FULL`` and is durable when COMMIT returns, before anyone can read it.
Each open creates the ``-wal`` file anew, and SQLite at NORMAL never syncs
its directory entry, so the session folder is fsynced once when the WAL's
descriptor is first opened (on open, off the event loop, when the WAL is
already there). Automatic checkpoints are off on the writer (they would
flush the disk inside a COMMIT); the owner calls :meth:`SessionFile.checkpoint`
off the event loop.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from storage import reads, search
from storage.errors import NotFound, Unavailable, from_os_error, from_sqlite
from storage.layout import DataDir, connect, fsync_path, park, unpark
from storage.reads import Page, ReadConnection
from storage.rows import SESSION_SELECT, UNSETTLED_SQL, SessionRow
from storage.schema import SESSION_MIGRATIONS, migrate
from storage.txn import (
    SESSION_UPDATE_SQL,
    Event,
    RedoSafely,
    SessionState,
    Txn,
    session_update_values,
)

# how long a TRUNCATE checkpoint waits for readers of older snapshots, and the
# busy timeout it restores (what storage.layout.connect sets)
TRUNCATE_WAIT_MS = 100
BUSY_TIMEOUT_MS = 5000


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
        fsync_dir: Callable[[Path], None] = fsync_path,
    ) -> None:
        """Open session ``sid``; raise :class:`NotFound` if it does not exist.

        Runs pending migrations; a durable file's WAL is flushed before it is
        read (best effort: a failed flush does not stop reads). Raises
        :class:`Unavailable` if the file is damaged or from a newer Roost.
        ``fsync_dir`` flushes a folder's entries (the seam tests use to see the
        WAL's folder synced).
        """
        self._fsync_dir = fsync_dir
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
            raw = self._writer.execute(f"SELECT {SESSION_SELECT} FROM session").fetchone()
            if raw is None:
                raise Unavailable("session file has no session row")
            self.owner: str = SessionRow._make(raw).owner
            self._reader = connect(self.path, synchronous=synchronous, cache_kib=512)
            unpark(self.path)  # this activation holds the WAL index now
            if self.durable and _nonempty(f"{self.path}-wal"):
                # here, off the event loop: opening it fsyncs the folder. The WAL may
                # hold a commit whose flush failed in an earlier activation (visible,
                # perhaps not on disk): flushing it now, before any read, keeps the
                # output gate's promise for what this activation serves. Best effort:
                # on a full disk that flush fails again, and reads must still work
                # (the first commit of this activation flushes it, or fails, anyway)
                with contextlib.suppress(OSError):
                    os.fdatasync(self.wal_fd())
            # an empty WAL (the usual case: SQLite made it for this open) holds
            # nothing to flush; its folder is synced by the first commit's
            # ``wal_fd``, so an activation that only reads syncs nothing
        except sqlite3.Error as exc:
            self.close()
            raise from_sqlite(exc, path=self.path) from exc
        except OSError as exc:
            self.close()
            raise from_os_error(exc) from exc
        except BaseException:
            self.close()
            raise

    @property
    def closed(self) -> bool:
        return self._writer is None

    def close(self, *, keep_index: bool = False) -> None:
        """Close both connections (the last one checkpoints). Safe to call twice.

        ``keep_index``: park the (idle) reader instead of closing it
        (:func:`storage.layout.park`), so the WAL index survives for a reopen
        that follows at once, as after a commit failed on a full disk.
        """
        if self._wal_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._wal_fd)
            self._wal_fd = None
        if keep_index and self._reader is not None and self._snapshot_depth == 0:
            park(self.path, self._reader)
            self._reader = None
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
            except RedoSafely:
                return self._run_batch(ops, now, safe=True)
        finally:
            if full and self._writer is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._writer.execute("PRAGMA synchronous=NORMAL")

    def wal_fd(self) -> int:
        """A descriptor of the WAL file, to ``fdatasync`` commits made with ``sync=False``.

        Opened on first use (on open of a durable file, or after a commit: the
        WAL exists then) and kept until :meth:`close`. SQLite deletes the WAL
        only when its last connection closes, so the descriptor stays the
        file's while this object is open. Opening it fsyncs the session folder
        once, so the new WAL's directory entry is on disk before any commit
        is reported durable. Raises ``FileNotFoundError`` without a WAL and
        ``OSError`` if the folder cannot be synced (the next call retries).
        """
        if self._wal_fd is None:
            if self._writer is None:
                raise Unavailable(f"session {self.sid!r} is closed")
            fd = os.open(f"{self.path}-wal", os.O_RDONLY | os.O_CLOEXEC)
            try:
                self._fsync_dir(self.path.parent)
            except BaseException:
                os.close(fd)
                raise
            self._wal_fd = fd
        return self._wal_fd

    def checkpoint(self, *, truncate: bool = False) -> tuple[int, int]:
        """Copy committed WAL frames into the database.

        PASSIVE by default: never waits for a reader, and leaves the WAL file its
        size (SQLite reuses it from the start). ``truncate=True``: TRUNCATE, which
        also empties the WAL file, waiting at most :data:`TRUNCATE_WAIT_MS` for
        readers of older snapshots (if they outlast it, frames are still copied
        as far as they can be and the file keeps its size: call again later).
        Flushes the disk twice (the WAL, then the database): run it off the
        event loop, between batches. Returns ``(frames in the WAL, frames copied)``;
        raises storage errors. Idempotent.
        """
        conn = self.writer
        try:
            if not truncate:
                _busy, frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                return int(frames), int(copied)
            conn.execute(f"PRAGMA busy_timeout={TRUNCATE_WAIT_MS}")
            try:
                _busy, frames, copied = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            finally:
                conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        except sqlite3.Error as exc:
            raise from_sqlite(exc, path=self.path) from exc
        return int(frames), int(copied)

    def wal_size(self) -> int:
        """The WAL file's size in bytes (0 without one): one ``fstat`` of the
        descriptor a durable file holds, else one ``stat``. Raises nothing."""
        try:
            if self._wal_fd is not None:
                return os.fstat(self._wal_fd).st_size
            return os.stat(f"{self.path}-wal").st_size
        except OSError:
            return 0

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
                    except RedoSafely:
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
                    conn.execute(SESSION_UPDATE_SQL, session_update_values(txn.state))
                    sess = txn.session_doc()
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            self._state = None  # the file decides what is true now
            raise from_sqlite(exc, path=self.path) from exc
        except BaseException:
            self._state = None
            raise
        self._state = txn.state
        return results, txn.events, sess

    def has_unfinished(self) -> bool:
        """Whether a turn was left running, waiting for a tool or queued (by a crash
        or a restart, when the owner asks on activation): a cheap partial-index
        probe (``messages_turns``), so that an activation with nothing to recover
        opens no write transaction."""
        row = self.writer.execute(
            f"SELECT 1 FROM messages WHERE {UNSETTLED_SQL} LIMIT 1"
        ).fetchone()
        return row is not None

    # -- reads (committed state): one home each, in storage.reads / storage.search

    def read_session(self) -> dict[str, Any]:
        """The Session document as committed (:func:`storage.reads.read_session`)."""
        return reads.read_session(self)

    def event_seq(self) -> int:
        """The seq of the last committed event (:func:`storage.reads.event_seq`)."""
        return reads.event_seq(self)

    def read_message(self, mid: str) -> dict[str, Any]:
        """Live message ``mid`` (:func:`storage.reads.read_message`)."""
        return reads.read_message(self, mid)

    def page(
        self,
        *,
        view: str = "active",
        limit: int = 25,
        before: str | None = None,
        after: str | None = None,
    ) -> Page:
        """A page of live messages (:func:`storage.reads.page`)."""
        return reads.page(self, view=view, limit=limit, before=before, after=after)

    def events_since(self, since: int, limit: int = 1000) -> list[Event] | None:
        """Committed events after ``since`` (:func:`storage.reads.events_since`)."""
        return reads.events_since(self, since, limit)

    def read_attachment(self, aid: str) -> dict[str, Any]:
        """Attachment ``aid``'s document (:func:`storage.reads.read_attachment`)."""
        return reads.read_attachment(self, aid)

    def search(self, q: str, *, limit: int = 20, raw: bool = False) -> list[dict[str, Any]]:
        """Messages matching ``q``, best first (:func:`storage.search.search`)."""
        return search.search(self, q, limit=limit, raw=raw)


def _nonempty(path: str) -> bool:
    """Whether the file at ``path`` exists and holds at least one byte."""
    try:
        return os.stat(path).st_size > 0
    except FileNotFoundError:
        return False
