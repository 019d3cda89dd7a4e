"""Sessions and messages: the core HTTP routes (SPEC section 4)."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from actors.registry import ListFilters
from actors.session import NewMessage
from server.errors import ApiError
from server.http import (
    json_response,
    parse_body,
    query_choice,
    query_int,
    query_str,
    request_hash,
    user_of,
)
from server.keys import REGISTRY, SETTINGS, state_of
from server.openapi import Param, Reply, cursor_param, describe, limit_param
from server.requests import (
    MessageCreate,
    MessagePatch,
    SessionCreate,
    SessionPatch,
    check_content,
    check_expires_at,
    check_metadata,
    check_parts,
    check_settings,
    check_title,
)
from server.responses import Message, MessagePage, Session, SessionList, SessionView, SiblingsPage
from storage.ids import ascii_int

routes = web.RouteTableDef()  # mounted under /api

SIBLINGS_MAX = 1000


def _meta_size(meta: dict[str, Any] | None) -> int:
    return 0 if meta is None else len(orjson.dumps(meta))


def _page_params(request: web.Request) -> tuple[int, str | None, str | None]:
    limit = query_int(request, "limit", 25, 1, state_of(request)[SETTINGS].max_page_limit)
    return limit, query_str(request, "before"), query_str(request, "after")


# ---------------------------------------------------------------------------- sessions


@routes.post("/sessions")
@describe(body=SessionCreate, responses={201: Reply("the new session", Session)})
async def create_session(request: web.Request) -> web.Response:
    """Create a session: 201 Session; 409 if the id exists."""
    settings = state_of(request)[SETTINGS]
    body = await parse_body(request, SessionCreate)
    check_title(body.title, settings)
    check_metadata(body.metadata, settings, _meta_size(body.metadata))
    extra: dict[str, Any] = {
        k: v
        for k, v in {
            "pinned": body.pinned,
            "archived": body.archived,
            "temporary": body.temporary,
            "folder": body.folder,
            "tags": None if body.tags is None else sorted(set(body.tags)),
            "expires_at": check_expires_at(body.expires_at),
        }.items()
        if v not in (None, False)
    }
    doc = await state_of(request)[REGISTRY].create_session(
        body.id, owner=user_of(request), title=body.title, metadata=body.metadata, extra=extra
    )
    return json_response(doc, 201)


def _query_bool(request: web.Request, name: str, default: bool | None) -> bool | None:
    """``true``/``false`` (``1``/``0``) in the query, ``any`` for no condition."""
    raw = request.query.get(name)
    if raw is None:
        return default
    value = {"true": True, "1": True, "false": False, "0": False, "any": None}.get(raw.lower())
    if value is None and raw.lower() != "any":
        raise ApiError(
            400,
            "invalid_input",
            f"{name} must be true, false or any, got {raw[:40]!r}",
            {"loc": ["query", name]},
        )
    return value


def _bool_param(name: str, what: str) -> Param:
    return Param(name, "query", {"enum": ["true", "false", "1", "0", "any"]}, what)


def _text_param(name: str, what: str) -> Param:
    return Param(name, "query", {"type": "string", "minLength": 1, "maxLength": 200}, what)


def _query_text(request: web.Request, name: str) -> str | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    if not raw or len(raw) > 200 or "\x00" in raw:
        raise ApiError(
            400,
            "invalid_input",
            f"{name} must be 1-200 characters without NUL",
            {"loc": ["query", name]},
        )
    return raw


@routes.get("/sessions")
@describe(
    params=(
        limit_param(),
        cursor_param("cursor"),
        _bool_param("pinned", "only pinned (true) or unpinned (false) sessions; default any"),
        _bool_param("archived", "archived sessions (true), or not (false, the default), or any"),
        _bool_param("temporary", "temporary sessions (true), or not (false, the default), or any"),
        _text_param("folder", "only the sessions in this folder"),
        _text_param("tag", "only the sessions with this tag"),
        _text_param("q", "only the sessions whose title holds this text"),
    ),
    responses={200: Reply("sessions: pinned first, then most recently updated", SessionList)},
)
async def list_sessions(request: web.Request) -> web.Response:
    """Sessions, pinned first, then most recently updated first: ``{items, next_cursor}``.

    Archived and temporary sessions are hidden unless ``archived`` /
    ``temporary`` ask for them; a cursor pages the same filters on.
    """
    limit = query_int(request, "limit", 25, 1, state_of(request)[SETTINGS].max_page_limit)
    filters = ListFilters(
        pinned=_query_bool(request, "pinned", None),
        archived=_query_bool(request, "archived", False),
        temporary=_query_bool(request, "temporary", False),
        folder=_query_text(request, "folder"),
        tag=_query_text(request, "tag"),
        q=_query_text(request, "q"),
    )
    items, nxt = await state_of(request)[REGISTRY].list_sessions(
        owner=user_of(request), limit=limit, cursor=query_str(request, "cursor"), filters=filters
    )
    return json_response({"items": items, "next_cursor": nxt})


@routes.get("/sessions/{sid}")
@describe(
    params=(limit_param(),),
    responses={200: Reply("the session and its newest messages", SessionView)},
)
async def get_session(request: web.Request) -> web.Response:
    """``{session, messages, before}``: the newest page of the active branch."""
    limit = query_int(request, "limit", 25, 1, state_of(request)[SETTINGS].max_page_limit)
    async with state_of(request)[REGISTRY].session(
        request.match_info["sid"], user_of(request)
    ) as s:
        session, page = await s.overview(limit=limit)
    return json_response({"session": session, "messages": page.items, "before": page.before})


@routes.patch("/sessions/{sid}")
@describe(body=SessionPatch, responses={200: Reply("the changed session", Session)})
async def patch_session(request: web.Request) -> web.Response:
    """Change title, metadata or the active branch: 200 Session."""
    settings = state_of(request)[SETTINGS]
    data, _ = await _read(request)
    body = SessionPatch.model_validate(data)
    if not data:
        raise ApiError(
            400,
            "invalid_input",
            "nothing to change: give title, metadata, active_leaf_id, pinned, archived, "
            "folder, tags, expires_at or settings",
        )
    check_title(body.title, settings)
    check_metadata(body.metadata, settings, _meta_size(body.metadata))
    organisation: dict[str, Any] = {}
    for key in ("pinned", "archived", "tags"):
        if data.get(key) is not None:
            organisation[key] = getattr(body, key)
    for key in ("folder", "expires_at"):  # null clears them
        if key in data:
            organisation[key] = getattr(body, key)
    if "expires_at" in organisation:
        organisation["expires_at"] = check_expires_at(body.expires_at)
    if "settings" in data:
        organisation["settings"] = check_settings(body.settings)
    async with state_of(request)[REGISTRY].session(
        request.match_info["sid"], user_of(request)
    ) as s:
        doc = await s.update_session(
            title=body.title,
            set_title="title" in data,
            metadata=body.metadata,
            active_leaf_id=body.active_leaf_id,
            organisation=organisation,
        )
    return json_response(doc)


@routes.delete("/sessions/{sid}")
@describe(responses={204: Reply("deleted")})
async def delete_session(request: web.Request) -> web.Response:
    """Delete a session with its files: 204."""
    await state_of(request)[REGISTRY].delete_session(request.match_info["sid"], user_of(request))
    return web.Response(status=204)


# ---------------------------------------------------------------------------- messages


@routes.get("/sessions/{sid}/messages")
@describe(
    params=(
        limit_param(),
        cursor_param("before"),
        cursor_param("after"),
        Param("view", "query", {"enum": ["active", "all"], "default": "active"}),
    ),
    responses={200: Reply("a page of messages, oldest first", MessagePage)},
)
async def list_messages(request: web.Request) -> web.Response:
    """A page of messages: ``{items, before, after}``, items oldest first."""
    limit, before, after = _page_params(request)
    view = query_choice(request, "view", ("active", "all"))
    async with state_of(request)[REGISTRY].session(
        request.match_info["sid"], user_of(request)
    ) as s:
        page = await s.page(view=view, limit=limit, before=before, after=after)
    return json_response({"items": page.items, "before": page.before, "after": page.after})


def draft_from(body: MessageCreate, request: web.Request) -> NewMessage:
    """Check a MessageCreate against the limits and make the actor's NewMessage."""
    settings = state_of(request)[SETTINGS]
    has_payload = bool(body.parts) or body.tool_call is not None or body.tool_result is not None
    check_content(body.content, settings, allow_empty=has_payload)
    check_metadata(body.metadata, settings, _meta_size(body.metadata))
    check_parts(body.parts, settings)
    return NewMessage(
        role=body.role,
        content=body.content,
        parts=None if body.parts is None else [p.model_dump(mode="json") for p in body.parts],
        client_id=body.client_id,
        parent_id=body.parent_id,
        tool_name=body.tool_name,
        tool_call=body.tool_call,
        tool_result=body.tool_result,
        attachments=body.attachments,
        metadata=body.metadata,
        request_hash=request_hash(body) if body.client_id is not None else None,
        explicit_parent="parent_id" in body.model_fields_set,
    )


