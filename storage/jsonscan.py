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

# a JSON string (escapes skipped whole), or a bracket or comma
_STRUCT = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{},]', re.DOTALL)
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_WS = re.compile(rb"[ \t\n\r]*")
_SCALAR = re.compile(rb"[^ \t\n\r,\]}]*")


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


def _value_end(buf: bytes | bytearray, pos: int) -> int:
    """The end of the value starting at ``pos`` (structure only, not its inside)."""
    c = _at(buf, pos)
    if c in (b"{", b"["):
        depth = 0
        for m in _STRUCT.finditer(buf, pos):
            t = buf[m.start()]
            if t in b"{[":
                depth += 1
            elif t in b"}]":
                depth -= 1
                if depth == 0:
                    return m.end()
        raise ScanError(f"unterminated value at byte {pos}")
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


def _array_elements(buf: bytes | bytearray, pos: int) -> tuple[array[int], int]:
    """The element spans of the array whose ``[`` is at ``pos``, and the array's end."""
    spans: array[int] = array("q")
    start = pos + 1
    after = _ws(buf, start)
    if _at(buf, after) == b"]":
        return spans, after + 1
    depth = 0
    for m in _STRUCT.finditer(buf, start):
        t = buf[m.start()]
        if t == 0x22:  # a string
            continue
        if t in b"{[":
            depth += 1
        elif t in b"}]":
            if depth == 0:
                if t != 0x5D:  # "]"
                    raise ScanError(f"unexpected '}}' at byte {m.start()}")
                spans.extend((start, m.start()))
                return spans, m.end()
            depth -= 1
        elif depth == 0:  # a comma between elements
            spans.extend((start, m.start()))
            start = m.end()
    raise ScanError(f"unterminated array at byte {pos}")


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
                elements, end = _array_elements(buf, pos)
                member = Member(pos, end, elements)
            else:
                end = _value_end(buf, pos)
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
