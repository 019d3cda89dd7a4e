"""The Vercel AI SDK adapter: ``useChat`` with ``DefaultChatTransport`` (SPEC section 8).

``POST /api/ai/chat`` takes the transport's body (``id``, ``messages``,
``trigger``, ``messageId``) and answers in the UI Message Stream protocol
(v1). ``GET /api/ai/chat/{id}/stream`` resumes the running reply; the actor
already holds it, so there is no Redis.

Contract, where the AI SDK leaves it to the server:

- The chat ``id`` is the session id (``[A-Za-z0-9][A-Za-z0-9._-]{0,127}``, else
  400). A session that does not exist is created for the caller by its first
  ``submit-message`` (a regenerate of an unknown chat is 404); another user's
  session answers 404.
- Only what is new is taken from ``messages``; the client's history is never
  stored. ``submit-message``: the last message (it must be a ``user`` message);
  its text parts, concatenated, are the content; ``file`` parts are refused
  (400); other parts are ignored. Its ``client_id`` is ``ai:<ui id>:<digest of
  the text>``, so the same request sent again answers the stored pair (the
  running reply is attached to, an ended one replayed) and never duplicates
  the user message. With ``messageId`` naming that message (an edit, or a
  resubmit) the new text becomes a sibling of the version stored before
  (found by its UI id, or by its Roost id for history loaded from Roost).
  Without it the message goes below the session's active leaf.
- ``regenerate-message``: ``messageId`` names the assistant message to
  replace (a new sibling) or a user message to answer (a new child), by
  Roost id or by the user message's UI id; without ``messageId`` the active
  leaf is regenerated.
- Chunks carry exactly the keys of ``ai`` 5.0.0's strict schema (newer v5
  clients accept more, older ones refuse any extra). Roost's facts go in
  ``messageMetadata`` on ``start`` and ``finish``. Text arrives as one text
  part while streaming; tool calls (which providers finish at the end of a
  reply) follow it as ``tool-input-available`` chunks.
- Tools (issue 19): a reply that called tools ends ``awaiting_tool`` with a
  ``tool-input-available`` chunk per call; a submit whose last message is that
  assistant message with tool outputs (what ``addToolResult``/``addToolOutput``
  and ``sendAutomaticallyWhen`` send) stores each result (``output-available``,
  ``output-error``) and, with approvals (``approval-responded``), each decision,
  then streams the continuation. Stream versions: ``ai`` 6 and 7 have approval
  chunks (``tool-approval-request``, ``tool-output-denied``), 5 has not (its
  strict schema refuses them). The version is what the client says it accepts:
  the ``X-AI-SDK-Version`` request header (``5``, ``6``, ``7`` or a full
  version; the transport's ``headers`` option), else 6 when a message of the
  request carries an ``approval`` (only 6 and later make those), else 5. A v5
  client sees a call that needs approval as ``tool-input-available`` and
  approves it through ``POST .../tool-approvals``; a denial is
  ``tool-output-error``.
- A failed reply, or one stopped by the server's shutdown (status
  ``interrupted``), sends an ``error`` chunk before ``finish``. ``useChat``
  stops reading at ``error``, so a ``message-metadata`` chunk with the final
  metadata (status, model) comes first: the message's ``metadata.status``
  is then ``error`` (or ``interrupted``), not the ``pending`` of ``start``.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, StringConstraints

from actors.places import Places
from actors.pubsub import Subscription
from actors.session import NewMessage, SessionHandle
from server.access import check_session_rate
from server.auth import check_scope
from server.errors import ApiError
from server.http import read_json, user_of
from server.keys import REGISTRY, SETTINGS, state_of
from server.openapi import SSE, Reply, describe
from server.requests import SessionId, Strict, check_content
from server.sse import encode, open_sse, pump
from storage.errors import Conflict, NotFound
from storage.ids import validate_session_id

routes = web.RouteTableDef()  # mounted under /api

UI_STREAM_HEADERS = {"x-vercel-ai-ui-message-stream": "v1", "Connection": "keep-alive"}
DONE = encode(None, b"[DONE]")
CLIENT_ID_PREFIX = "ai:"

UiId = Annotated[str, StringConstraints(strict=True, min_length=1, max_length=200)]
Model = Annotated[str, StringConstraints(strict=True, min_length=1, max_length=200)]


class UIMessage(BaseModel):
    """A message as the AI SDK sends it; parts beyond ``type``/``text`` are not read."""

    model_config = ConfigDict(extra="allow", strict=True)

    id: UiId
    role: Literal["system", "user", "assistant"]
    parts: list[dict[str, Any]]


class AiChatRequest(Strict):
    """``DefaultChatTransport``'s body, plus Roost's optional ``model``.

    Unknown top-level keys (a template's own ``body`` additions) are ignored;
    the known keys and the messages inside stay strictly validated.
    """

    model_config = ConfigDict(extra="ignore", strict=True)

    id: SessionId
    messages: list[UIMessage]
    trigger: Literal["submit-message", "regenerate-message"]
    messageId: UiId | None = None  # the AI SDK's spelling
    model: Model | None = None
    on_busy: Literal["reject", "queue", "interrupt", "rollback"] | None = None


# ------------------------------------------------------------------ pure parts


def ui_text(message: UIMessage) -> str:
    """The content of a UI message: its text parts, concatenated.

    Raises ApiError 400 for ``file`` parts (not supported here yet).
    """
    texts = []
    for part in message.parts:
        kind = part.get("type")
        if kind == "file":
            raise ApiError(
                400,
                "invalid_input",
                "file parts are not supported by /api/ai/chat; upload attachments "
                "with POST /api/sessions/{sid}/attachments",
                {"loc": ["messages", -1, "parts"]},
            )
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise ApiError(
                    400,
                    "invalid_input",
                    "a text part must have a string text",
                    {"loc": ["messages", -1, "parts"]},
                )
            texts.append(text)
    return "".join(texts)


def client_id_for(ui_id: str, content: str) -> str:
    """Roost's ``client_id`` for version ``content`` of UI message ``ui_id``."""
    digest = hashlib.sha256(content.encode()).hexdigest()[:16]
    return f"{CLIENT_ID_PREFIX}{ui_id}:{digest}"


def chunk(data: dict[str, Any]) -> bytes:
    """One UI Message Stream chunk as an (unnamed) SSE event."""
    return encode(None, orjson.dumps(data))


def message_metadata(msg: dict[str, Any]) -> dict[str, Any]:
    """Roost's facts about a reply, as the AI SDK's ``messageMetadata``."""
    return {
        "sessionId": msg["session_id"],
        "status": msg["status"],
        "model": msg.get("model_id"),
        "provider": msg.get("provider_id"),
        "fallbackNotice": msg.get("fallback_notice"),
        "parentId": msg.get("parent_id"),
    }


class UIStream:
    """Turns one Roost reply into UI Message Stream chunks (no I/O).

    Call :meth:`start` once, :meth:`text` for each delta, then :meth:`end`
    with the final message; or :meth:`replay` for a reply that has ended.
    """

    def __init__(self, message_id: str, version: int = 5, *, continues: str | None = None) -> None:
        self.message_id = message_id
        # a continuation (issue 19) goes on in the UI message it continues: ``start``
        # names that one, and a ``start-step`` opens the new step (so the SDK's
        # lastAssistantMessageIsCompleteWithToolCalls sees no finished calls in it)
        self.continues = continues
        self.version = version  # the ai major the client accepts (approval chunks: 6+)
        self._texts = 0
        self._open: str | None = None

    def start(self, msg: dict[str, Any]) -> list[bytes]:
        out = [
            chunk(
                {
                    "type": "start",
                    "messageId": self.continues or self.message_id,
                    "messageMetadata": message_metadata(msg),
                }
            )
        ]
        if self.continues is not None:
            out.append(chunk({"type": "start-step"}))
        return out

    def text(self, delta: str) -> list[bytes]:
        if not delta:
            return []
        out = []
        if self._open is None:
            self._open = f"{self.message_id}:{self._texts}"
            self._texts += 1
            out.append(chunk({"type": "text-start", "id": self._open}))
        out.append(chunk({"type": "text-delta", "id": self._open, "delta": delta}))
        return out

    def _close_text(self) -> list[bytes]:
        if self._open is None:
            return []
        out = [chunk({"type": "text-end", "id": self._open})]
        self._open = None
        return out

    def tool(self, part: dict[str, Any]) -> list[bytes]:
        """The chunks of a ``tool-call`` or ``tool-result`` part (none for others)."""
        if part.get("type") == "tool-call":
            out = [
                chunk(
                    {
                        "type": "tool-input-available",
                        "toolCallId": part["tool_call_id"],
                        "toolName": part["tool_name"],
                        "input": part.get("args"),
                    }
                )
            ]
            if part.get("needs_approval") and "approved" not in part and self.version >= 6:
                out.append(
                    chunk(
                        {
                            "type": "tool-approval-request",
                            "approvalId": part["tool_call_id"],
                            "toolCallId": part["tool_call_id"],
                        }
                    )
                )
            elif part.get("approved") is False:
                if self.version >= 6:
                    out.append(
                        chunk({"type": "tool-output-denied", "toolCallId": part["tool_call_id"]})
                    )
                else:
                    why = "denied" + (f": {part['reason']}" if part.get("reason") else "")
                    out.append(
                        chunk(
                            {
                                "type": "tool-output-error",
                                "toolCallId": part["tool_call_id"],
                                "errorText": why,
                            }
                        )
                    )
            return out
        if part.get("type") == "tool-result":
            if part.get("is_error"):
                result = part.get("result")
                text = result if isinstance(result, str) else orjson.dumps(result).decode()
                return [
                    chunk(
                        {
                            "type": "tool-output-error",
                            "toolCallId": part["tool_call_id"],
                            "errorText": text,
                        }
                    )
                ]
            return [
                chunk(
                    {
                        "type": "tool-output-available",
                        "toolCallId": part["tool_call_id"],
                        "output": part.get("result"),
                    }
                )
            ]
        return []

    def end(
        self, final: dict[str, Any], *, tools: bool = True, notice: dict[str, Any] | None = None
    ) -> list[bytes]:
        """Close the text, add tool chunks, the error if the reply failed, ``finish``.

        An error is the final message's own (status ``error``) or, for a reply
        that did not fail, ``notice`` (``{code, message}``: why the server
        stopped it). With an error, ``message-metadata`` (the final metadata)
        comes first, since the SDK reads nothing after ``error``.
        """
        error_text: str | None = None
        if final["status"] == "error":
            error = final.get("error") or {}
            text = error.get("message") if isinstance(error, dict) else None
            error_text = text or "the reply failed"
        elif notice is not None:
            error_text = str(notice.get("message") or notice.get("code") or "the reply stopped")
        out = []
        if error_text is not None:
            out.append(
                chunk({"type": "message-metadata", "messageMetadata": message_metadata(final)})
            )
        out += self._close_text()
        if tools:
            for part in final.get("parts") or []:
                out += self.tool(part)
        if error_text is not None:
            out.append(chunk({"type": "error", "errorText": error_text}))
        out.append(chunk({"type": "finish", "messageMetadata": message_metadata(final)}))
        out.append(DONE)
        return out

    def replay(self, msg: dict[str, Any]) -> list[bytes]:
        """The whole stream of a reply that has ended, its parts in order."""
        out = self.start(msg)
        parts = msg.get("parts")
        if not parts:
            out += self.text(msg["content"])
        else:
            for part in parts:
                if part.get("type") == "text":
                    out += self.text(part.get("text") or "")
                else:
                    out += self._close_text()
                    out += self.tool(part)
            out += self._close_text()
        return out + self.end(msg, tools=False)


# ------------------------------------------------------------------ streaming


async def _send(
    request: web.Request,
    ui: UIStream,
    first: list[bytes],
    sub: Subscription | None,
    headers: dict[str, str],
) -> web.StreamResponse:
    """Write ``first``, then translate ``sub``'s frames until the reply ends.

    Returns quietly when the client goes away (the reply goes on) or the
    subscription ends early (dropped or shutdown: the client may resume).
    """
    resp = await open_sse(request, {**UI_STREAM_HEADERS, **headers})
    heartbeat = state_of(request)[SETTINGS].sse_heartbeat
    await pump(
        request, resp, _chunks(ui, sub), heartbeat=heartbeat, first=[b"".join(first)], sub=sub
    )
    return resp


async def _chunks(ui: UIStream, sub: Subscription | None) -> AsyncIterator[bytes]:
    """``sub``'s frames as UI Message Stream chunks, up to the reply's ``message``
    (an ``error`` frame before it, the shutdown's notice, is told as an ``error`` chunk)."""
    if sub is None:
        return
    notice: dict[str, Any] | None = None
    while (frame := await sub.get()) is not None:
        if frame.type == "delta":
            yield b"".join(ui.text(orjson.loads(frame.data)["text"]))
        elif frame.type == "error":
            notice = orjson.loads(frame.data)
        elif frame.type == "message":
            yield b"".join(ui.end(orjson.loads(frame.data), notice=notice))
            return


def ui_version(request: web.Request, body: AiChatRequest | None = None) -> int:
    """The ``ai`` major whose stream the client accepts (see the module docstring)."""
    raw = request.headers.get("X-AI-SDK-Version", "").strip()
    if raw:
        major = raw.split(".", 1)[0]
        if not major.isdigit() or not 1 <= len(major) <= 3:
            raise ApiError(
                400,
                "invalid_input",
                f"X-AI-SDK-Version must be a version like 6 or 6.0.1, got {raw[:40]!r}",
            )
        return max(5, int(major))
    for m in body.messages if body is not None else []:
        if any(isinstance(p.get("approval"), dict) for p in m.parts):
            return 6
    return 5


def _tool_parts(message: UIMessage) -> list[dict[str, Any]]:
    """The tool parts (static ``tool-<name>`` or ``dynamic-tool``) of a UI message."""
    return [
        p
        for p in message.parts
        if isinstance(p.get("type"), str)
        and (p["type"].startswith("tool-") or p["type"] == "dynamic-tool")
        and isinstance(p.get("toolCallId"), str)
    ]


async def _tool_continue(
    request: web.Request, body: AiChatRequest, sid: str, user: str, version: int
) -> web.StreamResponse:
    """A submit ending with the assistant message: store its tool outputs and
    approvals for the reply that waits, then stream the continuation (or, while
    calls still wait, the calls that may run now)."""
    maxsize = state_of(request)[SETTINGS].subscriber_queue
    parts = _tool_parts(body.messages[-1])
    async with state_of(request)[REGISTRY].session(sid, user) as s:
        waiting = await s.waiting_reply()
        if waiting is None:
            raise ApiError(
                409, "conflict", "no reply of this chat waits for tool results or approvals"
            )
        calls = {
            p["tool_call_id"]: p for p in waiting.get("parts") or [] if p.get("type") == "tool-call"
        }
        cont: dict[str, Any] | None = None
        for part in parts:
            cid, state = part["toolCallId"], part.get("state")
            if cid not in calls:
                continue
            approval = part.get("approval")
            with contextlib.suppress(Conflict):
                if (
                    state == "approval-responded"
                    and isinstance(approval, dict)
                    and isinstance(approval.get("approved"), bool)
                ):
                    reason = approval.get("reason")
                    _, _, got = await s.tool_approval(
                        waiting["id"],
                        cid,
                        approved=approval["approved"],
                        reason=reason if isinstance(reason, str) else None,
                    )
                    cont = got or cont
                elif state == "output-available":
                    _, _, got = await s.tool_result(waiting["id"], cid, output=part.get("output"))
                    cont = got or cont
                elif state == "output-error":
                    text = part.get("errorText")
                    error = text if isinstance(text, str) and text else "the tool failed"
                    _, _, got = await s.tool_result(waiting["id"], cid, error=error[:10_000])
                    cont = got or cont
        if cont is not None:
            stream = await s.stream(cont["id"], since=0, maxsize=maxsize)
            reply = cont
        else:
            reply = await s.get_message(waiting["id"])
    headers = {"X-Assistant-Message-Id": reply["id"]}
    ui = UIStream(reply["id"], version, continues=body.messages[-1].id)
    if cont is None:  # still waiting: the approved calls may run now
        first = ui.start(reply)
        for p in reply.get("parts") or []:
            if p.get("type") == "tool-call" and p.get("approved") is True:
                plain = {k: v for k, v in p.items() if k not in ("approved", "needs_approval")}
                first += ui.tool(plain)
        return await _send(request, ui, first + ui.end(reply, tools=False), None, headers)
    sub = stream.subscription
    first = ui.start(reply) if sub is not None else ui.replay(reply)
    return await _send(request, ui, first, sub, headers)


async def _ensure_session(registry: Places, sid: str, user: str) -> None:
    """Create session ``sid`` for ``user`` unless it exists (a race is fine)."""
    try:
        async with registry.session(sid, user):
            return
    except NotFound:
        pass
    with contextlib.suppress(Conflict):  # made meanwhile, or another user's (404 next)
        await registry.create_session(sid, owner=user)


async def _stored_user_message(s: SessionHandle, ui_id: str) -> dict[str, Any] | None:
    """The stored version of user message ``ui_id``: sent through this adapter
    (newest version), or loaded from Roost with its Roost id as UI id."""
    found = await s.find_by_client_id_prefix(f"{CLIENT_ID_PREFIX}{ui_id}:")
    if found is None:
        with contextlib.suppress(NotFound):
            msg = await s.get_message(ui_id)
            if msg["role"] == "user":
                found = msg
    return found


async def _regenerate_target(s: SessionHandle, body: AiChatRequest) -> str:
    """The Roost id of the message to regenerate (see the module docstring)."""
    if body.messageId is None:
        leaf: str | None = (await s.read_session())["active_leaf_id"]
        if leaf is None:
            raise ApiError(400, "invalid_input", "nothing to regenerate: the chat is empty")
        return leaf
    with contextlib.suppress(NotFound):
        mid: str = (await s.get_message(body.messageId))["id"]
        return mid
    found = await _stored_user_message(s, body.messageId)
    if found is None:
        raise ApiError(
            404,
            "not_found",
            f"messageId {body.messageId!r} names no message of this chat",
            {"messageId": body.messageId},
        )
    return str(found["id"])


# One UI Message Stream chunk: an unnamed server-sent event whose data is a chunk
# as JSON ({"type": "start" | "text-delta" | ... | "finish", ...}), or [DONE] last.
UI_CHUNK_EVENT: dict[str, Any] = {
    "type": "object",
    "properties": {
        "event": {"const": "message"},
        "data": {
            "anyOf": [
                {"const": "[DONE]"},
                {"type": "string", "contentMediaType": "application/json"},
            ]
        },
    },
    "required": ["data"],
}
STREAM_HEADER = {"x-vercel-ai-ui-message-stream": "v1"}


@routes.post("/ai/chat")
@describe(
    body=AiChatRequest,
    responses={
        200: Reply(
            "the reply in the UI Message Stream protocol (v1)",
            None,
            (SSE,),
            headers={
                **STREAM_HEADER,
                "X-Assistant-Message-Id": "the Roost id of the reply",
            },
            item=UI_CHUNK_EVENT,
        )
    },
    tags=("ai-sdk",),
)
async def ai_chat(request: web.Request) -> web.StreamResponse:
    """Take what is new from a ``useChat`` request and stream the reply."""
    settings = state_of(request)[SETTINGS]
    data, _ = await read_json(request)
    body = AiChatRequest.model_validate(data)
    sid = validate_session_id(body.id)
    check_scope(request, sid)  # the middleware could not see the body's session id
    check_session_rate(request, sid)  # nor could the rate limiter
    user = user_of(request)
    version = ui_version(request, body)
    draft: NewMessage | None = None
    if (
        body.trigger == "submit-message"
        and body.messages
        and body.messages[-1].role == "assistant"
        and _tool_parts(body.messages[-1])
    ):
        return await _tool_continue(request, body, sid, user, version)
    if body.trigger == "submit-message":
        if not body.messages or body.messages[-1].role != "user":
            raise ApiError(
                400,
                "invalid_input",
                "submit-message needs the new user message last in messages",
                {"loc": ["messages"]},
            )
        last = body.messages[-1]
        content = ui_text(last)
        check_content(content, settings, allow_empty=False)
        client_id = client_id_for(last.id, content)
        draft = NewMessage(
            role="user",
            content=content,
            client_id=client_id,
            request_hash=hashlib.sha256(client_id.encode()).hexdigest(),
        )
    registry = state_of(request)[REGISTRY]
    if draft is not None:  # a regenerate needs a chat to exist
        await _ensure_session(registry, sid, user)
    headers: dict[str, str] = {}
    maxsize = settings.subscriber_queue
    async with registry.session(sid, user) as s:
        if draft is not None:
            last_id = body.messages[-1].id
            if body.messageId == last_id:  # an edit (or a resubmit) of that message
                before = await _stored_user_message(s, last_id)
                if before is not None and before["client_id"] != draft.client_id:
                    draft.parent_id = before["parent_id"]
                    draft.explicit_parent = True
            user_msg, got, _, got_stream = await s.chat(
                draft, model=body.model, maxsize=maxsize, on_busy=body.on_busy
            )
            headers["X-User-Message-Id"] = user_msg["id"]
            if got is None or got_stream is None:  # queued (issue 19): wait for its turn
                started = await s.started(user_msg["id"], maxsize=maxsize)
                if started is None:
                    raise ApiError(
                        409, "conflict", "the queued message was removed before its turn came"
                    )
                got, got_stream = started
            reply, stream = got, got_stream
        else:
            target = await _regenerate_target(s, body)
            reply, stream = await s.regenerate(target, model=body.model, maxsize=maxsize)
    sub = stream.subscription
    headers["X-Assistant-Message-Id"] = reply["id"]
    ui = UIStream(reply["id"], version)
    first = ui.start(reply) if sub is not None else ui.replay(reply)
    return await _send(request, ui, first, sub, headers)


@routes.get("/ai/chat/{id}/stream")
@describe(
    responses={
        200: Reply(
            "the running reply from its start, then live (UI Message Stream v1)",
            None,
            (SSE,),
            headers={**STREAM_HEADER, "X-Assistant-Message-Id": "the Roost id of the reply"},
            item=UI_CHUNK_EVENT,
        ),
        204: Reply("no reply is running in this chat (or no such chat of yours)"),
    },
    tags=("ai-sdk",),
)
async def ai_resume(request: web.Request) -> web.StreamResponse:
    """The running reply from its ``start``, then live; 204 when none runs.

    A session that does not exist (or is another user's) has no running
    reply: 204, so ``useChat({resume: true})`` on a new chat stays quiet.
    """
    sid = validate_session_id(request.match_info["id"])
    found = await state_of(request)[REGISTRY].resume_reply(
        sid, user_of(request), maxsize=state_of(request)[SETTINGS].subscriber_queue
    )
    if found is None:
        return web.Response(status=204)
    message, sub = found
    ui = UIStream(message["id"], ui_version(request))
    headers = {"X-Assistant-Message-Id": message["id"]}
    return await _send(request, ui, ui.start(message), sub, headers)
