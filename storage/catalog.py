"""The catalog: one row per session, for listing sessions and finding owners; share links.

Each session's own file is the source of truth; the catalog mirrors its
Session document (``doc``) so the list route never opens session files. It is
written in batches (:meth:`Catalog.upsert_many`) with ``synchronous=NORMAL``:
in WAL mode that survives a process crash, and anything lost to a power cut
is re-mirrored when the session next activates.

Share links (table ``shares``) are not mirrors: a share's row *is* its
snapshot, so it is written with ``synchronous=FULL`` before its id is handed
out. Deleting a session deletes its shares.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable, Iterator
from typing import Any

import orjson

from storage.cursors import decode_pair, encode_pair
from storage.errors import from_sqlite
from storage.layout import DataDir, connect
from storage.rows import scalar
from storage.schema import CATALOG_MIGRATIONS, migrate


@contextlib.contextmanager
def _mapped() -> Iterator[None]:
    """Raise SQLite failures of the catalog as storage errors."""
    try:
        yield
    except sqlite3.Error as exc:
        raise from_sqlite(exc, "the catalog") from exc


class Catalog:
    """The catalog database of a data dir. Methods are synchronous; the owner
    serializes writes. ``close()`` is idempotent."""

    def __init__(self, datadir: DataDir) -> None:
        datadir.ensure()
        self._conn: sqlite3.Connection | None = connect(datadir.catalog_path, synchronous="NORMAL")
        migrate(self._conn, CATALOG_MIGRATIONS, what="catalog")
        self._reader: sqlite3.Connection | None = connect(datadir.catalog_path, readonly=True)

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("catalog is closed")
        return self._conn

    def close(self) -> None:
        for c in (self._reader, self._conn):
            if c is not None:
                c.close()
        self._conn = self._reader = None

    def upsert_many(self, docs: Iterable[tuple[str, dict[str, Any]]]) -> None:
        """Insert or replace the mirrored Session documents ``(owner, doc)``."""
        rows = [(d["id"], owner, d["updated_at"], orjson.dumps(d).decode()) for owner, d in docs]
        if not rows:
            return
        conn = self.conn
        with _mapped():
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(
                    "INSERT INTO sessions (id, owner, updated_at, doc) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT(id) DO UPDATE SET updated_at = excluded.updated_at, "
                    "doc = excluded.doc",
                    rows,
                )
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def insert_durable(self, owner: str, doc: dict[str, Any]) -> None:
        """Insert one session's row and fsync (used when a session is created)."""
        self.conn.execute("PRAGMA synchronous=FULL")
        try:
            self.upsert_many([(owner, doc)])
        finally:
            self.conn.execute("PRAGMA synchronous=NORMAL")

    def delete(self, sid: str) -> None:
        """Forget session ``sid`` and every share made of it. Idempotent."""
        with _mapped():
            self.conn.execute("DELETE FROM sessions WHERE id = ?", (sid,))
            self.conn.execute("DELETE FROM shares WHERE session_id = ?", (sid,))

    # ------------------------------------------------------------------ shares

    def insert_share(self, share: dict[str, Any], snapshot: bytes) -> None:
        """Store share ``share`` ({id, owner, session_id, branch, created_at,
        expires_at}) with its snapshot, fsynced before it returns. Raises a
        storage error (``Conflict`` for a repeated id)."""
        conn = self.conn
        with _mapped():
            conn.execute("PRAGMA synchronous=FULL")
            try:
                conn.execute(
                    "INSERT INTO shares (id, owner, session_id, branch, created_at, expires_at, "
                    "snapshot) VALUES (:id, :owner, :session_id, :branch, :created_at, "
                    ":expires_at, :snapshot)",
                    {**share, "snapshot": snapshot.decode()},
                )
            finally:
                conn.execute("PRAGMA synchronous=NORMAL")

    def get_share(self, share_id: str) -> tuple[dict[str, Any], bytes] | None:
        """The share ``share_id`` and its snapshot, or None (expired ones too: the
        caller checks ``expires_at``)."""
        assert self._reader is not None
        with _mapped():
            row = self._reader.execute(
                f"SELECT {_SHARE_COLUMNS}, snapshot FROM shares WHERE id = ?", (share_id,)
            ).fetchone()
        if row is None:
            return None
        *fields, snapshot = row
        return _share(fields), str(snapshot).encode()

    def list_shares(self, owner: str, session_id: str | None = None) -> list[dict[str, Any]]:
        """Shares of ``owner`` (of one session if given), newest first, without snapshots."""
        assert self._reader is not None
        where, args = "owner = ?", [owner]
        if session_id is not None:
            where, args = where + " AND session_id = ?", [owner, session_id]
        with _mapped():
            rows = self._reader.execute(
                f"SELECT {_SHARE_COLUMNS} FROM shares WHERE {where} "
                "ORDER BY created_at DESC, id DESC LIMIT 1000",
                args,
            ).fetchall()
        return [_share(r) for r in rows]

    def delete_share(self, share_id: str, owner: str) -> bool:
        """Delete ``owner``'s share ``share_id``; whether there was one."""
        with _mapped():
            cur = self.conn.execute(
                "DELETE FROM shares WHERE id = ? AND owner = ?", (share_id, owner)
            )
        return cur.rowcount > 0

    def owner_of(self, sid: str) -> str | None:
        """The owner the catalog records for ``sid`` (None if it lists no such session)."""
        assert self._reader is not None
        with _mapped():
            row = self._reader.execute("SELECT owner FROM sessions WHERE id = ?", (sid,)).fetchone()
        if row is None:
            return None
        (owner,) = row
        return str(owner)

    def list(
        self, *, owner: str, limit: int, cursor: str | None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Sessions of ``owner``, most recently updated first; (items, next_cursor)."""
        assert self._reader is not None
        with _mapped():
            return _list(self._reader, owner, limit, cursor)

    def count(self) -> int:
        return int(scalar(self.conn.execute("SELECT COUNT(*) FROM sessions")))


_SHARE_COLUMNS = "id, owner, session_id, branch, created_at, expires_at"


def _share(row: Any) -> dict[str, Any]:
    share_id, owner, session_id, branch, created_at, expires_at = row
    return {
        "id": share_id,
        "owner": owner,
        "session_id": session_id,
        "branch": branch,
        "created_at": created_at,
        "expires_at": expires_at,
    }


def _list(
    reader: sqlite3.Connection, owner: str, limit: int, cursor: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    if cursor is None:
        rows = reader.execute(
            "SELECT id, updated_at, doc FROM sessions WHERE owner = ? "
            "ORDER BY updated_at DESC, id DESC LIMIT ?",
            (owner, limit + 1),
        ).fetchall()
    else:
        ts, ident = decode_pair("u", cursor)
        rows = reader.execute(
            "SELECT id, updated_at, doc FROM sessions WHERE owner = ? "
            "AND (updated_at, id) < (?, ?) ORDER BY updated_at DESC, id DESC LIMIT ?",
            (owner, ts, ident, limit + 1),
        ).fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    items = [orjson.loads(doc) for _id, _updated_at, doc in rows]
    nxt = None
    if more and rows:
        last_id, last_updated_at, _doc = rows[-1]
        nxt = encode_pair("u", last_updated_at, last_id)
    return items, nxt
