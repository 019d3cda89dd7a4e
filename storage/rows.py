"""Rows of a session file, by name: the one column definition per table and its documents.

Every column list a query selects, the INSERT of a new message and the API
documents built from rows derive from the named row types here
(:class:`MessageRow`, :class:`SessionRow`, :class:`AttachmentRow`): their
field order *is* the column order. Adding a column means adding a field (and
its migration); select lists, the INSERT list and the readers follow without
positional edits. This is the only module that may index a row by position
(``structure_check`` enforces it); everyone else reads ``row.deleted_at``, or
unpacks a short ad-hoc ``SELECT`` into named variables, or uses :func:`scalar`.

Everything here is pure (no I/O beyond the statement a helper is handed).
"""

from __future__ import annotations

import operator
import sqlite3
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple, Protocol, get_args

import orjson

from storage.attachments import attachment_url

ROLES = ("user", "assistant", "system", "tool")
Status = Literal[
    "pending",
    "streaming",
    "complete",
    "error",
    "cancelled",
    "interrupted",
    # issue 19: a turn waiting for its start, a reply waiting for tool results or approvals
    "queued",
    "awaiting_tool",
    "awaiting_approval",
]
STATUSES: tuple[str, ...] = get_args(Status)
UNFINISHED = ("pending", "streaming")
# a turn that runs, waits or is queued (index ``messages_turns`` covers exactly these)
UNSETTLED = ("pending", "streaming", "queued", "awaiting_tool", "awaiting_approval")
UNSETTLED_SQL = "status IN (" + ", ".join(f"'{s}'" for s in UNSETTLED) + ")"


def dumps(value: Any) -> str:
    """JSON text for a column."""
    return orjson.dumps(value).decode()


def json_batch(rows: Sequence[Sequence[Any]]) -> str | None:
    """``rows`` as one JSON array for a statement over ``json_each(?)``, or None
    when they should go row by row: a single row (nothing to gain), or a NUL in
    any text (SQLite's JSON text stops at a NUL; orjson writes it ``\\u0000``, and
    a literal backslash-u0000 is taken for one too: slower, never wrong). Bytes
    travel as their UTF-8 text; CAST them back to a blob in the statement.

    Why batch: one statement runs in SQLite without the GIL from start to end,
    where ``executemany`` takes the GIL back for every row, and on the write
    pool each take waits on the busy event loop (~60 us of a 64x64 append)."""
    if len(rows) < 2:
        return None
    text = orjson.dumps(rows, default=_bytes_as_text).decode()
    return None if "\\u0000" in text else text


def _bytes_as_text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode()
    raise TypeError(f"not JSON: {type(value).__name__}")


_json = orjson.loads


def loads(text: str | None) -> Any:
    """The value of a JSON column (None stays None)."""
    return None if text is None else orjson.loads(text)


class MessageRow(NamedTuple):
    """One ``messages`` row; the field order is the column order of :data:`MESSAGE_SELECT`."""

    seq: int
    id: str
    parent_seq: int | None
    parent_id: str | None
    depth: int
    sibling_index: int
    child_count: int
    role: str
    content: str
    parts: str | None
    status: str
    client_id: str | None
    request_hash: str | None
    model_id: str | None
    provider_id: str | None
    fallback_notice: str | None
    tool_name: str | None
    tool_call: str | None
    tool_result: str | None
    attachments: str | None
    metadata: str
    error: str | None
    created_at: str
    updated_at: str
    version: int
    deleted_at: str | None
    feedback: str | None  # v3 (issue 23): the owner's rating, JSON {rating, tags, comment, ...}
    # v5 (issue 21): estimated tokens (storage.tokens), a reply's usage and context record
    tokens: int
    usage: str | None
    context: str | None


class SessionRow(NamedTuple):
    """The ``session`` row; the field order is the column order of :data:`SESSION_SELECT`."""

    id: str
    owner: str
    title: str | None
    metadata: str
    created_at: str
    updated_at: str
    message_count: int
    last_message_at: str | None
    active_leaf_seq: int | None
    active_leaf_id: str | None
    root_count: int
    event_seq: int
    # v3 (issue 23): organisation, title source, retention
    pinned: int
    archived: int
    folder: str | None
    tags: str
    title_source: str | None
    temporary: int
    expires_at: str | None
    settings: str  # v4 (issue 19): system prompt, model, temperature, tools, on_busy (JSON)


class AttachmentRow(NamedTuple):
    """One ``attachments`` row; the field order is the column order of :data:`ATTACHMENT_SELECT`."""

    id: str
    name: str
    mime: str
    size: int
    sha256: str
    created_at: str


MESSAGE_COLUMNS: tuple[str, ...] = MessageRow._fields
SESSION_COLUMNS: tuple[str, ...] = SessionRow._fields
ATTACHMENT_COLUMNS: tuple[str, ...] = AttachmentRow._fields

MESSAGE_SELECT = ", ".join(MESSAGE_COLUMNS)
SESSION_SELECT = ", ".join(SESSION_COLUMNS)
ATTACHMENT_SELECT = ", ".join(ATTACHMENT_COLUMNS)
MESSAGE_INSERT = MESSAGE_SELECT  # every column (import writes them all)
ATTACHMENT_INSERT = ATTACHMENT_SELECT

