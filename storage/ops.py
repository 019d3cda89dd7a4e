"""The op catalogue: every mutation of a session file, as ``op(txn) -> result``.

Each ``op_*`` function validates nothing it cannot check in the file, builds
a closure and returns it; :meth:`storage.file.SessionFile.run_batch` runs the
closures in one transaction, each in its own savepoint. An op changes rows
through :class:`storage.txn.Txn`, records its events with ``txn.emit`` and
returns its result; one that raises leaves no trace. Ops are not idempotent
unless their docstring says so (``client_id`` makes an append idempotent).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from storage.errors import Conflict, InvalidInput, NotFound, PreconditionFailed
from storage.ids import uuid7
from storage.rows import (
    ATTACHMENT_SELECT,
    MESSAGE_SELECT,
    UNFINISHED,
    AttachmentRow,
    MessageRow,
    attachment_doc,
    dumps,
    loads,
    message_doc,
    scalar,
)
from storage.tokens import estimate_message
from storage.txn import BulkOp, Txn, feed_delta


@dataclass(slots=True)
class MessageDraft:
    """What a caller asks to append. Validation of shapes happens before this."""

    role: str
    content: str
    parts: list[Any] | None = None
    client_id: str | None = None
    parent_id: str | None = None
    tool_name: str | None = None
    tool_call: Any = None
    tool_result: Any = None
    # ids of attachments of this session; op_append checks that they exist and
    # stores the message's ``attachments`` as refs {id, name, mime, size, sha256, url}
    attachments: list[str] | None = None
    metadata: dict[str, Any] | None = None
    status: str = "complete"
    model_id: str | None = None
    provider_id: str | None = None
    request_hash: str | None = None
    explicit_parent: bool = field(default=False)


def attachment_refs(txn: Txn, ids: Sequence[str]) -> list[dict[str, Any]]:
    """The refs a message stores for attachment ``ids``, in the given order.

    Raises :class:`InvalidInput` naming every id that is not an attachment of
    this session.
    """
    found: dict[str, dict[str, Any]] = {}
    for aid in dict.fromkeys(ids):
        raw = txn.conn.execute(
            f"SELECT {ATTACHMENT_SELECT} FROM attachments WHERE id = ?", (aid,)
        ).fetchone()
        if raw is not None:
            doc = attachment_doc(AttachmentRow._make(raw), txn.session_id)
            del doc["created_at"]
            found[aid] = doc
    missing = [aid for aid in dict.fromkeys(ids) if aid not in found]
    if missing:
        raise InvalidInput("unknown attachment id", details={"attachments": missing})
    return [found[aid] for aid in ids]


def _part_attachment_ids(parts: list[Any] | None) -> list[str]:
    return [
        p["attachment_id"]
        for p in parts or []
        if isinstance(p, dict) and p.get("type") == "attachment" and "attachment_id" in p
    ]


def op_append(draft: MessageDraft) -> Callable[[Txn], tuple[dict[str, Any], bool]]:
    """Append a message; the result is ``(message, created)``.

    With a ``client_id`` seen before, the stored message is returned with
    ``created=False`` when the request hash matches, else :class:`Conflict`.
    Without ``parent_id`` the parent is the active leaf; with ``parent_id``
    explicitly null (``explicit_parent``) the message is a new root, which is
    how the first message of a chat is edited. The new message becomes the
    active leaf either way.
    """

    def run(txn: Txn) -> tuple[dict[str, Any], bool]:
        if draft.client_id is not None:
            raw = txn.conn.execute(
                f"SELECT {MESSAGE_SELECT} FROM messages WHERE client_id = ?", (draft.client_id,)
            ).fetchone()
            if raw is not None:
                seen = MessageRow._make(raw)
                if seen.request_hash != draft.request_hash:
                    raise Conflict(
                        "client_id was already used for a different message",
                        details={"client_id": draft.client_id, "message_id": seen.id},
                    )
                return message_doc(seen, txn.session_id), False
        st = txn.state
        parent_seq: int | None
        parent_id: str | None
        if draft.parent_id is not None:
            prow = txn.conn.execute(
                "SELECT seq, depth, child_count, deleted_at FROM messages WHERE id = ?",
                (draft.parent_id,),
            ).fetchone()
            parent_seq, parent_depth, sibling_index, deleted_at = prow or (None, 0, 0, None)
            if parent_seq is None or deleted_at is not None:
                raise InvalidInput(
                    "parent_id does not name a message of this session",
                    details={"parent_id": draft.parent_id},
                )
            parent_id, depth = draft.parent_id, parent_depth + 1
        elif st.active_leaf_seq is not None and not draft.explicit_parent:
            parent_seq, parent_id = st.active_leaf_seq, st.active_leaf_id
            depth, sibling_index = st.leaf_depth + 1, st.leaf_child_count
        else:
            parent_seq, parent_id, depth, sibling_index = None, None, 0, st.root_count
        refs = None
        wanted = [*(draft.attachments or []), *_part_attachment_ids(draft.parts)]
        if wanted:
            refs = attachment_refs(txn, wanted)[: len(draft.attachments or [])]
        mid = uuid7()
        parts = None if draft.parts is None else dumps(draft.parts)
        tool_call = None if draft.tool_call is None else dumps(draft.tool_call)
        tool_result = None if draft.tool_result is None else dumps(draft.tool_result)
        attachments = None if not refs else dumps(refs)
        metadata = dumps(draft.metadata or {})
        seq = st.next_seq
        st.next_seq += 1
        row = MessageRow(
            seq=seq,
            id=mid,
            parent_seq=parent_seq,
            parent_id=parent_id,
            depth=depth,
            sibling_index=sibling_index,
            child_count=0,
            role=draft.role,
            content=draft.content,
            parts=parts,
            status=draft.status,
            client_id=draft.client_id,
            request_hash=draft.request_hash,
            model_id=draft.model_id,
            provider_id=draft.provider_id,
            fallback_notice=None,
            tool_name=draft.tool_name,
            tool_call=tool_call,
            tool_result=tool_result,
            attachments=attachments,
            metadata=metadata,
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
        if parent_seq is None:
            st.root_count += 1
        else:
            txn.bump_children(parent_seq)
        branched = parent_seq != st.active_leaf_seq
        if branched:
            txn.set_active_leaf(seq)
        else:  # the common case: the active branch grows by one
            txn.add_path(depth, seq)
            st.active_leaf_seq, st.active_leaf_id = seq, mid
            st.leaf_depth, st.leaf_child_count = depth, 0
        st.message_count += 1
        st.last_message_at = st.updated_at = txn.now
        txn.session_changed = True
        msg = message_doc(row, txn.session_id)  # the row as it is stored
        txn.emit("message.created", {"message": msg})
        if branched:
            txn.emit("session.updated", {"session": txn.session_doc()})
        return msg, True

    return run


def op_update_message(
    mid: str,
    changes: dict[str, Any],
    *,
    if_match: int | None = None,
) -> Callable[[Txn], dict[str, Any]]:
    """Change some of a message's fields and bump its ``version``.

    ``changes`` may hold ``content``, ``parts``, ``metadata``, ``status``,
    ``error``, ``model_id``, ``provider_id``, ``fallback_notice``. A stale
    ``if_match`` raises :class:`PreconditionFailed`.
    """
    json_cols = {"parts", "metadata", "error"}
    allowed = {"content", "status", "model_id", "provider_id", "fallback_notice"} | json_cols

    def run(txn: Txn) -> dict[str, Any]:
        row = txn.message_row(mid)
        if if_match is not None and row.version != if_match:
            raise PreconditionFailed(
                "the message changed since that version",
                details={"current_version": row.version, "if_match": if_match},
            )
        if changes.get("parts"):
            attachment_refs(txn, _part_attachment_ids(changes["parts"]))
        sets, args = [], []
        for key, value in changes.items():
            if key not in allowed:
                raise InvalidInput(f"field {key!r} cannot be changed")
            sets.append(f"{key} = ?")
            args.append(dumps(value) if key in json_cols and value is not None else value)
        if "content" in changes or "parts" in changes:
            content = changes.get("content", row.content)
            parts = changes["parts"] if "parts" in changes else loads(row.parts)
            sets.append("tokens = ?")
            args.append(estimate_message(row.role, content, parts))
        sets += ["version = version + 1", "updated_at = ?"]
        args += [txn.now, mid]
        txn.conn.execute(f"UPDATE messages SET {', '.join(sets)} WHERE id = ?", args)
        txn.touch_session()
        msg = txn.message(mid)
        txn.emit("message.updated", {"message": msg})
        return msg

    return run


def op_delete_message(mid: str) -> Callable[[Txn], None]:
    """Replace a message with a tombstone that keeps the tree whole.

    Its content and data are erased; it disappears from listings and reads.
    If it was the active leaf, the leaf moves to its nearest live ancestor.
    """

    def run(txn: Txn) -> None:
        row = txn.message_row(mid)
        seq = row.seq
        txn.conn.execute(
            "UPDATE messages SET content = '', parts = NULL, tool_call = NULL, "
            "tool_result = NULL, attachments = NULL, metadata = '{}', error = NULL, "
            "feedback = NULL, tokens = 0, usage = NULL, context = NULL, "
            "deleted_at = ?, updated_at = ?, version = version + 1 WHERE seq = ?",
            (txn.now, txn.now, seq),
        )
        st = txn.state
        st.message_count -= 1
        txn.touch_session()
        leaf = st.active_leaf_seq
        if seq == leaf:
            node = row.parent_seq
            while node is not None:
                parent, deleted = txn.conn.execute(
                    "SELECT parent_seq, deleted_at FROM messages WHERE seq = ?", (node,)
                ).fetchone()
                if deleted is None:
                    break
                node = parent
            txn.set_active_leaf(node)
        txn.emit("message.deleted", {"message_id": mid})
        if leaf == seq:
            txn.emit("session.updated", {"session": txn.session_doc()})

    return run


def op_update_session(
    *,
    title: str | None = None,
    set_title: bool = False,
    metadata: dict[str, Any] | None = None,
    active_leaf_id: str | None = None,
    organisation: dict[str, Any] | None = None,
) -> Callable[[Txn], dict[str, Any]]:
    """Change a session's title, metadata or active branch; return the Session.

    ``active_leaf_id`` may name any live message: the path then follows the
    most recent live children below it down to a leaf, so naming a sibling
    switches to that branch as it was last left. A title set here is the
    user's (``title_source`` "user"; null when the title is cleared).
    ``organisation`` may hold ``pinned``, ``archived``, ``folder``, ``tags``
    (a list, stored sorted without repeats), ``temporary`` and ``expires_at``
    (checked by the caller).
    """

    def run(txn: Txn) -> dict[str, Any]:
        st = txn.state
        for key, value in (organisation or {}).items():
            if key in ("pinned", "archived", "temporary"):
                setattr(st, key, int(bool(value)))
            elif key == "tags":
                st.tags = dumps(sorted(set(value)))
            elif key in ("folder", "expires_at"):
                setattr(st, key, value)
            elif key == "settings":  # issue 19: checked by the caller
                st.settings = dumps(value)
            else:
                raise InvalidInput(f"field {key!r} cannot be changed")
        if set_title:
            txn.state.title = title
            txn.state.title_source = None if title is None else "user"
        if metadata is not None:
            txn.state.metadata = dumps(metadata)
        if active_leaf_id is not None:
            found = txn.conn.execute(
                "SELECT seq, deleted_at FROM messages WHERE id = ?", (active_leaf_id,)
            ).fetchone()
            node, deleted_at = (None, None) if found is None else found
            if node is None or deleted_at is not None:
                raise InvalidInput(
                    "active_leaf_id does not name a message of this session",
                    details={"active_leaf_id": active_leaf_id},
                )
            while True:
                child = txn.conn.execute(
                    "SELECT seq FROM messages WHERE parent_seq = ? AND deleted_at IS NULL "
                    "ORDER BY seq DESC LIMIT 1",
                    (node,),
                ).fetchone()
                if child is None:
                    break
                (node,) = child
            txn.set_active_leaf(node)
        txn.touch_session()
        doc = txn.session_doc()
        txn.emit("session.updated", {"session": doc})
        return doc

    return run


def op_auto_title(title: str) -> Callable[[Txn], dict[str, Any] | None]:
    """Give the session the title ``title`` made for it (``title_source`` "auto"),
    unless it has a title source already (a user's title, or an earlier auto
    one): then nothing changes and the result is None. Otherwise the Session,
    with a ``session.updated`` event. Idempotent.
    """

    def run(txn: Txn) -> dict[str, Any] | None:
        st = txn.state
        if st.title_source is not None or st.title is not None:
            return None
        st.title, st.title_source = title, "auto"
        txn.session_changed = True
        doc = txn.session_doc()
        txn.emit("session.updated", {"session": doc})
        return doc

    return run


def op_set_feedback(mid: str, feedback: dict[str, Any] | None) -> Callable[[Txn], dict[str, Any]]:
    """Set (or, with None, remove) the feedback on live message ``mid``; one per
    message, replaced by the next; its ``updated_at`` is the commit's time.
    Bumps the version; a ``message.updated``
    event carries it. Returns the message."""

    def run(txn: Txn) -> dict[str, Any]:
        row = txn.message_row(mid)
        value = None if feedback is None else dumps({**feedback, "updated_at": txn.now})
        txn.conn.execute(
            "UPDATE messages SET feedback = ?, version = version + 1, updated_at = ? WHERE seq = ?",
            (value, txn.now, row.seq),
        )
        msg = txn.message_by_seq(row.seq)
        txn.emit("message.updated", {"message": msg})
        return msg

    return run


def _first_reply(txn: Txn, user_seq: int) -> dict[str, Any] | None:
    raw = txn.conn.execute(
        f"SELECT {MESSAGE_SELECT} FROM messages WHERE parent_seq = ? AND role = 'assistant' "
        "ORDER BY seq LIMIT 1",
        (user_seq,),
    ).fetchone()
    return None if raw is None else message_doc(MessageRow._make(raw), txn.session_id)


def op_chat(
    user: MessageDraft, *, model_id: str | None = None
) -> Callable[[Txn], tuple[dict[str, Any], dict[str, Any], bool]]:
    """Append a user message and a ``pending`` assistant reply below it, atomically.

    Returns ``(user_message, assistant_message, created)``. A repeated
    ``client_id`` with the same request returns the stored pair with
    ``created=False`` (a reply is added if the first attempt has none).
    """

    def run(txn: Txn) -> tuple[dict[str, Any], dict[str, Any], bool]:
        user_msg, created = op_append(user)(txn)
        if not created:
            reply = _first_reply(txn, user_msg["seq"])
            if reply is not None:
                return user_msg, reply, False
        draft = MessageDraft(
            role="assistant",
            content="",
            status="pending",
            parent_id=user_msg["id"],
            model_id=model_id,
        )
        reply, _ = op_append(draft)(txn)
        return user_msg, reply, created

    return run


def op_regenerate(mid: str, *, model_id: str | None = None) -> Callable[[Txn], dict[str, Any]]:
    """Add a ``pending`` assistant message: a sibling of assistant ``mid``, or a
    child of user ``mid``. It becomes the active leaf; nothing is removed."""

    def run(txn: Txn) -> dict[str, Any]:
        row = txn.message_row(mid)
        role, parent_id = row.role, row.parent_id
        if role == "assistant":
            if parent_id is None:
                raise InvalidInput("this assistant message has no parent to answer")
        elif role == "user":
            parent_id = mid
        else:
            raise InvalidInput(
                f"only user and assistant messages can be regenerated, not {role}",
                details={"role": role},
            )
        draft = MessageDraft(
            role="assistant", content="", status="pending", parent_id=parent_id, model_id=model_id
        )
        return op_append(draft)(txn)[0]

    return run


# a reply's status a newer turn set while the reply still streamed (issue 19)
ENDED_BY_OTHERS = ("interrupted", "cancelled")


def op_stream(
    mid: str,
    text: str,
    *,
    parts: list[Any] | None,
    status: str,
    error: dict[str, Any] | None = None,
    info: dict[str, Any] | None = None,
    usage: dict[str, Any] | None = None,
    context: dict[str, Any] | None = None,
) -> Callable[[Txn], dict[str, Any] | None]:
    """Append ``text`` to a streaming reply and set its status.

    ``usage`` (what the provider reported) and ``context`` (the record of the
    history the reply answered, issue 21) are stored when given; the token
    count follows the text.

    The text goes to subscribers as an ephemeral ``message.delta`` (offset =
    length of the text before it); a durable ``message.updated`` event is
    recorded only when the status changes (first text, and the end), after
    the delta. Returns the message when an event was recorded.
    """

    def run(txn: Txn) -> dict[str, Any] | None:
        raw = txn.conn.execute(
            f"SELECT {MESSAGE_SELECT} FROM messages WHERE id = ?", (mid,)
        ).fetchone()
        if raw is None:
            raise NotFound(f"message {mid!r} not found", details={"message_id": mid})
        row = MessageRow._make(raw)
        if row.deleted_at is not None:  # rolled back by a newer turn (issue 19)
            return message_doc(row, txn.session_id)
        # ended by a newer turn (interrupt) while this text was on its way: keep that end
        new_status = row.status if row.status in ENDED_BY_OTHERS else status
        sets = [
            "content = content || ?",
            "parts = ?",
            "status = ?",
            "version = version + 1",
            "updated_at = ?",
        ]
        args: list[Any] = [text, None if parts is None else dumps(parts), new_status, txn.now]
        sets.append("tokens = ?")
        args.append(estimate_message(row.role, row.content + text, parts))
        for key, value in (("usage", usage), ("context", context)):
            if value is not None:
                sets.append(f"{key} = ?")
                args.append(dumps(value))
        if error is not None:
            sets.append("error = ?")
            args.append(dumps(error))
        for key in ("model_id", "provider_id", "fallback_notice"):
            if info and info.get(key) is not None:
                sets.append(f"{key} = ?")
                args.append(info[key])
        if info and info.get("metadata"):  # what the responder reports (issue 25)
            sets.append("metadata = json_patch(metadata, ?)")
            args.append(dumps(info["metadata"]))
        args.append(row.seq)
        txn.conn.execute(f"UPDATE messages SET {', '.join(sets)} WHERE seq = ?", args)
        if text:
            txn.ephemeral("message.delta", feed_delta(mid, len(row.content), text))
        if row.status == new_status:
            if new_status not in ENDED_BY_OTHERS:
                return None
            ended = txn.message_by_seq(row.seq)  # the end the newer turn set, with this text
            if text:
                txn.emit("message.updated", {"message": ended})
            return ended
        if new_status not in UNFINISHED:
            txn.touch_session()
        msg = txn.message_by_seq(row.seq)
        txn.emit("message.updated", {"message": msg})
        return msg

    return run


def op_index_search(limit: int = 1000) -> BulkOp[bool]:
    """Index up to ``limit`` messages above the search watermark; True if more remain.

    New messages are not indexed by the write that adds them (that would
    double the cost of an append); this catches the index up. Unfinished
    replies are passed over: the trigger indexes them when they finish.
    """

    def run(txn: Txn) -> bool:
        conn = txn.conn
        mark = scalar(conn.execute("SELECT indexed_seq FROM search_index"))
        rows = conn.execute(
            "SELECT seq, content, status, deleted_at FROM messages WHERE seq > ? "
            "ORDER BY seq LIMIT ?",
            (mark, limit),
        ).fetchall()
        if not rows:
            return False
        conn.executemany(
            "INSERT INTO messages_fts (rowid, content) VALUES (?, ?)",
            [
                (seq, content)
                for seq, content, status, deleted_at in rows
                if deleted_at is None and status not in UNFINISHED
            ],
        )
        last_seq = max(seq for seq, _, _, _ in rows)  # rows are in seq order
        conn.execute("UPDATE search_index SET indexed_seq = ?", (last_seq,))
        return len(rows) == limit

    return BulkOp(run)


def op_recover_unfinished() -> Callable[[Txn], None]:
    """Mark replies left ``pending``/``streaming`` by a crash as ``interrupted``.

    The owner submits it on activation, when no reply of this session can be
    running. Text streamed so far is kept; each reply gets a
    ``message.updated`` event. Idempotent: a second run finds nothing to do.
    """

    def run(txn: Txn) -> None:
        rows = txn.conn.execute(
            "SELECT id FROM messages WHERE status IN ('pending', 'streaming') ORDER BY seq"
        ).fetchall()
        for (mid,) in rows:
            op_update_message(mid, {"status": "interrupted"})(txn)

    return run
