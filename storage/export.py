"""Session export and import: the ``roost.session.v1`` format.

The renderers are pure functions: they take the session's documents and an
*iterable* of Message documents (API shape, see ``storage.rows.message_doc``)
and yield the output in chunks, so a caller can stream a session of any size in
bounded memory: nothing here holds more than one batch of messages at a time.
The server's ``GET /api/sessions/{sid}/export`` (through :func:`iter_export`)
and ``roost-admin export`` both use them, so they produce the same formats.

JSON (``roost.session.v1``)::

    {"format": "roost.session.v1", "exported_at": "...",
     "session": {Session doc, plus "owner" in the admin tool's export},
     "active_leaf_id": "..." | null,
     "messages": [every message of every branch in log order, tombstones
                  included with "deleted": true],
     "attachments": [attachment records {id, name, mime, size, sha256, url,
                     created_at}: metadata only, the bytes are not exported],
     "summaries": [compaction summaries {id, from_id, to_id, content, ...}
                   (issue 21; an export without them imports too)]}

Markdown: a ``#`` title, then each live message of the active path (root to
active leaf) as a ``## role`` heading followed by its content and links to its
attachments.

Import (:func:`parse_export`, :func:`populate_import`) validates a JSON export
strictly and writes it into a fresh session file with the same message ids,
``seq`` numbers, tree and active leaf. It never holds the decoded tree: the
body's top level is walked by :mod:`storage.jsonscan`, and the messages are
decoded one at a time, once to check them and again to write them.
"""

from __future__ import annotations

import re
import sqlite3
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from storage.attachments import attachment_url
from storage.context import ImportedSummary, import_summaries, iter_summaries
from storage.errors import ContentTooLarge, InvalidInput, MalformedJson
from storage.jsonscan import Member, ScanError, scan_object
from storage.layout import connect
from storage.rows import (
    ATTACHMENT_INSERT,
    ATTACHMENT_SELECT,
    MESSAGE_INSERT,
    MESSAGE_SELECT,
    SESSION_SELECT,
    UNSETTLED,
    AttachmentRow,
    MessageRow,
    SessionRow,
    Status,
    attachment_doc,
    message_doc,
    prefixed,
    session_doc,
    split_message,
)
from storage.tokens import estimate_message

EXPORT_FORMAT = "roost.session.v1"

# ---------------------------------------------------------------------------- rendering


def export_json_chunks(
    session: dict[str, Any],
    messages: Iterable[dict[str, Any]],
    *,
    exported_at: str,
    attachments: Iterable[dict[str, Any]] = (),
    summaries: Iterable[dict[str, Any]] = (),
) -> Iterator[bytes]:
    """Yield the JSON export as UTF-8 byte chunks; joined, they are one JSON document.

    ``messages`` must be in log order (``seq``) and include tombstones.
    """
    head = {
        "format": EXPORT_FORMAT,
        "exported_at": exported_at,
        "session": session,
        "active_leaf_id": session.get("active_leaf_id"),
    }
    yield orjson.dumps(head)[:-1] + b',"messages":['
    for i, msg in enumerate(messages):
        yield (b"," if i else b"") + orjson.dumps(msg)
    yield b'],"attachments":['
    for i, att in enumerate(attachments):
        yield (b"," if i else b"") + orjson.dumps(att)
    yield b'],"summaries":['
    for i, summary in enumerate(summaries):
        yield (b"," if i else b"") + orjson.dumps(summary)
    yield b"]}\n"


def export_markdown_chunks(
    session: dict[str, Any], active_path: Iterable[dict[str, Any]]
) -> Iterator[str]:
    """Yield the Markdown export of the active path, root first.

    Tombstones (``"deleted": true``) on the path are left out.
    """
    title = session.get("title") or session.get("id") or "Session"
    yield f"# {_one_line(str(title))}\n\n"
    for msg in active_path:
        if msg.get("deleted"):
            continue
        content = str(msg.get("content") or "").rstrip("\n")
        links = "".join(
            f"- [{_md_text(str(a.get('name', 'file')))}](<{a.get('url', '')}>)\n"
            for a in msg.get("attachments") or []
            if isinstance(a, dict)
        )
        yield f"## {msg.get('role', '?')}\n\n{content}\n\n" + (f"{links}\n" if links else "")


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _md_text(text: str) -> str:
    return re.sub(r"([\\`*_\[\]()<>#!|])", r"\\\1", _one_line(text))


