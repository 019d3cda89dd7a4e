"""Attachments, export / import and search (SPEC section 4).

- ``POST /api/sessions/{sid}/attachments``: multipart upload (one field, ``file``),
  streamed to disk while hashed; 413 over ``max_attachment_bytes`` with no file
  left behind.
- ``GET /api/sessions/{sid}/attachments/{aid}``: the bytes, with ``ETag`` (the
  SHA-256), ``If-None-Match`` → 304, a single ``Range`` → 206, and a safe
  ``Content-Disposition``.
- ``DELETE /api/sessions/{sid}/attachments/{aid}``: 204; 409 while a live
  message names it; the blob goes with the last record of its bytes.
- ``GET /api/sessions/{sid}/export?format=json|markdown``: streamed from one
  read snapshot on a separate read-only connection, in constant memory.
- ``POST /api/sessions/import``: a JSON export becomes a new session.
- ``GET /api/sessions/{sid}/search?q=&limit=&mode=words|fts``: full-text search.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from aiohttp import BodyPartReader, MultipartReader, hdrs, web
from aiohttp.http_exceptions import HttpProcessingError

from actors.errors import Unsupported
from actors.imports import import_bundle, import_chatgpt
from actors.registry import ActorRegistry
from actors.session import ExportDocument
from server.errors import ApiError
from server.http import json_response, query_choice, query_int, user_of
from server.keys import IMPORT_SLOTS, REGISTRY, SETTINGS, state_of
from server.openapi import ANY, JSON, MULTIPART, SESSION_ID, ZIP, Param, Reply, describe
from server.responses import Attachment, Error, ImportAnswer, SearchPage
from server.wire import snippet_html
from storage.errors import TooLarge
from storage.ids import validate_session_id

routes = web.RouteTableDef()  # mounted under /api

# multipart framing (boundaries, part headers) on top of the file's own bytes
UPLOAD_SLACK = 64 * 1024
READ_CHUNK = 256 * 1024
# types a browser may show inline; everything else downloads
INLINE_TYPES = re.compile(
    r"image/(png|jpeg|gif|webp|avif)|audio/[a-z0-9.+-]+|video/[a-z0-9.+-]+"
    r"|text/plain|application/pdf"
)


# ---------------------------------------------------------------------------- upload


UPLOAD_BODY = {
    MULTIPART: {
        "schema": {
            "type": "object",
            "properties": {
                "file": {
                    "type": "string",
                    "format": "binary",
                    "description": "the file (its part's filename and Content-Type are kept); "
                    "at most max_attachment_bytes",
                }
            },
            "required": ["file"],
            "additionalProperties": False,
            "description": "one part, named file (no other fields)",
        },
        "encoding": {"file": {"contentType": "*/*"}},
    }
}


@routes.post("/sessions/{sid}/attachments")
@describe(
    body_content=UPLOAD_BODY,
    responses={
        201: Reply("the stored file's record", Attachment, headers={"Location": "its url"}),
        413: Reply(
            "larger than max_attachment_bytes, or (session_full) new bytes would take the"
            " session over max_session_bytes (nothing is kept)",
            Error,
        ),
        415: Reply("the body is not multipart/form-data", Error),
    },
)
async def upload_attachment(request: web.Request) -> web.Response:
    """Store one uploaded file: 201 ``{id, name, mime, size, sha256, url, created_at}``."""
    settings = state_of(request)[SETTINGS]
    registry = state_of(request)[REGISTRY]
    sid = request.match_info["sid"]
    limit = settings.max_attachment_bytes
    if request.content_type != "multipart/form-data":
        raise ApiError(
            415,
            "unsupported_media_type",
            f"expected multipart/form-data, got {request.content_type or 'none'}",
        )
    if request.content_length is not None and request.content_length > limit + UPLOAD_SLACK:
        raise _too_large(limit)
    async with registry.session(sid, user_of(request)) as s:
        reader, part = await _file_part(request)
        try:
            doc = await s.add_attachment(
                filename=part.filename,
                content_type=part.headers.get(hdrs.CONTENT_TYPE),
                chunks=_chunks(reader, part),
                limit=limit,
                session_limit=settings.max_session_bytes,
            )
        except TooLarge:
            raise _too_large(limit) from None
        except (ValueError, HttpProcessingError) as exc:
            raise _malformed(exc) from exc
    return json_response(doc, 201, {"Location": doc["url"]})


async def _chunks(reader: MultipartReader, part: BodyPartReader) -> AsyncIterator[bytes]:
    """The file's bytes; then ``ValueError`` if another part follows (unknown fields
    are refused, as in JSON bodies), before anything is kept."""
    while chunk := await part.read_chunk(READ_CHUNK):
        yield chunk
    if await reader.next() is not None:
        raise ValueError("a part follows 'file'; send the file alone")


async def _file_part(request: web.Request) -> tuple[MultipartReader, BodyPartReader]:
    """The reader and its first part, which must be named ``file``; 400 otherwise."""
    try:
        reader = await request.multipart()
        part = await reader.next()
    except (ValueError, AssertionError, RuntimeError, HttpProcessingError) as exc:
        raise _malformed(exc) from exc
    if not isinstance(part, BodyPartReader) or part.name != "file":
        raise ApiError(
            400,
            "invalid_input",
            "the multipart body must start with a part named 'file'",
            {"loc": ["body", "file"]},
        )
    return reader, part


def _malformed(exc: Exception) -> ApiError:
    text = str(exc).replace("\n", " ")[:200]
    return ApiError(400, "invalid_input", f"the multipart body is malformed: {text}")


def _too_large(limit: int) -> ApiError:
    return ApiError(
        413, "payload_too_large", f"the attachment is larger than the limit of {limit} bytes"
    )


# ---------------------------------------------------------------------------- download


def content_disposition(name: str, *, inline: bool) -> str:
    """``Content-Disposition`` for ``name`` (RFC 6266: ASCII fallback plus ``filename*``)."""
    fallback = "".join(ch if 0x20 <= ord(ch) < 0x7F and ch not in '"\\%;' else "_" for ch in name)
    kind = "inline" if inline else "attachment"
    return f"{kind}; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


def parse_range(header: str | None, size: int) -> tuple[int, int] | Literal[False] | None:
    """The one byte range ``header`` asks for, as ``(first, last)`` inclusive.

    None means "send everything" (no header, a header this server ignores such
    as several ranges or another unit, or a malformed one); False means the
    range cannot be satisfied (416).
    """
    if header is None:
        return None
    m = re.fullmatch(r"\s*bytes\s*=\s*([0-9]{0,18})\s*-\s*([0-9]{0,18})\s*", header)
    if m is None or (not m[1] and not m[2]):
        return None
    if not m[1]:  # suffix: the last n bytes
        n = int(m[2])
        if n == 0 or size == 0:
            return False
        return max(0, size - n), size - 1
    first = int(m[1])
    last = int(m[2]) if m[2] else size - 1
    if m[2] and last < first:
        return None
    if first >= size:
        return False
    return first, min(last, size - 1)


def _etag_matches(header: str | None, etag: str) -> bool:
    if header is None:
        return False
    tags = [t.strip().removeprefix("W/") for t in header.split(",")]
    return "*" in tags or etag in tags


DOWNLOAD_HEADERS = {
    "ETag": "the SHA-256 of the bytes, quoted",
    "Cache-Control": "private, immutable (the bytes never change)",
    "Accept-Ranges": "bytes",
    "Content-Disposition": "inline for types a browser shows safely, else attachment",
}


@routes.get("/sessions/{sid}/attachments/{aid}")
@describe(
    params=(
        Param("If-None-Match", "header", {"type": "string"}, "an ETag you have: 304 if it matches"),
        Param("Range", "header", {"type": "string"}, "one range, bytes=first-last or bytes=-n"),
        Param("If-Range", "header", {"type": "string"}, "the ETag the Range is for"),
        Param(
            "download",
            "query",
            {"type": "string"},
            "present (any value): Content-Disposition: attachment even for images",
        ),
    ),
    responses={
        200: Reply("the bytes, typed by the stored mime", None, (ANY,), headers=DOWNLOAD_HEADERS),
        206: Reply(
            "the requested range",
            None,
            (ANY,),
            headers={**DOWNLOAD_HEADERS, "Content-Range": "bytes first-last/size"},
        ),
        304: Reply("unchanged: If-None-Match matched", headers={"ETag": "as for 200"}),
        410: Reply("the record exists but its bytes are not here (an imported record)", Error),
        416: Reply(
            "the range starts past the end", Error, headers={"Content-Range": "bytes */size"}
        ),
    },
)
async def download_attachment(request: web.Request) -> web.StreamResponse:
    """The attachment's bytes; 304 on a matching ``If-None-Match``; 206 for a ``Range``."""
    registry = state_of(request)[REGISTRY]
    sid = request.match_info["sid"]
    async with registry.session(sid, user_of(request)) as s:
        att = await s.read_attachment(request.match_info["aid"])
        etag = f'"{att["sha256"]}"'
        mime = att["mime"]
        inline = INLINE_TYPES.fullmatch(mime) is not None and "download" not in request.query
        headers = {
            hdrs.ETAG: etag,
            hdrs.CACHE_CONTROL: "private, max-age=31536000, immutable",
            hdrs.ACCEPT_RANGES: "bytes",
            hdrs.CONTENT_DISPOSITION: content_disposition(att["name"], inline=inline),
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "default-src 'none'; sandbox",
        }
        if _etag_matches(request.headers.get(hdrs.IF_NONE_MATCH), etag):
            return web.Response(status=304, headers=headers)
        try:
            blob = await s.open_blob(att["sha256"])
        except FileNotFoundError:
            raise ApiError(
                410,
                "attachment_gone",
                "the attachment's bytes are not stored here (an imported record?)",
                {"attachment_id": att["id"]},
            ) from None
    try:
        size = blob.size
        if_range = request.headers.get(hdrs.IF_RANGE)
        wanted = None if if_range not in (None, etag) else request.headers.get(hdrs.RANGE)
        rng = parse_range(wanted, size)
        if rng is False:
            raise ApiError(
                416,
                "range_not_satisfiable",
                f"the range {wanted!r} is outside the {size} bytes of the attachment",
                headers={hdrs.CONTENT_RANGE: f"bytes */{size}"},
            )
        first, last = (0, size - 1) if rng is None else rng
        resp = web.StreamResponse(status=200 if rng is None else 206, headers=headers)
        if rng is not None:
            resp.headers[hdrs.CONTENT_RANGE] = f"bytes {first}-{last}/{size}"
        resp.content_type = mime
        resp.content_length = last - first + 1
        await resp.prepare(request)
        pos = first
        while pos <= last:
            chunk = await blob.read(min(READ_CHUNK, last - pos + 1), pos)
            if not chunk:
                break
            await resp.write(chunk)
            pos += len(chunk)
        await resp.write_eof()
        return resp
    finally:
        blob.close()


