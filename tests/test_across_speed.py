"""What the issue 23 benchmark changed (docs/performance.md, "Across sessions"): the
search ranks a bounded window of its newest matches, and the list reads filtered pages
in order from indexes (the title is a catalog column, kept up to date)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

import storage.usersearch as usersearch
from storage.catalog import Catalog, ListFilters
from storage.layout import DataDir
from storage.schema import CATALOG_MIGRATIONS, split_statements
from storage.usersearch import Doc, UserIndex
from tests.conftest import new_session


def test_search_ranks_the_newest_window_of_a_common_query(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past ``RANK_WINDOW`` matches, the hits are the best of the newest ones (and paging
    ends there); with fewer matches every one is ranked, densest first."""
    monkeypatch.setattr(usersearch, "RANK_WINDOW", 10)
    idx = UserIndex(tmp_path / "search.db")
    try:
        # message i says "gull" i+1 times among filler: older ones are denser
        docs = [
            Doc(f"m{i:02d}", i + 1, "user", "2026-01-01T00:00:00Z", "gull " * (30 - i) + "sea")
            for i in range(30)
        ]
        docs.append(Doc("m99", 99, "user", "2026-01-01T00:00:00Z", "tern tern sea"))
        idx.rebuild_session("s", docs, 1)
        hits = idx.search("gull", limit=50)
        assert [h["message_id"] for h in hits] == [f"m{i:02d}" for i in range(20, 30)]
        assert idx.search("gull", limit=5, offset=10) == []
        # "sea" matches 31 messages; "tern" one: ranked over all of its matches
        assert [h["message_id"] for h in idx.search("tern", limit=5)] == ["m99"]
        monkeypatch.setattr(usersearch, "RANK_WINDOW", 100)
        hits = idx.search("gull", limit=3)
        assert [h["message_id"] for h in hits] == ["m00", "m01", "m02"]
        assert "<" not in hits[0]["snippet"]["text"] and hits[0]["snippet"]["spans"]
    finally:
        idx.close()


async def _ids(client: Any, **params: Any) -> list[str]:
    out: list[str] = []
    cursor = None
    while True:
        query = {**params, "limit": 2, **({"cursor": cursor} if cursor else {})}
        r = await client.get("/api/sessions", params=query)
        assert r.status == 200, await r.text()
        page = await r.json()
        out += [s["id"] for s in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            return out


async def test_filtered_lists_page_in_order(client: Any) -> None:
    """Pages of 2 of pinned=true, of a folder and of ``q`` walk their sessions once, in
    list order (pinned first, newest first); a title change is seen by ``q``."""
    for i in range(8):
        await new_session(
            client, f"s{i}", title=f"trip {i}", folder="f" if i % 2 else None, pinned=i % 3 == 0
        )
    assert await _ids(client, pinned="true") == ["s6", "s3", "s0"]
    assert await _ids(client, folder="f") == ["s3", "s7", "s5", "s1"]
    assert await _ids(client, q="trip") == ["s6", "s3", "s0", "s7", "s5", "s4", "s2", "s1"]
    r = await client.patch("/api/sessions/s5", json={"title": "holiday"})
    assert r.status == 200
    assert await _ids(client, q="holiday") == ["s5"]
    assert "s5" not in await _ids(client, q="trip")


def test_catalog_v4_takes_titles_from_older_rows(tmp_path: Path) -> None:
    """A catalog from before v4 gets its title column filled from the documents."""
    datadir = DataDir(tmp_path / "data")
    datadir.ensure()
    conn = sqlite3.connect(datadir.catalog_path)
    for script in CATALOG_MIGRATIONS[:3]:
        for stmt in split_statements(script):
            conn.execute(stmt)
    conn.execute(
        "INSERT INTO sessions (id, owner, updated_at, doc) VALUES ('a', 'u', "
        '\'2026-01-01T00:00:00Z\', \'{"id": "a", "title": "Old trip"}\')'
    )
    conn.execute("PRAGMA user_version = 3")
    conn.commit()
    conn.close()
    catalog = Catalog(datadir)
    try:
        items, _ = catalog.list(owner="u", limit=5, cursor=None, filters=ListFilters(q="trip"))
        assert [d["id"] for d in items] == ["a"]
    finally:
        catalog.close()
