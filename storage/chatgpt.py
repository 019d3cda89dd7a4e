"""ChatGPT data exports (issue 25): ``conversations.json`` into Roost sessions.

The format, as ChatGPT's "Export data" writes it: a JSON array of
conversations; each has ``title``, ``create_time``/``update_time`` (Unix
seconds, fractional), ``current_node`` (the node the user was last on) and
``mapping``: node id -> ``{id, message, parent, children}``, a tree whose root
usually has no message. A message has ``author.role`` (``user``,
``assistant``, ``system``, ``tool``; a tool's ``author.name`` names it),
``create_time``, ``status``, ``metadata.model_slug`` and ``content`` with a
``content_type``: ``text`` and ``multimodal_text`` (``parts``: strings, and
objects such as image pointers), ``code`` (``text``, ``language``),
``execution_output``, ``tether_quote``, ``tether_browsing_display``,
``thoughts``, ``reasoning_recap``, ``user_editable_context``,
``system_error``; any other type keeps what text it has.

:func:`iter_array` splits the top-level array into its elements' bytes while
reading, so memory holds one conversation (at most ``max_element_bytes``) and
one read chunk, never the file. :func:`conversation_export` turns one
conversation into a ``roost.session.v1`` document (every node with a message
becomes a message with the node's id, the tree and sibling order kept, nodes
without a message skipped and their children lifted to the nearest kept
ancestor; ``current_node``'s nearest kept ancestor-or-self is the active leaf;
roles, times and model slugs kept; text over ``max_content_chars`` cut with
a marker). It raises :class:`ChatGPTError` naming what is wrong.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import orjson

from storage.errors import InvalidInput
from storage.export import EXPORT_FORMAT

CHUNK = 1 << 20
_WS = re.compile(rb"[ \t\n\r]*")
# runs of anything but brackets, braces and quotes, and whole strings (escapes skipped)
_SKIP = re.compile(rb'(?:[^"\[\]{}]++|"[^"\\]*+(?:\\.[^"\\]*+)*+")*+', re.DOTALL)
ROLES = frozenset({"user", "assistant", "system", "tool"})


class ChatGPTError(InvalidInput):
    """A ChatGPT export that cannot be imported (400; ``details`` says where)."""

    code = "invalid_input"


def iter_array(
    read: Callable[[int], bytes], *, max_element_bytes: int, chunk: int = CHUNK
) -> Iterator[bytes]:
    """The elements of the JSON array that ``read(n)`` returns, each as its bytes.

    Checks the array's own structure (``[``, commas, ``]``, nothing after it)
    and that every element is an object; the inside of an element is left to
    the caller's JSON decoder. Raises :class:`ChatGPTError` otherwise, or
    when an element is over ``max_element_bytes``.
    """
    buf = bytearray()
    pos = 0
    eof = False

    def more() -> bool:
        nonlocal eof
        if eof:
            return False
        data = read(chunk)
        if not data:
            eof = True
            return False
        buf.extend(data)
        return True

    def skip_ws() -> None:
        nonlocal pos
        while True:
            pos = _WS.match(buf, pos).end()  # type: ignore[union-attr]
            if pos < len(buf) or not more():
                return

    skip_ws()
    if pos >= len(buf) or buf[pos] != ord("["):
        raise ChatGPTError("conversations.json must be a JSON array of conversations")
    pos += 1
    index = 0
    while True:
        skip_ws()
        if pos >= len(buf):
            raise ChatGPTError("conversations.json ends inside its array")
        c = buf[pos]
        if c == ord("]") and index == 0:
            pos += 1
            break
        if c != ord("{"):
            raise ChatGPTError(
                f"conversation {index} is not a JSON object", details={"index": index}
            )
        start, depth = pos, 0
        while True:
            m = _SKIP.match(buf, pos)
            pos = m.end() if m is not None else pos
            if pos >= len(buf) or buf[pos] == ord('"'):  # more to read (maybe mid-string)
                if pos - start > max_element_bytes:
                    raise ChatGPTError(
                        f"conversation {index} is larger than {max_element_bytes} bytes",
                        details={"index": index},
                    )
                if not more():
                    raise ChatGPTError(f"conversations.json ends inside conversation {index}")
                continue
            c = buf[pos]
            pos += 1
            if c in b"[{":
                depth += 1
            elif c in b"]}":
                depth -= 1
                if depth == 0:
                    break
        if pos - start > max_element_bytes:
            raise ChatGPTError(
                f"conversation {index} is larger than {max_element_bytes} bytes",
                details={"index": index},
            )
        yield bytes(buf[start:pos])
        del buf[:pos]
        pos = 0
        index += 1
        skip_ws()
        if pos >= len(buf):
            raise ChatGPTError("conversations.json ends inside its array")
        if buf[pos] == ord(","):
            pos += 1
            continue
        if buf[pos] == ord("]"):
            pos += 1
            break
        raise ChatGPTError(f"expected , or ] after conversation {index - 1}")
    skip_ws()
    if pos < len(buf):
        raise ChatGPTError("conversations.json has data after its array")


def _ts(value: Any, fallback: str) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        try:
            when = datetime.fromtimestamp(float(value), UTC)
        except (OverflowError, OSError, ValueError):
            return fallback
        return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"
    return fallback


def message_text(content: Any) -> str:
    """The text of a ChatGPT message's ``content`` (see the module docstring)."""
    if not isinstance(content, dict):
        return ""
    kind = content.get("content_type")
    out: list[str] = []
    if kind == "code":
        lang = content.get("language") or ""
        lang = "" if lang == "unknown" else str(lang)
        return f"```{lang}\n{content.get('text') or ''}\n```"
    if kind == "thoughts":
        for t in content.get("thoughts") or []:
            if isinstance(t, dict):
                out.append("\n".join(str(t.get(k) or "") for k in ("summary", "content")).strip())
        return "\n\n".join(x for x in out if x)
    if kind == "user_editable_context":
        keys = ("user_profile", "user_instructions")
        return "\n\n".join(str(content[k]) for k in keys if content.get(k))
    for part in content.get("parts") or []:
        if isinstance(part, str):
            out.append(part)
        elif isinstance(part, dict):
            ptype = part.get("content_type") or "part"
            if isinstance(part.get("text"), str):
                out.append(part["text"])
            else:
                pointer = str(part.get("asset_pointer") or "").rsplit("/", 1)[-1]
                out.append(f"[{ptype}{': ' + pointer if pointer else ''}]")
    for key in ("text", "result", "content", "summary"):
        if not out and isinstance(content.get(key), str):
            out.append(content[key])
    if kind == "tether_quote" and content.get("title"):
        out.insert(0, str(content["title"]))
    if kind == "system_error" and content.get("name"):
        out.insert(0, str(content["name"]))
    return "\n".join(out)