@routes.delete("/sessions/{sid}/attachments/{aid}")
@describe(
    responses={
        204: Reply("deleted; its bytes went too unless another record holds the same"),
        409: Reply(
            "attachment_in_use: a live message names it (details.message_ids); delete or"
            " edit those messages first",
            Error,
        ),
    },
)
async def delete_attachment(request: web.Request) -> web.Response:
    """Delete an attachment: 204; 409 ``attachment_in_use`` while a live message names it."""
    registry = state_of(request)[REGISTRY]
    async with registry.session(request.match_info["sid"], user_of(request)) as s:
        await s.delete_attachment(request.match_info["aid"])
    return web.Response(status=204)


# ---------------------------------------------------------------------------- export


EXPORT_TYPES: dict[str, tuple[str, str]] = {
    "json": ("json", JSON),
    "markdown": ("md", "text/markdown"),
    "bundle": ("zip", ZIP),
}


@routes.get("/sessions/{sid}/export")
@describe(
    params=(
        Param(
            "format",
            "query",
            {"enum": ["json", "markdown", "bundle"], "default": "json"},
            "bundle: a zip of session.json (the JSON export) and blobs/<sha256> (the"
            " attachments' bytes), for POST /sessions/import",
        ),
    ),
    responses={
        200: Reply(
            "the whole session: JSON (roost.session.v1, for import), Markdown, or a bundle",
            ExportDocument,
            (JSON, "text/markdown", ZIP),
            headers={"Content-Disposition": "attachment; filename=<sid>.json, .md or .zip"},
        )
    },
)
async def export_session(request: web.Request) -> web.StreamResponse:
    """The whole session, streamed: JSON (lossless, ``roost.session.v1``), Markdown, or a
    bundle (zip: the JSON export plus the attachments' bytes); constant memory."""
    registry = state_of(request)[REGISTRY]
    sid = request.match_info["sid"]
    choice = query_choice(request, "format", ("json", "markdown", "bundle"))
    fmt: Literal["json", "markdown", "bundle"] = (
        "markdown" if choice == "markdown" else "bundle" if choice == "bundle" else "json"
    )
    async with registry.session(sid, user_of(request)) as s:
        stream = await s.export(fmt)
    ext, ctype = EXPORT_TYPES[fmt]
    resp = web.StreamResponse(
        headers={
            hdrs.CONTENT_DISPOSITION: content_disposition(f"{sid}.{ext}", inline=False),
            hdrs.CACHE_CONTROL: "no-store",
        }
    )
    resp.content_type = ctype
    if fmt != "bundle":
        resp.charset = "utf-8"
    resp.enable_chunked_encoding()
    try:
        await resp.prepare(request)
        async for chunk in stream:
            await resp.write(chunk)  # waits while the client is slow (backpressure)
        await resp.write_eof()
    finally:
        stream.close()
    return resp


