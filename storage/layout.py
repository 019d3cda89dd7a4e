"""Where things live in a data dir, and connection set-up.

::

    DATA_DIR/
      catalog.db                      one row per session (for listing)
      sessions/<h>/<sid>/session.db   the session's own SQLite file (WAL)
      sessions/<h>/<sid>/attachments/ its attachments
      trash/                          sessions being deleted
      roost.lock                      flock of the server using it (one at a time)

``<h>`` is two hex digits of a hash of the id, so no directory holds more than
a few hundred thousand entries. A session id becomes a path only through
:meth:`DataDir.session_dir`, which validates it first.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import hashlib
import os
import resource
import sqlite3
from collections.abc import Callable
from pathlib import Path

from storage.errors import StorageError
from storage.ids import validate_path_component, validate_session_id

SYNCHRONOUS_LEVELS = ("OFF", "NORMAL", "FULL", "EXTRA")


class DataDir:
    """Path arithmetic for one data dir; creates the top-level folders."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()
        self.sessions_root = self.root / "sessions"
        self.trash = self.root / "trash"
        self.catalog_path = self.root / "catalog.db"

    def ensure(self) -> None:
        """Create the data dir and its folders if missing, durably (:func:`make_dirs_durable`)."""
        for p in (self.root, self.sessions_root, self.trash):
            make_dirs_durable(p)

    def session_dir(self, sid: str) -> Path:
        """The folder of session ``sid``; raises ``InvalidInput`` for a bad id."""
        validate_session_id(sid)
        shard = hashlib.blake2b(sid.encode(), digest_size=1).hexdigest()
        return self.sessions_root / shard / sid

    def session_db(self, sid: str) -> Path:
        """The SQLite file of session ``sid``."""
        return self.session_dir(sid) / "session.db"

    def attachment_path(self, sid: str, name: str) -> Path:
        """Where attachment file ``name`` of session ``sid`` lives.

        ``name`` must be a server-made single path component (the same rule as
        session ids: ``[A-Za-z0-9][A-Za-z0-9._-]{0,127}``); user-given file names
        never become paths. Raises ``InvalidInput`` otherwise, so the result is
        always inside the session's ``attachments/`` folder.
        """
        return self.session_dir(sid) / "attachments" / validate_path_component(name)


def connect(
    path: str | os.PathLike[str],
    *,
    synchronous: str = "FULL",
    readonly: bool = False,
    cache_kib: int = 2048,
) -> sqlite3.Connection:
    """Open ``path`` in autocommit mode with Roost's pragmas.

    The connection may be used from any thread, but never from two at once:
    its owner serializes use. Writers get WAL and the given ``synchronous``
    level; read-only connections open the file with ``mode=ro``.
    """
    if synchronous not in SYNCHRONOUS_LEVELS:
        raise ValueError(f"synchronous must be one of {SYNCHRONOUS_LEVELS}, got {synchronous!r}")
    if readonly:
        uri = Path(path).resolve().as_uri() + "?mode=ro"
        conn = sqlite3.connect(
            uri, uri=True, isolation_level=None, check_same_thread=False, timeout=5.0
        )
    else:
        conn = sqlite3.connect(
            os.fspath(path), isolation_level=None, check_same_thread=False, timeout=5.0
        )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute(f"PRAGMA cache_size=-{int(cache_kib)}")
    return conn


def fsync_path(path: Path) -> None:
    """fsync ``path``: for a file, its data; for a folder, a rename or create inside it."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs_durable(path: Path, fsync_dir: Callable[[Path], None] = fsync_path) -> None:
    """``mkdir -p path``, fsyncing the parent of every folder it creates.

    Idempotent: an existing ``path`` is left alone (and nothing is synced).
    Raises ``OSError`` from the file system.
    """
    missing: list[Path] = []
    p = path
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir()
        except FileExistsError:
            continue  # someone else made it; they sync it
        fsync_dir(d.parent)


def raise_nofile_limit() -> tuple[int, int]:
    """Raise the soft open-files limit to the hard limit; return (soft, hard).

    Each live session holds a writer and a reader on a WAL database, about
    five descriptors, so the default soft limit of 1024 caps a server at a
    couple of hundred live sessions.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft, hard


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to tune
        return None


