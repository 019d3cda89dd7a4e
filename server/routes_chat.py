"""Chat over SSE, regenerate, cancel, and resuming a reply (SPEC sections 4 and 5)."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from actors.replies import reply_delta
from actors.session import ReplyStream, SessionHandle
from server import frames
from server.errors import ApiError
from server.http import json_response, read_json, user_of
from server.keys import REGISTRY, SETTINGS, state_of
from server.openapi import JSON, SSE, Param, Reply, describe
from server.requests import ChatRequest, RegenerateRequest, chat_draft
from server.responses import ChatResult, Message
from server.sse import encode, open_sse, pump
from storage.ids import ascii_int

routes = web.RouteTableDef()  # mounted under /api


def wants_json(request: web.Request) -> bool:
    accept = request.headers.get("Accept", "")
    return "application/json" in accept and "text/event-stream" not in accept


def _finished_frames(msg: dict[str, Any], since: int) -> list[bytes]:
    """The frames that replay an ended reply from offset ``since``."""
    out = []
    text = msg["content"]
    if since < len(text):
        out.append(encode("delta", reply_delta(msg["id"], since, text[since:]), len(text)))
    if msg["status"] == "error" and msg.get("error"):
        out.append(encode("error", orjson.dumps(msg["error"])))
    out.append(encode("message", orjson.dumps(msg)))
    out.append(encode("done", orjson.dumps({"message_id": msg["id"]})))
    return out


async def _answer(
    request: web.Request,
    *,
    ack: dict[str, Any],
    stream: ReplyStream,
    status: int,
    headers: dict[str, str],
) -> web.StreamResponse:
    """Answer a chat or regenerate: SSE by default, one JSON body on request."""
    if wants_json(request):
        final = await stream.wait_final()
        body = {k: v for k, v in ack.items() if k.endswith("message") or k == "client_id"}
        body["assistant_message"] = final
        return json_response(body, status, headers)
    resp = await open_sse(request, headers)
    first = [encode("ack", orjson.dumps(ack))]
    if stream.final is not None:
        first += _finished_frames(stream.final, 0)
    heartbeat = state_of(request)[SETTINGS].sse_heartbeat
    sub = stream.subscription
    await pump(request, resp, frames.sse_events(sub), heartbeat=heartbeat, first=first, sub=sub)
    return resp


@routes.post("/sessions/{sid}/chat")
@describe(
    body=ChatRequest,
    responses={
        200: Reply("the reply as SSE, or (a retry) JSON", ChatResult, (SSE, JSON)),
        201: Reply("with Accept: application/json: the finished exchange", ChatResult),
        202: Reply("with Accept: application/json: the user message, queued", ChatResult),
    },
)
async def chat(request: web.Request) -> web.StreamResponse:
    """Commit the user message and a pending reply, then stream the reply.

    While another reply of the session runs or waits for a tool, ``on_busy``
    decides (issue 19); a queued message answers 202 (JSON) or an ``ack`` with
    ``queued: true``, then, once its turn starts, a second ``ack`` and the reply.
    """
    settings = state_of(request)[SETTINGS]
    data, _ = await read_json(request)
    body = ChatRequest.model_validate(data)
    draft = chat_draft(body, settings)
    async with state_of(request)[REGISTRY].session(
        request.match_info["sid"], user_of(request)
    ) as s:
        user, reply, created, stream = await s.chat(
            draft, model=body.model, maxsize=settings.subscriber_queue, on_busy=body.on_busy
        )
        if reply is None or stream is None:
            return await _queued(request, s, body.client_id, user)
    ack = {
        "client_id": body.client_id,
        "user_message_id": user["id"],
        "assistant_message_id": reply["id"],
        "user_message": user,
        "assistant_message": reply,
    }
    headers = {"X-User-Message-Id": user["id"], "X-Assistant-Message-Id": reply["id"]}
    return await _answer(
        request,
        ack=ack,
        stream=stream,
        status=201 if created else 200,
        headers=headers,
    )


@routes.post("/sessions/{sid}/messages/{mid}/regenerate")
@describe(
    body=RegenerateRequest,
    body_required=False,
    responses={
        200: Reply("the new reply as SSE", None, (SSE,)),
        201: Reply("with Accept: application/json: the finished reply", ChatResult),
    },
)
async def regenerate(request: web.Request) -> web.StreamResponse:
    """A new reply: a sibling of an assistant message, or a child of a user message."""
    settings = state_of(request)[SETTINGS]
    model = None
    if request.can_read_body:
        data, _ = await read_json(request)
        model = RegenerateRequest.model_validate(data).model
    async with state_of(request)[REGISTRY].session(
        request.match_info["sid"], user_of(request)
    ) as s:
        reply, stream = await s.regenerate(
            request.match_info["mid"], model=model, maxsize=settings.subscriber_queue
        )
    ack = {"assistant_message_id": reply["id"], "assistant_message": reply}
    return await _answer(
        request,
        ack=ack,
        stream=stream,
        status=201,
        headers={"X-Assistant-Message-Id": reply["id"]},
    )


@routes.post("/sessions/{sid}/messages/{mid}/cancel")
@describe(responses={200: Reply("the reply as it stopped", Message)})
async def cancel(request: web.Request) -> web.Response:
    """Stop a running reply (status ``cancelled``, text so far kept): 200 Message.

    A reply that already ended is returned as it is.
    """
    mid = request.match_info["mid"]
    async with state_of(request)[REGISTRY].session(
        request.match_info["sid"], user_of(request)
    ) as s:
        final = await s.cancel(mid)
    return json_response(final)


async def _queued(
    request: web.Request, s: SessionHandle, client_id: str | None, user: dict[str, Any]
) -> web.StreamResponse:
    """Answer a queued chat: 202 JSON at once, or SSE that waits for its turn."""
    settings = state_of(request)[SETTINGS]
    ack: dict[str, Any] = {
        "client_id": client_id,
        "user_message_id": user["id"],
        "assistant_message_id": None,
        "user_message": user,
        "assistant_message": None,
        "queued": True,
    }
    headers = {"X-User-Message-Id": user["id"]}
    if wants_json(request):
        body = {k: ack[k] for k in ("client_id", "user_message", "assistant_message", "queued")}
        return json_response(body, 202, headers)
    resp = await open_sse(request, headers)
    await resp.write(encode("ack", orjson.dumps(ack)))
    started = await s.started(user["id"], maxsize=settings.subscriber_queue)
    if started is None:
        await resp.write(encode("done", orjson.dumps({"message_id": None})))
        return resp
    reply, stream = started
    first = [
        encode(
            "ack",
            orjson.dumps(
                {
                    **ack,
                    "assistant_message_id": reply["id"],
                    "assistant_message": reply,
                    "queued": False,
                }
            ),
        )
    ]
    if stream.final is not None:
        first += _finished_frames(stream.final, 0)
    sub = stream.subscription
    await pump(
        request,
        resp,
        frames.sse_events(sub),
        heartbeat=settings.sse_heartbeat,
        first=first,
        sub=sub,
    )
    return resp


def _last_event_id(request: web.Request) -> int:
    """The text offset to resume from: ``Last-Event-ID`` if given (and not blank),
    else ``?offset=``, else 0. Either one, when given, must be an integer (400)."""
    offset = _offset(request.query.get("offset", ""), "offset")
    header = _offset(request.headers.get("Last-Event-ID", ""), "Last-Event-ID")
    return header if header is not None else offset or 0


def _offset(raw: str, name: str) -> int | None:
    raw = raw.strip()
    if not raw:
        return None
    value = ascii_int(raw, 12)
    if value is None:
        raise ApiError(
            400,
            "invalid_input",
            f"{name} must be a text offset (an integer), got {raw[:40]!r}",
        )
    return value


@routes.get("/sessions/{sid}/messages/{mid}/stream")
@describe(
    params=(
        Param(
            "Last-Event-ID",
            "header",
            {"type": "string", "pattern": r"^\s*[0-9]{0,12}\s*$"},
            "text offset to resume from",
        ),
        Param(
            "offset",
            "query",
            {"type": "string", "pattern": r"^\s*[0-9]{0,12}\s*$"},
            "the same, for clients without headers",
        ),
    ),
    responses={200: Reply("the reply from the offset on, as SSE", None, (SSE,))},
)
async def resume(request: web.Request) -> web.StreamResponse:
    """Resume a reply: the text after ``Last-Event-ID``, then live deltas, ``message``, ``done``."""
    since = _last_event_id(request)
    settings = state_of(request)[SETTINGS]
    mid = request.match_info["mid"]
    async with state_of(request)[REGISTRY].session(
        request.match_info["sid"], user_of(request)
    ) as s:
        stream = await s.stream(mid, since=since, maxsize=settings.subscriber_queue)
    first = [] if stream.final is None else _finished_frames(stream.final, since)
    resp = await open_sse(request, {"X-Assistant-Message-Id": mid})
    sub = stream.subscription
    await pump(
        request,
        resp,
        frames.sse_events(sub),
        heartbeat=settings.sse_heartbeat,
        first=first,
        sub=sub,
    )
    return resp