# ---------------------------------------------------------------------------- import


BUNDLE_BODY = {
    ZIP: {
        "schema": {
            "type": "string",
            "format": "binary",
            "description": "a bundle (GET /export?format=bundle); up to max_import_bytes"
            " plus max_session_bytes",
        }
    }
}


@routes.post("/sessions/import")
@describe(
    body=ExportDocument,
    body_content=BUNDLE_BODY,
    params=(
        Param("id", "query", SESSION_ID, "the new session's id (default: a new uuid7)"),
        Param(
            "format",
            "query",
            {"enum": ["json", "bundle", "chatgpt"]},
            "what the body is (default: bundle for application/zip, else json); chatgpt:"
            " a ChatGPT data export (conversations.json, or its zip), one session per"
            " conversation",
        ),
    ),
    responses={
        201: Reply(
            "the new session (chatgpt: {count, sessions})",
            ImportAnswer,
            headers={"Location": "the session's URL (chatgpt: the session list)"},
        ),
        413: Reply(
            "over max_import_bytes, a message over max_content_chars, or a bundle's"
            " attachments over max_session_bytes (session_full)",
            Error,
        ),
        415: Reply("the body is not application/json (or application/zip: a bundle)", Error),
        501: Reply("a bundle, in cluster mode", Error),
        400: Reply("malformed or inconsistent (details say where; nothing is created)", Error),
    },
)
async def import_session(request: web.Request) -> web.Response:
    """A JSON export or a bundle becomes a new session (201 Session); ``?id=`` names it
    (409 if taken)."""
    settings = state_of(request)[SETTINGS]
    registry = state_of(request)[REGISTRY]
    fmt = (
        query_choice(request, "format", ("json", "bundle", "chatgpt"))
        if "format" in request.query
        else "bundle"
        if request.content_type == ZIP
        else "json"
    )
    sid = request.query.get("id")
    if sid is not None:
        validate_session_id(sid)
    if fmt == "bundle":
        return await _import_bundle(request, sid)
    if fmt == "chatgpt":
        if sid is not None:
            raise ApiError(
                400,
                "invalid_input",
                "id cannot be given with format=chatgpt (one session per conversation)",
                {"loc": ["query", "id"]},
            )
        return await _import_chatgpt(request)
    if request.content_type == ZIP:  # format=json asked for, with a zip
        raise ApiError(
            400,
            "invalid_input",
            "format=json takes a JSON export; a zip is format=bundle",
            {"loc": ["query", "format"]},
        )
    if request.content_type != "application/json":
        raise ApiError(
            415,
            "unsupported_media_type",
            f"expected Content-Type application/json, got {request.content_type or 'none'}",
        )
    limit = settings.max_import_bytes
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(
            413, "payload_too_large", f"the import is larger than the limit of {limit} bytes"
        )
    async with state_of(request)[IMPORT_SLOTS].slot(registry.trim_heap):
        buf = bytearray()
        async for chunk in request.content.iter_chunked(READ_CHUNK):
            buf += chunk
            if len(buf) > limit:
                raise ApiError(
                    413,
                    "payload_too_large",
                    f"the import is larger than the limit of {limit} bytes",
                )
        try:
            doc = await _import(request, sid, buf)
        finally:
            # the body and its parse are garbage now: drop the body (this frame holds it
            # until it returns), so the slot's heap trim gives the memory back
            del buf
    return json_response(doc, 201, {"Location": f"/api/sessions/{doc['id']}"})