@routes.post("/sessions/{sid}/messages")
@describe(
    body=MessageCreate,
    responses={
        200: Reply("the stored message (a retry with the same client_id)", Message),
        201: Reply("the new message", Message),
    },
)
async def append_message(request: web.Request) -> web.Response:
    """Append a message: 201, or 200 with the stored one for a repeated client_id."""
    body = await parse_body(request, MessageCreate)
    draft = draft_from(body, request)
    async with state_of(request)[REGISTRY].session(
        request.match_info["sid"], user_of(request)
    ) as s:
        msg, created = await s.append(draft)
    return json_response(msg, 201 if created else 200, {"ETag": f'"{msg["version"]}"'})


@routes.get("/sessions/{sid}/messages/{mid}")
@describe(responses={200: Reply("the message", Message)})
async def get_message(request: web.Request) -> web.Response:
    async with state_of(request)[REGISTRY].session(
        request.match_info["sid"], user_of(request)
    ) as s:
        msg = await s.get_message(request.match_info["mid"])
    return json_response(msg, headers={"ETag": f'"{msg["version"]}"'})


def _if_match(request: web.Request) -> int | None:
    raw = request.headers.get("If-Match")
    if raw is None:
        return None
    text = raw.strip()
    if text.startswith("W/"):
        text = text[2:]
    text = text.strip('"')
    value = ascii_int(text, 18)
    if value is None:
        raise ApiError(
            400, "invalid_input", f"If-Match must be a message version, got {raw[:40]!r}"
        )
    return value


