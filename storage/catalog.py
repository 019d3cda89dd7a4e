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

import builtins
import contextlib
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from storage.cursors import decode_pair, encode_pair
from storage.errors import InvalidInput, from_sqlite
from storage.layout import DataDir, connect
from storage.rows import dumps, json_batch, scalar
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
        """Insert or replace the mirrored Session documents ``(owner, doc)``, with
        the columns the list filters on (and the tags table) taken from them.

        A batch of several rows is three statements over JSON arrays: each runs
        in SQLite without the GIL from start to end, where ``executemany`` takes
        the GIL back for every row, and on the write pool each take waits on the
        busy event loop (:func:`storage.rows.json_batch` says when it cannot)."""
        items = list(docs)
        rows = [_catalog_row(owner, d) for owner, d in items]
        if not rows:
            return
        ids = [d["id"] for _, d in items]
        tags = [(owner, tag, d["id"]) for owner, d in items for tag in d.get("tags") or ()]
        batch = json_batch(rows)
        conn = self.conn
        with _mapped():
            conn.execute("BEGIN IMMEDIATE")
            try:
                if batch is not None:
                    conn.execute(_UPSERT_MANY_SQL, (batch,))
                    conn.execute(_UNTAG_MANY_SQL, (dumps(ids),))
                    if tags:
                        conn.execute(_TAG_MANY_SQL, (dumps(tags),))
                else:
                    conn.executemany(_UPSERT_SQL, rows)
                    conn.executemany(_UNTAG_SQL, [(sid,) for sid in ids])
                    conn.executemany(_TAG_SQL, tags)
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
            self.conn.execute("DELETE FROM session_tags WHERE session_id = ?", (sid,))
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
        self,
        *,
        owner: str,
        limit: int,
        cursor: str | None,
        filters: ListFilters | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Sessions of ``owner``: pinned first, then most recently updated first;
        (items, next_cursor). ``filters`` (default: archived and temporary ones
        hidden) narrow it; keyset paging holds with them (a cursor is only
        good for the filters it came with). ``InvalidInput`` for a bad cursor."""
        assert self._reader is not None
        with _mapped():
            return _list(self._reader, owner, limit, cursor, filters or ListFilters())

    def folders(self, owner: str) -> builtins.list[dict[str, Any]]:
        """``owner``'s folders with their counts: ``[{folder, count, archived}]`` by
        name (``count``: sessions listed by default; ``archived``: archived ones)."""
        assert self._reader is not None
        with _mapped():
            rows = self._reader.execute(
                "SELECT folder, SUM(archived = 0), SUM(archived) FROM sessions "
                "WHERE owner = ? AND folder IS NOT NULL AND temporary = 0 "
                "GROUP BY folder ORDER BY folder",
                (owner,),
            ).fetchall()
        return [
            {"folder": folder, "count": int(count), "archived": int(archived)}
            for folder, count, archived in rows
        ]

    def expired(
        self, *, now: str, session_cutoff: str | None, temporary_cutoff: str | None, limit: int
    ) -> builtins.list[dict[str, Any]]:
        """Sessions due to go (:func:`expired_sessions` on the reader)."""
        assert self._reader is not None
        with _mapped():
            return expired_sessions(
                self._reader,
                now=now,
                session_cutoff=session_cutoff,
                temporary_cutoff=temporary_cutoff,
                limit=limit,
            )

    def docs(self, owner: str, sids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The mirrored Session documents of ``owner``'s sessions among ``sids``."""
        assert self._reader is not None
        wanted = list(dict.fromkeys(sids))
        out: dict[str, dict[str, Any]] = {}
        with _mapped():
            for i in range(0, len(wanted), 500):
                chunk = wanted[i : i + 500]
                rows = self._reader.execute(
                    f"SELECT id, doc FROM sessions WHERE owner = ? AND id IN "
                    f"({', '.join('?' * len(chunk))})",
                    (owner, *chunk),
                ).fetchall()
                for sid, doc in rows:
                    out[sid] = orjson.loads(doc)
        return out

    def all_sessions(self, owner: str | None = None) -> builtins.list[tuple[str, str]]:
        """``(id, owner)`` of every session (of ``owner`` if given), for maintenance."""
        assert self._reader is not None
        with _mapped():
            if owner is None:
                rows = self._reader.execute("SELECT id, owner FROM sessions ORDER BY id")
            else:
                rows = self._reader.execute(
                    "SELECT id, owner FROM sessions WHERE owner = ? ORDER BY id", (owner,)
                )
            return [(str(sid), str(o)) for sid, o in rows.fetchall()]

    def recent_ids(self, batch: int = 256) -> Iterator[str]:
        """Session ids, most recently updated first, read ``batch`` at a time as
        the caller takes them (a caller that stops early reads no more)."""
        assert self._reader is not None
        with _mapped():
            cur = self._reader.execute("SELECT id FROM sessions ORDER BY updated_at DESC, id")
            try:
                while rows := cur.fetchmany(batch):
                    yield from (str(sid) for (sid,) in rows)
            finally:
                cur.close()

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


