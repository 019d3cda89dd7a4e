"""``roost-admin``: inspect a Roost data dir directly, safely while the server runs.

Every subcommand is read-only (see ``scripts._admin_db``) except ``backup``,
which writes only DEST, and ``restore``, which replaces one session file.
Output is a human-readable table by default and JSON with ``--json``.

Exit codes: 0 ok; 1 problems found (``check``), a refused ``restore``, or a
file damaged or changing while read; 2 usage errors, a missing data dir, an
unknown session, or a file that is not a Roost database.

Usage: ``python -m scripts.admin [--data-dir D] [--json] COMMAND ...``; the
data dir defaults to ``$ROOST_DATA_DIR`` or ``./roost-data`` like the server.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple, TextIO

import orjson

from scripts._admin_across import add_parsers as add_across_parsers
from scripts._admin_bundle import add_parsers as add_bundle_parsers
from scripts._admin_bundle import export_bundle
from scripts._admin_db import (
    EXIT_OK,
    EXIT_PROBLEM,
    AdminError,
    FileChanged,
    ReadOnlyDb,
    backup_file,
    describe_db_error,
    export_output,
    file_sizes,
    iter_session_ids,
    open_by,
    open_datadir,
    read_consistent,
    roost_schema_version,
    session_path,
    sidecars,
)
from scripts._admin_pitr import add_parser as add_pitr_parser
from storage.context import iter_summaries
from storage.cursors import decode_int, encode_int
from storage.errors import InvalidInput
from storage.export import attachment_records, export_json_chunks, export_markdown_chunks
from storage.ids import now_iso
from storage.layout import DataDir
from storage.rows import (
    MESSAGE_SELECT,
    ROLES,
    SESSION_SELECT,
    STATUSES,
    MessageRow,
    SessionRow,
    message_doc,
    prefixed,
    scalar,
    session_doc,
)

# --------------------------------------------------------------------------- output helpers


def emit_json(value: Any, out: TextIO | None = None) -> None:
    """Print ``value`` as one line of JSON."""
    (out or sys.stdout).write(orjson.dumps(value).decode() + "\n")


def human_size(n: int) -> str:
    """``n`` bytes as a short human-readable size."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def table(
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    out: TextIO | None = None,
    *,
    header: bool = True,
) -> None:
    """Print ``rows`` as left-aligned columns under ``headers`` (printed if ``header``)."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    stream = out or sys.stdout
    for r in cells if header else cells[1:]:
        stream.write("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() + "\n")


def snippet(text: str, width: int = 60) -> str:
    """``text`` on one line, cut to ``width`` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


class Progress:
    """A progress bar on stderr when it is a TTY (or forced); else one count line at the end."""

    def __init__(self, total: int, *, force: bool) -> None:
        self.total = total
        self.done = 0
        self.bar = force or sys.stderr.isatty()
        self._last = 0.0

    def step(self, label: str) -> None:
        self.done += 1
        now = time.monotonic()
        if self.bar and (now - self._last > 0.1 or self.done == self.total):
            self._last = now
            width = 30
            filled = width * self.done // max(self.total, 1)
            sys.stderr.write(
                f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} "
                f"{snippet(label, 30):<30}"
            )
            sys.stderr.flush()

    def finish(self) -> None:
        """End the bar's line; the summary is the command's own output."""
        if self.bar:
            sys.stderr.write("\n")


