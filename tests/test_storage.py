"""storage/: migrations, ids, cursors (pure parts and file-level behaviour)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from storage.cursors import decode_int, decode_pair, encode_int, encode_pair
from storage.errors import InvalidInput, Unavailable
from storage.file import SessionFile
from storage.ids import format_ts, uuid7, validate_session_id
from storage.layout import DataDir
from storage.lifecycle import create_session_file
from storage.ops import MessageDraft, op_append
from storage.schema import SESSION_MIGRATIONS


def _make(tmp_path: Path, sid: str = "m") -> DataDir:
    dd = DataDir(tmp_path)
    dd.ensure()
    create_session_file(dd, sid, owner="", title=None, metadata={}, now="2026-01-01T00:00:00.000Z")
    return dd


def test_session_file_is_at_newest_schema_version(tmp_path: Path) -> None:
    """A new session file carries the newest user_version."""
    dd = _make(tmp_path)
    conn = sqlite3.connect(dd.session_db("m"))
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(SESSION_MIGRATIONS)
    conn.close()


def test_old_file_migrates_forward_on_open(tmp_path: Path) -> None:
    """A file written at schema version 1 is brought to the newest version on open."""
    dd = DataDir(tmp_path)
    dd.ensure()
    folder = dd.session_dir("old")
    folder.mkdir(parents=True)
    conn = sqlite3.connect(folder / "session.db")
    conn.executescript(SESSION_MIGRATIONS[0])
    conn.execute("PRAGMA user_version = 1")
    conn.execute("INSERT INTO session (id, created_at, updated_at) VALUES ('old', 't', 't')")
    conn.commit()
    conn.close()
    f = SessionFile(dd, "old")
    f.run_batch([op_append(MessageDraft(role="user", content="after migration"))], "t2")
    assert f.writer.execute("PRAGMA user_version").fetchone()[0] == len(SESSION_MIGRATIONS)
    assert [m["content"] for m in f.page(view="all").items] == ["after migration"]
    f.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    """A file from a newer Roost is refused as Unavailable, not misread."""
    dd = _make(tmp_path)
    conn = sqlite3.connect(dd.session_db("m"))
    conn.execute(f"PRAGMA user_version = {len(SESSION_MIGRATIONS) + 5}")
    conn.commit()
    conn.close()
    with pytest.raises(Unavailable, match="schema version"):
        SessionFile(dd, "m")


def test_close_is_idempotent(tmp_path: Path) -> None:
    f = SessionFile(_make(tmp_path), "m")
    f.close()
    f.close()
    assert f.closed


@pytest.mark.parametrize("sid", ["a", "A.b-c_d", "0" * 128, "x..y"])
def test_validate_session_id_accepts_legal(sid: str) -> None:
    assert validate_session_id(sid) == sid


@pytest.mark.parametrize(
    "sid", ["", ".", "..", ".a", "-a", "_a", "a/b", "a\\b", "a\x00", "0" * 129, "é", "a b"]
)
def test_validate_session_id_refuses_illegal(sid: str) -> None:
    with pytest.raises(InvalidInput):
        validate_session_id(sid)


def test_session_dir_stays_inside_data_dir(tmp_path: Path) -> None:
    dd = DataDir(tmp_path)
    for sid in ["a", "x..y", "A" * 128]:
        assert dd.session_dir(sid).resolve().is_relative_to(dd.sessions_root)


def test_uuid7_is_strictly_increasing_and_versioned() -> None:
    ids = [uuid7() for _ in range(5000)]
    assert ids == sorted(ids) and len(set(ids)) == 5000
    assert all(i[14] == "7" and i[19] in "89ab" for i in ids)


def test_format_ts_is_rfc3339_millis() -> None:
    assert format_ts(0.5) == "1970-01-01T00:00:00.500Z"


def test_cursor_round_trip_and_kind_check() -> None:
    assert decode_int("s", encode_int("s", 42)) == 42
    assert decode_pair("u", encode_pair("u", "2026", "id")) == ("2026", "id")
    with pytest.raises(InvalidInput):
        decode_int("d", encode_int("s", 42))
    for bad in ["", "!!!", "a" * 600, encode_int("s", 1) + "x", "czotMQ"]:
        with pytest.raises(InvalidInput):
            decode_int("s", bad)


def _append_then_fail(txn: Any) -> None:
    op_append(MessageDraft(role="user", content="ghost"))(txn)
    raise RuntimeError("boom")


def _batch_with_failing_middle(f: SessionFile) -> tuple[list[Any], list[Any]]:
    """Run a, (append ghost then raise), c in one batch: (results, events)."""
    ops = [
        op_append(MessageDraft(role="user", content="a")),
        _append_then_fail,
        op_append(MessageDraft(role="user", content="c")),
    ]
    results, events, _ = f.run_batch(ops, "t")
    return results, events


def test_batch_op_failing_after_buffering_is_undone_alone(tmp_path: Path) -> None:
    """An op that fails after buffering writes leaves no trace; the others commit."""
    f = SessionFile(_make(tmp_path), "m")
    results, events = _batch_with_failing_middle(f)
    assert isinstance(results[1], RuntimeError)
    assert [m["content"] for m in f.page(view="all").items] == ["a", "c"]
    active = f.page(view="active").items
    assert [m["content"] for m in active] == ["a", "c"]
    assert active[1]["parent_id"] == active[0]["id"]
    assert [m["siblings"] for m in active] == [{"index": 0, "count": 1}] * 2
    assert [e.seq for e in events] == [1, 2]
    f.close()


def test_batch_op_failing_after_buffering_leaves_cache_matching_file(tmp_path: Path) -> None:
    """After a batch with an undone op, the next append continues the chain (seq 3)."""
    f = SessionFile(_make(tmp_path), "m")
    _batch_with_failing_middle(f)
    f.run_batch([op_append(MessageDraft(role="user", content="d"))], "t")
    assert [m["seq"] for m in f.page(view="active").items] == [1, 2, 3]
    f.close()
