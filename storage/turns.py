"""Turns and the tool loop (issue 19), as ops of a session file.

A *turn* is a user message and the replies that answer it. At most one turn of
a session is busy at a time: a reply ``pending`` or ``streaming``, or one
waiting for its tools (``awaiting_tool``, ``awaiting_approval``). What a new
chat does while a turn is busy (``on_busy``) is decided inside the op that
commits it, so two racing chats are ordered by the actor's mailbox and never
both start a reply:

- ``reject``: :class:`SessionBusy` (nothing is stored);
- ``queue``: the user message is stored with status ``queued`` and is not
  placed in the tree yet (no parent, not on the active path, no sibling of
  anything); :func:`op_start_queued` places the oldest queued message below
  the active leaf when nothing is busy, and adds its pending reply;
- ``interrupt``: the busy reply ends ``interrupted`` (text kept; open tool
  calls get error results), the new turn starts below the active leaf;
- ``rollback``: the busy reply (and the tool results below it) become
  tombstones; the new turn starts below the active leaf, which moved up.

Tool calls are kept as the assistant message's ``tool-call`` parts (with
``needs_approval`` and, once decided, ``approved``/``reason``). Each result
is a ``tool`` message in a chain below its assistant message (one per call
id; ``tool_result`` = ``{tool_call_id, output | error, is_error}``); when
every call has one, the assistant message becomes ``complete`` and a pending
continuation is added below the last result, in the same op.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from storage.errors import Conflict, InvalidInput, NotFound, SessionBusy
from storage.ids import uuid7
from storage.ops import (
    MessageDraft,
    attachment_refs,
    op_append,
    op_chat,
    op_delete_message,
    op_update_message,
)
from storage.reads import ReadSource
from storage.rows import (
    MESSAGE_SELECT,
    UNSETTLED_SQL,
    MessageRow,
    dumps,
    loads,
    message_doc,
    scalar,
)
from storage.tokens import estimate_message
from storage.txn import Txn

ON_BUSY = ("reject", "queue", "interrupt", "rollback")
BUSY = ("pending", "streaming", "awaiting_tool", "awaiting_approval")
WAITING = ("awaiting_tool", "awaiting_approval")
# the statuses of the messages_turns index (schema v4); queries repeat the list as is
_TURNS_SQL = (
    f"SELECT {MESSAGE_SELECT} FROM messages WHERE {UNSETTLED_SQL} "
    "AND deleted_at IS NULL ORDER BY seq"
)


@dataclass(slots=True)
class TurnOutcome:
    """What a chat op did: ``reply`` is the pending reply to start (None when the
    user message was queued, or a retry names a reply that exists already);
    ``stopped`` the ids of running replies this op ended (interrupt, rollback)."""

    user: dict[str, Any]
    reply: dict[str, Any] | None
    created: bool
    queued: bool = False
    stopped: list[str] = field(default_factory=list)


@dataclass(slots=True)
class ToolOutcome:
    """What a tool result or approval did: the assistant message as it is now, the
    ``tool`` message stored (if any), and the continuation to start (if any)."""

    assistant: dict[str, Any]
    tool_message: dict[str, Any] | None
    created: bool
    reply: dict[str, Any] | None = None


def session_settings(txn: Txn) -> dict[str, Any]:
    """The session's settings as the transaction sees them."""
    value: dict[str, Any] = loads(txn.state.settings) or {}
    return value


def turn_rows(txn: Txn) -> list[MessageRow]:
    """Messages of a turn that is running, waiting or queued, oldest first."""
    return [MessageRow._make(r) for r in txn.conn.execute(_TURNS_SQL).fetchall()]


def tool_calls(row: MessageRow) -> list[dict[str, Any]]:
    """The ``tool-call`` parts of an assistant message, in order."""
    parts = loads(row.parts) or []
    return [p for p in parts if isinstance(p, dict) and p.get("type") == "tool-call"]