async def _read(request: web.Request) -> tuple[dict[str, Any], bytes]:
    from server.http import read_json

    return await read_json(request)


@routes.patch("/sessions/{sid}/messages/{mid}")
@describe(
    body=MessagePatch,
    params=(
        Param(
            "If-Match",
            "header",
            {"type": "string", "pattern": r'^\s*(W/)?"*[0-9]{1,18}"*\s*$'},
            "the version you last saw",
        ),
    ),
    responses={200: Reply("the changed message", Message)},
)
async def patch_message(request: web.Request) -> web.Response:
    """Edit content, parts or metadata in place: 200; a stale If-Match: 412."""
    settings = state_of(request)[SETTINGS]
    data, _ = await _read(request)
    body = MessagePatch.model_validate(data)
    changes: dict[str, Any] = {}
    if body.content is not None:
        check_content(body.content, settings, allow_empty=False)
        changes["content"] = body.content
    if "parts" in data:
        check_parts(body.parts, settings)
        changes["parts"] = (
            None if body.parts is None else [p.model_dump(mode="json") for p in body.parts]
        )
    if body.metadata is not None:
        check_metadata(body.metadata, settings, _meta_size(body.metadata))
        changes["metadata"] = body.metadata
    if not changes:
        raise ApiError(400, "invalid_input", "nothing to change: give content, parts or metadata")
    if_match = _if_match(request)
    async with state_of(request)[REGISTRY].session(
        request.match_info["sid"], user_of(request)
    ) as s:
        msg = await s.update_message(request.match_info["mid"], changes, if_match=if_match)
    return json_response(msg, headers={"ETag": f'"{msg["version"]}"'})


@routes.delete("/sessions/{sid}/messages/{mid}")
@describe(responses={204: Reply("replaced by a tombstone")})
async def delete_message(request: web.Request) -> web.Response:
    """Replace a message with a tombstone: 204."""
    mid = request.match_info["mid"]
    async with state_of(request)[REGISTRY].session(
        request.match_info["sid"], user_of(request)
    ) as s:
        await s.delete_message(mid)
    return web.Response(status=204)


@routes.get("/sessions/{sid}/messages/{mid}/siblings")
@describe(
    params=(
        Param(
            "limit",
            "query",
            {"type": "integer", "minimum": 1, "maximum": SIBLINGS_MAX, "default": 200},
            "at most this many siblings",
        ),
    ),
    responses={200: Reply("the message and its siblings, by sibling index", SiblingsPage)},
)
async def list_siblings(request: web.Request) -> web.Response:
    """``{items}``: the message and its siblings by sibling index (for a branch switcher).

    Items are ``{id, role, status, deleted, created_at}``; ``items[i]`` is the
    sibling whose ``siblings.index`` is ``i``. At most ``limit`` (default 200).
    """
    limit = query_int(request, "limit", 200, 1, SIBLINGS_MAX)
    async with state_of(request)[REGISTRY].session(
        request.match_info["sid"], user_of(request)
    ) as s:
        items = await s.siblings(request.match_info["mid"], limit=limit)
    return json_response({"items": items})