_STATUS = {
    "finished_successfully": "complete",
    "finished_partial_completion": "interrupted",
    "in_progress": "interrupted",
}


def conversation_export(
    raw: bytes,
    index: int,
    *,
    max_title_chars: int,
    max_content_chars: int,
) -> dict[str, Any]:
    """The ``roost.session.v1`` document of conversation ``index`` (its bytes
    ``raw``); raises :class:`ChatGPTError` when it is not one."""
    where = {"index": index}
    try:
        conv = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ChatGPTError(
            f"conversation {index} is not valid JSON: {exc}", details=where
        ) from None
    mapping = conv.get("mapping") if isinstance(conv, dict) else None
    if not isinstance(mapping, dict) or not mapping:
        raise ChatGPTError(f"conversation {index} has no mapping (its tree)", details=where)
    cid = conv.get("conversation_id") or conv.get("id")
    where = {"index": index, "conversation_id": cid}
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    created = _ts(conv.get("create_time"), now)
    updated = _ts(conv.get("update_time"), created)
    for key, node in mapping.items():
        if not isinstance(node, dict):
            raise ChatGPTError(
                f"conversation {index}: node {key!r} is not an object", details=where
            )
        parent = node.get("parent")
        if parent is not None and parent not in mapping:
            raise ChatGPTError(
                f"conversation {index}: node {key!r} has an unknown parent {parent!r}",
                details=where,
            )
        if not isinstance(node.get("children") or [], list):
            raise ChatGPTError(f"conversation {index}: node {key!r} children", details=where)
    roots = [k for k, n in mapping.items() if n.get("parent") is None]
    if not roots:
        raise ChatGPTError(f"conversation {index} has no root node (a cycle?)", details=where)
    messages: list[dict[str, Any]] = []
    kept: dict[str, str | None] = {}  # node id -> the message id it maps to (or None)
    seen: set[str] = set()
    # depth first, children in their listed order, so a parent is always written first
    stack: list[tuple[str, str | None]] = [(r, None) for r in reversed(roots)]
    while stack:
        key, up = stack.pop()
        if key in seen:
            raise ChatGPTError(
                f"conversation {index}: node {key!r} is reached twice", details=where
            )
        seen.add(key)
        node = mapping[key]
        msg = node.get("message")
        here = up
        if isinstance(msg, dict):
            made = _message(msg, key, up, len(messages) + 1, created, max_content_chars, where)
            messages.append(made)
            here = key
        kept[key] = here
        children = [c for c in node.get("children") or [] if isinstance(c, str)]
        for child in reversed(children):
            if child not in mapping:
                raise ChatGPTError(
                    f"conversation {index}: node {key!r} has an unknown child {child!r}",
                    details=where,
                )
            if mapping[child].get("parent") != key:
                raise ChatGPTError(
                    f"conversation {index}: node {child!r} is a child of {key!r} but names "
                    "another parent",
                    details=where,
                )
            stack.append((child, here))
    if len(seen) != len(mapping):
        raise ChatGPTError(f"conversation {index}: some nodes are not in the tree", details=where)
    current = conv.get("current_node")
    if current is not None and current not in mapping:
        raise ChatGPTError(
            f"conversation {index}: current_node {current!r} is not in the mapping", details=where
        )
    leaf = kept.get(current) if current is not None else (messages[-1]["id"] if messages else None)
    title = conv.get("title") if isinstance(conv.get("title"), str) else None
    title = title[:max_title_chars] if title else None
    meta: dict[str, Any] = {"imported_from": "chatgpt"}
    if isinstance(cid, str):
        meta["chatgpt_conversation_id"] = cid[:128]
    if isinstance(conv.get("default_model_slug"), str):
        meta["chatgpt_model"] = conv["default_model_slug"][:128]
    return {
        "format": EXPORT_FORMAT,
        "session": {
            "title": title,
            "metadata": meta,
            "created_at": created,
            "updated_at": updated,
            "last_message_at": messages[-1]["created_at"] if messages else None,
        },
        "active_leaf_id": leaf,
        "messages": messages,
    }


