"""``roost-admin pitr SID --at TIME`` (issue 18): a session as it was, from the replica.

Point-in-time restore never touches the live session: Litestream's
``restore -timestamp`` writes the session's file as it was at ``--at`` to
``--out`` (a new file), and ``--import-to URL`` then makes it a **new** session
on a running server (single node or a cluster's front) through
``POST /api/sessions/import?id=NEWID`` (its export), under ``--as`` or a new
id. The replica comes from ``--replica``/``--replica-endpoint`` or
``ROOST_REPLICA``/``ROOST_REPLICA_ENDPOINT``, as for ``roost serve``;
credentials from the usual ``AWS_*`` variables. Needs no data dir.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sqlite3
import tempfile
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from scripts._admin_db import EXIT_OK, EXIT_PROBLEM, EXIT_USAGE, AdminError
from storage.layout import DataDir


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "pitr",
        help="a session as it was at a time, from the replica (as a new file or session)",
    )
    p.add_argument("sid")
    p.add_argument("--at", required=True, help="RFC 3339 time, e.g. 2026-12-01T10:00:00Z")
    p.add_argument("--replica", help="s3://BUCKET/PREFIX (env ROOST_REPLICA)")
    p.add_argument("--replica-endpoint", help="the S3-compatible store (ROOST_REPLICA_ENDPOINT)")
    p.add_argument("--out", help="the file to write (default ./SID-at-TIME.db)")
    p.add_argument("--import-to", help="a server's base URL: import the result as a new session")
    p.add_argument("--as", dest="new_id", help="the new session's id (default: a new uuid7)")
    p.add_argument(
        "--token", help="bearer token for --import-to (env ROOST_ADMIN_TOKEN), if it needs one"
    )
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=cmd_pitr, needs_data_dir=False)


def parse_time(text: str) -> datetime:
    try:
        at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise AdminError(f"--at {text!r} is not an RFC 3339 time", EXIT_USAGE) from None
    if at.tzinfo is None:
        raise AdminError(f"--at {text!r} needs a time zone (Z or +HH:MM)", EXIT_USAGE)
    return at.astimezone(UTC)


def cmd_pitr(args: argparse.Namespace, _dd: DataDir | None = None) -> int:
    from actors.replica import restore_at
    from actors.replica_store import Target

    url = args.replica or os.environ.get("ROOST_REPLICA")
    endpoint = args.replica_endpoint or os.environ.get("ROOST_REPLICA_ENDPOINT")
    if not url:
        raise AdminError("pitr needs --replica s3://BUCKET/PREFIX (or ROOST_REPLICA)", EXIT_USAGE)
    try:
        target = Target.parse(url, endpoint)
    except ValueError as exc:
        raise AdminError(str(exc), EXIT_USAGE) from None
    at = parse_time(args.at)
    stamp = at.strftime("%Y%m%dT%H%M%SZ")
    out = Path(args.out or f"{args.sid}-at-{stamp}.db")
    if out.exists() and not args.force:
        raise AdminError(f"{out} exists (give --force to replace it)", EXIT_USAGE)
    tmp = out.with_name(f".{out.name}.pitr")
    try:
        epoch = asyncio.run(restore_at(target, args.sid, at, tmp))
    except LookupError as exc:
        raise AdminError(str(exc), EXIT_PROBLEM) from None
    os.replace(tmp, out)
    print(f"{args.sid} as at {at.isoformat()} (epoch {epoch:08x}) written to {out}")
    newest = _newest_change(out)
    if newest is not None:
        print(f"its newest change: {newest}")
    if args.import_to:
        doc = _import(args, out)
        print(f"imported as session {doc['id']}")
    return EXIT_OK


def _newest_change(db: Path) -> str | None:
    """The restored session's ``updated_at``: when its newest change was made (a
    restore older than ``--replica-l0-retention`` may end up to 3 s before ``--at``)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        row = conn.execute("SELECT updated_at FROM session").fetchone()
    except sqlite3.Error:
        return None
    finally:
        conn.close()
    return None if row is None else str(row["updated_at"])


def _import(args: argparse.Namespace, restored: Path) -> dict[str, Any]:
    """Export the restored file (``roost-admin export``) and POST it to the server."""
    from scripts.admin import cmd_export

    work = Path(tempfile.mkdtemp(prefix="roost-pitr-"))
    try:
        dd = DataDir(work)
        dd.ensure()
        db = dd.session_db(args.sid)
        db.parent.mkdir(parents=True)
        shutil.copyfile(restored, db)
        export = work / "export.json"
        ns = argparse.Namespace(sid=args.sid, format="json", output=str(export))
        cmd_export(ns, dd)
        body = export.read_bytes()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    query = f"?id={args.new_id}" if args.new_id else ""
    req = urllib.request.Request(
        args.import_to.rstrip("/") + "/api/sessions/import" + query,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    token = args.token or os.environ.get("ROOST_ADMIN_TOKEN")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            doc: dict[str, Any] = json.loads(r.read())
    except urllib.error.HTTPError as exc:
        text = exc.read().decode(errors="replace")[:300]
        raise AdminError(f"the import was refused ({exc.code}): {text}", EXIT_PROBLEM) from None
    except OSError as exc:
        raise AdminError(f"the server cannot be reached: {exc}", EXIT_PROBLEM) from None
    return doc
