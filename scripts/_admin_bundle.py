"""``roost-admin export SID --format bundle`` and ``roost-admin import SRC`` (issue 25).

The same bundles as the API (``storage.bundle``): ``export`` streams one from a
read snapshot (safe while the server runs; ``-o FILE`` is written atomically);
``import`` makes a **new** session from a bundle or a JSON export, checked
whole first (nothing is created on a bad file), and lists it in the catalog
(as ``restore`` does). A JSON export imports as through the API: its
attachments' records without their bytes.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
from pathlib import Path
from typing import Any

import orjson

from scripts._admin_db import EXIT_OK, EXIT_PROBLEM, AdminError, export_output, session_path
from storage.attachments import attachments_dir
from storage.bundle import iter_bundle, read_bundle, restore_blobs
from storage.catalog import Catalog
from storage.errors import StorageError
from storage.export import ImportPlan, parse_export, populate_import
from storage.ids import now_iso, uuid7, validate_session_id
from storage.layout import DataDir
from storage.lifecycle import create_session_file

MAX_JSON = 64 << 20


def export_bundle(args: argparse.Namespace, dd: DataDir) -> int:
    """Write the session's bundle to ``--output`` (atomically) or stdout."""
    path = session_path(dd, args.sid)
    if args.output is None and sys.stdout.isatty():
        raise AdminError("export --format bundle writes a zip: give -o FILE or redirect stdout")
    gen = iter_bundle(path, args.sid, attachments_dir(dd, args.sid), exported_at=now_iso())
    try:
        with export_output(args.output) as stream:
            for chunk in gen:
                stream.write(chunk)
    except (sqlite3.Error, StorageError) as exc:
        raise AdminError(f"export of {args.sid} failed: {exc}", EXIT_PROBLEM) from exc
    finally:
        gen.close()
    return EXIT_OK


def cmd_import(args: argparse.Namespace, dd: DataDir) -> int:
    """Create a new session from the bundle or JSON export ``SRC``."""
    src = Path(args.src)
    if not src.is_file():
        raise AdminError(f"import: {src} does not exist")
    sid = args.id or uuid7()
    try:
        validate_session_id(sid)
    except StorageError as exc:
        raise AdminError(f"{sid!r} is not a valid session id: {exc}") from exc
    zf = None
    with open(src, "rb") as f:
        bundle = f.read(4) == b"PK\x03\x04"
        f.seek(0)
        try:
            if bundle:
                plan, zf, shas = read_bundle(f, max_json_bytes=MAX_JSON)
            else:
                plan, zf, shas = parse_export(bytearray(f.read())), None, []
            doc = _create(dd, sid, args.owner or "", plan, zf, shas)
        except StorageError as exc:
            detail = f" ({exc.details})" if exc.details else ""
            raise AdminError(f"import: {src}: {exc.message}{detail}", EXIT_PROBLEM) from exc
        finally:
            if zf is not None:
                zf.close()
    report = {"session_id": sid, "source": str(src), "messages": doc["message_count"]}
    report["blobs"] = len(shas)
    if args.json:
        print(orjson.dumps({"ok": True, **report}).decode())
    else:
        print(f"imported {src} as {sid}: {doc['message_count']} messages, {len(shas)} blobs")
    return EXIT_OK


def _create(
    dd: DataDir, sid: str, owner: str, plan: ImportPlan, zf: Any, shas: list[str]
) -> dict[str, Any]:
    def populate(conn: sqlite3.Connection, new_sid: str, now: str) -> None:
        populate_import(conn, new_sid, plan, now)
        if zf is not None:
            restore_blobs(conn, zf, shas)

    doc = create_session_file(
        dd,
        sid,
        owner=owner,
        title=plan.session.title,
        metadata=plan.session.metadata,
        now=now_iso(),
        populate=populate,
    )
    if dd.catalog_path.is_file():
        cat = Catalog(dd)
        try:
            cat.upsert_many([(owner, doc)])
        finally:
            cat.close()
    return doc


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """Register ``import`` on the admin's subparsers (``export --format bundle`` is
    ``export``'s)."""
    p = sub.add_parser(
        "import", parents=[common], help="a new session from a bundle or a JSON export"
    )
    p.add_argument("src", help="a bundle (.zip) or a JSON export")
    p.add_argument("--id", help="the new session's id (default: a new uuid7)")
    p.add_argument("--owner", help="the user the session belongs to (default: none)")
    p.set_defaults(func=cmd_import)
