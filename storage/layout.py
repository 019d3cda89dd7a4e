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

import contextlib
import errno
import fcntl
import hashlib
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

from storage.errors import StorageError, StorageFull
from storage.ids import validate_path_component, validate_session_id

SYNCHRONOUS_LEVELS = ("OFF", "NORMAL", "FULL", "EXTRA")
# Bytes of the WAL index (``-shm``) allocated on disk before SQLite stores into
# it: four 32 KiB regions, each indexing 4,096 WAL frames (16 MiB of 4 KiB pages).
SHM_PREALLOC_BYTES = 4 * 32 * 1024
# The disk reserve is at most this share of the data dir's file system.
RESERVE_MAX_FRACTION = 0.05


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


class Connection(sqlite3.Connection):
    """A SQLite connection that holds its share of the ``-shm`` descriptor (see
    :func:`preallocate_shm`); ``close`` releases it after SQLite has closed."""

    shm_key: str | None = None

    def close(self) -> None:
        """Close the connection (idempotent), then release its ``-shm`` share."""
        super().close()
        key, self.shm_key = self.shm_key, None
        if key is not None:
            _release_shm(key)


# One descriptor per ``-shm`` file this process preallocated, with the number of open
# connections to that database. POSIX record locks belong to the process and the
# file: closing ANY descriptor of the -shm drops every lock SQLite holds on it (its
# "a connection is open" lock among them, after which another process would
# truncate the file under our mapping). So the descriptor is closed only once no
# connection of this process has the database open.
_shm_fds: dict[str, list[int]] = {}  # key -> [fd or -1, open connections]
_shm_lock = threading.Lock()


def _acquire_shm(key: str) -> None:
    with _shm_lock:
        entry = _shm_fds.setdefault(key, [-1, 0])
        entry[1] += 1


def _release_shm(key: str) -> None:
    with _shm_lock:
        entry = _shm_fds.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] > 0:
            return
        del _shm_fds[key]
        fd = entry[0]
    if fd >= 0:
        os.close(fd)


# Idle connections kept so that a database's WAL index outlives a close (see
# :func:`park`), oldest first; at most PARKED_MAX at once.
PARKED_MAX = 64
_parked: dict[str, sqlite3.Connection] = {}


def park(path: str | os.PathLike[str], conn: sqlite3.Connection) -> None:
    """Keep ``conn`` (idle: no open transaction) open until the database at
    ``path`` is opened again (:func:`unpark`), so its WAL index is not removed.

    When SQLite's last connection to a database closes it checkpoints and
    deletes the ``-wal`` and ``-shm``; the next open must then allocate a new
    WAL index, which a full disk cannot place (:func:`preallocate_shm` raises
    ``ENOSPC``, and the blocks just freed may not be reusable until the file
    system's journal commits). A session closed because a commit failed on a
    full disk is reopened at once: parking one of its connections keeps the
    preallocated index (and the WAL) for that reopen. At most
    :data:`PARKED_MAX` are kept; the oldest is closed to make room.
    """
    key = os.path.realpath(path)
    with _shm_lock:
        old = _parked.pop(key, None)
        _parked[key] = conn
        evicted = [old] if old is not None else []
        while len(_parked) > PARKED_MAX:
            evicted.append(_parked.pop(next(iter(_parked))))
    _close_quietly(evicted)


def unpark(path: str | os.PathLike[str]) -> None:
    """Close the connection :func:`park` kept for ``path``, if any. Costs nothing
    (no ``realpath``) while nothing is parked, as on every ordinary activation."""
    if not _parked:
        return
    with _shm_lock:
        conn = _parked.pop(os.path.realpath(path), None)
    _close_quietly([conn] if conn is not None else [])


def unpark_all() -> None:
    """Close every parked connection (on shutdown)."""
    with _shm_lock:
        conns = list(_parked.values())
        _parked.clear()
    _close_quietly(conns)