async def _import_bundle(request: web.Request, sid: str | None) -> web.Response:
    """``POST /sessions/import`` of a bundle: the body is spooled to a file in the data
    dir (a zip is read from its end), then checked and imported whole."""
    settings = state_of(request)[SETTINGS]
    registry = state_of(request)[REGISTRY]
    if not isinstance(registry, ActorRegistry):
        raise Unsupported("bundle imports are not available in cluster mode yet")
    if request.content_type not in (ZIP, "application/octet-stream"):
        # a documented type that does not fit the format asked for: 400, not 415
        raise ApiError(
            400 if request.content_type == JSON else 415,
            "invalid_input" if request.content_type == JSON else "unsupported_media_type",
            f"format=bundle takes a zip (application/zip), got {request.content_type or 'none'}",
            {"loc": ["query", "format"]} if request.content_type == JSON else None,
        )
    limit = settings.max_import_bytes + (settings.max_session_bytes or 1 << 30)
    slot = state_of(request)[IMPORT_SLOTS].slot(registry.trim_heap)
    async with slot, spooled(request, registry, limit) as path:
        doc = await import_bundle(
            registry,
            sid,
            path,
            owner=user_of(request),
            max_json_bytes=settings.max_import_bytes,
            max_session_bytes=settings.max_session_bytes,
            max_title_chars=settings.max_title_chars,
            max_content_chars=settings.max_content_chars,
        )
    return json_response(doc, 201, {"Location": f"/api/sessions/{doc['id']}"})


