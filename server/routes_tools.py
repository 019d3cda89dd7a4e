"""The tool loop's routes (issue 19): a tool's result, and a call's approval.

A reply whose model called tools ends ``awaiting_tool`` (or
``awaiting_approval`` for tools the session's settings mark
``needs_approval``) with its ``tool-call`` parts. The client runs the tools and
posts each result; when every call has one, the session continues the turn
with a new assistant message (streamed like a chat reply, on every tab).
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from aiohttp import web
from pydantic import ConfigDict, Field, StringConstraints, WithJsonSchema

from server.errors import ApiError
from server.http import json_response, read_json, user_of
from server.keys import REGISTRY, SETTINGS, state_of
from server.openapi import Reply, describe
from server.requests import Id, Strict, check_content
from server.responses import Message, Shape

routes = web.RouteTableDef()  # mounted under /api

Reason = Annotated[str, StringConstraints(strict=True, max_length=2000)]
ErrorText = Annotated[str, StringConstraints(strict=True, min_length=1, max_length=10_000)]


class ToolResultRequest(Strict):
    """Exactly one of ``output`` (any JSON) or ``error`` (what went wrong)."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={"oneOf": [{"required": ["output"]}, {"required": ["error"]}]},
    )

    tool_call_id: Id
    output: Any = None
    # null is refused (400): the schema says a string
    error: Annotated[
        ErrorText | None,
        WithJsonSchema({"type": "string", "minLength": 1, "maxLength": 10_000}),
    ] = None


class ToolApprovalRequest(Strict):
    tool_call_id: Id
    approved: bool
    reason: Reason | None = None


class ToolResultAnswer(Shape):
    tool_message: Message
    continuation: Message | None = Field(
        description="the reply that continues the turn, when this was the last open call"
    )


class ToolApprovalAnswer(Shape):
    assistant_message: Message
    tool_message: Message | None = Field(description="a denial's error result")
    continuation: Message | None


@routes.post("/sessions/{sid}/messages/{mid}/tool-results")
@describe(
    body=ToolResultRequest,
    responses={
        201: Reply("the result is stored", ToolResultAnswer),
        200: Reply("this call had its result already: the stored one", ToolResultAnswer),
    },
)
async def post_tool_result(request: web.Request) -> web.Response:
    """Store a tool's result for a call of a waiting reply (idempotent per
    ``tool_call_id``); the last one continues the turn."""
    data, _ = await read_json(request)
    body = ToolResultRequest.model_validate(data)
    if ("output" in data) == ("error" in data) or ("error" in data and body.error is None):
        raise ApiError(
            400, "invalid_input", "give exactly one of output or error", {"loc": ["output"]}
        )
    text = body.error if body.error is not None else orjson.dumps(body.output).decode()
    check_content(text, state_of(request)[SETTINGS], allow_empty=True)
    async with state_of(request)[REGISTRY].session(
        request.match_info["sid"], user_of(request)
    ) as s:
        tool_msg, created, cont = await s.tool_result(
            request.match_info["mid"], body.tool_call_id, output=body.output, error=body.error
        )
    return json_response({"tool_message": tool_msg, "continuation": cont}, 201 if created else 200)


@routes.post("/sessions/{sid}/messages/{mid}/tool-approvals")
@describe(
    body=ToolApprovalRequest,
    responses={200: Reply("the decision is recorded", ToolApprovalAnswer)},
)
async def post_tool_approval(request: web.Request) -> web.Response:
    """Approve (the call then waits for its result) or deny (an error result is
    stored) a call of a reply that is ``awaiting_approval``."""
    data, _ = await read_json(request)
    body = ToolApprovalRequest.model_validate(data)
    async with state_of(request)[REGISTRY].session(
        request.match_info["sid"], user_of(request)
    ) as s:
        assistant, tool_msg, cont = await s.tool_approval(
            request.match_info["mid"], body.tool_call_id, approved=body.approved, reason=body.reason
        )
    return json_response(
        {"assistant_message": assistant, "tool_message": tool_msg, "continuation": cont}
    )