def _close_quietly(conns: list[sqlite3.Connection]) -> None:
    for conn in conns:
        with contextlib.suppress(sqlite3.Error):
            conn.close()


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
    level and a WAL index without holes (:func:`preallocate_shm`; raises
    ``OSError`` when the disk has no room for it); read-only connections open
    the file with ``mode=ro``. Close it with ``close()``.
    """
    if synchronous not in SYNCHRONOUS_LEVELS:
        raise ValueError(f"synchronous must be one of {SYNCHRONOUS_LEVELS}, got {synchronous!r}")
    key = os.path.realpath(path) + "-shm"
    if readonly:
        uri = Path(path).resolve().as_uri() + "?mode=ro"
        conn = sqlite3.connect(
            uri,
            uri=True,
            isolation_level=None,
            check_same_thread=False,
            timeout=5.0,
            factory=Connection,
        )
    else:
        conn = sqlite3.connect(
            os.fspath(path),
            isolation_level=None,
            check_same_thread=False,
            timeout=5.0,
            factory=Connection,
        )
    assert isinstance(conn, Connection)
    _acquire_shm(key)
    conn.shm_key = key
    try:
        if not readonly:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={synchronous}")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute(f"PRAGMA cache_size=-{int(cache_kib)}")
        if not readonly:
            conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()  # maps the -shm
            preallocate_shm(key)
    except BaseException:
        conn.close()
        raise
    return conn


# SQLite extends a ``-shm`` by writing one byte at the end of each 4 KiB page
# (``unixShmMap``): where a file system block is at least that big, every page it
# adds is fully allocated and the mapping has no hole to fault on.
SHM_PAGE = 4096
_small_blocks: dict[int, bool] = {}  # st_dev -> its blocks are smaller than SHM_PAGE


def needs_shm_preallocation(directory: str) -> bool:
    """Whether ``-shm`` files in ``directory`` need :func:`preallocate_shm`: true
    where the file system's blocks are smaller than :data:`SHM_PAGE` (ext4 on a
    small volume uses 1 KiB). Asked once per device (one ``stat`` per call)."""
    dev = os.stat(directory).st_dev
    small = _small_blocks.get(dev)
    if small is None:
        small = _small_blocks[dev] = os.statvfs(directory).f_frsize < SHM_PAGE
    return small


def preallocate_shm(shm: str) -> None:
    """Give the WAL index file ``shm`` real disk blocks for its first
    :data:`SHM_PREALLOC_BYTES` where its file system needs it
    (:func:`needs_shm_preallocation`); idempotent. Call it only while a
    connection of this process holds the database open (as :func:`connect`
    does).

    SQLite memory-maps the ``-shm`` file and grows it by writing one byte per
    4 KiB page, which on a file system with smaller blocks (ext4 on a small
    volume uses 1 KiB) leaves holes; the first store through the mapping into a
    hole must allocate a block, and on a full disk that is SIGBUS, which kills
    the whole process. ``posix_fallocate`` fills the holes while space remains.
    With 4 KiB blocks or bigger SQLite's own writes leave no hole (and a
    failed one is an ``SQLITE_FULL`` error, not a fault), so nothing is done:
    that saves ~0.9 ms of every cold activation (docs/performance.md). SQLite
    truncates the file whenever a first connection opens it, so this runs
    after every writer connects (the connection has already mapped the file by
    then). The descriptor used is kept until the process's last connection to
    the database closes (see ``_shm_fds``).

    Raises ``OSError`` (``ENOSPC``) when the disk has no room for it: the
    caller must not use the connection then. Does nothing when the file does
    not exist (no WAL yet) or the file system cannot allocate (``EOPNOTSUPP``).
    """
    with _shm_lock:
        entry = _shm_fds.get(shm)
        if entry is None:
            return
        if entry[0] < 0:
            try:
                if not needs_shm_preallocation(os.path.dirname(shm)):
                    return
                entry[0] = os.open(shm, os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                return
        fd = entry[0]
        st = os.fstat(fd)
        if st.st_size >= SHM_PREALLOC_BYTES and st.st_blocks * 512 >= st.st_size:
            return
        try:
            os.posix_fallocate(fd, 0, max(SHM_PREALLOC_BYTES, st.st_size))
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise


class DiskReserve:
    """Free space a data dir keeps in reserve: below it, new writes are refused.

    SQLite must never meet a real ``ENOSPC`` in the middle of a commit (nor a
    memory-mapped WAL index a hole it cannot fill): refusing new work while
    some space is still free leaves room for the commits, replies and
    checkpoints already under way. The reserve is ``reserve`` bytes, but at
    most :data:`RESERVE_MAX_FRACTION` of the file system (a small volume is
    not refused from the start). ``check`` is cheap: while the free space is
    over twice the reserve it is read with ``statvfs`` at most once per
    ``recheck`` seconds; nearer the reserve, on every call, so writes resume
    as soon as space is freed.
    """

    def __init__(self, path: str | os.PathLike[str], reserve: int, recheck: float = 0.05) -> None:
        self.path = os.fspath(path)
        self.requested = reserve
        self.reserve = reserve
        self.recheck = recheck
        self._free = -1
        self._read_at = -math.inf

    def free_bytes(self) -> int:
        """Bytes an unprivileged writer may still use on the data dir's file system
        (and, as a side effect, fix the reserve to the volume's size)."""
        st = os.statvfs(self.path)
        self.reserve = min(self.requested, int(st.f_blocks * st.f_frsize * RESERVE_MAX_FRACTION))
        return st.f_bavail * st.f_frsize

    def below(self) -> bool:
        """Whether the free space is under the reserve (False when the reserve is 0)."""
        if self.requested <= 0:
            return False
        now = time.monotonic()
        if now - self._read_at >= self.recheck or self._free < 2 * self.reserve:
            self._free = self.free_bytes()
            self._read_at = now
        return self._free < self.reserve

    def check(self) -> None:
        """Raise :class:`StorageFull` when the free space is under the reserve."""
        if self.below():
            raise StorageFull(
                "the disk is full: the server keeps its last "
                f"{self.reserve} bytes free and accepts no new writes until space is freed",
                details={"free_bytes": self._free, "reserve_bytes": self.reserve},
            )


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
