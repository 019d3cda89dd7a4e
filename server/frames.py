"""Frames on the wire: encodings of an actor's :class:`~actors.pubsub.Frame`, and the
frames the server builds itself (SPEC section 4).

Encodings (each done once per frame, whatever the number of subscribers: the
result is kept in the frame's cache slot):

- :func:`ws_bytes`: one unmasked WebSocket text frame (RFC 6455 section 5.2),
  header and payload, ready for ``transport.write``;
- :func:`sse_bytes`: one SSE event (``id`` = the event seq when durable).

Frames the server builds, one function each, as the JSON payload of a
WebSocket text frame: :func:`error`, :func:`binary_refused`, :func:`pong`,
:func:`chat_ack`, :func:`cancel_ack`; the plain-text answer to ``ping``
(:data:`PONG_TEXT`); the close reasons :func:`close_lagged`,
:func:`close_deleted`, :func:`close_going_away`; and the SSE ``lagged`` event
(:func:`sse_lagged`). ``hello`` and ``resync`` are built by the feed
(``actors/feed.py``) as :class:`Frame` values and encoded here like any other.

(Named ``frames`` rather than ``wire`` so it merges beside ``server/wire.py``.)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
from aiohttp import WSCloseCode

from actors.pubsub import Frame, Subscription
from server.sse import encode

# Close codes (4000-4999 are the application's own).
CLOSE_LAGGED = 4001  # the client fell behind: reconnect with ?since=<last seq>
CLOSE_DELETED = 4004  # the session was deleted
CLOSE_REASON_MAX = 120  # bytes of a close reason the server sends (RFC 6455 allows 123)

PONG_TEXT = "pong"  # the answer to the plain-text frame "ping"


# ---------------------------------------------------------------- encodings of a Frame


def ws_header(n: int) -> bytes:
    """The header of an unmasked, final text frame with an ``n``-byte payload."""
    if n < 126:
        return bytes((0x81, n))
    if n < 65536:
        return bytes((0x81, 126)) + n.to_bytes(2, "big")
    return bytes((0x81, 127)) + n.to_bytes(8, "big")


def ws_bytes(frame: Frame) -> bytes:
    """``frame`` as one WebSocket text frame, encoded once for all subscribers."""
    out = frame.ws_bytes
    if out is None:
        out = frame.ws_bytes = ws_header(len(frame.data)) + frame.data
    return out


def sse_bytes(frame: Frame) -> bytes:
    """``frame`` as one SSE event, encoded once for all subscribers."""
    out = frame.sse_bytes
    if out is None:
        out = frame.sse_bytes = encode(frame.type, frame.data, frame.seq)
    return out


async def sse_events(sub: Subscription | None) -> AsyncIterator[bytes]:
    """``sub``'s frames as SSE events until it ends (nothing when ``sub`` is None)."""
    if sub is None:
        return
    while (frame := await sub.get()) is not None:
        yield sse_bytes(frame)


# ---------------------------------------------------------------- frames the server builds


def error(ref: Any, code: str, message: str, status: int, details: Any) -> bytes:
    """``error``: the answer to the client frame ``ref``, with its HTTP-like status."""
    return orjson.dumps(
        {
            "type": "error",
            "ref": ref,
            "code": code,
            "message": message,
            "status": status,
            "details": details,
        }
    )


def binary_refused() -> bytes:
    """``error`` for a binary client frame (frames are JSON text)."""
    return orjson.dumps(
        {"type": "error", "code": "invalid_input", "message": "frames must be JSON text"}
    )


def pong(ref: Any) -> bytes:
    """``pong``: the answer to a JSON ``ping`` frame."""
    return orjson.dumps({"type": "pong", "ref": ref})


def chat_ack(
    ref: Any,
    client_id: str | None,
    user_message: dict[str, Any],
    assistant_message: dict[str, Any] | None,
) -> bytes:
    """``chat.ack``: the committed user message and the pending reply (None: the
    user message is ``queued``; its reply comes as events when it starts)."""
    return orjson.dumps(
        {
            "type": "chat.ack",
            "ref": ref,
            "client_id": client_id,
            "user_message": user_message,
            "assistant_message": assistant_message,
        }
    )


def cancel_ack(ref: Any, message: dict[str, Any]) -> bytes:
    """``cancel.ack``: the reply as it stopped (or as it had ended)."""
    return orjson.dumps({"type": "cancel.ack", "ref": ref, "message": message})


def close_lagged(last_seq: int) -> tuple[int, bytes]:
    """Close 4001: the client fell behind; it resumes with ``since=<last_seq>``."""
    return CLOSE_LAGGED, f"lagged; reconnect with since={last_seq}".encode()


def close_deleted(reason: str = "session deleted") -> tuple[int, bytes]:
    """Close 4004: the session is gone (``reason``, cut to fit a close frame)."""
    return CLOSE_DELETED, reason.encode()[:CLOSE_REASON_MAX]


def close_going_away() -> tuple[int, bytes]:
    """Close 1001: the server is shutting down."""
    return WSCloseCode.GOING_AWAY, b"server shutting down"


def sse_lagged(last_seq: int) -> bytes:
    """The SSE ``lagged`` event: the feed fell behind; resume from ``last_seq``."""
    return encode("lagged", str(last_seq).encode())