async def _import_chatgpt(request: web.Request) -> web.Response:
    """``POST /sessions/import?format=chatgpt``: a ChatGPT data export (its
    ``conversations.json``, or the export's zip) becomes one session per
    conversation; read as a stream from a spooled copy, checked whole first."""
    settings = state_of(request)[SETTINGS]
    registry = state_of(request)[REGISTRY]
    if request.content_type not in (JSON, ZIP, "application/octet-stream"):
        raise ApiError(
            415,
            "unsupported_media_type",
            "a ChatGPT export is conversations.json (application/json) or its zip "
            f"(application/zip), got {request.content_type or 'none'}",
        )
    limit = settings.max_import_bytes + (settings.max_session_bytes or 1 << 30)
    slot = state_of(request)[IMPORT_SLOTS].slot(registry.trim_heap)
    async with slot, spooled(request, registry, limit) as path:
        made = await import_chatgpt(
            registry,
            path,
            owner=user_of(request),
            max_element_bytes=settings.max_import_bytes,
            max_title_chars=settings.max_title_chars,
            max_content_chars=settings.max_content_chars,
        )
    return json_response({"count": len(made), "sessions": made}, 201, {"Location": "/api/sessions"})


SPOOL_PREFIX = ".roost-import-"
#: a spooled import body untouched this long was left by a crash: removed
STALE_SPOOL_SECONDS = 86_400.0


def drop_stale_spools(folder: Path, now: float) -> int:
    """Remove the spooled import bodies in ``folder`` older than a day (a crash
    left them; a running import's file is younger); return how many went."""
    gone = 0
    for p in folder.glob(SPOOL_PREFIX + "*"):
        with contextlib.suppress(OSError):
            if now - p.stat().st_mtime > STALE_SPOOL_SECONDS:
                p.unlink()
                gone += 1
    return gone