def _tool_chain(txn: Txn, row: MessageRow) -> list[MessageRow]:
    """The ``tool`` messages below assistant message ``row``, in order."""
    out: list[MessageRow] = []
    node = row.seq
    while True:
        raw = txn.conn.execute(
            f"SELECT {MESSAGE_SELECT} FROM messages WHERE parent_seq = ? AND role = 'tool' "
            "AND deleted_at IS NULL ORDER BY seq LIMIT 1",
            (node,),
        ).fetchone()
        if raw is None:
            return out
        child = MessageRow._make(raw)
        out.append(child)
        node = child.seq


def _results(chain: list[MessageRow]) -> dict[str, MessageRow]:
    out: dict[str, MessageRow] = {}
    for t in chain:
        result = loads(t.tool_result) or {}
        if isinstance(result, dict) and isinstance(result.get("tool_call_id"), str):
            out.setdefault(result["tool_call_id"], t)
    return out


def tool_content(output: Any = None, error: str | None = None) -> str:
    """The text a ``tool`` message carries to the provider. Pure."""
    if error is not None:
        return f"Error: {error}"
    if isinstance(output, str):
        return output
    return dumps(output)


def _add_result(
    txn: Txn,
    row: MessageRow,
    call: dict[str, Any],
    parent_id: str,
    *,
    output: Any = None,
    error: str | None = None,
) -> dict[str, Any]:
    is_error = error is not None
    result: dict[str, Any] = {"tool_call_id": call["tool_call_id"], "is_error": is_error}
    if is_error:
        result["error"] = error
    else:
        result["output"] = output
    draft = MessageDraft(
        role="tool",
        content=tool_content(output, error),
        parts=[
            {
                "type": "tool-result",
                "tool_call_id": call["tool_call_id"],
                "result": error if is_error else output,
                "is_error": is_error,
            }
        ],
        parent_id=parent_id,
        tool_name=call.get("tool_name"),
        tool_call={**call, "message_id": row.id},
        tool_result=result,
    )
    msg, _ = op_append(draft)(txn)
    return msg


def _close_calls(txn: Txn, row: MessageRow, why: str) -> str:
    """Give every open call of ``row`` an error result ``why``; the id of the last
    message of its chain."""
    chain = _tool_chain(txn, row)
    done = _results(chain)
    last = chain[-1].id if chain else row.id
    for call in tool_calls(row):
        if call["tool_call_id"] not in done:
            last = _add_result(txn, row, call, last, error=why)["id"]
    return last