def expired_sessions(
    reader: sqlite3.Connection,
    *,
    now: str,
    session_cutoff: str | None,
    temporary_cutoff: str | None,
    limit: int,
) -> list[dict[str, Any]]:
    """Sessions due to go, at most ``limit``: ``[{id, owner, reason}]``.

    ``reason`` is ``expires_at`` (its ``expires_at`` is at or before ``now``),
    ``temporary`` (a temporary session last updated at or before
    ``temporary_cutoff``) or ``ttl`` (any session last updated at or before
    ``session_cutoff``). Each is one range scan of an index: the cost is the
    number of expired sessions, not of all of them.
    """
    out: dict[str, dict[str, Any]] = {}
    queries: list[tuple[str, str, tuple[Any, ...]]] = [
        (
            "expires_at",
            "SELECT id, owner FROM sessions WHERE expires_at IS NOT NULL "
            "AND expires_at <= ? ORDER BY expires_at LIMIT ?",
            (now, limit),
        )
    ]
    if temporary_cutoff is not None:
        queries.append(
            (
                "temporary",
                "SELECT id, owner FROM sessions WHERE temporary = 1 AND updated_at <= ? "
                "ORDER BY updated_at LIMIT ?",
                (temporary_cutoff, limit),
            )
        )
    if session_cutoff is not None:
        queries.append(
            (
                "ttl",
                "SELECT id, owner FROM sessions WHERE temporary IN (0, 1) "
                "AND updated_at <= ? LIMIT ?",
                (session_cutoff, limit),
            )
        )
    for reason, sql, args in queries:
        for sid, owner in reader.execute(sql, args).fetchall():
            out.setdefault(sid, {"id": sid, "owner": owner, "reason": reason})
    return list(out.values())[:limit]


@dataclass(frozen=True, slots=True)
class ListFilters:
    """What ``GET /sessions`` narrows the list to. ``None``: no condition, except
    ``archived`` and ``temporary``, which default to False (hidden)."""

    pinned: bool | None = None
    archived: bool | None = False
    temporary: bool | None = False
    folder: str | None = None
    tag: str | None = None
    q: str | None = None


