"""Imports that bring more than one JSON export (issue 25): session bundles (the
export plus its attachments' bytes) and ChatGPT data exports.

Each is checked whole before anything is created (400 with details and
nothing created), on the write pool, and written through
:meth:`actors.registry.ActorRegistry.create_session` like a JSON import.
Single node only: cluster mode answers 501 for these (the routes say so).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path
from typing import Any

from actors.registry import ActorRegistry
from storage.bundle import read_bundle, restore_blobs
from storage.export import populate_import


async def import_bundle(
    registry: ActorRegistry,
    sid: str | None,
    path: Path,
    *,
    owner: str,
    max_json_bytes: int,
    max_session_bytes: int,
    max_title_chars: int,
    max_content_chars: int,
) -> dict[str, Any]:
    """Create a session from the bundle file at ``path`` (see ``storage.bundle``),
    its attachments' bytes restored, each checked against its SHA-256.

    Raises what ``read_bundle`` and ``restore_blobs`` raise (``InvalidInput``,
    ``ContentTooLarge``, ``SessionFull``, the JSON import's errors) and what
    ``create_session`` raises; then nothing is created. The file is not removed.
    """
    loop = asyncio.get_running_loop()
    f = await loop.run_in_executor(registry.write_pool, open, path, "rb")
    try:
        plan, zf, shas = await loop.run_in_executor(
            registry.write_pool,
            lambda: read_bundle(
                f,
                max_json_bytes=max_json_bytes,
                max_session_bytes=max_session_bytes,
                max_title_chars=max_title_chars,
                max_content_chars=max_content_chars,
            ),
        )
        try:

            def populate(conn: sqlite3.Connection, new_sid: str, now: str) -> None:
                populate_import(conn, new_sid, plan, now)
                restore_blobs(conn, zf, shas)

            return await registry.create_session(
                sid,
                owner=owner,
                title=plan.session.title,
                metadata=plan.session.metadata,
                populate=populate,
            )
        finally:
            zf.close()
            with contextlib.suppress(BufferError):
                if isinstance(plan.raw, bytearray):
                    plan.raw.clear()
    finally:
        f.close()