def _message(
    msg: dict[str, Any],
    key: str,
    parent: str | None,
    seq: int,
    fallback_time: str,
    max_content_chars: int,
    where: dict[str, Any],
) -> dict[str, Any]:
    author: dict[str, Any] = msg["author"] if isinstance(msg.get("author"), dict) else {}
    role = author.get("role")
    if role not in ROLES:
        raise ChatGPTError(f"node {key!r}: unknown author role {role!r}", details=where)
    if len(key) > 128:
        raise ChatGPTError(f"node id {key[:40]!r}... is longer than 128 characters", details=where)
    text = message_text(msg.get("content"))
    meta: dict[str, Any] = {}
    if len(text) > max_content_chars:
        marker = "\n[... cut on import]"
        text = text[: max_content_chars - len(marker)] + marker
        meta["cut_on_import"] = True
    raw_meta: dict[str, Any] = msg["metadata"] if isinstance(msg.get("metadata"), dict) else {}
    if raw_meta.get("is_visually_hidden_from_conversation"):
        meta["hidden"] = True
    content = msg.get("content")
    kind = content.get("content_type") if isinstance(content, dict) else None
    if isinstance(kind, str) and kind != "text":
        meta["content_type"] = kind[:64]
    created = _ts(msg.get("create_time"), fallback_time)
    slug = raw_meta.get("model_slug")
    name = author.get("name")
    return {
        "id": key,
        "seq": seq,
        "role": role,
        "content": text,
        "status": _STATUS.get(str(msg.get("status")), "complete"),
        "parent_id": parent,
        "model_id": slug[:256] if isinstance(slug, str) and role == "assistant" else None,
        "provider_id": "openai" if role == "assistant" else None,
        "tool_name": name[:256] if isinstance(name, str) and role == "tool" else None,
        "metadata": meta,
        "created_at": created,
        "updated_at": _ts(msg.get("update_time"), created),
    }
