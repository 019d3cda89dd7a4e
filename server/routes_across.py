"""Across a user's sessions (issue 23): folders, search, the list feed, feedback.

- ``GET /api/folders``: the caller's folders with counts.
- ``GET /api/search?q=&mode=words|fts&limit=&cursor=``: every session of the
  caller, best first (BM25), from the caller's own index.
- ``GET /api/events?since=``: the caller's list changes (``session.created``,
  ``session.updated``, ``session.deleted``) as a WebSocket (subprotocol
  ``roost.v1``) when the request asks to upgrade, else as SSE (resuming from
  ``Last-Event-ID``).
- ``PUT|DELETE /api/sessions/{sid}/messages/{mid}/feedback``: a rating.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import WSMsgType, hdrs, web

from actors.userlog import UserFeed
from server import access, frames
from server.errors import ApiError
from server.http import (
    json_response,
    parse_body,
    query_choice,
    query_int,
    query_since,
    user_of,
)
from server.keys import METRICS, OPEN_SOCKETS, OPEN_STREAMS, REGISTRY, SETTINGS, state_of
from server.openapi import SSE, Param, Reply, cursor_param, describe
from server.requests import FeedbackPut
from server.responses import CrossSearchPage, FolderList, Message
from server.sse import open_sse, pump
from server.wire import snippet_html

routes = web.RouteTableDef()  # mounted under /api

LIST_EVENTS = ("hello", "session.created", "session.updated", "session.deleted", "resync")


@routes.get("/folders")
@describe(responses={200: Reply("the caller's folders with counts, by name", FolderList)})
async def folders(request: web.Request) -> web.Response:
    """``{items: [{folder, count, archived}]}``."""
    items = await state_of(request)[REGISTRY].folders(user_of(request))
    return json_response({"items": items})


# ---------------------------------------------------------------------------- search


@routes.get("/search")
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
        cursor_param("cursor"),
    ),
    responses={200: Reply("matching messages of all the caller's sessions", CrossSearchPage)},
)
async def search_all(request: web.Request) -> web.Response:
    """Messages of every session of the caller matching ``q``, best first (BM25):
    ``{items: [{session_id, session_title, message_id, seq, role, created_at,
    snippet, score, rank}], next_cursor, q, mode}``. Deleted messages and other
    users' sessions never appear; an edit is found at once. To open a hit on
    its branch, ``PATCH /api/sessions/{session_id}`` with ``active_leaf_id``
    = ``message_id``.
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
    hits, nxt = await state_of(request)[REGISTRY].search_sessions(
        user_of(request), q, limit=limit, cursor=request.query.get("cursor"), raw=mode == "fts"
    )
    items: list[dict[str, Any]] = []
    for hit in hits:
        items.append(
            {
                "session_id": hit["session_id"],
                "session_title": hit["session"].get("title"),
                "message_id": hit["message_id"],
                "seq": hit["seq"],
                "role": hit["role"],
                "created_at": hit["created_at"],
                "snippet": snippet_html(hit["snippet"]["text"], hit["snippet"]["spans"]),
                "score": hit["score"],
                "rank": hit["rank"],
            }
        )
    return json_response({"items": items, "next_cursor": nxt, "q": q, "mode": mode})


# ---------------------------------------------------------------------------- list feed