# Columns an append never sets: the schema's defaults fill them. A new message's
# MessageRow carries these same values, so its document is the stored row's;
# the INSERT of an append names the other columns only (fewer binds on the hot path).
NEW_MESSAGE_DEFAULTS: dict[str, Any] = {
    "fallback_notice": None,
    "error": None,
    "version": 1,
    "deleted_at": None,
    "feedback": None,
    "usage": None,
    "context": None,
}
NEW_MESSAGE_COLUMNS: tuple[str, ...] = tuple(
    c for c in MESSAGE_COLUMNS if c not in NEW_MESSAGE_DEFAULTS
)
NEW_MESSAGE_INSERT = ", ".join(NEW_MESSAGE_COLUMNS)
_new_message_values = operator.itemgetter(*(MESSAGE_COLUMNS.index(c) for c in NEW_MESSAGE_COLUMNS))


def new_message_values(row: MessageRow) -> tuple[Any, ...]:
    """The values of :data:`NEW_MESSAGE_COLUMNS` of ``row``, in that order."""
    return _new_message_values(row)  # type: ignore[no-any-return]


_N_MSG = len(MESSAGE_COLUMNS)


def prefixed(alias: str, columns: Sequence[str] = MESSAGE_COLUMNS) -> str:
    """The select list ``alias.col, …`` of ``columns`` (the messages columns by default)."""
    return ", ".join(f"{alias}.{c}" for c in columns)


def message_row(raw: Sequence[Any]) -> MessageRow:
    """The :class:`MessageRow` of a row selected with :data:`MESSAGE_SELECT` (nothing more)."""
    return MessageRow._make(raw)


def split_message(raw: Sequence[Any]) -> tuple[MessageRow, tuple[Any, ...]]:
    """A row selected as ``MESSAGE_SELECT, extra…``: ``(message row, extras)``.

    Callers unpack the extras into named variables:
    ``msg, (depth, count) = split_message(raw)``.
    """
    return MessageRow._make(raw[:_N_MSG]), tuple(raw[_N_MSG:])


def scalar(cur: sqlite3.Cursor | Any) -> Any:
    """The single value of a one-column, one-row query (``SELECT COUNT(*) …``).

    Raises :class:`LookupError` when the query returned no row.
    """
    row = cur.fetchone()
    if row is None:
        raise LookupError("the query returned no row")
    return row[0]


def message_doc(row: MessageRow, session_id: str) -> dict[str, Any]:
    """The API shape (Message document) of a ``messages`` row.

    On every append's path: the JSON columns are decoded inline (no helper call).
    """
    parts, tool_call, tool_result = row.parts, row.tool_call, row.tool_result
    attachments, error = row.attachments, row.error
    return {
        "id": row.id,
        "session_id": session_id,
        "seq": row.seq,
        "role": row.role,
        "content": row.content,
        "parts": None if parts is None else _json(parts),
        "status": row.status,
        "parent_id": row.parent_id,
        "client_id": row.client_id,
        "model_id": row.model_id,
        "provider_id": row.provider_id,
        "fallback_notice": row.fallback_notice,
        "tool_name": row.tool_name,
        "tool_call": None if tool_call is None else _json(tool_call),
        "tool_result": None if tool_result is None else _json(tool_result),
        "attachments": (None if attachments is None else _json(attachments)) or [],
        "metadata": (None if row.metadata is None else _json(row.metadata)) or {},
        "error": None if error is None else _json(error),
        "created_at": row.created_at,
        "updated_at": row.updated_at,
        "version": row.version,
        "deleted": row.deleted_at is not None,
        "feedback": None if row.feedback is None else _json(row.feedback),
        "tokens": row.tokens,
        "usage": None if row.usage is None else _json(row.usage),
        "context": None if row.context is None else _json(row.context),
    }


class SessionFields(Protocol):
    """What :func:`session_doc` reads: a :class:`SessionRow` or the in-memory session state."""

    @property
    def id(self) -> str: ...
    @property
    def title(self) -> str | None: ...
    @property
    def metadata(self) -> str: ...
    @property
    def created_at(self) -> str: ...
    @property
    def updated_at(self) -> str: ...
    @property
    def message_count(self) -> int: ...
    @property
    def last_message_at(self) -> str | None: ...
    @property
    def active_leaf_id(self) -> str | None: ...
    @property
    def pinned(self) -> int: ...
    @property
    def archived(self) -> int: ...
    @property
    def folder(self) -> str | None: ...
    @property
    def tags(self) -> str: ...
    @property
    def title_source(self) -> str | None: ...
    @property
    def temporary(self) -> int: ...
    @property
    def expires_at(self) -> str | None: ...
    @property
    def settings(self) -> str: ...


def session_doc(row: SessionFields) -> dict[str, Any]:
    """The API shape (Session document) of the session row (or state)."""
    return {
        "id": row.id,
        "title": row.title,
        "metadata": loads(row.metadata) or {},
        "created_at": row.created_at,
        "updated_at": row.updated_at,
        "message_count": row.message_count,
        "last_message_at": row.last_message_at,
        "active_leaf_id": row.active_leaf_id,
        "pinned": bool(row.pinned),
        "archived": bool(row.archived),
        "folder": row.folder,
        "tags": loads(row.tags) or [],
        "title_source": row.title_source,
        "temporary": bool(row.temporary),
        "expires_at": row.expires_at,
        "settings": loads(row.settings) or {},
    }


def attachment_doc(row: AttachmentRow, session_id: str) -> dict[str, Any]:
    """The API shape (Attachment document) of an ``attachments`` row.

    Carries ``url`` (:func:`storage.attachments.attachment_url`, the one place
    that spells the path): message refs are stored with it and event frames
    are encoded at commit, so it cannot be added later without changing bytes.
    """
    return {
        "id": row.id,
        "name": row.name,
        "mime": row.mime,
        "size": row.size,
        "sha256": row.sha256,
        "url": attachment_url(session_id, row.id),
        "created_at": row.created_at,
    }
