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
import zipfile
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import orjson

from actors.registry import ActorRegistry
from storage.bundle import is_zip, read_bundle, restore_blobs
from storage.chatgpt import ChatGPTError, conversation_export, iter_array
from storage.errors import StorageError
from storage.export import parse_export, populate_import


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


def conversations(path: Path, *, max_element_bytes: int) -> Iterator[bytes]:
    """The conversations of the ChatGPT export at ``path`` (``conversations.json``, or
    the export's zip holding it), each as its bytes, read as a stream (one
    conversation in memory at a time). Raises ``ChatGPTError``."""
    with open(path, "rb") as f:
        if not is_zip(f.read(4)):
            f.seek(0)
            yield from iter_array(f.read, max_element_bytes=max_element_bytes)
            return
        f.seek(0)
        try:
            zf = zipfile.ZipFile(f)
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            raise ChatGPTError(f"the ChatGPT export is not a zip file: {exc}") from None
        with zf:
            names = [n for n in zf.namelist() if n.rsplit("/", 1)[-1] == "conversations.json"]
            if not names:
                raise ChatGPTError("the zip holds no conversations.json")
            try:
                with zf.open(min(names, key=len)) as member:
                    yield from iter_array(member.read, max_element_bytes=max_element_bytes)
            except (zipfile.BadZipFile, EOFError, OSError) as exc:
                raise ChatGPTError(f"conversations.json cannot be read: {exc}") from None


def _documents(
    path: Path, *, max_element_bytes: int, max_title_chars: int, max_content_chars: int
) -> Generator[tuple[bytes, dict[str, Any]], None, None]:
    """Each conversation as ``(roost.session.v1 bytes, {index, title,
    conversation_id})``, checked as a JSON import would check it."""
    for i, raw in enumerate(conversations(path, max_element_bytes=max_element_bytes)):
        doc = conversation_export(
            raw, i, max_title_chars=max_title_chars, max_content_chars=max_content_chars
        )
        data = orjson.dumps(doc)
        try:
            parse_export(data, max_title_chars=max_title_chars, max_content_chars=max_content_chars)
        except StorageError as exc:
            raise ChatGPTError(
                f"conversation {i} does not make a valid session: {exc.message}",
                details={"index": i, "problems": exc.details},
            ) from None
        info = {"index": i, "title": doc["session"]["title"]}
        info["conversation_id"] = doc["session"]["metadata"].get("chatgpt_conversation_id")
        yield data, info


async def import_chatgpt(
    registry: ActorRegistry | Any,
    path: Path,
    *,
    owner: str,
    max_element_bytes: int,
    max_title_chars: int,
    max_content_chars: int,
) -> list[dict[str, Any]]:
    """One new session per conversation of the ChatGPT export at ``path``, for
    ``owner``: ``[{id, title, conversation_id, index}]`` in the export's order.

    Every conversation is read and checked first (``ChatGPTError``, 400, and
    nothing created); then the sessions are created one by one as JSON imports
    (any registry with ``import_session``: cluster mode too). If a creation
    fails, the sessions made so far are deleted again and the error raised.
    """
    loop = asyncio.get_running_loop()
    pool = registry.write_pool if isinstance(registry, ActorRegistry) else None
    kw = {
        "max_element_bytes": max_element_bytes,
        "max_title_chars": max_title_chars,
        "max_content_chars": max_content_chars,
    }
    await loop.run_in_executor(pool, lambda: sum(1 for _ in _documents(path, **kw)))
    made: list[dict[str, Any]] = []
    docs = _documents(path, **kw)
    try:
        while (item := await loop.run_in_executor(pool, next, docs, None)) is not None:
            data, info = item
            session = await registry.import_session(
                None,
                bytearray(data),
                owner=owner,
                max_title_chars=max_title_chars,
                max_content_chars=max_content_chars,
            )
            made.append({"id": session["id"], **info})
    except BaseException:
        for m in made:
            with contextlib.suppress(Exception):
                await registry.delete_session(m["id"], owner)
        raise
    finally:
        docs.close()
    return made