_UPSERT_COLUMNS = (
    "id, owner, updated_at, doc, pinned, archived, temporary, folder, expires_at, title"
)
_UPSERT_TAIL = (
    "ON CONFLICT(id) DO UPDATE SET updated_at = excluded.updated_at, "
    "doc = excluded.doc, pinned = excluded.pinned, archived = excluded.archived, "
    "temporary = excluded.temporary, folder = excluded.folder, "
    "expires_at = excluded.expires_at, title = excluded.title"
)
_UPSERT_SQL = (
    f"INSERT INTO sessions ({_UPSERT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    + _UPSERT_TAIL
)
# the same for a JSON array of rows (_catalog_row), in one statement
_UPSERT_MANY_SQL = (
    f"INSERT INTO sessions ({_UPSERT_COLUMNS}) SELECT value->>0, value->>1, value->>2, "
    "value->>3, value->>4, value->>5, value->>6, value->>7, value->>8, value->>9 "
    "FROM json_each(?) WHERE true " + _UPSERT_TAIL
)
_UNTAG_SQL = "DELETE FROM session_tags WHERE session_id = ?"
_UNTAG_MANY_SQL = "DELETE FROM session_tags WHERE session_id IN (SELECT value FROM json_each(?))"
_TAG_SQL = "INSERT OR IGNORE INTO session_tags (owner, tag, session_id) VALUES (?, ?, ?)"
_TAG_MANY_SQL = (
    "INSERT OR IGNORE INTO session_tags (owner, tag, session_id) "
    "SELECT value->>0, value->>1, value->>2 FROM json_each(?)"
)


def _catalog_row(owner: str, d: dict[str, Any]) -> tuple[Any, ...]:
    return (
        d["id"],
        owner,
        d["updated_at"],
        orjson.dumps(d).decode(),
        int(bool(d.get("pinned"))),
        int(bool(d.get("archived"))),
        int(bool(d.get("temporary"))),
        d.get("folder"),
        d.get("expires_at"),
        d.get("title"),
    )


def _like(text: str) -> str:
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _list(
    reader: sqlite3.Connection,
    owner: str,
    limit: int,
    cursor: str | None,
    f: ListFilters,
) -> tuple[list[dict[str, Any]], str | None]:
    where = ["owner = ?"]
    args: list[Any] = [owner]
    for col in ("temporary", "archived", "pinned"):
        value = getattr(f, col)
        if value is not None:
            where.append(f"{col} = ?")
            args.append(int(value))
    if f.folder is not None:
        where.append("folder = ?")
        args.append(f.folder)
    if f.tag is not None:
        where.append("id IN (SELECT session_id FROM session_tags WHERE owner = ? AND tag = ?)")
        args += [owner, f.tag]
    if f.q is not None:
        where.append("title LIKE ? ESCAPE '\\'")
        args.append(_like(f.q))
    if cursor is not None:
        pinned, ts, ident = _decode_list_cursor(cursor)
        if f.pinned is not None and pinned == int(f.pinned):
            # pinned is fixed: a range on the rest reads the index in order (with
            # pinned in the range SQLite sorted the rest of the list: 1 ms at page 5)
            where.append("(updated_at, id) < (?, ?)")
            args += [ts, ident]
        else:
            where.append("(pinned, updated_at, id) < (?, ?, ?)")
            args += [pinned, ts, ident]
    rows = reader.execute(
        f"SELECT id, pinned, updated_at, doc FROM sessions WHERE {' AND '.join(where)} "
        "ORDER BY pinned DESC, updated_at DESC, id DESC LIMIT ?",
        (*args, limit + 1),
    ).fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    items = [orjson.loads(doc) for _id, _pinned, _updated_at, doc in rows]
    nxt = None
    if more and rows:
        last_id, last_pinned, last_updated_at, _doc = rows[-1]
        nxt = encode_pair("l", str(int(last_pinned)), f"{last_updated_at}|{last_id}")
    return items, nxt


def _decode_list_cursor(cursor: str) -> tuple[int, str, str]:
    """(pinned, updated_at, id) of a list cursor; ``InvalidInput`` when it is not one."""
    pinned, rest = decode_pair("l", cursor)
    ts, sep, ident = rest.partition("|")
    if not sep or not ts or not ident or pinned not in ("0", "1"):
        raise InvalidInput("cursor is not valid", details={"cursor": cursor[:80]})
    return int(pinned), ts, ident
