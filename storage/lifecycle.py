"""Creating and removing a session's folder, atomically and durably.

:func:`create_session_file` builds the new file in a temporary folder and
renames it into place; :func:`remove_session_files` renames the folder into
``trash/`` before deleting it. Either way a crash leaves a whole session or
none. Every folder created on the way, and every rename, is followed by an
fsync of the parent folder, so the result survives a power cut once the
function has returned.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from storage.errors import Conflict, from_os_error, from_sqlite
from storage.layout import DataDir, connect, fsync_path, make_dirs_durable, unpark
from storage.rows import SESSION_SELECT, SessionRow, dumps, session_doc
from storage.schema import SESSION_MIGRATIONS, migrate

# the session columns a create may set besides title and metadata (issue 23)
CREATE_COLUMNS = frozenset({"pinned", "archived", "folder", "tags", "temporary", "expires_at"})


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
    fsync_dir: Callable[[Path], None] = fsync_path,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Create session ``sid`` atomically and return its Session document.

    The file is built in a temporary folder and renamed into place, so a crash
    leaves either no session or a complete one. ``populate(conn, sid, now)``,
    if given, fills the new file in the same transaction as the session row
    (import); if it raises, nothing is created. Raises :class:`Conflict` if the
    session exists, :class:`StorageFull` when the disk is full (nothing is left
    behind), :class:`Unavailable` for other file-system failures. Folders
    created on the way are made durable (``fsync_dir`` of each one's parent,
    the seam tests use to watch it). ``extra`` sets more columns of the session
    row (:data:`CREATE_COLUMNS`: organisation and retention); a title given
    here is the user's (``title_source`` "user").
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
            fsync_dir=fsync_dir,
            extra=extra or {},
        )
    except sqlite3.Error as exc:
        raise from_sqlite(exc, path=datadir.catalog_path) from exc
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
    fsync_dir: Callable[[Path], None],
    extra: dict[str, Any],
) -> dict[str, Any]:
    final = datadir.session_dir(sid)
    if final.exists():
        raise Conflict(f"session {sid!r} already exists", details={"id": sid})
    make_dirs_durable(final.parent, fsync_dir)
    tmp = final.parent / f".{sid}.{uuid.uuid4().hex}.tmp"
    tmp.mkdir()
    try:
        conn = connect(tmp / "session.db", synchronous=synchronous)
        try:
            migrate(conn, SESSION_MIGRATIONS, what="session file")
            conn.execute("BEGIN IMMEDIATE")
            cols = {
                "id": sid,
                "owner": owner,
                "title": title,
                "title_source": None if title is None else "user",
                "metadata": dumps(metadata),
                "created_at": now,
                "updated_at": now,
            }
            for key, value in extra.items():
                if key not in CREATE_COLUMNS:
                    raise ValueError(f"session column {key!r} cannot be set on create")
                cols[key] = dumps(value) if key == "tags" else value
            conn.execute(
                f"INSERT INTO session ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                tuple(cols.values()),
            )
            if populate is not None:
                populate(conn, sid, now)
            raw = conn.execute(f"SELECT {SESSION_SELECT} FROM session").fetchone()
            conn.execute("COMMIT")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()
        try:
            os.rename(tmp, final)
        except OSError as exc:
            raise Conflict(f"session {sid!r} already exists", details={"id": sid}) from exc
        fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return session_doc(SessionRow._make(raw))


def remove_session_files(datadir: DataDir, sid: str) -> bool:
    """Remove session ``sid``'s folder; return whether it existed.

    The folder is first renamed into ``trash/`` (atomic), so the session is gone
    at once even if removing its files takes a while or is interrupted.
    """
    src = datadir.session_dir(sid)
    unpark(datadir.session_db(sid))
    dst = datadir.trash / f"{sid}.{uuid.uuid4().hex}"
    try:
        os.rename(src, dst)
    except FileNotFoundError:
        return False
    fsync_path(src.parent)
    shutil.rmtree(dst, ignore_errors=True)
    return True
