"""Full-text search: follows edits, deletes and streamed replies; hostile queries are 4xx."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from storage.ids import now_iso
from storage.layout import DataDir, connect
from storage.schema import SESSION_MIGRATIONS, migrate
from storage.session_db import fts_query
from tests.conftest import TIMEOUT, append, eventually, new_session, registry_of


async def search(client: Any, sid: str, q: str, **params: Any) -> list[dict[str, Any]]:
    r = await client.get(f"/api/sessions/{sid}/search", params={"q": q, **params})
    assert r.status == 200, await r.text()
    items: list[dict[str, Any]] = (await r.json())["items"]
    return items


async def test_search_finds_matching_message_with_snippet(client: Any) -> None:
    """A word in a message is found; the snippet marks it."""
    await new_session(client)
    await append(client, "s1", "the weather is lovely today")
    m = await append(client, "s1", "a purple elephant walked by")
    items = await search(client, "s1", "elephant")
    assert [i["message"]["id"] for i in items] == [m["id"]]
    assert "<mark>elephant</mark>" in items[0]["snippet"]
    assert items[0]["rank"] == 1 and isinstance(items[0]["score"], float)


async def test_search_snippet_escapes_html(client: Any) -> None:
    """Everything but the <mark> tags is HTML-escaped."""
    await new_session(client)
    await append(client, "s1", "<script>alert(1)</script> needle & co")
    items = await search(client, "s1", "needle")
    assert items[0]["snippet"] == (
        "&lt;script&gt;alert(1)&lt;/script&gt; <mark>needle</mark> &amp; co"
    )


async def test_search_orders_best_match_first(client: Any) -> None:
    """A message dense in the term ranks above one that mentions it once."""
    await new_session(client)
    weak = await append(client, "s1", "fox " + "filler words here " * 20)
    strong = await append(client, "s1", "fox fox fox")
    items = await search(client, "s1", "fox")
    assert [i["message"]["id"] for i in items] == [strong["id"], weak["id"]]
    assert items[0]["score"] > items[1]["score"]


async def test_search_finds_word_after_edit_introduces_it(client: Any) -> None:
    """An edit that adds a word makes the message findable by it, and not by the old one."""
    await new_session(client)
    m = await append(client, "s1", "original text")
    assert await search(client, "s1", "zebra") == []
    r = await client.patch(f"/api/sessions/s1/messages/{m['id']}", json={"content": "zebra text"})
    assert r.status == 200
    assert [i["message"]["id"] for i in await search(client, "s1", "zebra")] == [m["id"]]
    assert await search(client, "s1", "original") == []


async def test_search_misses_word_after_delete(client: Any) -> None:
    """A deleted (tombstoned) message no longer matches."""
    await new_session(client)
    m = await append(client, "s1", "secret giraffe")
    assert len(await search(client, "s1", "giraffe")) == 1
    assert (await client.delete(f"/api/sessions/s1/messages/{m['id']}")).status == 204
    assert await search(client, "s1", "giraffe") == []


async def test_search_never_sees_other_sessions(client: Any) -> None:
    """Matches come only from the session searched."""
    await new_session(client, "a")
    await new_session(client, "b")
    await append(client, "a", "kangaroo in a")
    mb = await append(client, "b", "kangaroo in b")
    items = await search(client, "b", "kangaroo")
    assert [i["message"]["id"] for i in items] == [mb["id"]]
    assert all(i["message"]["session_id"] == "b" for i in items)


async def test_search_finds_streamed_reply_once_complete(make_client: Any) -> None:
    """A reply built by streaming flushes is indexed with its full text."""
    client = await make_client(echo_words_per_second=0)
    await new_session(client)
    r = await client.post(
        "/api/sessions/s1/chat",
        json={"content": "platypus and wombat"},
        headers={"Accept": "application/json"},
    )
    assert r.status == 201
    reply = (await r.json())["assistant_message"]
    assert reply["status"] == "complete"
    ids = {i["message"]["id"] for i in await search(client, "s1", "wombat")}
    assert reply["id"] in ids and len(ids) == 2


async def test_search_prefix_word(client: Any) -> None:
    """A word ending in * matches as a prefix."""
    await new_session(client)
    m = await append(client, "s1", "internationalization")
    assert [i["message"]["id"] for i in await search(client, "s1", "internat*")] == [m["id"]]


HOSTILE = [
    '"',
    '""',
    "*",
    "**",
    "NEAR(",
    "NEAR(a b",
    "a AND",
    "OR",
    "NOT x",
    "(",
    ")",
    "col:foo",
    "^",
    "-x",
    "'; DROP TABLE messages; --",
    "\u202e\u0000x",
    "x" * 10_000,
    "y" * 5_000,
    "a " * 600,
]


@pytest.mark.parametrize("mode", ["words", "fts"])
@pytest.mark.parametrize("q", HOSTILE, ids=range(len(HOSTILE)))
async def test_search_hostile_query_is_never_5xx(client: Any, q: str, mode: str) -> None:
    """Odd queries answer results or a 4xx JSON error, never a server error."""
    await new_session(client)
    await append(client, "s1", "a b x foo NEAR and OR")
    r = await client.get("/api/sessions/s1/search", params={"q": q, "mode": mode})
    assert r.status < 500, await r.text()
    if r.content_type != "application/json":
        # a 10 kB query overflows aiohttp's request-line limit: its parser answers 400
        assert r.status == 400 and len(q) > 8000
    elif r.status >= 400:
        assert (await r.json())["error"]["code"] in ("invalid_query", "invalid_input")
    else:
        assert isinstance((await r.json())["items"], list)
    assert (await client.get("/api/sessions/s1")).status == 200


async def test_search_fts_syntax_error_is_invalid_query(client: Any) -> None:
    """With mode=fts, a syntax error answers 400 invalid_query."""
    await new_session(client)
    r = await client.get("/api/sessions/s1/search", params={"q": "NEAR(", "mode": "fts"})
    assert r.status == 400 and (await r.json())["error"]["code"] == "invalid_query"


async def test_search_fts_mode_supports_operators(client: Any) -> None:
    """With mode=fts, OR and NOT work as FTS5 operators."""
    await new_session(client)
    a = await append(client, "s1", "alpha one")
    b = await append(client, "s1", "beta two")
    items = await search(client, "s1", "alpha OR beta", mode="fts")
    assert {i["message"]["id"] for i in items} == {a["id"], b["id"]}
    items = await search(client, "s1", "alpha NOT one", mode="fts")
    assert items == []
    assert len(await search(client, "s1", "alpha OR beta")) == 0  # words: all three required


async def test_search_without_query_is_400(client: Any) -> None:
    """A missing or blank q answers 400."""
    await new_session(client)
    for params in ({}, {"q": "   "}):
        r = await client.get("/api/sessions/s1/search", params=params)
        assert r.status == 400


async def test_search_limit_caps_results(client: Any) -> None:
    """limit caps the number of items."""
    await new_session(client)
    for i in range(5):
        await append(client, "s1", f"lemur {i}")
    assert len(await search(client, "s1", "lemur", limit=2)) == 2
    r = await client.get("/api/sessions/s1/search", params={"q": "x", "limit": "0"})
    assert r.status == 400


def test_fts_query_quotes_every_word() -> None:
    """Plain words become quoted FTS5 strings; quotes inside are doubled."""
    assert fts_query('say "hi" NEAR(') == '"say" """hi""" "NEAR("'
    assert fts_query("pre* *") == '"pre"* "*"'


async def test_search_works_on_a_session_file_from_schema_v1(
    make_client: Any, tmp_path: Path
) -> None:
    """A v1 session file migrates on open and its old messages are searchable."""
    dd = DataDir(tmp_path / "data")
    dd.ensure()
    folder = dd.session_dir("old")
    folder.mkdir(parents=True)
    conn = connect(folder / "session.db")
    migrate(conn, SESSION_MIGRATIONS[:1], what="session file")
    now = now_iso()
    conn.execute(
        "INSERT INTO session (id, title, created_at, updated_at, message_count, "
        "active_leaf_seq, active_leaf_id, root_count) VALUES ('old', NULL, ?, ?, 1, 1, 'm1', 1)",
        (now, now),
    )
    conn.execute(
        "INSERT INTO messages (seq, id, depth, sibling_index, role, content, status, "
        "created_at, updated_at) VALUES (1, 'm1', 0, 0, 'user', 'ancient armadillo', "
        "'complete', ?, ?)",
        (now, now),
    )
    conn.execute("INSERT INTO active_path VALUES (0, 1)")
    conn.close()
    client = await make_client()
    items = await search(client, "old", "armadillo")
    assert [i["message"]["id"] for i in items] == ["m1"]
    check = sqlite3.connect(folder / "session.db", timeout=TIMEOUT)
    try:
        assert check.execute("PRAGMA user_version").fetchone()[0] == len(SESSION_MIGRATIONS)
    finally:
        check.close()


async def test_search_index_catches_up_when_idle(make_client: Any) -> None:
    """New messages are indexed off the write path, once the session is idle."""
    client = await make_client()
    await new_session(client)
    reg = registry_of(client)
    msg = await append(client, "s1", "zebra crossing")
    actor = reg.actor_if_live("s1")
    fts = "SELECT rowid FROM messages_fts WHERE messages_fts MATCH 'zebra'"
    await eventually(lambda: actor.file.reader.execute(fts).fetchall(), "the message indexed")
    assert actor.file.reader.execute(fts).fetchall() == [(msg["seq"],)]


async def test_search_longest_query_fits_the_request_line(server_process: Any) -> None:
    """A query of max_search_chars 4-byte characters (12 URL bytes each) is read, not refused."""
    server = server_process("--max-search-chars", "1000")
    await server.wait_ready()
    q = "\U00020000" * 1000  # a CJK letter outside the BMP: one 1000-letter word
    async with aiohttp.ClientSession(server.url) as http:
        async with http.post("/api/sessions", json={"id": "s1"}) as r:
            assert r.status == 201
        async with http.post("/api/sessions/s1/messages", json={"role": "user", "content": q}) as r:
            assert r.status == 201
        async with http.get("/api/sessions/s1/search", params={"q": q}) as r:
            assert r.status == 200, await r.text()
            assert len((await r.json())["items"]) == 1