def plural(n: int, noun: str) -> str:
    """``1 session``, ``2 sessions``: ``n`` and ``noun``, plural unless n is 1."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


# --------------------------------------------------------------------------- reads


def read_session_row(conn: sqlite3.Connection, path: Path) -> dict[str, Any]:
    """The session row as ``{doc, owner, active_leaf_seq, root_count, event_seq}``."""
    roost_schema_version(conn, path)
    try:
        raw = conn.execute(f"SELECT {SESSION_SELECT} FROM session").fetchone()
    except sqlite3.DatabaseError as exc:
        raise AdminError(describe_db_error(path, exc), EXIT_PROBLEM) from exc
    if raw is None:
        raise AdminError(f"{path}: the session table is empty", EXIT_PROBLEM)
    row = SessionRow._make(raw)
    return {
        "doc": session_doc(row),
        "owner": row.owner,
        "active_leaf_seq": row.active_leaf_seq,
        "root_count": row.root_count,
        "event_seq": row.event_seq,
    }


def roost_invariants(conn: sqlite3.Connection) -> list[str]:
    """Problems with Roost's own bookkeeping in a session file (empty when sound).

    Checked: one session row; counters (message_count, root_count, child_count)
    match the rows; depths and parent ids agree with parents; the active path
    runs from a root to the active leaf; roles and statuses are known; the
    event counter is ahead of every stored event.
    """
    problems: list[str] = []

    def value(sql: str) -> Any:
        return scalar(conn.execute(sql))

    n_rows = value("SELECT COUNT(*) FROM session")
    if n_rows != 1:
        return [f"session table has {plural(n_rows, 'row')}, expected 1"]
    count, roots, leaf_seq, leaf_id, event_seq = conn.execute(
        "SELECT message_count, root_count, active_leaf_seq, active_leaf_id, event_seq FROM session"
    ).fetchone()
    live = value("SELECT COUNT(*) FROM messages WHERE deleted_at IS NULL")
    if count != live:
        problems.append(f"message_count is {count} but {live} live messages exist")
    real_roots = value("SELECT COUNT(*) FROM messages WHERE parent_seq IS NULL")
    if roots != real_roots:
        problems.append(f"root_count is {roots} but {real_roots} root messages exist")
    bad_cc = value(
        "SELECT COUNT(*) FROM messages p WHERE child_count != "
        "(SELECT COUNT(*) FROM messages c WHERE c.parent_seq = p.seq)"
    )
    if bad_cc:
        problems.append(f"{plural(bad_cc, 'message')} with a wrong child_count")
    bad_link = value(
        "SELECT COUNT(*) FROM messages c LEFT JOIN messages p ON p.seq = c.parent_seq "
        "WHERE (c.parent_seq IS NULL AND (c.depth != 0 OR c.parent_id IS NOT NULL)) "
        "OR (c.parent_seq IS NOT NULL AND (p.seq IS NULL OR c.depth != p.depth + 1 "
        "OR c.parent_id IS NOT p.id OR p.seq >= c.seq))"
    )
    if bad_link:
        problems.append(
            f"{plural(bad_link, 'message')} disagreeing with their parent (depth/parent_id)"
        )
    roles = ",".join(f"'{r}'" for r in ROLES)
    statuses = ",".join(f"'{s}'" for s in STATUSES)
    odd = value(
        f"SELECT COUNT(*) FROM messages WHERE role NOT IN ({roles}) OR status NOT IN ({statuses})"
    )
    if odd:
        problems.append(f"{plural(odd, 'message')} with an unknown role or status")
    path_len, path_max = conn.execute("SELECT COUNT(*), MAX(depth) FROM active_path").fetchone()
    if leaf_seq is None:
        if path_len or leaf_id is not None:
            problems.append("no active leaf, but the active path or leaf id is set")
    else:
        leaf = conn.execute("SELECT id, depth FROM messages WHERE seq = ?", (leaf_seq,)).fetchone()
        if leaf is None:
            problems.append(f"active leaf seq {leaf_seq} names no message")
        else:
            found_id, leaf_depth = leaf
            if found_id != leaf_id:
                problems.append("active_leaf_id does not match active_leaf_seq")
            at_leaf = conn.execute(
                "SELECT seq FROM active_path WHERE depth = ?", (leaf_depth,)
            ).fetchone()
            if path_len != leaf_depth + 1 or path_max != leaf_depth or at_leaf != (leaf_seq,):
                problems.append("the active path does not end at the active leaf")
            broken = value(
                "SELECT COUNT(*) FROM active_path a LEFT JOIN messages m ON m.seq = a.seq "
                "WHERE m.seq IS NULL OR m.depth != a.depth OR m.parent_seq IS NOT "
                "(SELECT seq FROM active_path b WHERE b.depth = a.depth - 1)"
            )
            if broken:
                problems.append(f"the active path is broken at {broken} places")
    max_event = value("SELECT COALESCE(MAX(seq), 0) FROM events")
    if max_event > event_seq:
        problems.append(f"event_seq {event_seq} is behind stored event {max_event}")
    return problems


def sqlite_checks(conn: sqlite3.Connection, *, quick: bool) -> tuple[list[str], list[list[Any]]]:
    """``(integrity_check lines, foreign_key_check rows)``; ``["ok"]`` and ``[]`` when sound."""
    integrity = [
        str(r[0]) for r in conn.execute("PRAGMA quick_check" if quick else "PRAGMA integrity_check")
    ]
    fks = [list(r) for r in conn.execute("PRAGMA foreign_key_check")]
    return integrity, fks


def check_file(path: Path, *, sid: str | None = None, quick: bool = False) -> dict[str, Any]:
    """Check one session file: SQLite's checks plus :func:`roost_invariants`, and
    that the file holds session ``sid`` (its folder's name) when given.

    Never raises for a damaged or foreign file: that is reported as a problem.
    """
    result: dict[str, Any] = {"ok": False, "integrity": None, "foreign_keys": None, "problems": []}

    def run(_db: ReadOnlyDb, conn: sqlite3.Connection) -> None:
        try:
            integrity, fks = sqlite_checks(conn, quick=quick)
        except sqlite3.DatabaseError:
            roost_schema_version(conn, path)  # a clearer message for a foreign file
            raise
        result["integrity"], result["foreign_keys"] = integrity, fks
        if integrity != ["ok"]:
            result["problems"] += [
                f"integrity: {line}" for row in integrity[:20] for line in row.splitlines()
            ]
            return
        roost_schema_version(conn, path)
        if fks:
            result["problems"].append(
                f"foreign keys: {plural(len(fks), 'violation')}, first {fks[0]}"
            )
        if integrity == ["ok"]:
            result["problems"] += roost_invariants(conn)
            held = [held_id for (held_id,) in conn.execute("SELECT id FROM session LIMIT 1")]
            if sid is not None and held and held[0] != sid:
                result["problems"].append(f"the file holds session {held[0]!r}, not {sid!r}")

    return _run_checks(path, run, result)


def _run_checks(path: Path, run: Callable[..., None], result: dict[str, Any]) -> dict[str, Any]:
    """Run ``run`` on a consistent read of ``path``; a failure becomes a problem in ``result``."""
    try:
        read_consistent(path, run)
    except AdminError as exc:
        result["problems"].append(exc.message)
    except sqlite3.DatabaseError as exc:
        result["problems"].append(describe_db_error(path, exc))
    result["ok"] = not result["problems"]
    return result


def session_summary(path: Path, sid: str, *, quick: bool) -> dict[str, Any]:
    """Everything ``show`` prints, read in one short snapshot."""

    def run(_db: ReadOnlyDb, conn: sqlite3.Connection) -> dict[str, Any]:
        version = roost_schema_version(conn, path)
        srow = read_session_row(conn, path)
        try:
            by_role = dict(
                conn.execute(
                    "SELECT role, COUNT(*) FROM messages WHERE deleted_at IS NULL "
                    "GROUP BY role ORDER BY role"
                ).fetchall()
            )
            by_status = dict(
                conn.execute(
                    "SELECT status, COUNT(*) FROM messages WHERE deleted_at IS NULL "
                    "GROUP BY status ORDER BY status"
                ).fetchall()
            )
            deleted, leaves, forks, max_depth = conn.execute(
                "SELECT COUNT(deleted_at), COALESCE(SUM(child_count = 0), 0), "
                "COALESCE(SUM(child_count > 1), 0), MAX(depth) FROM messages"
            ).fetchone()
            leaf = None
            if srow["active_leaf_seq"] is not None:
                r = conn.execute(
                    "SELECT id, seq, depth, role, status FROM messages WHERE seq = ?",
                    (srow["active_leaf_seq"],),
                ).fetchone()
                if r is not None:
                    leaf = dict(zip(("id", "seq", "depth", "role", "status"), r, strict=True))
            n_events, min_event = conn.execute("SELECT COUNT(*), MIN(seq) FROM events").fetchone()
            page_size = conn.execute("PRAGMA page_size").fetchone()[0]
            page_count = conn.execute("PRAGMA page_count").fetchone()[0]
            freelist = conn.execute("PRAGMA freelist_count").fetchone()[0]
            integrity, fks = sqlite_checks(conn, quick=quick)
            invariants = roost_invariants(conn) if integrity == ["ok"] else []
        except sqlite3.DatabaseError as exc:
            raise AdminError(describe_db_error(path, exc), EXIT_PROBLEM) from exc
        return {
            "session": srow["doc"],
            "owner": srow["owner"],
            "schema_version": version,
            "messages": {
                "live": sum(by_role.values()),
                "deleted": deleted,
                "by_role": by_role,
                "by_status": by_status,
            },
            "branches": {
                "leaves": leaves,
                "fork_points": forks + (1 if srow["root_count"] > 1 else 0),
                "roots": srow["root_count"],
                "max_depth": max_depth,
            },
            "active_leaf": leaf,
            "events": {"event_seq": srow["event_seq"], "stored": n_events, "oldest": min_event},
            "pages": {"page_size": page_size, "page_count": page_count, "freelist": freelist},
            "integrity_check": integrity,
            "foreign_key_check": fks,
            "roost_check": invariants,
        }

    summary = read_consistent(path, run)
    summary["files"] = {"path": str(path), **file_sizes(path)}
    summary["session_id"] = sid
    summary["ok"] = (
        summary["integrity_check"] == ["ok"]
        and not summary["foreign_key_check"]
        and not summary["roost_check"]
    )
    return summary


# --------------------------------------------------------------------------- commands


def cmd_sessions(args: argparse.Namespace, dd: DataDir) -> int:
    """List the catalog's sessions, plus session files the catalog does not list."""
    rows: list[tuple[str, str, str, str]] = []
    if dd.catalog_path.is_file():

        def run(_db: ReadOnlyDb, conn: sqlite3.Connection) -> list[tuple[str, str, str, str]]:
            return conn.execute(
                "SELECT id, owner, updated_at, doc FROM sessions ORDER BY updated_at DESC, id DESC"
            ).fetchall()

        try:
            rows = read_consistent(dd.catalog_path, run)
        except sqlite3.DatabaseError as exc:
            raise AdminError(describe_db_error(dd.catalog_path, exc), EXIT_PROBLEM) from exc
    on_disk = set(iter_session_ids(dd))
    items: list[dict[str, Any]] = []
    for sid, owner, _updated, doc_text in rows:
        if args.owner is not None and owner != args.owner:
            continue
        doc = orjson.loads(doc_text)
        items.append(_session_item(dd, sid, owner, doc, in_catalog=True, on_disk=sid in on_disk))
    listed = {sid for sid, _owner, _updated, _doc in rows}
    for sid in sorted(on_disk - listed):
        path = dd.session_db(sid)
        orphan_owner: str | None = None
        try:
            srow = read_consistent(path, _session_row_reader(path))
            doc, orphan_owner = srow["doc"], srow["owner"]
        except (AdminError, sqlite3.DatabaseError):
            doc = {"id": sid}
        if args.owner is not None and orphan_owner != args.owner:
            continue
        items.append(_session_item(dd, sid, orphan_owner, doc, in_catalog=False, on_disk=True))
    if args.limit is not None:
        items = items[: args.limit]
    if args.json:
        emit_json({"sessions": items, "count": len(items)})
        return EXIT_OK
    table(
        ["ID", "OWNER", "MESSAGES", "SIZE", "WAL", "LAST ACTIVITY", "NOTE"],
        [
            [
                i["id"],
                i["owner"] or "-",
                i["message_count"],
                human_size(i["db_bytes"]),
                human_size(i["wal_bytes"]),
                i["last_activity"],
                ""
                if i["on_disk"] and i["in_catalog"]
                else ("not in catalog" if i["on_disk"] else "file missing"),
            ]
            for i in items
        ],
    )
    print(plural(len(items), "session"))
    return EXIT_OK


def _session_row_reader(path: Path) -> Callable[[ReadOnlyDb, sqlite3.Connection], dict[str, Any]]:
    def run(_db: ReadOnlyDb, conn: sqlite3.Connection) -> dict[str, Any]:
        return read_session_row(conn, path)

    return run


def _session_item(
    dd: DataDir,
    sid: str,
    owner: str | None,
    doc: dict[str, Any],
    *,
    in_catalog: bool,
    on_disk: bool,
) -> dict[str, Any]:
    sizes = file_sizes(dd.session_db(sid))
    return {
        "id": sid,
        "owner": owner,
        "title": doc.get("title"),
        "message_count": doc.get("message_count"),
        "last_activity": doc.get("last_message_at") or doc.get("updated_at"),
        "updated_at": doc.get("updated_at"),
        "db_bytes": sizes["db_bytes"],
        "wal_bytes": sizes["wal_bytes"],
        "in_catalog": in_catalog,
        "on_disk": on_disk,
    }


def cmd_show(args: argparse.Namespace, dd: DataDir) -> int:
    """Print a session's summary; exit 1 if a check found a problem."""
    path = session_path(dd, args.sid)
    try:
        s = session_summary(path, args.sid, quick=args.quick)
    except AdminError as exc:
        if exc.code == EXIT_PROBLEM:
            exc.message += f"; `roost-admin check {args.sid}` lists what is wrong"
        raise
    if args.json:
        emit_json(s)
        return EXIT_OK if s["ok"] else EXIT_PROBLEM
    doc, m, b, f = s["session"], s["messages"], s["branches"], s["files"]
    leaf = s["active_leaf"]
    pairs = [
        ("session", doc["id"]),
        ("owner", s["owner"] or "-"),
        ("title", doc["title"] or "-"),
        ("created", doc["created_at"]),
        ("updated", doc["updated_at"]),
        ("last message", doc["last_message_at"] or "-"),
        ("messages", f"{m['live']} live, {m['deleted']} deleted"),
        ("by role", _counts(m["by_role"])),
        ("by status", _counts(m["by_status"])),
        (
            "branches",
            f"{b['leaves']} leaves, {b['fork_points']} fork points, {b['roots']} roots, "
            f"max depth {b['max_depth'] if b['max_depth'] is not None else '-'}",
        ),
        (
            "active leaf",
            "-" if leaf is None else f"{leaf['id']} (seq {leaf['seq']}, depth {leaf['depth']})",
        ),
        ("event seq", f"{s['events']['event_seq']} ({s['events']['stored']} stored)"),
        ("file", f"{f['path']}"),
        ("file size", f"{human_size(f['db_bytes'])} ({s['pages']['page_count']} pages)"),
        ("wal size", human_size(f["wal_bytes"])),
        ("schema version", s["schema_version"]),
        ("integrity_check", "; ".join(s["integrity_check"][:5])),
        (
            "foreign_key_check",
            plural(len(s["foreign_key_check"]), "violation") if s["foreign_key_check"] else "ok",
        ),
        ("roost check", "ok" if not s["roost_check"] else "; ".join(s["roost_check"])),
    ]
    width = max(len(k) for k, _ in pairs)
    for k, v in pairs:
        print(f"{k.ljust(width)}  {v}")
    return EXIT_OK if s["ok"] else EXIT_PROBLEM


def _counts(d: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in d.items()) or "-"


def _print_messages(
    items: list[dict[str, Any]], *, as_json: bool, full: bool, header: bool = True
) -> None:
    if as_json:
        for msg in items:
            emit_json(msg)
    elif full:
        for msg in items:
            print(
                f"--- #{msg['seq']} {msg['role']} [{msg['status']}] {msg['id']} "
                f"{msg['created_at']}{' (deleted)' if msg['deleted'] else ''}"
            )
            print(msg["content"])
    else:
        table(
            ["SEQ", "CREATED", "ROLE", "STATUS", "ID", "CONTENT"],
            [
                [
                    m["seq"],
                    m["created_at"],
                    m["role"],
                    m["status"] + (" (deleted)" if m["deleted"] else ""),
                    m["id"],
                    snippet(m["content"]),
                ]
                for m in items
            ],
            header=header,
        )
    sys.stdout.flush()


def cmd_messages(args: argparse.Namespace, dd: DataDir) -> int:
    """Print a page of messages in log order; with ``--follow``, then new ones as committed.

    With ``--json`` and without ``--follow`` the output is ``{"items", "before"}``;
    with ``--follow`` it is one Message document per line.
    """
    path = session_path(dd, args.sid)
    sid = args.sid
    try:
        before = decode_int("s", args.before) if args.before is not None else None
    except InvalidInput as exc:
        raise AdminError(f"--before: {exc.message}") from exc
    live = "" if args.deleted else " AND deleted_at IS NULL"

    def first_page(_db: ReadOnlyDb, conn: sqlite3.Connection) -> tuple[list[Any], int]:
        read_session_row(conn, path)
        cond = " AND seq < ?" if before is not None else ""
        params: tuple[Any, ...] = (args.limit + 1,) if before is None else (before, args.limit + 1)
        rows = conn.execute(
            f"SELECT {MESSAGE_SELECT} FROM messages WHERE 1{live}{cond} ORDER BY seq DESC LIMIT ?",
            params,
        ).fetchall()
        top = scalar(conn.execute("SELECT COALESCE(MAX(seq), 0) FROM messages"))
        return [MessageRow._make(r) for r in rows], int(top)

    rows, top = read_consistent(path, first_page)
    more = len(rows) > args.limit
    rows = rows[: args.limit][::-1]
    items = [message_doc(r, sid) for r in rows]
    older = encode_int("s", items[0]["seq"]) if more and items else None
    if args.json and not args.follow:
        emit_json({"items": items, "before": older})
        return EXIT_OK
    _print_messages(items, as_json=args.json, full=args.full)
    if older is not None and not args.json:
        print(f"(older messages: --before {older})", file=sys.stderr)
    if not args.follow:
        return EXIT_OK
    return _follow(path, sid, top, live, args)


def _follow(path: Path, sid: str, last: int, live: str, args: argparse.Namespace) -> int:
    """Poll for messages with ``seq > last`` in short read transactions until stopped."""
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    printed = 0
    db: ReadOnlyDb | None = None
    try:
        while deadline is None or time.monotonic() < deadline:
            if not path.exists():
                print(f"session {sid!r} was deleted", file=sys.stderr)
                return EXIT_PROBLEM
            if db is None:
                db = ReadOnlyDb(path)
            try:
                with db.snapshot() as conn:
                    rows = conn.execute(
                        f"SELECT {MESSAGE_SELECT} FROM messages WHERE seq > ?{live} "
                        "ORDER BY seq LIMIT 500",
                        (last,),
                    ).fetchall()
                    rows = [MessageRow._make(r) for r in rows]
                    top = scalar(conn.execute("SELECT COALESCE(MAX(seq), 0) FROM messages"))
            except FileChanged:
                db.close()
                db = None
                continue
            if db.immutable or not sidecars(path)[0].exists():
                db.close()  # reopen each poll while no writer has the file open
                db = None
            if rows:
                docs = [message_doc(r, sid) for r in rows]
                _print_messages(docs, as_json=args.json, full=args.full, header=False)
                printed += len(docs)
                if args.count is not None and printed >= args.count:
                    return EXIT_OK
            last = max(last, int(top)) if len(rows) < 500 else rows[-1].seq
            if len(rows) < 500:
                time.sleep(args.interval)
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        if db is not None:
            db.close()
    return EXIT_OK


class TreeNode(NamedTuple):
    """One message as ``admin tree`` shows it (the columns its query selects, in order)."""

    seq: int
    parent_seq: int | None
    id: str
    role: str
    status: str
    deleted: int
    text: str


def cmd_tree(args: argparse.Namespace, dd: DataDir) -> int:
    """Print the branch tree; ``*`` marks the active path."""
    path = session_path(dd, args.sid)

    def run(_db: ReadOnlyDb, conn: sqlite3.Connection) -> tuple[Any, list[Any], set[int]]:
        srow = read_session_row(conn, path)
        nodes = [
            TreeNode._make(r)
            for r in conn.execute(
                "SELECT seq, parent_seq, id, role, status, deleted_at IS NOT NULL, "
                "substr(content, 1, 200) FROM messages ORDER BY seq"
            )
        ]
        active = {seq for (seq,) in conn.execute("SELECT seq FROM active_path")}
        return srow, nodes, active

    srow, nodes, active = read_consistent(path, run)
    children: dict[int | None, list[int]] = {}
    by_seq: dict[int, TreeNode] = {}
    for n in nodes:
        by_seq[n.seq] = n
        children.setdefault(n.parent_seq, []).append(n.seq)
    if args.json:
        emit_json(
            {
                "session_id": args.sid,
                "active_leaf_id": srow["doc"]["active_leaf_id"],
                "leaves": sum(1 for n in nodes if not children.get(n.seq)),
                "nodes": [
                    {
                        "id": n.id,
                        "seq": n.seq,
                        "parent_id": None if n.parent_seq is None else by_seq[n.parent_seq].id,
                        "role": n.role,
                        "status": n.status,
                        "deleted": bool(n.deleted),
                        "active": n.seq in active,
                        "children": [by_seq[c].id for c in children.get(n.seq, [])],
                    }
                    for n in nodes
                ],
            }
        )
        return EXIT_OK
    for line in render_tree(children, by_seq, active):
        print(line)
    if not nodes:
        print("(no messages)")
    return EXIT_OK


def render_tree(
    children: dict[int | None, list[int]], by_seq: dict[int, TreeNode], active: set[int]
) -> Iterator[str]:
    """Lines of the tree: a chain stays in one column; a fork indents its children.

    Iterative, so a conversation thousands of messages deep renders fine.
    """
    stack: list[tuple[int, str, str]] = []

    def push_children(parent: int | None, rest: str) -> None:
        kids = children.get(parent, [])
        if len(kids) == 1 and parent is not None:
            stack.append((kids[0], rest, rest))
            return
        for i in range(len(kids) - 1, -1, -1):
            last = i == len(kids) - 1
            stack.append(
                (kids[i], rest + ("└─ " if last else "├─ "), rest + ("   " if last else "│  "))
            )

    roots = children.get(None, [])
    if len(roots) == 1:
        stack.append((roots[0], "", ""))
    else:
        push_children(None, "")
    while stack:
        seq, first, rest = stack.pop()
        n = by_seq[seq]
        mark = "*" if seq in active else " "
        status = "" if n.status == "complete" else f" [{n.status}]"
        text = "(deleted)" if n.deleted else snippet(n.text, 50)
        yield f"{first}{mark}#{seq} {n.role}{status}: {text}"
        push_children(seq, rest)


def cmd_export(args: argparse.Namespace, dd: DataDir) -> int:
    """Write the session export (JSON, Markdown or a bundle) to stdout or ``--output``,
    streaming."""
    if args.format == "bundle":
        return export_bundle(args, dd)
    path = session_path(dd, args.sid)
    sid = args.sid
    for _ in range(5):
        with ReadOnlyDb(path) as db:
            try:
                with export_output(args.output) as stream, db.snapshot() as conn:
                    srow = read_session_row(conn, path)
                    session = dict(srow["doc"])
                    if srow["owner"]:
                        session["owner"] = srow["owner"]
                    chunks: Iterator[bytes]
                    if args.format == "json":
                        cur = conn.execute(f"SELECT {MESSAGE_SELECT} FROM messages ORDER BY seq")
                        chunks = export_json_chunks(
                            session,
                            (message_doc(MessageRow._make(r), sid) for r in cur),
                            exported_at=now_iso(),
                            attachments=list(attachment_records(conn, sid)),
                            summaries=list(iter_summaries(conn, sid)),
                        )
                    else:
                        cur = conn.execute(
                            f"SELECT {prefixed('m')} "
                            "FROM active_path ap JOIN messages m ON m.seq = ap.seq "
                            "ORDER BY ap.depth"
                        )
                        chunks = (
                            c.encode()
                            for c in export_markdown_chunks(
                                session, (message_doc(MessageRow._make(r), sid) for r in cur)
                            )
                        )
                    for chunk in chunks:
                        stream.write(chunk)
            except FileChanged:
                if args.output is None:
                    raise AdminError(
                        "the session file changed while it was exported; run it again",
                        EXIT_PROBLEM,
                    ) from None
                continue
            return EXIT_OK
    raise AdminError("the session file kept changing while it was exported", EXIT_PROBLEM)


def cmd_check(args: argparse.Namespace, dd: DataDir) -> int:
    """Check sessions (and with ``--all`` the catalog); exit 1 on any problem."""
    if args.all == (args.sid is not None):
        raise AdminError("check: give a session id or --all (not both)")
    if args.all:
        sids = list(iter_session_ids(dd))
    else:
        session_path(dd, args.sid)
        sids = [args.sid]
    targets: list[tuple[str, Path]] = [(sid, dd.session_db(sid)) for sid in sids]
    if args.all and dd.catalog_path.is_file():
        targets.insert(0, ("(catalog)", dd.catalog_path))
    progress = Progress(len(targets), force=args.progress) if args.all else None
    results = []
    failed = 0
    for name, path in targets:
        if name == "(catalog)":
            res = _check_catalog(path, quick=args.quick)
        else:
            res = check_file(path, sid=name, quick=args.quick)
            if not res["ok"] and args.all and not path.exists():
                res = {**res, "ok": True, "problems": [], "skipped": "deleted during the check"}
        res = {"session_id": name, **res}
        results.append(res)
        failed += 0 if res["ok"] else 1
        if progress is not None:
            progress.step(name)
    if progress is not None:
        progress.finish()
    if args.json:
        emit_json(
            {"ok": failed == 0, "checked": len(results), "failed": failed, "results": results}
        )
    else:
        for res in results:
            if res["ok"]:
                if not args.all:
                    print(f"ok    {res['session_id']}")
            else:
                for problem in res["problems"]:
                    print(f"FAIL  {res['session_id']}: {problem}")
        if failed == 0:
            print(f"all {len(results)} checked: ok")
        else:
            print(f"{failed} of {len(results)} checked have problems")
    return EXIT_OK if failed == 0 else EXIT_PROBLEM


def _check_catalog(path: Path, *, quick: bool) -> dict[str, Any]:
    result: dict[str, Any] = {"ok": False, "integrity": None, "foreign_keys": None, "problems": []}

    def run(_db: ReadOnlyDb, conn: sqlite3.Connection) -> None:
        integrity, fks = sqlite_checks(conn, quick=quick)
        result["integrity"], result["foreign_keys"] = integrity, fks
        if integrity != ["ok"]:
            result["problems"] += [f"integrity: {line}" for line in integrity[:20]]

    return _run_checks(path, run, result)


def _verify_copy(path: Path) -> dict[str, Any]:
    def run(_db: ReadOnlyDb, conn: sqlite3.Connection) -> dict[str, Any]:
        srow = read_session_row(conn, path)
        quick = [str(r[0]) for r in conn.execute("PRAGMA quick_check")]
        n = conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
        return {"session": srow["doc"], "owner": srow["owner"], "quick_check": quick, "rows": n}

    return read_consistent(path, run)


def cmd_backup(args: argparse.Namespace, dd: DataDir) -> int:
    """Copy a session file to DEST with the online backup API, consistently, while it runs."""
    src = session_path(dd, args.sid)
    dest = Path(args.dest)
    if dest.is_dir():
        dest = dest / f"{args.sid}.db"
    if not dest.parent.is_dir():
        raise AdminError(f"backup: folder {dest.parent} does not exist")
    if dest.exists() and not args.force:
        raise AdminError(f"backup: {dest} exists (give --force to replace it)")
    try:
        read_consistent(src, lambda _d, c: roost_schema_version(c, src))
    except sqlite3.DatabaseError as exc:
        raise AdminError(describe_db_error(src, exc)) from exc
    started = time.monotonic()
    try:
        backup_file(src, dest, journal_mode="DELETE")
    except sqlite3.DatabaseError as exc:
        raise AdminError(describe_db_error(src, exc), EXIT_PROBLEM) from exc
    info = _verify_copy(dest)
    report = {
        "session_id": args.sid,
        "source": str(src),
        "dest": str(dest),
        "bytes": dest.stat().st_size,
        "messages": info["session"]["message_count"],
        "rows": info["rows"],
        "quick_check": info["quick_check"],
        "seconds": round(time.monotonic() - started, 3),
    }
    ok = info["quick_check"] == ["ok"]
    if args.json:
        emit_json({"ok": ok, **report})
    else:
        print(
            f"backed up {args.sid} to {dest}: {human_size(report['bytes'])}, "
            f"{plural(report['messages'], 'message')} ({plural(report['rows'], 'row')}), "
            "quick_check "
            f"{'; '.join(info['quick_check'][:3])}, {report['seconds']} s"
        )
    return EXIT_OK if ok else EXIT_PROBLEM


def cmd_restore(args: argparse.Namespace, dd: DataDir) -> int:
    """Replace session SID's file with the Roost session database SRC.

    Refuses (exit 1) while any process has the session's file open, unless
    ``--force``. SRC must pass ``quick_check`` and carry the id SID (or give
    ``--rename``). The catalog row is updated so the session is listed.
    """
    src = Path(args.src)
    if not src.is_file():
        raise AdminError(f"restore: {src} does not exist")
    dest = session_path(dd, args.sid, must_exist=False)
    try:
        info = _verify_copy(src)
    except sqlite3.DatabaseError as exc:
        raise AdminError(describe_db_error(src, exc)) from exc
    if info["quick_check"] != ["ok"]:
        raise AdminError(
            f"restore: {src} is damaged: {'; '.join(info['quick_check'][:3])}", EXIT_PROBLEM
        )
    src_id = info["session"]["id"]
    if src_id != args.sid and not args.rename:
        raise AdminError(
            f"restore: {src} holds session {src_id!r}, not {args.sid!r}; "
            f"give --rename to restore it as {args.sid!r}"
        )
    holders = open_by([dest, *sidecars(dest)])
    if holders and not args.force:
        who = ", ".join(f"pid {h.pid} ({snippet(h.cmdline, 60)})" for h in holders)
        raise AdminError(
            f"restore: session {args.sid!r} is live: its file is open by {who}. Stop the "
            "server, or wait until the session hibernates (no clients, idle timeout), or "
            "delete the session through the API, then run restore again. --force replaces "
            "the file anyway: writes the server makes to the old file until it reopens "
            "the session are lost.",
            EXIT_PROBLEM,
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    replaced = dest.exists()

    def prepare(conn: sqlite3.Connection) -> None:
        if src_id != args.sid:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("UPDATE session SET id = ?", (args.sid,))
            conn.execute("DELETE FROM events")  # their frames name the old id
            conn.execute("COMMIT")

    def drop_stale_sidecars() -> None:
        for side in sidecars(dest):
            side.unlink(missing_ok=True)

    try:
        backup_file(
            src, dest, journal_mode="WAL", prepare=prepare, before_replace=drop_stale_sidecars
        )
    except sqlite3.DatabaseError as exc:
        raise AdminError(describe_db_error(src, exc), EXIT_PROBLEM) from exc
    doc = dict(info["session"], id=args.sid)
    if dd.catalog_path.is_file():
        from storage.catalog import Catalog

        cat = Catalog(dd)
        try:
            cat.upsert_many([(info["owner"], doc)])
        finally:
            cat.close()
    report = {
        "session_id": args.sid,
        "source": str(src),
        "dest": str(dest),
        "replaced": replaced,
        "renamed_from": src_id if src_id != args.sid else None,
        "messages": doc["message_count"],
        "forced": bool(holders),
    }
    if args.json:
        emit_json({"ok": True, **report})
    else:
        print(
            f"restored {args.sid} from {src}"
            + (f" (renamed from {src_id})" if src_id != args.sid else "")
            + f": {plural(doc['message_count'], 'message')}"
            + ("; replaced the previous file" if replaced else "")
        )
    return EXIT_OK


# --------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    """The argument parser. ``--data-dir`` and ``--json`` go before or after the command."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--data-dir",
        default=argparse.SUPPRESS,
        help="the server's data dir (env ROOST_DATA_DIR; default ./roost-data)",
    )
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")
    parser = argparse.ArgumentParser(
        prog="roost-admin",
        description="Inspect a Roost data dir directly; read-only except backup/restore, "
        "safe while the server runs.",
        epilog="Exit codes: 0 ok; 1 problems found, restore refused, or a damaged file; "
        "2 usage error, missing data dir, unknown session, or not a Roost database.",
    )
    parser.add_argument(
        "--data-dir", default=None, help="the data dir (env ROOST_DATA_DIR; default ./roost-data)"
    )
    parser.add_argument("--json", action="store_true", default=False, help="print JSON")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("sessions", parents=[common], help="list sessions")
    p.add_argument("--owner", help="only this owner's sessions")
    p.add_argument("--limit", type=_positive, help="at most N sessions (most recent first)")
    p.set_defaults(func=cmd_sessions)

    p = sub.add_parser("show", parents=[common], help="a session's summary and checks")
    p.add_argument("sid")
    p.add_argument("--quick", action="store_true", help="quick_check instead of integrity_check")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("messages", parents=[common], help="print (or follow) messages")
    p.add_argument("sid")
    p.add_argument("--limit", type=_positive, default=25, help="page size (default 25)")
    p.add_argument("--before", help="cursor of an older page (as printed, or from the API)")
    p.add_argument("--deleted", action="store_true", help="include tombstones")
    p.add_argument("--full", action="store_true", help="print whole contents")
    p.add_argument("-f", "--follow", action="store_true", help="then print new messages")
    p.add_argument("--interval", type=float, default=0.25, help="poll interval in seconds")
    p.add_argument("--timeout", type=float, help="stop following after this many seconds")
    p.add_argument("--count", type=_positive, help="stop following after N new messages")
    p.set_defaults(func=cmd_messages)

    p = sub.add_parser("tree", parents=[common], help="the branch tree")
    p.add_argument("sid")
    p.set_defaults(func=cmd_tree)

    p = sub.add_parser("export", parents=[common], help="export a session")
    p.add_argument("sid")
    p.add_argument("--format", choices=["json", "markdown", "bundle"], default="json")
    p.add_argument("-o", "--output", help="write to this file (atomically) instead of stdout")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("check", parents=[common], help="integrity checks; exit 1 on problems")
    p.add_argument("sid", nargs="?")
    p.add_argument("--all", action="store_true", help="every session and the catalog")
    p.add_argument("--quick", action="store_true", help="quick_check instead of integrity_check")
    p.add_argument("--progress", action="store_true", help="progress bar even if not a TTY")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("backup", parents=[common], help="online backup of a session file")
    p.add_argument("sid")
    p.add_argument("dest", help="file to write, or a folder (then DEST/SID.db)")
    p.add_argument("--force", action="store_true", help="replace DEST if it exists")
    p.set_defaults(func=cmd_backup)

    p = sub.add_parser("restore", parents=[common], help="replace a session file from a backup")
    p.add_argument("src")
    p.add_argument("sid")
    p.add_argument("--rename", action="store_true", help="restore under SID a backup of another id")
    p.add_argument("--force", action="store_true", help="even while the session is live (unsafe)")
    p.set_defaults(func=cmd_restore)

    add_across_parsers(sub, common)
    add_bundle_parsers(sub, common)
    add_pitr_parser(sub)
    return parser


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Run one admin command; return its exit code (see the module docstring)."""
    args = build_parser().parse_args(argv)
    root = args.data_dir or os.environ.get("ROOST_DATA_DIR") or "./roost-data"
    func: Callable[[argparse.Namespace, DataDir], int] = args.func
    try:
        if not getattr(args, "needs_data_dir", True):  # pitr: the replica, not a data dir
            return args.func(args, None)  # type: ignore[no-any-return]
        dd = open_datadir(root)
        return func(args, dd)
    except AdminError as exc:
        print(f"roost-admin: {exc.message}", file=sys.stderr)
        return exc.code
    except BrokenPipeError:
        # e.g. `roost-admin export ... | head`: not an error worth a traceback
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
