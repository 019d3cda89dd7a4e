"""A small scanner for one JSON object whose members are decoded separately.

:func:`scan_object` walks the top level of a JSON object held in a bytes-like
buffer and reports, per member, the byte span of its value; for the members
named in ``arrays`` whose value is an array, it reports the span of each
element instead. Nothing is decoded here except the member names: the caller
decodes each span on its own (``orjson.loads`` on a ``memoryview`` slice), so
memory is bounded by the buffer plus the one value being decoded, not by the
whole tree.

Validity: the scanner checks the structure it walks (braces, brackets,
colons, commas, whitespace, nothing after the object) strictly. It does not
check the inside of a span: every span must be decoded by the caller, which
then catches what is malformed there. Spans between separators cover every
byte that the scanner does not check itself, so a buffer whose spans all
decode is one valid JSON document.
"""

from __future__ import annotations

import re
from array import array
from dataclasses import dataclass, field

import orjson

# Runs of anything but brackets (and commas, for _TOP), JSON strings (escapes
# skipped) included, matched possessively in C: the Python loops below only
# step on brackets and top-level commas.
_SKIP = re.compile(rb'(?:[^"\[\]{}]++|"[^"\\]*+(?:\\.[^"\\]*+)*+")*+', re.DOTALL)
_TOP = re.compile(rb'(?:[^"\[\]{},]++|"[^"\\]*+(?:\\.[^"\\]*+)*+")*+', re.DOTALL)
_STRING = re.compile(rb'"[^"\\]*+(?:\\.[^"\\]*+)*+"', re.DOTALL)
_WS = re.compile(rb"[ \t\n\r]*")
_SCALAR = re.compile(rb"[^ \t\n\r,\]}]*")
MAX_DEPTH = 1024  # orjson's: a document nested deeper is not decoded


class ScanError(ValueError):
    """The buffer is not one JSON object (the message says where)."""


@dataclass(slots=True)
class Member:
    """One member of the scanned object: its value's span ``[start, end)``, and for
    an array named in ``arrays``, its elements' spans (start, end pairs, flat)."""

    start: int
    end: int
    elements: array[int] | None = field(default=None)

    def element_spans(self) -> list[tuple[int, int]] | None:
        """The element spans as pairs (None unless this member was split)."""
        e = self.elements
        if e is None:
            return None
        return [(e[i], e[i + 1]) for i in range(0, len(e), 2)]


def _ws(buf: bytes | bytearray, pos: int) -> int:
    m = _WS.match(buf, pos)
    return pos if m is None else m.end()


def _at(buf: bytes | bytearray, pos: int) -> bytes:
    return bytes(buf[pos : pos + 1])


def _step(buf: bytes | bytearray, pos: int, pattern: re.Pattern[bytes]) -> tuple[int, int]:
    """The next bracket (or comma) at or after ``pos``: its position and byte."""
    m = pattern.match(buf, pos)
    p = pos if m is None else m.end()
    if p >= len(buf):
        raise ScanError("unexpected end of the document")
    t = buf[p]
    if t == 0x22:  # a string that does not end
        raise ScanError(f"unterminated string at byte {p}")
    return p, t


def _value_end(buf: bytes | bytearray, pos: int, outer: int) -> int:
    """The end of the value starting at ``pos``, nested in ``outer`` containers
    (structure only, not its inside)."""
    c = buf[pos : pos + 1]
    if c in (b"{", b"["):
        depth, p = 0, pos
        while True:
            p, t = _step(buf, p, _SKIP)
            if t in b"{[":
                depth += 1
                if outer + depth > MAX_DEPTH:
                    raise ScanError(f"nested too deeply at byte {p}")
            else:
                depth -= 1
                if depth == 0:
                    return p + 1
            p += 1
    if c == b'"':
        s = _STRING.match(buf, pos)
        if s is None:
            raise ScanError(f"unterminated string at byte {pos}")
        return s.end()
    sc = _SCALAR.match(buf, pos)
    end = pos if sc is None else sc.end()
    if end == pos:
        raise ScanError(f"expected a value at byte {pos}")
    return end


def _array_elements(buf: bytes | bytearray, pos: int, outer: int) -> tuple[array[int], int]:
    """The element spans of the array whose ``[`` is at ``pos`` (nested in ``outer``
    containers), and the array's end."""
    spans: array[int] = array("q")
    start = pos + 1
    after = _ws(buf, start)
    if buf[after : after + 1] == b"]":
        return spans, after + 1
    depth, p = 0, start
    while True:
        p, t = _step(buf, p, _TOP if depth == 0 else _SKIP)
        if t in b"{[":
            depth += 1
            if outer + 1 + depth > MAX_DEPTH:
                raise ScanError(f"nested too deeply at byte {p}")
        elif t in b"}]":
            if depth == 0:
                if t != 0x5D:  # "]"
                    raise ScanError(f"unexpected '}}' at byte {p}")
                spans.extend((start, p))
                return spans, p + 1
            depth -= 1
        else:  # a comma between elements
            spans.extend((start, p))
            start = p + 1
        p += 1


def scan_object(buf: bytes | bytearray, arrays: frozenset[str] = frozenset()) -> dict[str, Member]:
    """The members of the JSON object in ``buf``, by name, in the order first seen
    (a repeated name keeps its last value, as a JSON decoder's dict does).

    Raises :class:`ScanError` when ``buf`` is not a JSON object (after optional
    whitespace) or its top-level structure is broken, and ``orjson.JSONDecodeError``
    for a member name that is not a valid JSON string. Pure; ``buf`` is not changed.
    """
    members: dict[str, Member] = {}
    pos = _ws(buf, 0)
    if _at(buf, pos) != b"{":
        raise ScanError("not a JSON object")
    pos = _ws(buf, pos + 1)
    if _at(buf, pos) == b"}":
        pos += 1
    else:
        while True:
            k = _STRING.match(buf, pos)
            if k is None:
                raise ScanError(f"expected a member name at byte {pos}")
            name = orjson.loads(buf[k.start() : k.end()])
            pos = _ws(buf, k.end())
            if _at(buf, pos) != b":":
                raise ScanError(f"expected ':' at byte {pos}")
            pos = _ws(buf, pos + 1)
            if name in arrays and _at(buf, pos) == b"[":
                elements, end = _array_elements(buf, pos, 1)
                member = Member(pos, end, elements)
            else:
                end = _value_end(buf, pos, 1)
                member = Member(pos, end)
            members[name] = member
            pos = _ws(buf, end)
            c = _at(buf, pos)
            if c == b"}":
                pos += 1
                break
            if c != b",":
                raise ScanError(f"expected ',' or '}}' at byte {pos}")
            pos = _ws(buf, pos + 1)
    if _ws(buf, pos) != len(buf):
        raise ScanError(f"unexpected data after the object at byte {pos}")
    return members