def _settle(
    txn: Txn, mid: str, model_id: str | None
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Set a waiting message's status from its calls; when every call has a result,
    it is ``complete`` and a pending continuation is added. ``(message, reply)``."""
    row = txn.message_row(mid)
    chain = _tool_chain(txn, row)
    done = _results(chain)
    calls = tool_calls(row)
    open_calls = [c for c in calls if c["tool_call_id"] not in done]
    reply = None
    if not open_calls:
        status = "complete"
    elif any(c.get("needs_approval") and "approved" not in c for c in open_calls):
        status = "awaiting_approval"
    else:
        status = "awaiting_tool"
    msg = txn.message(mid)
    if status != row.status:
        msg = op_update_message(mid, {"status": status})(txn)
    if status == "complete":
        parent = chain[-1].id if chain else row.id
        draft = MessageDraft(
            role="assistant", content="", status="pending", parent_id=parent, model_id=model_id
        )
        reply = op_append(draft)(txn)[0]
    return msg, reply


def _end(txn: Txn, row: MessageRow, how: str) -> None:
    """End busy message ``row``: ``interrupt`` (kept, ``interrupted``) or
    ``rollback`` (tombstoned with the tool results below it)."""
    if how == "rollback":
        doomed = [*reversed(_tool_chain(txn, row)), row]
        for m in doomed:
            txn.conn.execute("UPDATE messages SET status = 'cancelled' WHERE seq = ?", (m.seq,))
            op_delete_message(m.id)(txn)
        return
    if row.status in WAITING:
        _close_calls(txn, row, "the call was interrupted by a new message")
    op_update_message(row.id, {"status": "interrupted"})(txn)


def _queue(txn: Txn, draft: MessageDraft, model_id: str | None) -> dict[str, Any]:
    """Store ``draft`` as a ``queued`` user message outside the tree (see module doc)."""
    refs = None
    if draft.attachments:
        refs = attachment_refs(txn, draft.attachments)
    st = txn.state
    seq = st.next_seq
    st.next_seq += 1
    row = MessageRow(
        seq=seq,
        id=uuid7(),
        parent_seq=None,
        parent_id=None,
        depth=0,
        sibling_index=-1,  # placed (and counted as a child) when it starts
        child_count=0,
        role=draft.role,
        content=draft.content,
        parts=None if draft.parts is None else dumps(draft.parts),
        status="queued",
        client_id=draft.client_id,
        request_hash=draft.request_hash,
        model_id=model_id,  # the model asked for, used when the turn starts
        provider_id=None,
        fallback_notice=None,
        tool_name=None,
        tool_call=None,
        tool_result=None,
        attachments=None if not refs else dumps(refs),
        metadata=dumps(draft.metadata or {}),
        error=None,
        created_at=txn.now,
        updated_at=txn.now,
        version=1,
        deleted_at=None,
        feedback=None,
        tokens=estimate_message(draft.role, draft.content, draft.parts),
        usage=None,
        context=None,
    )
    txn.add_message_row(row)
    st.message_count += 1
    st.last_message_at = st.updated_at = txn.now
    txn.session_changed = True
    msg = message_doc(row, txn.session_id)
    txn.emit("message.created", {"message": msg})
    return msg


def op_turn(
    draft: MessageDraft, *, model_id: str | None, on_busy: str | None, default_on_busy: str
) -> Callable[[Txn], TurnOutcome]:
    """A chat: decide by the turn policy (the request's ``on_busy``, else the
    session's, else ``default_on_busy``) and commit, in one op.

    A retried ``client_id`` answers what is stored (a queued message stays
    queued). Raises :class:`SessionBusy` under ``reject`` while a turn is busy
    or queued, and what :func:`storage.ops.op_chat` raises.
    """

    def run(txn: Txn) -> TurnOutcome:
        if draft.client_id is not None:
            raw = txn.conn.execute(
                f"SELECT {MESSAGE_SELECT} FROM messages WHERE client_id = ?", (draft.client_id,)
            ).fetchone()
            if raw is not None and MessageRow._make(raw).status == "queued":
                seen = MessageRow._make(raw)
                if seen.request_hash != draft.request_hash or seen.deleted_at is not None:
                    raise Conflict(
                        "client_id was already used for a different message",
                        details={"client_id": draft.client_id, "message_id": seen.id},
                    )
                return TurnOutcome(message_doc(seen, txn.session_id), None, False, queued=True)
            if raw is not None:
                user, reply, created = op_chat(draft, model_id=model_id)(txn)
                return TurnOutcome(user, reply, created)
        policy = on_busy or session_settings(txn).get("on_busy") or default_on_busy
        if policy not in ON_BUSY:
            policy = default_on_busy
        rows = turn_rows(txn)
        busy = [r for r in rows if r.status in BUSY]
        if rows and policy == "reject":
            first = (busy or rows)[0]
            raise SessionBusy(
                "a reply of this session is running; retry when it has ended",
                details={"running_message_id": first.id, "status": first.status},
            )
        if rows and policy == "queue":
            return TurnOutcome(_queue(txn, draft, model_id), None, True, queued=True)
        stopped = []
        for r in busy:
            _end(txn, r, policy)
            stopped.append(r.id)
        user, reply, created = op_chat(draft, model_id=model_id)(txn)
        return TurnOutcome(user, reply, created, stopped=stopped)

    return run


def op_start_queued() -> Callable[[Txn], tuple[dict[str, Any], dict[str, Any]] | bool]:
    """Start the oldest queued turn if nothing is busy: place its user message
    below the active leaf (it becomes the leaf) and add its pending reply.
    ``(user, reply)``; else whether a queued message waits (True: something is
    busy). Idempotent."""

    def run(txn: Txn) -> tuple[dict[str, Any], dict[str, Any]] | bool:
        rows = turn_rows(txn)
        if not rows or any(r.status in BUSY for r in rows):
            return any(r.status == "queued" for r in rows)
        row = rows[0]  # only queued ones are left, oldest first
        st = txn.state
        if st.active_leaf_seq is not None:
            parent_seq, parent_id = st.active_leaf_seq, st.active_leaf_id
            depth, sibling = st.leaf_depth + 1, st.leaf_child_count
        else:
            parent_seq, parent_id, depth, sibling = None, None, 0, st.root_count
        txn.conn.execute(
            "UPDATE messages SET parent_seq = ?, parent_id = ?, depth = ?, sibling_index = ?, "
            "status = 'complete', version = version + 1, updated_at = ? WHERE seq = ?",
            (parent_seq, parent_id, depth, sibling, txn.now, row.seq),
        )
        if parent_seq is None:
            st.root_count += 1
        else:
            txn.bump_children(parent_seq)
        txn.set_active_leaf(row.seq)
        txn.touch_session()
        user = txn.message_by_seq(row.seq)
        txn.emit("message.updated", {"message": user})
        txn.emit("session.updated", {"session": txn.session_doc()})
        draft = MessageDraft(
            role="assistant", content="", status="pending", parent_id=row.id, model_id=row.model_id
        )
        reply = op_append(draft)(txn)[0]
        return user, reply

    return run


def _call_of(row: MessageRow, tool_call_id: str) -> dict[str, Any]:
    for call in tool_calls(row):
        if call["tool_call_id"] == tool_call_id:
            return call
    raise NotFound(
        f"message {row.id!r} has no tool call {tool_call_id!r}",
        details={"message_id": row.id, "tool_call_id": tool_call_id},
    )


def op_tool_result(
    mid: str, tool_call_id: str, *, output: Any = None, error: str | None = None
) -> Callable[[Txn], ToolOutcome]:
    """Store the result of call ``tool_call_id`` of assistant message ``mid``.

    Idempotent per call id: a call that has a result answers it
    (``created=False``). Raises :class:`NotFound` for an unknown call,
    :class:`Conflict` when the message waits for nothing or the call still
    waits for its approval. When this was the last open call, the message
    becomes ``complete`` and the continuation is added (``reply``).
    """

    def run(txn: Txn) -> ToolOutcome:
        row = txn.message_row(mid)
        call = _call_of(row, tool_call_id)
        chain = _tool_chain(txn, row)
        done = _results(chain)
        if tool_call_id in done:
            stored = message_doc(done[tool_call_id], txn.session_id)
            return ToolOutcome(message_doc(row, txn.session_id), stored, False)
        if row.status not in WAITING:
            raise Conflict(
                f"message {mid!r} is not waiting for tool results (status {row.status})",
                details={"message_id": mid, "status": row.status},
            )
        if call.get("needs_approval") and "approved" not in call:
            raise Conflict(
                f"tool call {tool_call_id!r} waits for its approval first",
                details={"message_id": mid, "tool_call_id": tool_call_id},
            )
        parent = chain[-1].id if chain else row.id
        tool_msg = _add_result(txn, row, call, parent, output=output, error=error)
        assistant, reply = _settle(txn, mid, row.model_id)
        return ToolOutcome(assistant, tool_msg, True, reply)

    return run


def op_tool_approval(
    mid: str, tool_call_id: str, *, approved: bool, reason: str | None
) -> Callable[[Txn], ToolOutcome]:
    """Approve or deny call ``tool_call_id`` of assistant message ``mid``.

    A denial stores an error result at once. Deciding again the same way
    answers the stored state (``created=False``); the other way is
    :class:`Conflict`, as is a call that needs no approval.
    """

    def run(txn: Txn) -> ToolOutcome:
        row = txn.message_row(mid)
        call = _call_of(row, tool_call_id)
        if not call.get("needs_approval"):
            raise Conflict(
                f"tool call {tool_call_id!r} needs no approval",
                details={"message_id": mid, "tool_call_id": tool_call_id},
            )
        if "approved" in call:
            if call["approved"] != approved:
                raise Conflict(
                    f"tool call {tool_call_id!r} was already "
                    + ("approved" if call["approved"] else "denied"),
                    details={"message_id": mid, "tool_call_id": tool_call_id},
                )
            return ToolOutcome(message_doc(row, txn.session_id), None, False)
        if row.status != "awaiting_approval":
            raise Conflict(
                f"message {mid!r} is not waiting for approvals (status {row.status})",
                details={"message_id": mid, "status": row.status},
            )
        parts = loads(row.parts) or []
        for p in parts:
            if isinstance(p, dict) and p.get("tool_call_id") == tool_call_id:
                p["approved"] = approved
                if reason is not None:
                    p["reason"] = reason
        op_update_message(mid, {"parts": parts})(txn)
        tool_msg = None
        if not approved:
            row = txn.message_row(mid)
            chain = _tool_chain(txn, row)
            parent = chain[-1].id if chain else row.id
            why = "the user denied this call" + (f": {reason}" if reason else "")
            tool_msg = _add_result(txn, row, {**call, "approved": False}, parent, error=why)
        assistant, reply = _settle(txn, mid, row.model_id)
        return ToolOutcome(assistant, tool_msg, True, reply)

    return run


def op_close_calls(
    mid: str, why: str, *, status: str | None
) -> Callable[[Txn], ToolOutcome | None]:
    """Give the open calls of waiting message ``mid`` error results ``why``; then
    set ``status`` (``cancelled``), or with None continue as when every result
    came (a timeout). A ``queued`` message becomes ``cancelled`` (it never
    starts). None if the message waits for nothing (idempotent)."""

    def run(txn: Txn) -> ToolOutcome | None:
        row = txn.message_row(mid)
        if row.status == "queued":  # a queued turn cancelled before it started
            return ToolOutcome(op_update_message(mid, {"status": "cancelled"})(txn), None, True)
        if row.status not in WAITING:
            return None
        _close_calls(txn, row, why)
        if status is not None:
            msg = op_update_message(mid, {"status": status})(txn)
            return ToolOutcome(msg, None, True)
        assistant, reply = _settle(txn, mid, row.model_id)
        return ToolOutcome(assistant, None, True, reply)

    return run


def op_recover_turns() -> Callable[[Txn], bool]:
    """On activation: replies a restart found waiting for tools get error results
    for their open calls and end ``interrupted`` (nothing waits across a restart);
    queued messages stay queued. True when there are some (the actor starts the
    oldest). Idempotent."""

    def run(txn: Txn) -> bool:
        queued = False
        for r in turn_rows(txn):
            if r.status in WAITING:
                _close_calls(txn, r, "the server restarted while this call waited")
                op_update_message(r.id, {"status": "interrupted"})(txn)
            queued = queued or r.status == "queued"
        return queued

    return run


def check_on_busy(value: str) -> str:
    """``value`` if it is a turn policy, else :class:`InvalidInput`."""
    if value not in ON_BUSY:
        raise InvalidInput(
            f"on_busy must be one of {', '.join(ON_BUSY)}", details={"on_busy": value}
        )
    return value


def read_settings(f: ReadSource) -> dict[str, Any]:
    """The session's settings as committed (``{}`` when none were set)."""
    value: dict[str, Any] = loads(scalar(f.reader.execute("SELECT settings FROM session"))) or {}
    return value


def read_waiting(f: ReadSource) -> dict[str, Any] | None:
    """The newest reply waiting for tool results or approvals, or None."""
    rows = f.reader.execute(_TURNS_SQL).fetchall()
    waiting = [MessageRow._make(r) for r in rows if MessageRow._make(r).status in WAITING]
    return message_doc(waiting[-1], f.sid) if waiting else None
