"""What clients send: request bodies as pydantic models (unknown fields refused), and their checks.

The counterpart of :mod:`server.responses` (what the server answers). Limits
that depend on settings (content length, metadata size, parts) are checked by
the ``check_*`` functions after parsing, so the models stay static and can be
used to generate the OpenAPI document. Pieces used by more than one route
module live here (the chat request is taken by ``POST /chat`` and by the
WebSocket ``chat`` frame alike).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import orjson
from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints

from actors.session import NewMessage
from server.errors import ApiError
from server.http import request_hash
from server.settings import Settings
from server.tokens import MAX_JWT_CHARS

Str = Annotated[str, StringConstraints(strict=True)]
Id = Annotated[str, StringConstraints(strict=True, min_length=1, max_length=128)]
# the rule of storage.ids.validate_session_id, stated in the schema too
SessionId = Annotated[
    str, StringConstraints(strict=True, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
]
ClientId = Annotated[str, StringConstraints(strict=True, min_length=1, max_length=256)]
Role = Literal["user", "assistant", "system", "tool"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class TextPart(Strict):
    type: Literal["text"]
    text: Str


class ToolCallPart(Strict):
    type: Literal["tool-call"]
    tool_call_id: Id
    tool_name: Id
    args: Any = None


class ToolResultPart(Strict):
    type: Literal["tool-result"]
    tool_call_id: Id
    result: Any = None
    is_error: bool = False


class AttachmentPart(Strict):
    type: Literal["attachment"]
    attachment_id: Id


Part = Annotated[
    TextPart | ToolCallPart | ToolResultPart | AttachmentPart, Field(discriminator="type")
]


# organisation (issue 23): a folder is a path of 1-8 names joined by "/", each 1-64
# characters without "/" or control characters, not "." or ".."; a tag is 1-64
# characters without control characters; at most 32 tags
_SEGMENT = (
    r"(?:[^/.\x00-\x1f\x7f][^/\x00-\x1f\x7f]{0,63}|\.[^/.\x00-\x1f\x7f][^/\x00-\x1f\x7f]{0,62}"
    r"|\.\.[^/\x00-\x1f\x7f]{1,62})"
)
FOLDER_PATTERN = rf"^{_SEGMENT}(?:/{_SEGMENT}){{0,7}}$"
Folder = Annotated[str, StringConstraints(strict=True, max_length=200, pattern=FOLDER_PATTERN)]
Tag = Annotated[
    str, StringConstraints(strict=True, min_length=1, max_length=64, pattern=r"^[^\x00-\x1f\x7f]+$")
]
Tags = Annotated[list[Tag], Field(max_length=32)]


# RFC 3339 with a zone (normalized to UTC with milliseconds by check_expires_at)
def _text_only(value: Any) -> Any:
    if not isinstance(value, str):
        raise ValueError("a time is an RFC 3339 string")
    return value


Timestamp = Annotated[
    AwareDatetime,
    Field(strict=False, json_schema_extra={"format": "date-time"}),
    BeforeValidator(_text_only),
]


class SessionCreate(Strict):
    id: SessionId | None = None
    title: Str | None = None
    metadata: dict[str, Any] | None = None
    pinned: bool = False
    archived: bool = False
    folder: Folder | None = None
    tags: Tags | None = None
    temporary: bool = Field(
        False, description="expire after --temporary-ttl s of inactivity; hidden from the list"
    )
    expires_at: Timestamp | None = Field(None, description="delete the session at this time")


# session settings (issue 19); the limits are stated in the README
MAX_SYSTEM_PROMPT_CHARS = 32_000
MAX_TOOLS = 64
MAX_TOOL_PARAMETERS_BYTES = 16_384
ToolName = Annotated[str, StringConstraints(strict=True, pattern=r"^[A-Za-z0-9_-]{1,64}$")]


class ToolSpec(Strict):
    """A tool the model may call; ``parameters`` is its JSON Schema (an object)."""

    name: ToolName
    description: Annotated[str, StringConstraints(strict=True, max_length=1024)] | None = None
    parameters: dict[str, Any] | None = None
    needs_approval: bool = False


class SessionSettings(Strict):
    """What a session's replies are made with; ``PATCH settings`` replaces them whole."""

    system_prompt: (
        Annotated[str, StringConstraints(strict=True, max_length=MAX_SYSTEM_PROMPT_CHARS)] | None
    ) = None
    model: Annotated[str, StringConstraints(strict=True, min_length=1, max_length=200)] | None = (
        None
    )
    temperature: Annotated[float, Field(strict=False, ge=0, le=2)] | None = None
    tools: Annotated[list[ToolSpec], Field(max_length=MAX_TOOLS)] | None = None
    on_busy: Literal["reject", "queue", "interrupt", "rollback"] | None = None