@contextlib.asynccontextmanager
async def spooled(request: web.Request, registry: Any, limit: int) -> AsyncIterator[Path]:
    """The request body written to a temporary file of the data dir (cluster mode:
    of the temp dir), removed at the end; 413 over ``limit`` bytes (the file goes
    at once)."""
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(
            413, "payload_too_large", f"the import is larger than the limit of {limit} bytes"
        )
    loop = asyncio.get_running_loop()
    local = isinstance(registry, ActorRegistry)  # cluster mode: the front's temp dir
    pool = registry.write_pool if local else None
    folder = registry.datadir.trash if local else Path(tempfile.gettempdir())
    path = folder / f"{SPOOL_PREFIX}{uuid.uuid4().hex}"
    await loop.run_in_executor(pool, drop_stale_spools, folder, time.time())
    f = await loop.run_in_executor(pool, open, path, "xb")
    try:
        size = 0
        async for chunk in request.content.iter_chunked(READ_CHUNK):
            size += len(chunk)
            if size > limit:
                raise ApiError(
                    413,
                    "payload_too_large",
                    f"the import is larger than the limit of {limit} bytes",
                )
            await loop.run_in_executor(pool, f.write, chunk)
        await loop.run_in_executor(pool, f.close)
        yield path
    finally:
        f.close()
        await loop.run_in_executor(pool, lambda: path.unlink(missing_ok=True))


async def _import(request: web.Request, sid: str | None, buf: bytearray) -> dict[str, Any]:
    """Parse ``buf`` (in place, no copy; emptied at the end) and create the session."""
    settings = state_of(request)[SETTINGS]
    return await state_of(request)[REGISTRY].import_session(
        sid,
        buf,
        owner=user_of(request),
        max_title_chars=settings.max_title_chars,
        max_content_chars=settings.max_content_chars,
    )


# ---------------------------------------------------------------------------- search


@routes.get("/sessions/{sid}/search")
@describe(
    params=(
        Param(
            "q",
            "query",
            lambda s: {
                "type": "string",
                "minLength": 1,
                "maxLength": s.max_search_chars,
                "pattern": r"^[^\x00]*[^\s\x00][^\x00]*$",
            },
            "the query: plain words (mode=words) or FTS5 syntax (mode=fts)",
            required=True,
        ),
        Param(
            "limit",
            "query",
            lambda s: {"type": "integer", "minimum": 1, "maximum": s.max_page_limit, "default": 20},
            "at most this many hits",
        ),
        Param("mode", "query", {"enum": ["words", "fts"], "default": "words"}),
    ),
    responses={200: Reply("the matching messages, best first", SearchPage)},
)
async def search(request: web.Request) -> web.Response:
    """Messages matching ``q``, best first: ``{items: [{message, snippet, score, rank}]}``.

    ``mode=words`` (default): ``q`` is plain words, all required, ``word*``
    for a prefix. ``mode=fts``: ``q`` is SQLite FTS5 query syntax. Either way
    a query the engine cannot parse is 400 ``invalid_query``.
    """
    settings = state_of(request)[SETTINGS]
    q = request.query.get("q")
    if q is None or not q.strip():
        raise ApiError(400, "invalid_query", "give a search query in q", {"loc": ["query", "q"]})
    if len(q) > settings.max_search_chars or "\x00" in q:
        raise ApiError(
            400,
            "invalid_query",
            f"q must be at most {settings.max_search_chars} characters, without NUL",
            {"loc": ["query", "q"]},
        )
    limit = query_int(request, "limit", 20, 1, settings.max_page_limit)
    mode = query_choice(request, "mode", ("words", "fts"))
    async with state_of(request)[REGISTRY].session(
        request.match_info["sid"], user_of(request)
    ) as s:
        items = await s.search(q, limit=limit, raw=mode == "fts")
    for i, item in enumerate(items, 1):
        item["snippet"] = snippet_html(item["snippet"]["text"], item["snippet"]["spans"])
        item["rank"] = i
    return json_response({"items": items, "q": q, "mode": mode})
