"""Read-only access to a Roost data dir for the admin script.

Contract: nothing in this module writes to a session file, creates a file
next to one, checkpoints a WAL or takes a write lock, except the functions
documented as writers (:func:`backup_file`, :func:`restore_file`).

How a file is opened read-only (:class:`ReadOnlyDb`):

* If ``session.db-wal`` exists, a writer has (or recently had) the file open
  in WAL mode: open with ``?mode=ro``. The reader then shares the WAL index
  with the server and sees committed state only, never blocking the writer.
* If there is no ``-wal`` file, no connection has the database open (SQLite
  deletes the WAL when the last connection closes), and ``?mode=ro`` would
  *create* ``-wal``/``-shm`` files. So the file is opened with
  ``?mode=ro&immutable=1`` instead, and :meth:`ReadOnlyDb.still_valid` checks
  afterwards that the file was not touched meanwhile (no ``-wal`` appeared, same
  inode, size and mtime); callers retry when it was.

Read transactions are kept short: each :meth:`ReadOnlyDb.snapshot` block is
one transaction, and long-running commands (``--follow``) open one per poll.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

from storage.errors import InvalidInput
from storage.layout import DataDir, fsync_path
from storage.schema import SESSION_MIGRATIONS

T = TypeVar("T")

EXIT_OK = 0
EXIT_PROBLEM = 1
EXIT_USAGE = 2


class AdminError(Exception):
    """A failure to report to the operator as one line, with an exit code."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class FileChanged(Exception):
    """An immutable-mode read raced with a writer; the read must be redone."""


@contextlib.contextmanager
def export_output(output: str | None) -> Iterator[IO[bytes]]:
    """The stream an export writes: stdout (flushed at the end), or the file
    ``output``, written under a temporary name beside it and renamed into place
    only when the block ends without an error (a failed export leaves any earlier
    file as it was)."""
    if output is None:
        try:
            yield sys.stdout.buffer
        finally:
            sys.stdout.buffer.flush()
        return
    out_path = Path(output)
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    with open(tmp, "wb") as stream:
        yield stream
    os.replace(tmp, out_path)


def sidecars(path: Path) -> tuple[Path, Path]:
    """The ``-wal`` and ``-shm`` files of database ``path``."""
    return path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")


