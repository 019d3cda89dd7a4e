"""Rendering a session export: pure functions over message documents.

Both renderers take the session's documents and an *iterable* of Message
documents (API shape, see ``storage.session_db.message_doc``) and yield the
output in chunks, so a caller can stream a session of any size in bounded
memory: nothing here holds more than one message at a time. The server's
``GET /api/sessions/{sid}/export`` can reuse them.

JSON (``roost.session.v1``)::

    {"format": "roost.session.v1", "exported_at": "...",
     "session": {Session doc, plus "owner" when known},
     "active_leaf_id": "..." | null,
     "messages": [every message of every branch in log order, tombstones
                  included with "deleted": true],
     "attachments": []}

Markdown: a ``#`` title, then each live message of the active path (root to
active leaf) as a ``## role`` heading followed by its content.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import orjson

EXPORT_FORMAT = "roost.session.v1"


def export_json_chunks(
    session: dict[str, Any],
    messages: Iterable[dict[str, Any]],
    *,
    exported_at: str,
    attachments: Iterable[dict[str, Any]] = (),
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
        yield f"## {msg.get('role', '?')}\n\n{content}\n\n"


def _one_line(text: str) -> str:
    return " ".join(text.split())
