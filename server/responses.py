"""What the server answers: response bodies as pydantic models, the shapes the API promises
(SPEC section 3). The counterpart of :mod:`server.requests` (what clients send).

The handlers build plain dicts (storage makes them); these models describe
them for ``/openapi.json``, and the test suite validates real responses
against them (``extra="forbid"``), so a field added to a response without
being added here fails a test instead of silently drifting from the document.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel

# a message's status (storage.rows.Status, which server/ does not import)
MessageStatus = Literal[
    "pending",
    "streaming",
    "complete",
    "error",
    "cancelled",
    "interrupted",
    "queued",
    "awaiting_tool",
    "awaiting_approval",
]


class Shape(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Session(Shape):
    id: str
    title: str | None
    metadata: dict[str, Any]
    created_at: str = Field(description="RFC 3339 UTC with milliseconds")
    updated_at: str
    message_count: int
    last_message_at: str | None
    active_leaf_id: str | None
    pinned: bool = Field(description="listed first")
    archived: bool = Field(description="hidden from the list unless asked for")
    folder: str | None = Field(description="one path-like folder (a/b/c), or null")
    tags: list[str] = Field(description="a set of tags, sorted")
    title_source: Literal["user", "auto"] | None = Field(
        description="who set the title: the user, or made after the first reply (auto)"
    )
    temporary: bool = Field(
        description="expires after --temporary-ttl seconds of inactivity; hidden from the list"
    )
    expires_at: str | None = Field(description="when the session is deleted, or null")
    settings: dict[str, Any] = Field(
        description="system_prompt, model, temperature, tools, on_busy (issue 19)"
    )


class Feedback(Shape):
    rating: Literal[1, -1]
    tags: list[str]
    comment: str | None
    user: str
    updated_at: str


class Siblings(Shape):
    index: int = Field(description="position among the message's siblings, from 0")
    count: int


class Message(Shape):
    id: str
    session_id: str
    seq: int = Field(description="position in the session's log")
    role: Literal["user", "assistant", "system", "tool"]
    content: str
    parts: list[dict[str, Any]] | None
    status: MessageStatus
    parent_id: str | None
    client_id: str | None
    model_id: str | None
    provider_id: str | None
    fallback_notice: str | None
    tool_name: str | None
    tool_call: Any
    tool_result: Any
    attachments: list[Any]
    metadata: dict[str, Any]
    error: dict[str, Any] | None
    created_at: str
    updated_at: str
    version: int = Field(description="bumped on every change; use it in If-Match")
    deleted: bool = Field(description="a tombstone that keeps the tree whole")
    feedback: Feedback | None = Field(None, description="the owner's rating of the message")
    siblings: Siblings | None = Field(
        None, description="only in view=active pages: where this message is among its siblings"
    )
    # issue 21 (README "Context window")
    tokens: int = Field(0, description="estimated tokens of the message as a model receives it")
    usage: dict[str, Any] | None = Field(
        None,
        description="a reply's token usage: prompt_tokens, completion_tokens, cached_tokens, "
        "reasoning_tokens, total_tokens, source (provider|estimate), model, ttft_ms",
    )
    context: dict[str, Any] | None = Field(
        None,
        description="what a reply answered: runs [first_id, last_id, count] of its branch "
        "path, summary_ids, message_count, tokens, budget, window, calibration, omitted_id",
    )


class SessionList(Shape):
    items: list[Session]
    next_cursor: str | None


class SessionView(Shape):
    session: Session
    messages: list[Message]
    before: str | None


class MessagePage(Shape):
    items: list[Message]
    before: str | None
    after: str | None


class ChatResult(Shape):
    """The answer of chat/regenerate with ``Accept: application/json``."""

    client_id: str | None = None
    user_message: Message | None = None
    assistant_message: Message | None = Field(description="null while the turn is queued")
    queued: bool = False


class User(Shape):
    user: str


class Health(Shape):
    status: str
    live_actors: int
    cluster: dict[str, Any] | None = None


class ErrorDetail(Shape):
    code: str
    message: str
    details: Any


class Error(Shape):
    error: ErrorDetail


class Attachment(Shape):
    """An uploaded file's record (``POST /api/sessions/{sid}/attachments``)."""

    id: str
    name: str = Field(description="the file name, made safe (no directories, no control chars)")
    mime: str = Field(description="type/subtype; the download's Content-Type")
    size: int = Field(description="bytes")
    sha256: str = Field(description="hex digest of the bytes; the download's ETag")
    url: str = Field(description="where to download it")
    created_at: str


class SearchHit(Shape):
    message: Message
    snippet: str = Field(description="HTML: the matches in <mark>, everything else escaped")
    score: float = Field(description="BM25 relevance, higher is better")
    rank: int = Field(description="position in the answer, from 1")


class SearchPage(Shape):
    items: list[SearchHit]
    q: str
    mode: Literal["words", "fts"]


class CrossSearchHit(Shape):
    session_id: str
    session_title: str | None
    message_id: str
    seq: int
    role: Literal["user", "assistant", "system", "tool"]
    created_at: str
    snippet: str = Field(description="HTML: the matches in <mark>, everything else escaped")
    score: float = Field(description="BM25 relevance, higher is better")
    rank: int = Field(description="position in the whole answer, from 1")


class CrossSearchPage(Shape):
    items: list[CrossSearchHit]
    next_cursor: str | None
    q: str
    mode: Literal["words", "fts"]


class Folder(Shape):
    folder: str
    count: int = Field(description="sessions listed by default (not archived)")
    archived: int = Field(description="archived sessions in it")


class FolderList(Shape):
    items: list[Folder]


class SiblingItem(Shape):
    id: str
    role: Literal["user", "assistant", "system", "tool"]
    status: MessageStatus
    deleted: bool
    created_at: str


class SiblingsPage(Shape):
    items: list[SiblingItem] = Field(description="items[i] is the sibling whose index is i")


class ScopedToken(Shape):
    token: str = Field(description="a Roost-signed JWT; send it as Authorization: Bearer")
    session_id: str
    scope: Literal["read", "write"]
    expires_at: int = Field(description="UNIX seconds")


class ShareInfo(Shape):
    id: str = Field(description="the unguessable share id")
    session_id: str
    branch: Literal["active", "all"]
    created_at: str
    expires_at: str | None
    url: str = Field(description="the web page of the share (path)")


class ShareList(Shape):
    items: list[ShareInfo]


class SharedMessage(Shape):
    id: str
    parent_id: str | None
    role: str
    content: str
    parts: list[Any] | None
    status: str
    model_id: str | None
    created_at: str


class SharedChat(Shape):
    """What anyone with a share id sees: the chat as it was when it was shared."""

    id: str
    branch: Literal["active", "all"]
    title: str | None
    shared_at: str
    expires_at: str | None
    active_leaf_id: str | None
    messages: list[SharedMessage] = Field(description="live messages in log order")


class ImportedConversation(Shape):
    """One session a ChatGPT import made (issue 25)."""

    id: str
    title: str | None
    conversation_id: str | None = Field(description="the ChatGPT conversation's id")
    index: int = Field(description="its position in conversations.json")


class ChatGPTImport(Shape):
    """What ``POST /sessions/import?format=chatgpt`` made: one session per conversation."""

    count: int
    sessions: list[ImportedConversation]


class ImportAnswer(RootModel[Session | ChatGPTImport]):
    """An import's answer: the new session, or (format=chatgpt) the sessions made."""