def _signature(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_ino, st.st_size, st.st_mtime_ns


class ReadOnlyDb:
    """A read-only connection to one SQLite file (see the module docstring).

    Raises :class:`AdminError` if the file does not exist. Opening never
    reads the file; the first query may raise ``sqlite3.DatabaseError``.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        if not path.is_file():
            raise AdminError(f"{path}: no such file")
        wal, _ = sidecars(path)
        self.immutable = not wal.exists()
        self._sig = _signature(path) if self.immutable else None
        uri = path.resolve().as_uri() + ("?mode=ro&immutable=1" if self.immutable else "?mode=ro")
        self.conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=2.0)
        self.conn.execute("PRAGMA query_only=ON")

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> ReadOnlyDb:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def still_valid(self) -> bool:
        """Whether what was read reflects the file (always true in WAL mode)."""
        if not self.immutable:
            return True
        wal, _ = sidecars(self.path)
        try:
            return not wal.exists() and _signature(self.path) == self._sig
        except FileNotFoundError:
            return False

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[sqlite3.Connection]:
        """One short read transaction: every read inside sees one committed state.

        Raises :class:`FileChanged` at the end if an immutable-mode read may
        have raced with a writer.
        """
        self.conn.execute("BEGIN")
        try:
            yield self.conn
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
            raise
        if self.conn.in_transaction:
            self.conn.execute("COMMIT")
        if not self.still_valid():
            raise FileChanged(str(self.path))


def read_consistent(path: Path, fn: Callable[[ReadOnlyDb, sqlite3.Connection], T]) -> T:
    """Run ``fn`` in one snapshot of ``path``; redo it if the file changed under it."""
    for _ in range(5):
        with ReadOnlyDb(path) as db:
            try:
                with db.snapshot() as conn:
                    return fn(db, conn)
            except FileChanged:
                continue
    raise AdminError(f"{path}: the file kept changing while being read; try again", EXIT_PROBLEM)


def describe_db_error(path: Path, exc: sqlite3.Error) -> str:
    """One line explaining why ``path`` could not be read."""
    text = str(exc)
    if "not a database" in text:
        return f"{path}: not a SQLite database (so not a Roost session file)"
    if "malformed" in text or "corrupt" in text:
        return f"{path}: the database is damaged ({text})"
    return f"{path}: cannot read ({text})"


def roost_schema_version(conn: sqlite3.Connection, path: Path) -> int:
    """The ``user_version`` of a Roost session file; :class:`AdminError` if it is not one."""
    try:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        has_session = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'session'"
        ).fetchone()
    except sqlite3.DatabaseError as exc:
        raise AdminError(describe_db_error(path, exc)) from exc
    if version < 1 or has_session is None:
        raise AdminError(f"{path}: not a Roost session database (no session table)")
    if version > len(SESSION_MIGRATIONS):
        raise AdminError(
            f"{path}: schema version {version} is newer than this tool knows "
            f"({len(SESSION_MIGRATIONS)}); use a newer roost-admin"
        )
    return version


# --------------------------------------------------------------------------- the data dir


def open_datadir(root: str) -> DataDir:
    """The data dir at ``root``; :class:`AdminError` if it is not a Roost data dir."""
    path = Path(root)
    if not path.is_dir():
        raise AdminError(
            f"data dir {root!r} does not exist (give --data-dir or set ROOST_DATA_DIR)"
        )
    dd = DataDir(path)
    if not dd.catalog_path.exists() and not dd.sessions_root.is_dir():
        raise AdminError(f"{root!r} is not a Roost data dir (no catalog.db, no sessions/)")
    return dd


def session_path(dd: DataDir, sid: str, *, must_exist: bool = True) -> Path:
    """The session file of ``sid``; :class:`AdminError` for a bad or unknown id."""
    try:
        path = dd.session_db(sid)
    except InvalidInput as exc:
        raise AdminError(f"{sid!r} is not a valid session id: {exc.message}") from exc
    if must_exist and not path.is_file():
        raise AdminError(f"unknown session {sid!r} (no {path})")
    return path


def iter_session_ids(dd: DataDir) -> Iterator[str]:
    """Ids of the sessions on disk, in shard then name order.

    Folders being created or removed (names starting with ``.``) are skipped.
    """
    if not dd.sessions_root.is_dir():
        return
    for shard in sorted(os.listdir(dd.sessions_root)):
        sdir = dd.sessions_root / shard
        if not sdir.is_dir():
            continue
        for name in sorted(os.listdir(sdir)):
            if not name.startswith(".") and (sdir / name / "session.db").is_file():
                yield name


def file_sizes(path: Path) -> dict[str, int]:
    """Sizes in bytes of the database, its WAL and its shared-memory file (0 if absent)."""
    wal, shm = sidecars(path)
    out = {}
    for key, p in (("db_bytes", path), ("wal_bytes", wal), ("shm_bytes", shm)):
        try:
            out[key] = p.stat().st_size
        except FileNotFoundError:
            out[key] = 0
    return out


# --------------------------------------------------------------------------- liveness


@dataclass(frozen=True, slots=True)
class Holder:
    """A process that has a file open."""

    pid: int
    cmdline: str


def open_by(paths: list[Path]) -> list[Holder]:
    """Processes (other than this one) holding any of ``paths`` open, from ``/proc``.

    Processes whose descriptors this user may not read are not seen.
    """
    targets = {os.path.realpath(p) for p in paths}
    me = os.getpid()
    found: list[Holder] = []
    try:
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return found
    for pid in pids:
        if pid == me:
            continue
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"{fd_dir}/{fd}")
            except OSError:
                continue
            if target in targets:
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
                except OSError:
                    cmd = "?"
                found.append(Holder(pid, cmd))
                break
    return found


# --------------------------------------------------------------------------- writers


def backup_file(
    src: Path,
    dest: Path,
    *,
    journal_mode: str,
    prepare: Callable[[sqlite3.Connection], Any] | None = None,
    before_replace: Callable[[], Any] | None = None,
) -> None:
    """Copy database ``src`` to ``dest`` atomically with SQLite's online backup API.

    The copy is one backup step, i.e. one read transaction on ``src``: it is a
    consistent snapshot, and in WAL mode the server's writes continue meanwhile.
    It is built in a temporary file beside ``dest``, given ``journal_mode``,
    passed to ``prepare`` (which may change it), fsynced, and renamed over
    ``dest`` right after ``before_replace`` runs; the folder is fsynced.
    ``src`` is never written.
    """
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.tmp")
    try:
        for _ in range(5):
            with ReadOnlyDb(src) as db:
                out = sqlite3.connect(tmp, isolation_level=None)
                try:
                    db.conn.backup(out)
                    if not db.still_valid():
                        continue
                    out.execute(f"PRAGMA journal_mode={journal_mode}")
                    if prepare is not None:
                        prepare(out)
                finally:
                    out.close()
                break
        else:
            raise AdminError(f"{src}: the file kept changing while being copied", EXIT_PROBLEM)
        for side in sidecars(tmp):
            side.unlink(missing_ok=True)  # closed cleanly: these are empty or absent
        fsync_path(tmp)
        if before_replace is not None:
            before_replace()
        os.replace(tmp, dest)
        fsync_path(dest.parent)
    except BaseException:
        for p in (tmp, *sidecars(tmp)):
            p.unlink(missing_ok=True)
        raise
