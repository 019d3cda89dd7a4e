"""Chat over SSE, regenerate, cancel, and resuming a reply (SPEC sections 4 and 5)."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from aiohttp import web
from pydantic import StringConstraints

from actors import streams
from actors.pubsub import Subscription
from actors.streams import Generation
from server.errors import ApiError
from server.http import REGISTRY, SETTINGS, json_response, read_json, request_hash, user_of
from server.models import Id, Str, Strict, check_content, check_metadata
from server.openapi import JSON, SSE, Param, Reply, describe
from server.schemas import ChatResult, Message
from server.settings import Settings
from server.sse import open_sse, pump, sse_frame
from storage.ids import ascii_int
from storage.session_db import MessageDraft

routes = web.RouteTableDef()

Model = Annotated[str, StringConstraints(strict=True, min_length=1, max_length=200)]


class ChatRequest(Strict):
    content: Str
    client_id: (
        Annotated[str, StringConstraints(strict=True, min_length=1, max_length=256)] | None
    ) = None
    parent_id: Id | None = None
    model: Model | None = None
    attachments: list[Id] | None = None
    metadata: dict[str, Any] | None = None


class RegenerateRequest(Strict):
    model: Model | None = None


def chat_draft(body: ChatRequest, settings: Settings) -> MessageDraft:
    """Check a chat request against the limits and make the user message's draft.

    Shared by ``POST /chat`` and the WebSocket ``chat`` frame, so both take the
    same input the same way.
    """
    check_content(body.content, settings, allow_empty=False)
    check_metadata(body.metadata, settings, len(orjson.dumps(body.metadata)))
    return MessageDraft(
        role="user",
        content=body.content,
        attachments=body.attachments,
        client_id=body.client_id,
        parent_id=body.parent_id,
        metadata=body.metadata,
        request_hash=request_hash(body) if body.client_id is not None else None,
        explicit_parent="parent_id" in body.model_fields_set,
    )


def wants_json(request: web.Request) -> bool:
    accept = request.headers.get("Accept", "")
    return "application/json" in accept and "text/event-stream" not in accept


def _finished_frames(msg: dict[str, Any], since: int) -> list[bytes]:
    """The frames that replay an ended reply from offset ``since``."""
    out = []
    text = msg["content"]
    if since < len(text):
        data = orjson.dumps({"message_id": msg["id"], "offset": since, "text": text[since:]})
        out.append(sse_frame("delta", data, len(text)))
    if msg["status"] == "error" and msg.get("error"):
        out.append(sse_frame("error", orjson.dumps(msg["error"])))
    out.append(sse_frame("message", orjson.dumps(msg)))
    out.append(sse_frame("done", orjson.dumps({"message_id": msg["id"]})))
    return out


async def _answer(
    request: web.Request,
    *,
    ack: dict[str, Any],
    reply: dict[str, Any],
    gen: Generation | None,
    sub: Subscription | None,
    status: int,
    headers: dict[str, str],
) -> web.StreamResponse:
    """Answer a chat or regenerate: SSE by default, one JSON body on request."""
    if wants_json(request):
        final = reply
        if gen is not None:
            if sub is not None:
                sub.close()
            await gen.done.wait()
            assert gen.final is not None
            final = gen.final
        body = {k: v for k, v in ack.items() if k.endswith("message") or k == "client_id"}
        body["assistant_message"] = final
        return json_response(body, status, headers)
    resp = await open_sse(request, headers)
    first = [sse_frame("ack", orjson.dumps(ack))]
    if sub is None:
        first += _finished_frames(reply, 0)
    heartbeat = request.app[SETTINGS].sse_heartbeat
    await pump(request, resp, sub, heartbeat=heartbeat, first=first)
    return resp


@routes.post("/api/sessions/{sid}/chat")
@describe(
    body=ChatRequest,
    responses={
        200: Reply("the reply as SSE, or (a retry) JSON", ChatResult, (SSE, JSON)),
        201: Reply("with Accept: application/json: the finished exchange", ChatResult),
    },
)
async def chat(request: web.Request) -> web.StreamResponse:
    """Commit the user message and a pending reply, then stream the reply."""
    settings = request.app[SETTINGS]
    data, _ = await read_json(request)
    body = ChatRequest.model_validate(data)
    draft = chat_draft(body, settings)
    registry = request.app[REGISTRY]
    async with registry.lease(request.match_info["sid"], user_of(request)) as actor:
        user, reply, created, gen = await streams.chat(
            actor, draft, registry.responder, model=body.model
        )
        sub = gen.subscribe(settings.subscriber_queue) if gen is not None else None
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
        reply=reply,
        gen=gen,
        sub=sub,
        status=201 if created else 200,
        headers=headers,
    )


@routes.post("/api/sessions/{sid}/messages/{mid}/regenerate")
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
    settings = request.app[SETTINGS]
    model = None
    if request.can_read_body:
        data, _ = await read_json(request)
        model = RegenerateRequest.model_validate(data).model
    registry = request.app[REGISTRY]
    async with registry.lease(request.match_info["sid"], user_of(request)) as actor:
        reply, gen = await streams.regenerate(
            actor, request.match_info["mid"], registry.responder, model=model
        )
        sub = gen.subscribe(settings.subscriber_queue)
    ack = {"assistant_message_id": reply["id"], "assistant_message": reply}
    return await _answer(
        request,
        ack=ack,
        reply=reply,
        gen=gen,
        sub=sub,
        status=201,
        headers={"X-Assistant-Message-Id": reply["id"]},
    )


@routes.post("/api/sessions/{sid}/messages/{mid}/cancel")
@describe(responses={200: Reply("the reply as it stopped", Message)})
async def cancel(request: web.Request) -> web.Response:
    """Stop a running reply (status ``cancelled``, text so far kept): 200 Message.

    A reply that already ended is returned as it is.
    """
    mid = request.match_info["mid"]
    async with request.app[REGISTRY].lease(request.match_info["sid"], user_of(request)) as actor:
        final = await streams.cancel(actor, mid)
        if final is None:
            final = (await actor.reader()).read_message(mid)
    return json_response(final)


def _last_event_id(request: web.Request) -> int:
    raw = request.headers.get("Last-Event-ID", request.query.get("offset", "0")).strip() or "0"
    value = ascii_int(raw, 12)
    if value is None:
        raise ApiError(
            400,
            "invalid_input",
            f"Last-Event-ID must be a text offset (an integer), got {raw[:40]!r}",
        )
    return value


@routes.get("/api/sessions/{sid}/messages/{mid}/stream")
@describe(
    params=(
        Param(
            "Last-Event-ID",
            "header",
            {"type": "string", "pattern": r"^\s*[0-9]{0,12}\s*$"},
            "text offset to resume from",
        ),
        Param("offset", "query", {"type": "string"}, "the same, for clients without headers"),
    ),
    responses={200: Reply("the reply from the offset on, as SSE", None, (SSE,))},
)
async def resume(request: web.Request) -> web.StreamResponse:
    """Resume a reply: the text after ``Last-Event-ID``, then live deltas, ``message``, ``done``."""
    since = _last_event_id(request)
    settings = request.app[SETTINGS]
    mid = request.match_info["mid"]
    async with request.app[REGISTRY].lease(request.match_info["sid"], user_of(request)) as actor:
        gen = actor.generations.get(mid)
        if gen is not None:
            if since > len(gen.committed):
                raise ApiError(
                    400,
                    "invalid_input",
                    f"Last-Event-ID {since} is past the {len(gen.committed)} "
                    "characters streamed so far",
                )
            sub: Subscription | None = gen.subscribe(settings.subscriber_queue, since)
            first: list[bytes] = []
        else:
            msg = (await actor.reader()).read_message(mid)
            if since > len(msg["content"]):
                raise ApiError(
                    400,
                    "invalid_input",
                    f"Last-Event-ID {since} is past the end of the text "
                    f"({len(msg['content'])} characters)",
                )
            sub, first = None, _finished_frames(msg, since)
    resp = await open_sse(request, {"X-Assistant-Message-Id": mid})
    await pump(request, resp, sub, heartbeat=settings.sse_heartbeat, first=first)
    return resp
