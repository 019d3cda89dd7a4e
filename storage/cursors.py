"""Opaque pagination cursors: pure functions.

A cursor names a position in one ordering (``kind``) and is only valid for it:
``s`` is the message log (``seq``), ``d`` the active path (``depth``), ``u`` the
session list (``updated_at`` and ``id``). Cursors are url-safe base64 of a short
text so clients treat them as opaque; anything that does not decode to the
expected kind raises :class:`InvalidInput`.
"""

from __future__ import annotations

import base64
import binascii

from storage.errors import InvalidInput
from storage.ids import ascii_int

_MAX_INT = 2**62


def encode_int(kind: str, value: int) -> str:
    """Encode an integer position of ordering ``kind``."""
    raw = f"{kind}:{value}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_raw(cursor: str) -> str:
    if not isinstance(cursor, str) or not 0 < len(cursor) <= 512:
        raise InvalidInput("bad cursor", details={"cursor": None})
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        return base64.urlsafe_b64decode(padded.encode("ascii")).decode("utf-8")
    except (binascii.Error, UnicodeError, ValueError) as exc:
        raise InvalidInput("bad cursor: not a cursor this server made") from exc


def decode_int(kind: str, cursor: str) -> int:
    """Decode a cursor made by :func:`encode_int` with the same ``kind``."""
    raw = _decode_raw(cursor)
    prefix, _, num = raw.partition(":")
    value = ascii_int(num, 19)
    if prefix != kind or value is None or value >= _MAX_INT:
        raise InvalidInput("bad cursor: not a cursor for this listing")
    return value


def encode_pair(kind: str, ts: str, ident: str) -> str:
    """Encode a (timestamp, id) position of ordering ``kind``."""
    raw = f"{kind}:{ts}|{ident}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_pair(kind: str, cursor: str) -> tuple[str, str]:
    """Decode a cursor made by :func:`encode_pair` with the same ``kind``."""
    raw = _decode_raw(cursor)
    prefix, _, rest = raw.partition(":")
    ts, sep, ident = rest.partition("|")
    if prefix != kind or not sep or not ts or not ident:
        raise InvalidInput("bad cursor: not a cursor for this listing")
    return ts, ident
