"""Identifiers, timestamps and session-id validation: pure functions."""

from __future__ import annotations

import os
import re
import time
from datetime import UTC, datetime

from storage.errors import InvalidInput

SESSION_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")

_last_ms = 0
_seq_in_ms = 0


def ascii_int(text: str, max_digits: int) -> int | None:
    """The value of ``text`` if it is 1 to ``max_digits`` ASCII digits, else None.

    ``str.isdigit`` also accepts superscripts ("²", which ``int`` then rejects)
    and other scripts' digits ("٣", which ``int`` silently reads as 3); numeric
    inputs of the API are ASCII only, so neither reaches ``int``.
    """
    if not 0 < len(text) <= max_digits or not text.isascii() or not text.isdigit():
        return None
    return int(text)


def validate_session_id(sid: str) -> str:
    """Return ``sid`` if it is a legal session id, else raise :class:`InvalidInput`.

    Legal ids match ``[A-Za-z0-9][A-Za-z0-9._-]{0,127}`` and are not made only of
    dots and dashes after the first character in a way that could name a parent
    directory: since the first character is alphanumeric, ``.`` and ``..`` can
    never match, so a valid id is always a safe single path component.
    """
    if not isinstance(sid, str) or SESSION_ID_RE.fullmatch(sid) is None:
        raise InvalidInput(
            "session id must match [A-Za-z0-9][A-Za-z0-9._-]{0,127}",
            details={"id": sid if isinstance(sid, str) and len(sid) <= 200 else None},
        )
    return sid


def validate_path_component(name: str) -> str:
    """Return ``name`` if it is safe as one file name inside a folder, else raise.

    Same rule as session ids; raises :class:`InvalidInput` for anything else
    (separators, ``..``, NUL, leading dots, over 128 characters).
    """
    if not isinstance(name, str) or SESSION_ID_RE.fullmatch(name) is None:
        raise InvalidInput(
            "file name must match [A-Za-z0-9][A-Za-z0-9._-]{0,127}",
            details={"name": name if isinstance(name, str) and len(name) <= 200 else None},
        )
    return name


def uuid7() -> str:
    """A UUIDv7 string: 48-bit unix milliseconds, then a counter and random bits.

    Ids made by one process are strictly increasing, even within one millisecond.
    """
    global _last_ms, _seq_in_ms
    ms = time.time_ns() // 1_000_000
    if ms <= _last_ms:
        _seq_in_ms += 1
        if _seq_in_ms > 0xFFF:
            _last_ms += 1
            _seq_in_ms = 0
        ms = _last_ms
    else:
        _last_ms = ms
        _seq_in_ms = 0
    rand = int.from_bytes(os.urandom(8), "big") & 0x3FFF_FFFF_FFFF_FFFF
    value = (ms << 80) | (0x7 << 76) | (_seq_in_ms << 64) | (0b10 << 62) | rand
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_now_second = -1
_now_prefix = ""


def now_iso() -> str:
    """The current time as an RFC 3339 UTC string with milliseconds.

    Same text as ``format_ts(time.time())``; the part up to the seconds is
    formatted once per second (this runs once per commit).
    """
    global _now_second, _now_prefix
    t = time.time()
    sec = int(t)
    if sec != _now_second:
        _now_prefix = datetime.fromtimestamp(sec, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.")
        _now_second = sec
    return f"{_now_prefix}{int((t - sec) * 1000):03d}Z"


def format_ts(t: float) -> str:
    """``t`` (unix seconds) as ``YYYY-MM-DDTHH:MM:SS.mmmZ``."""
    dt = datetime.fromtimestamp(t, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"
