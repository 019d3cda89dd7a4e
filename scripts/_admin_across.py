"""``roost-admin reindex`` and ``roost-admin sweep`` (issue 23): across sessions.

``reindex`` rebuilds users' cross-session search indexes from the session
files (safe beside a running server: it reads session files through
read-only connections and writes only the users' ``search.db``; the server's
indexer carries on from the marks it leaves). ``sweep --dry-run`` lists the
sessions the expiry sweep would delete, from the catalog's expiry indexes.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import time
from typing import Any

import orjson

from scripts._admin_db import EXIT_OK, EXIT_PROBLEM, EXIT_USAGE, AdminError
from storage.catalog import expired_sessions
from storage.ids import format_ts
from storage.layout import DataDir, connect
from storage.usersearch import UserIndex, iter_session_docs, user_index_path


def _catalog_sessions(dd: DataDir, owner: str | None) -> list[tuple[str, str]]:
    if not dd.catalog_path.is_file():
        raise AdminError(f"{dd.catalog_path}: no catalog here", EXIT_USAGE)
    conn = connect(dd.catalog_path, readonly=True)
    try:
        sql, args = "SELECT id, owner FROM sessions", ()
        if owner is not None:
            sql, args = sql + " WHERE owner = ?", (owner,)
        return [(str(s), str(o)) for s, o in conn.execute(sql + " ORDER BY id", args)]
    finally:
        conn.close()


def cmd_reindex(args: argparse.Namespace, dd: DataDir) -> int:
    """Rebuild the search index of every user (or of ``--owner``) from the session files."""
    sessions = _catalog_sessions(dd, args.owner)
    by_owner: dict[str, list[str]] = {}
    for sid, owner in sessions:
        by_owner.setdefault(owner, []).append(sid)
    problems: list[str] = []
    total_docs = 0
    for owner, sids in sorted(by_owner.items()):
        idx = UserIndex(user_index_path(dd, owner))
        try:
            for stale in set(idx.sessions()) - set(sids):
                idx.drop_session(stale)
            for sid in sids:
                try:
                    total_docs += _reindex_session(dd, idx, sid)
                except sqlite3.Error as exc:
                    problems.append(f"{sid}: {exc}")
        finally:
            idx.close()
    out: dict[str, Any] = {
        "users": len(by_owner),
        "sessions": len(sessions),
        "messages": total_docs,
        "problems": problems,
    }
    if args.json:
        print(orjson.dumps(out).decode())
    else:
        for p in problems:
            print(f"problem: {p}")
        print(
            f"reindexed {out['messages']} messages of {out['sessions']} sessions "
            f"of {out['users']} users"
        )
    return EXIT_PROBLEM if problems else EXIT_OK


def _reindex_session(dd: DataDir, idx: UserIndex, sid: str) -> int:
    conn = connect(dd.session_db(sid), readonly=True)
    try:
        conn.execute("BEGIN")
        (event_seq,) = conn.execute("SELECT event_seq FROM session").fetchone()
        n, first, batch = 0, True, []
        for doc in iter_session_docs(conn):
            batch.append(doc)
            if len(batch) >= 2000:
                idx.rebuild_session(sid, batch, int(event_seq), first=first)
                n, first, batch = n + len(batch), False, []
        idx.rebuild_session(sid, batch, int(event_seq), first=first)
        conn.execute("COMMIT")
        return n + len(batch)
    finally:
        conn.close()


def cmd_sweep(args: argparse.Namespace, dd: DataDir) -> int:
    """List the sessions the expiry sweep would delete now (``--dry-run``)."""
    if not args.dry_run:
        raise AdminError(
            "sweep deletes only through a running server (it sweeps every --sweep-interval "
            "seconds, through each session's actor); give --dry-run to list what would go",
            EXIT_USAGE,
        )
    if not dd.catalog_path.is_file():
        raise AdminError(f"{dd.catalog_path}: no catalog here", EXIT_USAGE)
    now = time.time()
    conn = connect(dd.catalog_path, readonly=True)
    try:
        items = expired_sessions(
            conn,
            now=format_ts(now),
            session_cutoff=format_ts(now - args.session_ttl) if args.session_ttl > 0 else None,
            temporary_cutoff=(
                format_ts(now - args.temporary_ttl) if args.temporary_ttl > 0 else None
            ),
            limit=args.limit,
        )
    finally:
        conn.close()
    if args.json:
        print(orjson.dumps({"items": items}).decode())
    else:
        for it in items:
            print(f"{it['id']}\t{it['owner'] or '-'}\t{it['reason']}")
        print(f"{len(items)} sessions would be deleted")
    return EXIT_OK


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """Register ``reindex`` and ``sweep`` on the admin's subparsers."""
    p = sub.add_parser("reindex", parents=[common], help="rebuild users' cross-session search")
    p.add_argument("--owner", help="only this user's index")
    p.set_defaults(func=cmd_reindex)

    p = sub.add_parser("sweep", parents=[common], help="what the expiry sweep would delete")
    p.add_argument("--dry-run", action="store_true", help="list them (required)")
    p.add_argument(
        "--session-ttl",
        type=float,
        default=float(os.environ.get("ROOST_SESSION_TTL", "0")),
        help="as roost serve's (env ROOST_SESSION_TTL; 0 = off)",
    )
    p.add_argument(
        "--temporary-ttl",
        type=float,
        default=float(os.environ.get("ROOST_TEMPORARY_TTL", "3600")),
        help="as roost serve's (env ROOST_TEMPORARY_TTL)",
    )
    p.add_argument("--limit", type=int, default=10_000, help="at most N sessions")
    p.set_defaults(func=cmd_sweep)