def check_settings(value: SessionSettings | None) -> dict[str, Any]:
    """The settings to store (``{}`` for null), or ApiError 400: tool names must be
    unique, each tool's ``parameters`` at most MAX_TOOL_PARAMETERS_BYTES of JSON."""
    if value is None:
        return {}
    tools = value.tools or []
    names = [t.name for t in tools]
    if len(set(names)) != len(names):
        raise ApiError(
            400, "invalid_input", "tool names must be unique", {"loc": ["settings", "tools"]}
        )
    for i, t in enumerate(tools):
        if t.parameters is not None and len(orjson.dumps(t.parameters)) > MAX_TOOL_PARAMETERS_BYTES:
            raise ApiError(
                400,
                "invalid_input",
                f"a tool's parameters are at most {MAX_TOOL_PARAMETERS_BYTES} bytes of JSON",
                {"loc": ["settings", "tools", i, "parameters"]},
            )
    return value.model_dump(exclude_none=True)


class SessionPatch(Strict):
    # an empty patch is refused (400 "nothing to change"): say so in the schema
    model_config = ConfigDict(json_schema_extra={"minProperties": 1})

    title: Str | None = None
    metadata: dict[str, Any] | None = None
    active_leaf_id: Id | None = None
    pinned: bool | None = None
    archived: bool | None = None
    folder: Folder | None = Field(None, description="null takes the session out of its folder")
    tags: Tags | None = None
    expires_at: Timestamp | None = Field(None, description="null: no fixed expiry")
    settings: SessionSettings | None = Field(
        None, description="replaces the session's settings; null clears them (issue 19)"
    )


class FeedbackPut(Strict):
    rating: Literal[1, -1]
    tags: Tags | None = None
    comment: Annotated[str, StringConstraints(strict=True, max_length=2000)] | None = None


def check_expires_at(value: datetime | None) -> str | None:
    """``value`` as Roost's timestamp form: UTC, milliseconds, ``Z``."""
    if value is None:
        return None
    t = value.astimezone(UTC)
    return (
        f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:"
        f"{t.second:02d}.{t.microsecond // 1000:03d}Z"
    )


class MessageCreate(Strict):
    role: Role
    content: Str
    parts: list[Part] | None = None
    client_id: ClientId | None = None
    parent_id: Id | None = None
    tool_name: Id | None = None
    tool_call: Any = None
    tool_result: Any = None
    attachments: list[Id] | None = None
    metadata: dict[str, Any] | None = None


class MessagePatch(Strict):
    # what counts as a change (see routes_core.patch_message): non-empty content,
    # parts (even null: that clears them) or metadata that is not null
    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [
                {
                    "required": ["content"],
                    "properties": {"content": {"type": "string", "pattern": r"\S"}},
                },
                {"required": ["parts"]},
                {"required": ["metadata"], "properties": {"metadata": {"type": "object"}}},
            ]
        }
    )

    # blank content is refused (400): "pattern" binds only the string branch
    content: Str | None = Field(default=None, json_schema_extra={"pattern": r"\S"})
    parts: list[Part] | None = None
    metadata: dict[str, Any] | None = None


def _depth(value: Any, limit: int, level: int = 1) -> int:
    if level > limit:
        return level
    if isinstance(value, dict):
        return max([level, *(_depth(v, limit, level + 1) for v in value.values())])
    if isinstance(value, list):
        return max([level, *(_depth(v, limit, level + 1) for v in value)])
    return level - 1


def check_metadata(meta: dict[str, Any] | None, settings: Settings, raw_size: int) -> None:
    """Refuse metadata over the size or nesting limit (413 / 400)."""
    if meta is None:
        return
    if raw_size > settings.max_metadata_bytes:
        raise ApiError(
            413,
            "metadata_too_large",
            f"metadata is {raw_size} bytes; the limit is {settings.max_metadata_bytes}",
        )
    if _depth(meta, settings.max_metadata_depth) > settings.max_metadata_depth:
        raise ApiError(
            400,
            "invalid_input",
            f"metadata nests deeper than {settings.max_metadata_depth} levels",
        )


