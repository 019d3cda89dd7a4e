"""Request bodies: pydantic models that parse the raw JSON (unknown fields refused).

Limits that depend on settings (content length, metadata size) are checked by
:func:`check_limits` after parsing, so the models stay static and can be used
to generate the OpenAPI document.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from server.errors import ApiError
from server.settings import Settings

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


class SessionCreate(Strict):
    id: SessionId | None = None
    title: Str | None = None
    metadata: dict[str, Any] | None = None


class SessionPatch(Strict):
    title: Str | None = None
    metadata: dict[str, Any] | None = None
    active_leaf_id: Id | None = None


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
    content: Str | None = None
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
