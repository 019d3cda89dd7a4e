"""Attachment lifecycle ops (issue 25): record an upload under the session's byte
cap, delete a record no live message names, and remove a blob no record uses.

Blobs are reference-counted by their records: ``attachments_by_sha256`` counts
them. The file system effects (placing an upload's blob under its hash,
removing an unused one) run inside these ops, so they are serialized with
every other mutation of the session: an upload of the same bytes that races a
delete either finds the blob and keeps it (its record counts) or places its
own copy after the removal. Ops as in :mod:`storage.ops`: ``op(txn) -> result``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from storage.errors import AttachmentInUse, NotFound, SessionFull
from storage.ids import uuid7
from storage.rows import (
    ATTACHMENT_INSERT,
    ATTACHMENT_SELECT,
    AttachmentRow,
    attachment_doc,
    scalar,
)
from storage.txn import Txn

#: at most this many referring messages are named in a 409
MAX_NAMED = 20


def stored_bytes(conn: Any) -> int:
    """The bytes of the distinct blobs the session's records name (what the
    ``max_session_bytes`` cap counts: the same bytes uploaded twice count once)."""
    return int(
        scalar(
            conn.execute(
                "SELECT COALESCE(SUM(size), 0) FROM "
                "(SELECT MAX(size) AS size FROM attachments GROUP BY sha256)"
            )
        )
    )


def op_add_attachment(
    *,
    name: str,
    mime: str,
    size: int,
    sha256: str,
    place: Callable[[], None] | None = None,
    max_session_bytes: int = 0,
) -> Callable[[Txn], dict[str, Any]]:
    """Record an upload and return its document; ``place()`` puts its blob under
    its hash name (``BlobWriter.place``; None: the blob is there already).

    Raises :class:`SessionFull` when new bytes would take the session's stored
    bytes (:func:`stored_bytes`) over ``max_session_bytes`` (0: no cap); bytes
    the session holds already add nothing. No event is recorded: an attachment
    becomes visible to others only through the message that references it.
    """

    def run(txn: Txn) -> dict[str, Any]:
        conn = txn.conn
        if max_session_bytes:
            known = conn.execute(
                "SELECT 1 FROM attachments WHERE sha256 = ? LIMIT 1", (sha256,)
            ).fetchone()
            used = stored_bytes(conn)
            if known is None and used + size > max_session_bytes:
                raise SessionFull(
                    f"the session's attachments would take {used + size} bytes, over the "
                    f"limit of {max_session_bytes} (delete some first)",
                    details={"used": used, "size": size, "limit": max_session_bytes},
                )
        row = AttachmentRow(
            id=uuid7(), name=name, mime=mime, size=size, sha256=sha256, created_at=txn.now
        )
        conn.execute(
            f"INSERT INTO attachments ({ATTACHMENT_INSERT}) VALUES (?, ?, ?, ?, ?, ?)", row
        )
        if place is not None:
            place()
        return attachment_doc(row, txn.session_id)

    return run


def referring_messages(conn: Any, aid: str) -> list[str]:
    """Ids of the live messages that name attachment ``aid`` (in ``attachments`` or
    an ``attachment`` part), oldest first. Scans the live messages whose JSON
    holds the id (``instr``): O(messages), for a rare operation."""
    out = []
    for mid, refs, parts in conn.execute(
        "SELECT id, attachments, parts FROM messages WHERE deleted_at IS NULL "
        "AND (instr(attachments, ?) > 0 OR instr(parts, ?) > 0) ORDER BY seq",
        (aid, aid),
    ):
        named = [r.get("id") for r in orjson.loads(refs or "[]") if isinstance(r, dict)]
        named += [
            p.get("attachment_id")
            for p in orjson.loads(parts or "[]") or []
            if isinstance(p, dict) and p.get("type") == "attachment"
        ]
        if aid in named:
            out.append(mid)
    return out


def op_delete_attachment(aid: str) -> Callable[[Txn], dict[str, Any]]:
    """Delete attachment record ``aid`` and return it (its ``sha256`` then tells
    :func:`op_drop_blob` which blob may go).

    Raises :class:`NotFound` for an unknown id and :class:`AttachmentInUse`
    (details: up to 20 ``message_ids``) while a live message names it: delete
    or edit those messages first (a tombstone names nothing).
    """

    def run(txn: Txn) -> dict[str, Any]:
        conn = txn.conn
        raw = conn.execute(
            f"SELECT {ATTACHMENT_SELECT} FROM attachments WHERE id = ?", (aid,)
        ).fetchone()
        if raw is None:
            raise NotFound(f"attachment {aid!r} not found", details={"attachment_id": aid})
        users = referring_messages(conn, aid)
        if users:
            raise AttachmentInUse(
                f"attachment {aid!r} is named by {len(users)} live message(s); "
                "delete or edit them first",
                details={"attachment_id": aid, "message_ids": users[:MAX_NAMED]},
            )
        conn.execute("DELETE FROM attachments WHERE id = ?", (aid,))
        return attachment_doc(AttachmentRow._make(raw), txn.session_id)

    return run


def op_drop_blob(sha256: str, path: Path) -> Callable[[Txn], bool]:
    """Remove the blob at ``path`` (hash ``sha256``) if no record uses it; return
    whether it went. Changes no row. Idempotent."""

    def run(txn: Txn) -> bool:
        used = txn.conn.execute(
            "SELECT 1 FROM attachments WHERE sha256 = ? LIMIT 1", (sha256,)
        ).fetchone()
        if used is not None:
            return False
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
            return True
        return False

    return run
