"""storage/rows.py: one column definition per table, rows read by name; search snippet data."""

from __future__ import annotations

import collections
import sqlite3
from pathlib import Path
from typing import Any

import orjson
import pytest

from server.wire import snippet_html
from storage.file import SessionFile
from storage.layout import DataDir
from storage.lifecycle import create_session_file
from storage.ops import MessageDraft, op_append
from storage.rows import (
    MESSAGE_INSERT,
    MESSAGE_SELECT,
    NEW_MESSAGE_COLUMNS,
    NEW_MESSAGE_DEFAULTS,
    SESSION_SELECT,
    MessageRow,
    SessionRow,
    message_doc,
    prefixed,
    scalar,
    split_message,
)
from storage.search import snippet_spans


def _sample_row(**over: Any) -> MessageRow:
    values: dict[str, Any] = dict.fromkeys(MessageRow._fields)
    values.update(
        seq=3,
        id="m3",
        parent_seq=2,
        parent_id="m2",
        depth=2,
        sibling_index=0,
        child_count=1,
        role="assistant",
        content="hi",
        parts='[{"type": "text", "text": "hi"}]',
        status="complete",
        metadata='{"k": 1}',
        created_at="t1",
        updated_at="t2",
        version=4,
    )
    values.update(over)
    return MessageRow(**values)


def test_select_and_insert_lists_follow_the_row_fields() -> None:
    """The select list, the INSERT list and prefixed() are the row type's fields in order."""
    assert MESSAGE_SELECT.split(", ") == list(MessageRow._fields)
    assert MESSAGE_INSERT.split(", ") == list(MessageRow._fields)
    assert SESSION_SELECT.split(", ") == list(SessionRow._fields)
    assert prefixed("m").split(", ") == [f"m.{c}" for c in MessageRow._fields]


def test_new_column_flows_to_select_insert_and_doc() -> None:
    """A column added mid-definition changes no reader: the same values give the same doc."""
    fields = list(MessageRow._fields)
    fields.insert(fields.index("content") + 1, "reaction")
    wider = collections.namedtuple("wider", fields)  # type: ignore[misc]
    cols = ", ".join(wider._fields)
    conn = sqlite3.connect(":memory:")
    conn.execute(f"CREATE TABLE messages ({cols})")
    row = _sample_row()
    stored = wider(**row._asdict(), reaction="+1")
    conn.execute(f"INSERT INTO messages ({cols}) VALUES ({', '.join('?' * len(fields))})", stored)
    raw = conn.execute(f"SELECT {cols} FROM messages").fetchone()
    assert message_doc(wider._make(raw), "s") == message_doc(row, "s")
    conn.close()


def test_split_message_names_the_extra_columns() -> None:
    """split_message gives the row and the columns selected after it."""
    row = _sample_row()
    got, (depth, count) = split_message((*row, 7, 9))
    assert got == row and (depth, count) == (7, 9)


def test_scalar_of_a_query_without_rows_raises() -> None:
    """scalar() is for one-row queries: no row is a LookupError, not a None."""
    conn = sqlite3.connect(":memory:")
    assert scalar(conn.execute("SELECT 41 + 1")) == 42
    with pytest.raises(LookupError):
        scalar(conn.execute("SELECT 1 WHERE 0"))
    conn.close()


def test_message_doc_of_appended_row_equals_stored_row_read_back(tmp_path: Path) -> None:
    """The document an append returns (and publishes) is the stored row's document."""
    dd = DataDir(tmp_path)
    dd.ensure()
    create_session_file(dd, "r", owner="", title=None, metadata={}, now="t0")
    f = SessionFile(dd, "r")
    draft = MessageDraft(
        role="tool",
        content="x",
        parts=[{"type": "text", "text": "x"}],
        client_id="c1",
        tool_name="calc",
        tool_call={"a": 1},
        tool_result=[2],
        metadata={"m": True},
        model_id="mod",
        provider_id="prov",
        request_hash="h",
    )
    (result,), events, _ = f.run_batch([op_append(draft)], "t1")
    msg, created = result
    assert created
    assert f.read_message(msg["id"]) == msg
    assert orjson.loads(events[0].frame)["message"] == msg
    f.close()


def test_snippet_spans_are_code_point_offsets() -> None:
    """Spans index the plain text by code point, astral characters included."""
    got = snippet_spans("🦜 a \ue000needle\ue001 & \ue000b\ue001")
    assert got == {"text": "🦜 a needle & b", "spans": [[4, 10], [13, 14]]}


def test_snippet_html_escapes_text_and_marks_spans() -> None:
    """Everything is escaped; each span is wrapped in <mark>."""
    s = snippet_spans('<b>"x"</b> \ue000ne&dle\ue001.')
    assert snippet_html(s["text"], s["spans"]) == (
        "&lt;b&gt;&quot;x&quot;&lt;/b&gt; <mark>ne&amp;dle</mark>."
    )


def test_snippet_html_without_spans_is_escaped_text() -> None:
    """No span: the text alone, escaped."""
    assert snippet_html("a < b", []) == "a &lt; b"


def test_new_message_defaults_match_the_schema(tmp_path: Path) -> None:
    """The columns an append leaves out are exactly those whose schema default it assumes."""
    dd = DataDir(tmp_path)
    dd.ensure()
    create_session_file(dd, "r", owner="", title=None, metadata={}, now="t0")
    conn = sqlite3.connect(dd.session_db("r"))
    schema = {
        name: (notnull, default)
        for _cid, name, _type, notnull, default, _pk in conn.execute("PRAGMA table_info(messages)")
    }
    conn.close()
    assert set(schema) == set(MessageRow._fields)
    assert set(NEW_MESSAGE_COLUMNS) | set(NEW_MESSAGE_DEFAULTS) == set(MessageRow._fields)
    for name, value in NEW_MESSAGE_DEFAULTS.items():
        notnull, default = schema[name]
        assert (default is None and not notnull) if value is None else default == str(value)
