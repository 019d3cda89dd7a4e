"""The import's top-level scanner (storage.jsonscan) and what parse_export makes of it."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from storage.errors import InvalidInput, MalformedJson
from storage.export import parse_export
from storage.jsonscan import MAX_DEPTH, ScanError, scan_object

TS = "2024-01-01T00:00:00Z"


def _message(i: int, parent: str | None) -> dict[str, Any]:
    return {
        "id": f"m{i}",
        "seq": i,
        "role": "user",
        "content": f'say "{i}" ]}},[',  # brackets and quotes inside a string
        "status": "complete",
        "parent_id": parent,
        "created_at": TS,
        "updated_at": TS,
    }


def _export(n: int = 3) -> dict[str, Any]:
    msgs = [_message(i, f"m{i - 1}" if i > 1 else None) for i in range(1, n + 1)]
    return {
        "messages": msgs,  # first: members may come in any order
        "session": {"title": "t", "created_at": TS, "updated_at": TS},
        "active_leaf_id": f"m{n}",
        "format": "roost.session.v1",
    }


def test_scan_object_spans_decode_to_the_members() -> None:
    body = b' { "a" : [1, {"b": "]"}] ,\n"m":[ {"x": "[,"} , [2, 3], "s" ] }\n'
    members = scan_object(body, frozenset({"m"}))
    assert orjson.loads(body[members["a"].start : members["a"].end]) == [1, {"b": "]"}]
    spans = members["m"].element_spans()
    assert spans is not None
    assert [orjson.loads(body[a:b]) for a, b in spans] == [{"x": "[,"}, [2, 3], "s"]


def test_scan_object_repeated_name_keeps_last_value_in_first_place() -> None:
    body = b'{"a": 1, "b": 2, "a": 3}'
    members = scan_object(body)
    assert list(members) == ["a", "b"]
    assert body[members["a"].start : members["a"].end] == b"3"


@pytest.mark.parametrize(
    "body",
    [b"", b"[1]", b'{"a" 1}', b'{"a": 1,}', b'{"a": 1} x', b'{"m": [1, 2}', b'{"a": "x}', b"{"],
)
def test_scan_object_broken_structure_raises(body: bytes) -> None:
    with pytest.raises((ScanError, orjson.JSONDecodeError)):
        scan_object(body, frozenset({"m"}))


def test_parse_export_takes_members_in_any_order() -> None:
    plan = parse_export(orjson.dumps(_export()))
    assert [m.id for m in plan.messages()] == ["m1", "m2", "m3"]
    assert plan.active_leaf_id == "m3"
    assert plan.last_created_at == TS


def test_parse_export_message_that_is_not_json_is_malformed() -> None:
    body = orjson.dumps(_export()).replace(b'"seq":2', b'"seq":2x', 1)
    with pytest.raises(MalformedJson):
        parse_export(body)


def test_parse_export_empty_element_is_malformed() -> None:
    body = orjson.dumps(_export()).replace(b"}],", b"},],", 1)
    with pytest.raises(MalformedJson):
        parse_export(body)


def test_parse_export_nesting_over_the_limit_is_malformed() -> None:
    doc = _export()
    ok = orjson.dumps(doc).replace(b'"role"', b'"tool_call":' + b"[" * 20 + b"]" * 20 + b',"role"')
    assert len(list(parse_export(ok).messages())) == 3
    n = MAX_DEPTH  # with the top object, the messages array and the message: 3 more
    deep = orjson.dumps(doc).replace(b'"role"', b'"tool_call":' + b"[" * n + b"]" * n + b',"role"')
    with pytest.raises(MalformedJson):
        parse_export(deep)


def test_parse_export_bad_message_after_a_bad_head_reports_both_in_field_order() -> None:
    doc = _export()
    doc["session"] = {"created_at": TS}  # no updated_at
    doc["messages"][1]["role"] = "robot"
    with pytest.raises(InvalidInput) as caught:
        parse_export(orjson.dumps(doc))
    locs = [d["loc"] for d in caught.value.details]
    assert locs == [["session", "updated_at"], ["messages", "1", "role"]]