def attachment_records(conn: sqlite3.Connection, sid: str) -> Iterator[dict[str, Any]]:
    """The attachment records of the session file open on ``conn``, oldest first.

    Yields nothing for a file from before attachments existed (schema v1).
    """
    has_table = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'attachments'"
    ).fetchone()
    if has_table is None:
        return
    for raw in conn.execute(f"SELECT {ATTACHMENT_SELECT} FROM attachments ORDER BY created_at, id"):
        yield attachment_doc(AttachmentRow._make(raw), sid)


def _noted(
    items: Iterable[dict[str, Any]], seen: list[dict[str, Any]] | None
) -> Iterator[dict[str, Any]]:
    for item in items:
        if seen is not None:
            seen.append(item)
        yield item


def _coalesce(chunks: Iterable[bytes], size: int) -> Iterator[bytes]:
    buf: list[bytes] = []
    n = 0
    for c in chunks:
        buf.append(c)
        n += len(c)
        if n >= size:
            yield b"".join(buf)
            buf, n = [], 0
    if buf:
        yield b"".join(buf)


# an import keeps no UNSETTLED status: nothing runs, waits or is queued in a fresh copy


def iter_export(
    path: Path,
    sid: str,
    fmt: Literal["json", "markdown"],
    *,
    exported_at: str,
    batch: int = 500,
    chunk_bytes: int = 64 * 1024,
    seen: list[dict[str, Any]] | None = None,
) -> Iterator[bytes]:
    """Stream the export of the session file at ``path`` in chunks of about ``chunk_bytes``.

    ``seen``, if given, gets the attachment records as they are exported (a
    bundle's list of blobs, from the same snapshot).

    Opens its own read-only connection and reads everything in one read
    transaction, so the export is one consistent snapshot while writers go
    on (WAL); messages are fetched ``batch`` at a time, so memory does not
    grow with the session. The connection is opened on the first ``next()``
    and closed when the generator ends or is closed: callers that stop early
    must call ``close()``. Drive it from one thread at a time (any thread).
    """
    conn = connect(path, readonly=True, cache_kib=512)
    try:
        conn.execute("BEGIN")
        session = session_doc(
            SessionRow._make(conn.execute(f"SELECT {SESSION_SELECT} FROM session").fetchone())
        )

        def batches(sql: str) -> Iterator[dict[str, Any]]:
            last = -1
            while True:
                rows = conn.execute(sql, (last, batch)).fetchall()
                if not rows:
                    return
                for raw in rows:
                    row, (last,) = split_message(raw)  # the extra column is the keyset position
                    yield message_doc(row, sid)

        if fmt == "json":
            msgs = batches(
                f"SELECT {MESSAGE_SELECT}, seq FROM messages WHERE seq > ? ORDER BY seq LIMIT ?"
            )
            chunks = export_json_chunks(
                session,
                msgs,
                exported_at=exported_at,
                attachments=_noted(attachment_records(conn, sid), seen),
                summaries=iter_summaries(conn, sid),
            )
        else:
            path_msgs = batches(
                f"SELECT {prefixed('m')}, ap.depth FROM active_path ap "
                "JOIN messages m ON m.seq = ap.seq WHERE ap.depth > ? ORDER BY ap.depth LIMIT ?"
            )
            chunks = (c.encode() for c in export_markdown_chunks(session, path_msgs))
        yield from _coalesce(chunks, chunk_bytes)
        conn.execute("COMMIT")
    finally:
        conn.close()


# ---------------------------------------------------------------------------- import

