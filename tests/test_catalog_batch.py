"""The catalog mirror's batch write (storage.catalog.Catalog.upsert_many): a batch
goes in as one statement per table over JSON, and what it writes is exactly what
the row-by-row statements write, a NUL in the text included."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from storage.catalog import Catalog
from storage.layout import DataDir


def _doc(sid: str, **extra: Any) -> dict[str, Any]:
    return {"id": sid, "updated_at": f"2026-12-03T00:00:0{sid[-1]}.000Z", "title": None, **extra}


def _state(cat: Catalog) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    sessions = cat.conn.execute(
        "SELECT id, owner, updated_at, doc, pinned, archived, temporary, folder, expires_at, "
        "title, typeof(pinned), typeof(expires_at) FROM sessions ORDER BY id"
    ).fetchall()
    tags = cat.conn.execute("SELECT * FROM session_tags ORDER BY session_id, tag").fetchall()
    return sessions, tags


BATCH = [
    ("ann", _doc("s1", title='Crème 🦭 "quoted" \\ title', tags=["a", "b"], pinned=True)),
    ("ann", _doc("s2", folder="work", archived=True, expires_at="2027-01-01T00:00:00.000Z")),
    ("bob", _doc("s3", temporary=True, tags=["c"])),
]
LATER = [
    ("ann", _doc("s1", title="renamed", tags=["b"])),  # a tag dropped, the title changed
    ("bob", _doc("s4", title="four")),
]


def test_a_batch_writes_what_row_by_row_writes(tmp_path: Path) -> None:
    batched = Catalog(DataDir(tmp_path / "batched"))
    batched.upsert_many(BATCH)
    batched.upsert_many(LATER)
    by_row = Catalog(DataDir(tmp_path / "rows"))
    for item in [*BATCH, *LATER]:
        by_row.upsert_many([item])  # one row: the row-by-row statements
    assert _state(batched) == _state(by_row)
    sessions, tags = _state(batched)
    assert [s[0] for s in sessions] == ["s1", "s2", "s3", "s4"]
    assert sessions[0][9] == "renamed" and sessions[0][10] == "integer"
    assert sessions[1][8] == "2027-01-01T00:00:00.000Z" and sessions[1][5] == 1
    assert tags == [("ann", "b", "s1"), ("bob", "c", "s3")]
    listed, _ = batched.list(owner="ann", limit=10, cursor=None)
    assert [it["id"] for it in listed] == ["s1"]  # s2 is archived


def test_a_nul_in_the_text_survives_a_batch(tmp_path: Path) -> None:
    """SQLite's JSON text stops at a NUL: such a batch goes row by row, whole."""
    cat = Catalog(DataDir(tmp_path))
    cat.upsert_many([("ann", _doc("s1", title="nul\x00title", tags=["t\x00g"])), BATCH[1]])
    sessions, tags = _state(cat)
    assert sessions[0][9] == "nul\x00title"
    assert tags == [("ann", "t\x00g", "s1")]