def limit_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc's malloc arenas (call before starting threads).

    SQLite work runs on a pool of threads; with one arena per thread, memory
    freed when sessions hibernate stays fragmented across arenas and is never
    returned to the system.
    """
    libc = _libc()
    if libc is not None:
        m_arena_max = -8
        libc.mallopt(m_arena_max, arenas)


def trim_heap() -> None:
    """Return freed heap memory to the system (glibc ``malloc_trim``)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


# --------------------------------------------------------------------------- the lock
#
# One server per data dir: an exclusive ``flock`` on ``<data dir>/roost.lock``.
#
# Two servers on one data dir would each run an actor for the same session and
# fail each other's commits, so ``roost serve`` takes this lock before it opens
# anything and holds it until the process ends (the kernel drops it even after
# ``kill -9``). Only servers take it: ``roost-admin`` reads and writes session
# files beside a live server as SQLite allows, and never blocks on it.
#
# :func:`open_data_dir` also checks what a server needs before it starts: the
# path is a directory (created if missing) that this user can write, and the
# catalog can be opened. Each failure is a :class:`DataDirError` whose message
# says what was expected, what was found and what to do, in one line.

LOCK_NAME = "roost.lock"


class DataDirError(StorageError):
    """The data dir cannot be used by a server (one line for the operator)."""

    code = "data_dir_unusable"


class DataDirInUse(DataDirError):
    """Another server holds the data dir's lock."""

    code = "data_dir_in_use"


class DataDirLock:
    """The held lock. ``release()`` is idempotent; the lock also ends with the process."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Drop the lock (closing its file). Safe to call twice."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def _describe(exc: OSError) -> str:
    return exc.strerror or str(exc)


def lock_data_dir(root: Path) -> DataDirLock:
    """Take the exclusive lock of the existing directory ``root``; never blocks.

    Raises :class:`DataDirInUse` (naming the holder's pid when known) if another
    process holds it, :class:`DataDirError` if the lock file cannot be made.
    """
    path = root / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise DataDirError(
            f"cannot write to data dir {root}: expected a writable directory, got "
            f"'{_describe(exc)}'; make it writable by this user or use another --data-dir"
        ) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = ""
        try:
            pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            holder = f" (pid {pid})" if pid.isdigit() else ""
        except OSError:
            pass
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise DataDirInUse(
                f"data dir {root} is in use by another roost server{holder}: one data dir "
                "serves one server; stop that one or use another --data-dir"
            ) from exc
        raise DataDirError(f"cannot lock data dir {root}: {_describe(exc)}") from exc
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError:
        pass  # the pid is a courtesy for the message above; the lock is what counts
    return DataDirLock(path, fd)


def open_data_dir(root: str | os.PathLike[str]) -> DataDirLock:
    """Check the data dir ``root`` for a server and lock it; returns the held lock.

    A missing directory is created (with its parents). Raises
    :class:`DataDirError` when ``root`` is a file, cannot be created or written,
    or its catalog cannot be opened, and :class:`DataDirInUse` when another
    server holds it. Not idempotent within one process: a second call on the
    same directory succeeds only after the first lock is released.
    """
    path = Path(root)
    if path.exists() and not path.is_dir():
        raise DataDirError(
            f"data dir {path} is a file: expected a directory (or a path to create); "
            "pass a directory to --data-dir"
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataDirError(
            f"cannot create data dir {path}: '{_describe(exc)}'; create it, or use another "
            "--data-dir"
        ) from exc
    if not os.access(path, os.W_OK | os.X_OK):
        raise DataDirError(
            f"cannot write to data dir {path}: expected a writable directory, got "
            "'permission denied'; make it writable by this user or use another --data-dir"
        )
    lock = lock_data_dir(path.resolve())
    try:
        _check_catalog(path / "catalog.db")
    except BaseException:
        lock.release()
        raise
    return lock


def _check_catalog(catalog: Path) -> None:
    """Raise :class:`DataDirError` unless ``catalog`` is missing or an openable SQLite file."""
    if not catalog.exists():
        return
    if not catalog.is_file():
        raise DataDirError(
            f"cannot open the catalog {catalog}: expected a SQLite file, got a directory; "
            "move it away (a missing catalog is created)"
        )
    try:
        conn = sqlite3.connect(f"file:{catalog}?mode=ro", uri=True)
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise DataDirError(
            f"cannot open the catalog {catalog}: expected a SQLite database, got '{exc}'; "
            "restore it from a backup or move it away (`roost-admin check --all` says more)"
        ) from exc