_TS = r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?"  # ASCII digits only
_TS += r"(Z|[+-][0-9]{2}:[0-9]{2})"
Ts = Annotated[str, StringConstraints(strict=True, pattern=f"^{_TS}$")]
MsgId = Annotated[str, StringConstraints(strict=True, min_length=1, max_length=128)]
ShortText = Annotated[str, StringConstraints(strict=True, max_length=256)]
Sha = Annotated[str, StringConstraints(strict=True, pattern=r"^[0-9a-f]{64}$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ImportedSession(_Strict):
    id: str | None = None
    owner: str | None = None
    title: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    created_at: Ts
    updated_at: Ts
    message_count: int | None = None
    last_message_at: Ts | None = None
    active_leaf_id: MsgId | None = None
    # v3 (issue 23): organisation is kept by an import; title_source, temporary and
    # expires_at are accepted and not kept (an import is a new, permanent session)
    pinned: bool = False
    archived: bool = False
    folder: Annotated[str, StringConstraints(strict=True, max_length=200)] | None = None
    tags: list[Annotated[str, StringConstraints(strict=True, max_length=64)]] = Field(
        default_factory=list, max_length=32
    )
    title_source: Literal["user", "auto"] | None = None
    temporary: bool = False
    expires_at: Ts | None = None
    # v4 (issue 19): settings are accepted and not kept (the copy starts without
    # tools or a system prompt; PATCH them again, they are checked there)
    settings: dict[str, Any] | None = None


class ImportedMessage(_Strict):
    id: MsgId
    session_id: str | None = None
    seq: Annotated[int, Field(ge=1, le=2**62)]
    role: Literal["user", "assistant", "system", "tool"]
    content: str
    parts: list[Any] | None = None
    status: Status
    parent_id: MsgId | None = None
    client_id: ShortText | None = None
    model_id: ShortText | None = None
    provider_id: ShortText | None = None
    fallback_notice: str | None = None
    tool_name: ShortText | None = None
    tool_call: Any = None
    tool_result: Any = None
    attachments: list[dict[str, Any]] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)
    error: Any = None
    created_at: Ts
    updated_at: Ts
    version: Annotated[int, Field(ge=1, le=2**62)] = 1
    deleted: bool = False
    feedback: dict[str, Any] | None = None  # v3 (issue 23)
    # v5 (issue 21): tokens are estimated again on import; usage and context are kept
    tokens: Annotated[int, Field(ge=0)] | None = None
    usage: dict[str, Any] | None = None
    context: dict[str, Any] | None = None


class ImportedAttachment(_Strict):
    id: MsgId
    name: Annotated[str, StringConstraints(strict=True, min_length=1, max_length=255)]
    mime: Annotated[str, StringConstraints(strict=True, min_length=3, max_length=255)]
    size: Annotated[int, Field(ge=0)]
    sha256: Sha
    url: str | None = None
    created_at: Ts


class ExportDocument(_Strict):
    format: Literal["roost.session.v1"]
    exported_at: Ts | None = None
    session: ImportedSession
    active_leaf_id: MsgId | None
    messages: list[ImportedMessage]
    attachments: list[ImportedAttachment] = Field(default_factory=list)
    summaries: list[ImportedSummary] = Field(default_factory=list)


class _Head(_Strict):
    """:class:`ExportDocument` without ``messages`` (validated one at a time)."""

    format: Literal["roost.session.v1"]
    exported_at: Ts | None = None
    session: ImportedSession
    active_leaf_id: MsgId | None
    attachments: list[ImportedAttachment] = Field(default_factory=list)
    summaries: list[ImportedSummary] = Field(default_factory=list)


class _MessagesOnly(_Strict):
    messages: list[ImportedMessage]


_BEFORE_MESSAGES = frozenset({"format", "exported_at", "session", "active_leaf_id"})
_MAX_PROBLEMS = 20


@dataclass(slots=True)
class ImportPlan:
    """A validated export, ready for :func:`populate_import`.

    It holds the export's head (session, active leaf, attachment records) and
    the byte spans of its messages in ``raw``, not the messages: they are
    decoded again, one at a time, when the plan is written. ``raw`` must not
    change until then.
    """

    session: ImportedSession
    active_leaf_id: str | None
    attachments: list[ImportedAttachment]
    raw: bytes | bytearray
    spans: array[int]  # start, end pairs of the messages in ``raw``
    last_created_at: str | None  # of the last message
    summaries: list[ImportedSummary] = field(default_factory=list)  # issue 21

    def messages(self) -> Iterator[ImportedMessage]:
        """The messages, decoded and validated one at a time, in order."""
        spans = self.spans
        with memoryview(self.raw) as mv:
            for i in range(0, len(spans), 2):
                yield ImportedMessage.model_validate(orjson.loads(mv[spans[i] : spans[i + 1]]))


def _errors(exc: ValidationError, prefix: list[str]) -> list[dict[str, Any]]:
    return [
        {"loc": [*prefix, *(str(p) for p in e["loc"])], "msg": e["msg"], "type": e["type"]}
        for e in exc.errors(include_url=False, include_input=False)
    ]


def _decode(mv: memoryview, start: int, end: int) -> Any:
    try:
        return orjson.loads(mv[start:end])
    except orjson.JSONDecodeError as exc:
        raise MalformedJson(f"the body is not valid JSON: {exc} (in bytes {start}-{end})") from exc


class _Checks:
    """The cross-message rules of an export, fed one message at a time: what they
    need (ids seen and whether deleted, client ids) instead of the messages."""

    def __init__(self, att_ids: set[str]) -> None:
        self.att_ids = att_ids
        self.problems: list[dict[str, Any]] = []
        self.seen: dict[str, bool] = {}  # id -> deleted
        self.client_ids: set[str] = set()
        self.last_seq = 0

    def feed(self, i: int, m: ImportedMessage) -> None:
        problems: list[dict[str, Any]] = []
        loc: list[Any] = ["messages", i]
        if m.seq <= self.last_seq:
            problems.append({"loc": [*loc, "seq"], "msg": "seq must increase"})
        self.last_seq = m.seq
        if m.id in self.seen:
            problems.append({"loc": [*loc, "id"], "msg": "message id repeats"})
        if m.parent_id is not None and m.parent_id not in self.seen:
            problems.append(
                {"loc": [*loc, "parent_id"], "msg": "parent_id must name an earlier message"}
            )
        if m.client_id is not None:
            if m.client_id in self.client_ids:
                problems.append({"loc": [*loc, "client_id"], "msg": "client_id repeats"})
            self.client_ids.add(m.client_id)
        for j, ref in enumerate(m.attachments):
            if ref.get("id") not in self.att_ids:
                problems.append(
                    {"loc": [*loc, "attachments", j], "msg": "not an attachment of the export"}
                )
        self.seen[m.id] = m.deleted
        if len(self.problems) < _MAX_PROBLEMS:
            self.problems.extend(problems)


def parse_export(
    raw: bytes | bytearray,
    *,
    max_title_chars: int | None = None,
    max_content_chars: int | None = None,
) -> ImportPlan:
    """Check the JSON export in ``raw`` (UTF-8 bytes) and plan its import.

    Memory is bounded by ``raw`` plus one message: the top level is walked
    with :func:`storage.jsonscan.scan_object`, every value but ``messages`` is
    decoded whole, and the messages are decoded and validated one at a time,
    keeping only what the cross-message rules need. ``raw`` is not changed and
    must stay unchanged until the plan is written.

    Raises, in this order of precedence (the first that applies):
    ``MalformedJson`` when ``raw`` is not one JSON document; ``InvalidInput``
    when it is not an object, or not ``format`` ``roost.session.v1``, or does
    not match the document's shape (details: up to 20 of pydantic's errors, in
    the document's field order), or is not consistent (``seq`` strictly
    increasing, message ids and client ids unique, every ``parent_id`` naming
    an earlier message, the active leaf a live message, every attachment ref
    naming an attachment record; details: up to 20 problems), or its session
    title is over ``max_title_chars``; ``ContentTooLarge`` for the first
    message over ``max_content_chars``.
    """
    try:
        members = scan_object(raw, frozenset({"messages"}))
    except ScanError as exc:
        if str(exc) != "not a JSON object":
            raise MalformedJson(f"the body is not valid JSON: {exc}") from exc
        try:
            orjson.loads(raw)
        except orjson.JSONDecodeError as dexc:
            raise MalformedJson(f"the body is not valid JSON: {dexc}") from dexc
        raise InvalidInput("an export must be a JSON object") from None
    except orjson.JSONDecodeError as exc:
        raise MalformedJson(f"the body is not valid JSON: {exc}") from exc
    with memoryview(raw) as mv:
        head = {k: _decode(mv, m.start, m.end) for k, m in members.items() if k != "messages"}
        return _plan(raw, mv, members, head, max_title_chars, max_content_chars)


def _plan(
    raw: bytes | bytearray,
    mv: memoryview,
    members: dict[str, Member],
    head: dict[str, Any],
    max_title_chars: int | None,
    max_content_chars: int | None,
) -> ImportPlan:
    msgs = members.get("messages")
    spans = msgs.elements if msgs is not None else None
    odd = None  # a ``messages`` that is not an array, decoded whole
    if msgs is not None and spans is None:
        odd = _decode(mv, msgs.start, msgs.end)
    fmt = head.get("format")
    if fmt != EXPORT_FORMAT:
        for i in range(0, len(spans or ()), 2):  # the whole body must be JSON first
            _decode(mv, spans[i], spans[i + 1])  # type: ignore[index]
        raise InvalidInput(
            f"unsupported export format; expected {EXPORT_FORMAT!r}",
            details={"format": str(fmt)[:80]},
        )
    before: list[dict[str, Any]] = []
    after: list[dict[str, Any]] = []
    shape: list[dict[str, Any]] = []  # of the messages
    top: _Head | None = None
    try:
        top = _Head.model_validate(head)
    except ValidationError as exc:
        for e in _errors(exc, []):
            (before if e["loc"][0] in _BEFORE_MESSAGES else after).append(e)
    if msgs is None:
        shape.append({"loc": ["messages"], "msg": "Field required", "type": "missing"})
    elif spans is None:  # not an array
        try:
            _MessagesOnly.model_validate({"messages": odd})
        except ValidationError as exc:
            shape.extend(_errors(exc, []))
    checks = _Checks({a.id for a in top.attachments} if top is not None else set())
    too_long: tuple[int, int] | None = None  # (index, length) of the first over the limit
    last_created_at: str | None = None
    for i in range(len(spans or ()) // 2):
        data = _decode(mv, spans[2 * i], spans[2 * i + 1])  # type: ignore[index]
        if len(before) + len(shape) >= _MAX_PROBLEMS:
            continue  # only JSON validity is left to check
        try:
            m = ImportedMessage.model_validate(data)
        except ValidationError as exc:
            shape.extend(_errors(exc, ["messages", str(i)]))
            continue
        del data
        checks.feed(i, m)
        last_created_at = m.created_at
        limit = max_content_chars
        if too_long is None and limit is not None and len(m.content) > limit:
            too_long = (i, len(m.content))
    errors = [*before, *shape, *after]
    if errors or top is None:
        raise InvalidInput(
            "the export does not match roost.session.v1", details=errors[:_MAX_PROBLEMS]
        )
    problems: list[dict[str, Any]] = []
    if len({a.id for a in top.attachments}) != len(top.attachments):
        problems.append({"loc": ["attachments"], "msg": "attachment ids repeat"})
    problems.extend(checks.problems)
    leaf = top.active_leaf_id
    if leaf is not None and checks.seen.get(leaf, True):
        problems.append(
            {"loc": ["active_leaf_id"], "msg": "active_leaf_id must name a live message"}
        )
    if problems:
        raise InvalidInput("the export is not consistent", details=problems[:_MAX_PROBLEMS])
    title = top.session.title
    if max_title_chars is not None and title is not None and len(title) > max_title_chars:
        raise InvalidInput("the session title is too long")
    if too_long is not None:
        i, n = too_long
        raise ContentTooLarge(
            f"message {i} has {n} characters; the limit is {max_content_chars}",
            details={"loc": ["messages", i, "content"]},
        )
    return ImportPlan(
        session=top.session,
        active_leaf_id=top.active_leaf_id,
        attachments=top.attachments,
        summaries=top.summaries,
        raw=raw,
        spans=spans if spans is not None else array("q"),
        last_created_at=last_created_at,
    )


def populate_import(conn: sqlite3.Connection, sid: str, plan: ImportPlan, now: str) -> None:
    """Write ``plan`` into the new session file of ``sid`` (inside the caller's transaction).

    The session row must exist already. Message ids and ``seq`` are kept;
    depth, sibling order, counters and the active path are rebuilt; replies
    that were still running when exported become ``interrupted``; the event
    log starts empty; idempotency hashes of ``client_id`` are not part of an
    export, so retrying a pre-export request with its ``client_id`` answers 409.
    Attachment records are imported as metadata; their bytes are not in the
    export, so downloading them answers 410 until re-uploaded. The messages are
    decoded from the plan's body one at a time, as they are inserted.
    """
    conn.executemany(
        f"INSERT INTO attachments ({ATTACHMENT_INSERT}) VALUES (?, ?, ?, ?, ?, ?)",
        [
            AttachmentRow(
                id=a.id,
                name=a.name,
                mime=a.mime,
                size=a.size,
                sha256=a.sha256,
                created_at=a.created_at,
            )
            for a in plan.attachments
        ],
    )
    info: dict[str, tuple[int, int]] = {}  # id -> (seq, depth)
    parent_of: dict[int, int | None] = {}
    children: dict[int, int] = {}
    roots = 0
    live = 0

    def rows() -> Iterator[MessageRow]:
        nonlocal roots, live
        for m in plan.messages():
            if m.parent_id is None:
                pseq, depth, sib = None, 0, roots
                roots += 1
            else:
                pseq, pdepth = info[m.parent_id]
                depth, sib = pdepth + 1, children.get(pseq, 0)
                children[pseq] = sib + 1
            info[m.id] = (m.seq, depth)
            parent_of[m.seq] = pseq
            live += not m.deleted
            status = "interrupted" if m.status in UNSETTLED else m.status
            refs = [{**r, "url": attachment_url(sid, str(r["id"]))} for r in m.attachments]
            yield MessageRow(
                seq=m.seq,
                id=m.id,
                parent_seq=pseq,
                parent_id=m.parent_id,
                depth=depth,
                sibling_index=sib,
                child_count=0,  # counted below, once all children are known
                role=m.role,
                content=m.content,
                parts=None if m.parts is None else _dumps(m.parts),
                status=status,
                client_id=m.client_id,
                request_hash=None,  # not part of an export
                model_id=m.model_id,
                provider_id=m.provider_id,
                fallback_notice=m.fallback_notice,
                tool_name=m.tool_name,
                tool_call=None if m.tool_call is None else _dumps(m.tool_call),
                tool_result=None if m.tool_result is None else _dumps(m.tool_result),
                attachments=_dumps(refs) if refs else None,
                metadata=_dumps(m.metadata),
                error=None if m.error is None else _dumps(m.error),
                created_at=m.created_at,
                updated_at=m.updated_at,
                version=m.version,
                deleted_at=m.updated_at if m.deleted else None,
                feedback=None if m.feedback is None or m.deleted else _dumps(m.feedback),
                tokens=0 if m.deleted else estimate_message(m.role, m.content, m.parts),
                usage=None if m.usage is None or m.deleted else _dumps(m.usage),
                context=None if m.context is None or m.deleted else _dumps(m.context),
            )

    conn.executemany(
        f"INSERT INTO messages ({MESSAGE_INSERT}) "
        f"VALUES ({', '.join(['?'] * len(MessageRow._fields))})",
        rows(),
    )
    conn.executemany(
        "UPDATE messages SET child_count = ? WHERE seq = ?",
        [(n, seq) for seq, n in children.items()],
    )
    path: list[tuple[int, int]] = []
    leaf_seq = None
    if plan.active_leaf_id is not None:
        leaf_seq, depth = info[plan.active_leaf_id]
        node: int | None = leaf_seq
        while node is not None:
            path.append((depth, node))
            node, depth = parent_of[node], depth - 1
    conn.executemany("INSERT INTO active_path (depth, seq) VALUES (?, ?)", path)
    import_summaries(conn, plan.summaries, info, parent_of)
    last_at = plan.session.last_message_at or plan.last_created_at
    conn.execute(
        "UPDATE session SET title = ?, metadata = ?, created_at = ?, updated_at = ?, "
        "message_count = ?, last_message_at = ?, active_leaf_seq = ?, active_leaf_id = ?, "
        "root_count = ?, pinned = ?, archived = ?, folder = ?, tags = ?, title_source = ?",
        (
            plan.session.title,
            _dumps(plan.session.metadata),
            plan.session.created_at,
            now,
            live,
            last_at,
            leaf_seq,
            plan.active_leaf_id,
            roots,
            int(plan.session.pinned),
            int(plan.session.archived),
            plan.session.folder,
            _dumps(sorted(set(plan.session.tags))),
            None if plan.session.title is None else (plan.session.title_source or "user"),
        ),
    )


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def active_path_only(doc: dict[str, Any]) -> dict[str, Any]:
    """The JSON export ``doc`` cut to its active path (root to active leaf), live
    messages only, with the attachment records those messages name. Still a
    valid ``roost.session.v1`` document (it imports). Pure; ``doc`` is not changed.
    """
    messages: list[dict[str, Any]] = doc.get("messages", [])
    by_id = {m["id"]: m for m in messages}
    path: set[str] = set()
    node = by_id.get(doc.get("active_leaf_id") or "")
    while node is not None and node["id"] not in path:
        path.add(node["id"])
        node = by_id.get(node.get("parent_id") or "")
    kept = [m for m in messages if m["id"] in path and not m.get("deleted")]
    named = {ref.get("id") for m in kept for ref in m.get("attachments") or []}
    attachments = [a for a in doc.get("attachments", []) if a.get("id") in named]
    live = {m["id"] for m in kept}
    summaries = [
        s for s in doc.get("summaries", []) if s.get("from_id") in live and s.get("to_id") in live
    ]
    return {**doc, "messages": kept, "attachments": attachments, "summaries": summaries}
