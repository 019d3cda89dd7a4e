"""Where things live in a data dir, and connection set-up.

::

    DATA_DIR/
      catalog.db                      one row per session (for listing)
      sessions/<h>/<sid>/session.db   the session's own SQLite file (WAL)
      sessions/<h>/<sid>/attachments/ its attachments
      trash/                          sessions being deleted

``<h>`` is two hex digits of a hash of the id, so no directory holds more than
a few hundred thousand entries. A session id becomes a path only through
:meth:`DataDir.session_dir`, which validates it first.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import resource
import sqlite3
from collections.abc import Callable
from pathlib import Path

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
