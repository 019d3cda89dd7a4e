"""One server per data dir: an exclusive ``flock`` on ``<data dir>/roost.lock``.

Two servers on one data dir would each run an actor for the same session and
fail each other's commits, so ``roost serve`` takes this lock before it opens
anything and holds it until the process ends (the kernel drops it even after
``kill -9``). Only servers take it: ``roost-admin`` reads and writes session
files beside a live server as SQLite allows, and never blocks on it.

:func:`open_data_dir` also checks what a server needs before it starts: the
path is a directory (created if missing) that this user can write, and the
catalog can be opened. Each failure is a :class:`DataDirError` whose message
says what was expected, what was found and what to do, in one line.
"""

from __future__ import annotations

import errno
import fcntl
import os
import sqlite3
from pathlib import Path

from storage.errors import StorageError

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