def check_content(content: str | None, settings: Settings, *, allow_empty: bool) -> None:
    """Refuse empty (blank) content unless allowed, and content over the limit."""
    if content is None:
        return
    if len(content) > settings.max_content_chars:
        raise ApiError(
            413,
            "content_too_large",
            f"content is {len(content)} characters; the limit is {settings.max_content_chars}",
        )
    if not allow_empty and not content.strip():
        raise ApiError(400, "invalid_input", "content must not be empty", {"loc": ["content"]})


def check_title(title: str | None, settings: Settings) -> None:
    if title is not None and len(title) > settings.max_title_chars:
        raise ApiError(
            400,
            "invalid_input",
            f"title is {len(title)} characters; the limit is {settings.max_title_chars}",
            {"loc": ["title"]},
        )


def check_parts(parts: list[Any] | None, settings: Settings) -> None:
    if parts is not None and len(parts) > settings.max_parts:
        raise ApiError(
            400,
            "invalid_input",
            f"{len(parts)} parts; the limit is {settings.max_parts}",
            {"loc": ["parts"]},
        )


# ---------------------------------------------------------------------------- sign-in

Token = Annotated[str, StringConstraints(strict=True, min_length=1, max_length=MAX_JWT_CHARS)]


class LoginRequest(Strict):
    token: Token


# ---------------------------------------------------------------------------- chat

Model = Annotated[str, StringConstraints(strict=True, min_length=1, max_length=200)]


OnBusy = Literal["reject", "queue", "interrupt", "rollback"]


class ChatRequest(Strict):
    content: Str
    client_id: ClientId | None = None
    parent_id: Id | None = None
    model: Model | None = None
    attachments: list[Id] | None = None
    metadata: dict[str, Any] | None = None
    on_busy: OnBusy | None = Field(
        None,
        description="while a reply runs or waits for a tool: reject (409 session_busy), "
        "queue, interrupt or rollback; default: the session's settings, else --on-busy",
    )


class RegenerateRequest(Strict):
    model: Model | None = None


def chat_draft(body: ChatRequest, settings: Settings) -> NewMessage:
    """Check a chat request against the limits and make the user message's draft.

    Shared by ``POST /chat`` and the WebSocket ``chat`` frame, so both take the
    same input the same way. Raises :class:`ApiError` (400/413) for content or
    metadata over the limits.
    """
    check_content(body.content, settings, allow_empty=False)
    check_metadata(body.metadata, settings, len(orjson.dumps(body.metadata)))
    return NewMessage(
        role="user",
        content=body.content,
        attachments=body.attachments,
        client_id=body.client_id,
        parent_id=body.parent_id,
        metadata=body.metadata,
        request_hash=request_hash(body) if body.client_id is not None else None,
        explicit_parent="parent_id" in body.model_fields_set,
    )


# ---------------------------------------------------------------------------- identity


def _whole_number(value: Any) -> Any:
    """A JSON number with no fraction (``3600.0``) as an int: JSON Schema counts it as
    an integer, so the API takes it; anything else goes on to the strict check."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


#: a lifetime in seconds, at least a minute, as a JSON integer (``3600`` or ``3600.0``,
#: never ``"3600"`` or ``3600.5``)
Lifetime = Annotated[int, Field(ge=60), BeforeValidator(_whole_number)]


class ScopedTokenCreate(Strict):
    scope: Literal["read", "write"] = Field(
        "read", description="read: reads only; write: reads and changes this session"
    )
    expires_in: Lifetime = Field(
        3600, description="seconds the token lasts (at most --max-scoped-token-ttl)"
    )


MAX_SHARE_SECONDS = 100 * 365 * 86400
ShareLifetime = Annotated[int, Field(ge=60, le=MAX_SHARE_SECONDS), BeforeValidator(_whole_number)]


class ShareCreate(Strict):
    branch: Literal["active", "all"] = Field(
        "active", description="active: the active branch only; all: every branch"
    )
    expires_in: ShareLifetime | None = Field(
        None, description="seconds the link lasts (default: until revoked; at most 100 years)"
    )
