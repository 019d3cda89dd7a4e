"""The model's context window (issue 21): what a reply sends, and compaction on demand.

``GET /sessions/{sid}/context?leaf_id=`` answers exactly what the next reply
below ``leaf_id`` (default: the active leaf) would send: the ids of the
messages and summaries, their estimated token counts, the budget and the
calibration of the model. ``POST /sessions/{sid}/compact {leaf_id?}``
summarizes the oldest uncovered range of that branch now.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import Field

from server.errors import ApiError
from server.http import json_response, read_json, user_of
from server.keys import REGISTRY, state_of
from server.openapi import Param, Reply, describe
from server.requests import Id, Strict
from server.responses import Shape

routes = web.RouteTableDef()  # mounted under /api


class CompactRequest(Strict):
    leaf_id: Id | None = Field(None, description="the branch's leaf (default: the active leaf)")


class Summary(Shape):
    id: str
    session_id: str
    seq: int
    from_id: str = Field(description="the oldest message the summary covers")
    to_id: str = Field(description="the newest message it covers (on the same branch path)")
    content: str
    tokens: int = Field(description="estimated tokens, as sent (a system message)")
    covered: int = Field(description="how many messages of the path it covers")
    model_id: str | None
    created_at: str
    created: bool = Field(description="false when the branch had this summary already")


class CompactResult(Shape):
    summary: Summary | None = Field(
        description="the newest summary made, null when there was nothing to compact"
    )
    summaries: list[Summary] = Field(description="every summary made, oldest first")


class ContextItem(Shape):
    id: str
    role: str
    tokens: int


class ContextSummary(Shape):
    id: str
    from_id: str | None
    to_id: str | None
    tokens: int


class ContextView(Shape):
    """What the next reply at ``leaf_id`` sends (token counts are Roost's estimates;
    ``corrected_tokens`` applies the model's calibration)."""

    leaf_id: str | None
    model: str
    window: int = Field(description="the model's context size (--model-context)")
    reply_reserve: float
    compact_at: float
    budget: int = Field(description="window * (1 - reply_reserve): the provider tokens to fill")
    message_budget: int = Field(description="estimated tokens left for messages and summaries")
    calibration: float = Field(description="provider-reported / estimated prompt tokens")
    tokens: int = Field(description="estimated tokens of the whole request")
    corrected_tokens: int
    fixed_tokens: int = Field(description="system prompt, tool definitions, reply priming")
    message_count: int
    message_ids: list[str] = Field(description="oldest first")
    messages: list[ContextItem]
    summary_ids: list[str]
    summaries: list[ContextSummary]
    runs: list[list[Any]] = Field(description="[first_id, last_id, count] runs of the path")
    omitted_id: str | None = Field(description="the newest message whose content is not sent")
    needs_compaction: bool


@routes.get("/sessions/{sid}/context")
@describe(
    params=(Param("leaf_id", "query", {"type": "string", "minLength": 1, "maxLength": 128}),),
    responses={200: Reply("what the next reply at that leaf would send", ContextView)},
)
async def get_context(request: web.Request) -> web.Response:
    """The context the next reply below ``leaf_id`` (default: the active leaf) answers."""
    leaf = request.query.get("leaf_id")
    if leaf is not None and not 1 <= len(leaf) <= 128:
        raise ApiError(
            400, "invalid_input", "leaf_id must be 1-128 characters", {"loc": ["query", "leaf_id"]}
        )
    async with state_of(request)[REGISTRY].session(
        request.match_info["sid"], user_of(request)
    ) as s:
        doc = await s.context(leaf)
    return json_response(doc)


@routes.post("/sessions/{sid}/compact")
@describe(
    body=CompactRequest,
    body_required=False,
    responses={
        201: Reply("a summary was made", CompactResult),
        200: Reply("nothing to compact, or the branch had the summary already", CompactResult),
    },
)
async def post_compact(request: web.Request) -> web.Response:
    """Summarize the uncovered history of the branch ending at ``leaf_id`` now, oldest
    range first (at most 8 summaries; a compaction after the next reply goes on)."""
    body = CompactRequest(leaf_id=None)
    if request.can_read_body:
        data, _ = await read_json(request)
        body = CompactRequest.model_validate(data)
    async with state_of(request)[REGISTRY].session(
        request.match_info["sid"], user_of(request)
    ) as s:
        made = await s.compact(body.leaf_id)
    created = any(m["created"] for m in made)
    return json_response(
        {"summary": made[-1] if made else None, "summaries": made}, 201 if created else 200
    )