@routes.get("/events")
@describe(
    params=(
        Param("since", "query", {"type": "string"}, "the last list event seq you saw"),
        Param(
            "Last-Event-ID",
            "header",
            {"type": "string", "pattern": "^[0-9]{0,18}$"},
            "the same, as SSE sends it",
        ),
    ),
    responses={
        200: Reply(
            "the caller's list events as SSE (or a WebSocket on upgrade)", None, (SSE,), LIST_EVENTS
        )
    },
)
async def user_events(request: web.Request) -> web.StreamResponse:
    """``hello``, the list events after ``since`` (or ``resync``: refetch the
    list), then live ``session.created`` / ``session.updated`` /
    ``session.deleted``. A WebSocket when the request upgrades, else SSE."""
    if not access.origin_allowed(request):
        raise ApiError(
            403, "forbidden_origin", f"origin {request.headers.get('Origin')!r} is not allowed"
        )
    # a list feed's seqs start at the process's start time in ms (actors.userlog)
    since = query_since(request, header="Last-Event-ID", digits=18)
    settings = state_of(request)[SETTINGS]
    log = state_of(request)[REGISTRY].user_log(user_of(request))
    if request.headers.get(hdrs.UPGRADE, "").lower() == "websocket":
        return await _user_ws(request, UserFeed(log, since, settings.subscriber_queue))
    feed = UserFeed(log, since, settings.subscriber_queue)
    try:
        resp = await open_sse(request)
        await pump(
            request,
            resp,
            _sse(feed),
            heartbeat=settings.sse_heartbeat,
            sub=feed.sub,
            stop=feed.sub.close,
        )
    finally:
        feed.close()
    return resp


async def _sse(feed: UserFeed) -> AsyncIterator[bytes]:
    async for frame in feed.frames():
        yield frames.sse_bytes(frame)
    if feed.dropped:
        yield frames.sse_lagged(feed.last_seq)


async def _user_ws(request: web.Request, feed: UserFeed) -> web.WebSocketResponse:
    settings = state_of(request)[SETTINGS]
    ws = web.WebSocketResponse(
        heartbeat=settings.ws_heartbeat,
        max_msg_size=settings.max_ws_frame_bytes,
        compress=False,
        protocols=("roost.v1",),
    )
    try:
        await ws.prepare(request)
    except BaseException:
        feed.close()
        raise
    streams = state_of(request)[OPEN_STREAMS]
    streams.add(feed.sub)  # the shutdown drain ends it: the sender then closes with 1001

    async def send() -> None:
        try:
            async for frame in feed.frames():
                if ws.closed:
                    return
                await ws.send_frame(frame.data, WSMsgType.TEXT)
        except ConnectionResetError:
            return
        code, reason = (
            frames.close_lagged(feed.last_seq) if feed.dropped else frames.close_going_away()
        )
        await ws.close(code=code, message=reason)

    sender = asyncio.create_task(send())
    state_of(request)[OPEN_SOCKETS][ws] = sender
    try:
        async for msg in ws:
            # the list feed takes only pings; anything else is ignored
            if msg.type is WSMsgType.TEXT and not ws.closed and "ping" in msg.data:
                await ws.send_str(frames.PONG_TEXT)
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
        feed.close()
        streams.discard(feed.sub)
        state_of(request)[OPEN_SOCKETS].pop(ws, None)
    return ws


# ---------------------------------------------------------------------------- feedback


@routes.put("/sessions/{sid}/messages/{mid}/feedback")
@describe(body=FeedbackPut, responses={200: Reply("the message with its feedback", Message)})
async def put_feedback(request: web.Request) -> web.Response:
    """Rate a message (``rating`` 1 or -1, optional ``tags`` and ``comment``); one per
    user and message: a second PUT replaces it. 200 with the message."""
    body = await parse_body(request, FeedbackPut)
    user = user_of(request)
    feedback = {
        "rating": body.rating,
        "tags": sorted(set(body.tags or [])),
        "comment": body.comment,
        "user": user,
    }
    async with state_of(request)[REGISTRY].session(request.match_info["sid"], user) as s:
        msg = await s.set_feedback(request.match_info["mid"], feedback)
    state_of(request)[METRICS].feedback.labels(rating=str(body.rating)).inc()
    return json_response(msg, headers={"ETag": f'"{msg["version"]}"'})


@routes.delete("/sessions/{sid}/messages/{mid}/feedback")
@describe(responses={204: Reply("the feedback is gone")})
async def delete_feedback(request: web.Request) -> web.Response:
    """Remove the message's feedback: 204 (also when it had none)."""
    async with state_of(request)[REGISTRY].session(
        request.match_info["sid"], user_of(request)
    ) as s:
        await s.set_feedback(request.match_info["mid"], None)
    state_of(request)[METRICS].feedback.labels(rating="removed").inc()
    return web.Response(status=204)
