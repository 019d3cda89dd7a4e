"""Across a user's sessions (issue 23): organisation and filtered lists, cross-session
search, auto titles, the list feed, retention, feedback."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

import orjson

from tests.conftest import TIMEOUT, append, new_session

ALICE = {"Authorization": "Bearer tok-alice"}
BOB = {"Authorization": "Bearer tok-bob"}


def _tokens(tmp_path: Path) -> str:
    path = tmp_path / "tokens.json"
    path.write_text('{"tok-alice": "alice", "tok-bob": "bob"}')
    return str(path)


async def _list(client: Any, **params: Any) -> dict[str, Any]:
    r = await client.get("/api/sessions", params=params)
    assert r.status == 200, await r.text()
    body: dict[str, Any] = await r.json()
    return body


async def _patch(client: Any, sid: str, **body: Any) -> dict[str, Any]:
    r = await client.patch(f"/api/sessions/{sid}", json=body)
    assert r.status == 200, await r.text()
    doc: dict[str, Any] = await r.json()
    return doc


async def _search(client: Any, q: str, headers: Any = None, **params: Any) -> dict[str, Any]:
    r = await client.get("/api/search", params={"q": q, **params}, headers=headers)
    assert r.status == 200, await r.text()
    body: dict[str, Any] = await r.json()
    return body


# ---------------------------------------------------------------------------- organisation


async def test_session_organisation_defaults_and_patch(client: Any) -> None:
    """A new session is unpinned, unarchived, in no folder, untagged; PATCH sets each."""
    doc = await new_session(client)
    assert (doc["pinned"], doc["archived"], doc["folder"], doc["tags"]) == (False, False, None, [])
    doc = await _patch(client, "s1", pinned=True, folder="work/2026", tags=["b", "a", "b"])
    assert doc["pinned"] and doc["folder"] == "work/2026" and doc["tags"] == ["a", "b"]
    doc = await _patch(client, "s1", folder=None)
    assert doc["folder"] is None and doc["pinned"]
    r = await client.get("/api/sessions/s1")
    assert (await r.json())["session"]["tags"] == ["a", "b"]


async def test_session_organisation_bad_input_is_400(client: Any) -> None:
    """A folder with an empty or dot segment, a tag with a control character: 400."""
    await new_session(client)
    for body in ({"folder": "a//b"}, {"folder": "../x"}, {"tags": ["a\x01"]}, {"pinned": "yes"}):
        r = await client.patch("/api/sessions/s1", json=body)
        assert r.status == 400, body
    r = await client.get("/api/sessions", params={"archived": "maybe"})
    assert r.status == 400


async def test_list_puts_pinned_first_and_hides_archived(client: Any) -> None:
    """Pinned sessions come first; archived ones show only when asked for."""
    for sid in ("a", "b", "c", "d"):
        await new_session(client, sid)
    await _patch(client, "a", pinned=True)
    await _patch(client, "c", archived=True)
    ids = [s["id"] for s in (await _list(client))["items"]]
    assert ids == ["a", "d", "b"]
    assert [s["id"] for s in (await _list(client, archived="true"))["items"]] == ["c"]
    assert len((await _list(client, archived="any"))["items"]) == 4
    assert [s["id"] for s in (await _list(client, pinned="true"))["items"]] == ["a"]


async def test_list_keyset_paging_holds_with_filters(client: Any) -> None:
    """Pages of 2 with a tag filter walk every tagged session once, pinned first."""
    for i in range(7):
        await new_session(client, f"s{i}", tags=["x"] if i % 2 == 0 else ["y"])
    await _patch(client, "s2", pinned=True)
    await _patch(client, "s4", folder="f")
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"tag": "x", "limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = await _list(client, **params)
        seen += [s["id"] for s in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ["s2", "s4", "s6", "s0"]  # s4 was changed last
    assert [s["id"] for s in (await _list(client, folder="f"))["items"]] == ["s4"]
    assert [s["id"] for s in (await _list(client, q="s6"))["items"]] == []  # titles, not ids
    r = await client.get("/api/folders")
    assert (await r.json())["items"] == [{"folder": "f", "count": 1, "archived": 0}]


async def test_list_q_matches_titles(client: Any) -> None:
    """``q`` keeps the sessions whose title holds the text (LIKE wildcards are text)."""
    await new_session(client, "a", title="Trip to Lisbon")
    await new_session(client, "b", title="100% done")
    await new_session(client, "c", title="Groceries")
    assert [s["id"] for s in (await _list(client, q="lisbon"))["items"]] == ["a"]
    assert [s["id"] for s in (await _list(client, q="%"))["items"]] == ["b"]


# ---------------------------------------------------------------------------- search


async def test_search_across_200_sessions_in_order_with_cursor(client: Any) -> None:
    """Hits from many sessions come best first, page by cursor, and name their session."""
    for i in range(200):
        sid = f"s{i:03d}"
        await new_session(client, sid, title=f"chat {i}")
        word = "zebra " * (1 + i // 50) if i % 10 == 0 else "horse"
        await append(client, sid, f"{word} filler text number {i}")
    first = await _search(client, "zebra", limit=5)
    assert len(first["items"]) == 5 and first["next_cursor"]
    # the densest (i >= 150) first
    assert all(int(h["session_id"][1:]) >= 150 for h in first["items"])
    assert "<mark>zebra</mark>" in first["items"][0]["snippet"]
    assert first["items"][0]["session_title"].startswith("chat ")
    rest = await _search(client, "zebra", limit=50, cursor=first["next_cursor"])
    assert rest["next_cursor"] is None
    hits = first["items"] + rest["items"]
    assert sorted(h["session_id"] for h in hits) == [f"s{i:03d}" for i in range(0, 200, 10)]
    assert [h["rank"] for h in hits] == list(range(1, 21))
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True)
    r = await client.get("/api/search", params={"q": "horse", "cursor": first["next_cursor"]})
    assert r.status == 400  # a cursor belongs to its query


async def test_search_never_shows_deleted_and_sees_edits(client: Any) -> None:
    """A deleted message, or a deleted session, is not found; an edit is found at once."""
    await new_session(client, "a")
    await new_session(client, "b")
    m1 = await append(client, "a", "the walrus sings")
    m2 = await append(client, "b", "the walrus dances")
    assert len((await _search(client, "walrus"))["items"]) == 2
    r = await client.delete(f"/api/sessions/a/messages/{m1['id']}")
    assert r.status == 204
    assert [h["message_id"] for h in (await _search(client, "walrus"))["items"]] == [m2["id"]]
    r = await client.patch(f"/api/sessions/b/messages/{m2['id']}", json={"content": "a narwhal"})
    assert r.status == 200
    assert (await _search(client, "walrus"))["items"] == []
    assert [h["message_id"] for h in (await _search(client, "narwhal"))["items"]] == [m2["id"]]
    r = await client.delete("/api/sessions/b")
    assert r.status == 204
    assert (await _search(client, "narwhal"))["items"] == []


async def test_search_never_returns_another_users_session(make_client: Any, tmp_path: Path) -> None:
    """With tokens, a user's search finds only their own sessions."""
    client = await make_client(tokens_file=_tokens(tmp_path))
    for who, headers in (("alice", ALICE), ("bob", BOB)):
        r = await client.post("/api/sessions", json={"id": who}, headers=headers)
        assert r.status == 201
        r = await client.post(
            f"/api/sessions/{who}/messages",
            json={"role": "user", "content": f"secret plan of {who}"},
            headers=headers,
        )
        assert r.status == 201
    hits = (await _search(client, "secret", headers=ALICE))["items"]
    assert [h["session_id"] for h in hits] == ["alice"]
    hits = (await _search(client, "alice", headers=BOB))["items"]
    assert hits == []


async def test_search_opens_a_hit_on_its_branch(client: Any) -> None:
    """PATCH active_leaf_id = the hit's message id makes its branch the active one."""
    await new_session(client)
    root = await append(client, "s1", "start")
    old = await append(client, "s1", "the old branch mentions a platypus", parent_id=root["id"])
    await append(client, "s1", "the new branch", parent_id=root["id"])
    hit = (await _search(client, "platypus"))["items"][0]
    await _patch(client, hit["session_id"], active_leaf_id=hit["message_id"])
    r = await client.get("/api/sessions/s1/messages")
    assert [m["id"] for m in (await r.json())["items"]] == [root["id"], old["id"]]


async def test_search_indexes_an_import(client: Any) -> None:
    """An imported session (no event log) is searchable."""
    await new_session(client)
    await append(client, "s1", "an axolotl appears")
    r = await client.get("/api/sessions/s1/export")
    body = await r.read()
    r = await client.post(
        "/api/sessions/import?id=copy", data=body, headers={"Content-Type": "application/json"}
    )
    assert r.status == 201, await r.text()
    hits = (await _search(client, "axolotl"))["items"]
    assert sorted(h["session_id"] for h in hits) == ["copy", "s1"]


async def test_search_indexes_big_messages_past_one_batch(client: Any) -> None:
    """Indexing reads about 1 MiB per batch (storage.usersearch.BATCH_BYTES), so a
    batch cut short by bytes is not the last: every one of thirty 90 KB messages
    is found, from the event log and from an import's rebuild."""
    await new_session(client)
    filler = "lorem ipsum " * 7_400  # about 90 KB (the content limit is 100,000)
    for i in range(30):
        await append(client, "s1", f"{filler} marker{i}")
    for i in range(0, 30, 7):
        hits = (await _search(client, f"marker{i}"))["items"]
        assert [h["session_id"] for h in hits] == ["s1"], i
    r = await client.get("/api/sessions/s1/export")
    body = await r.read()
    r = await client.post(
        "/api/sessions/import?id=copy",
        data=io.BytesIO(body),
        headers={"Content-Type": "application/json"},
    )
    assert r.status == 201, await r.text()
    for i in (0, 13, 29):
        hits = (await _search(client, f"marker{i}"))["items"]
        assert sorted(h["session_id"] for h in hits) == ["copy", "s1"], i


# ---------------------------------------------------------------------------- titles


async def _chat(client: Any, sid: str, text: str) -> dict[str, Any]:
    r = await client.post(
        f"/api/sessions/{sid}/chat", json={"content": text}, headers={"Accept": "application/json"}
    )
    assert r.status == 201, await r.text()
    body: dict[str, Any] = await r.json()
    return body


async def _session(client: Any, sid: str) -> dict[str, Any]:
    r = await client.get(f"/api/sessions/{sid}")
    doc: dict[str, Any] = (await r.json())["session"]
    return doc


async def test_title_is_made_once_after_the_first_reply(make_client: Any) -> None:
    """An untitled chat gets the first words after its first reply, once."""
    client = await make_client(echo_words_per_second=0)
    await new_session(client)
    await _chat(client, "s1", "plan a weekend trip to the mountains with friends")
    doc: dict[str, Any] = {}

    async def titled() -> bool:
        nonlocal doc
        doc = await _session(client, "s1")
        return doc["title"] is not None

    for _ in range(int(TIMEOUT / 0.02)):
        if await titled():
            break
        await asyncio.sleep(0.02)
    assert doc["title"] == "plan a weekend trip to the…"
    assert doc["title_source"] == "auto"
    await _chat(client, "s1", "something else entirely")
    assert (await _session(client, "s1"))["title"] == "plan a weekend trip to the…"


async def test_title_never_overwrites_the_users(make_client: Any) -> None:
    """A title the user gave (on create or PATCH) is kept after replies."""
    client = await make_client(echo_words_per_second=0)
    doc = await new_session(client, "a", title="Mine")
    assert doc["title_source"] == "user"
    await _chat(client, "a", "hello there")
    await new_session(client, "b")
    await _patch(client, "b", title="Also mine")
    await _chat(client, "b", "hello there")
    # a third chat's auto title proves the titling step ran meanwhile
    await new_session(client, "c")
    await _chat(client, "c", "hello there")
    for _ in range(int(TIMEOUT / 0.02)):
        if (await _session(client, "c"))["title"] is not None:
            break
        await asyncio.sleep(0.02)
    assert (await _session(client, "c"))["title"] == "hello there"
    assert (await _session(client, "a"))["title"] == "Mine"
    b = await _session(client, "b")
    assert (b["title"], b["title_source"]) == ("Also mine", "user")


# ---------------------------------------------------------------------------- list feed


async def _next(ws: Any) -> dict[str, Any]:
    msg = await ws.receive(timeout=TIMEOUT)
    data: dict[str, Any] = orjson.loads(msg.data)
    return data


async def test_list_feed_shows_a_session_created_elsewhere(client: Any) -> None:
    """A session created through one connection appears on another's feed."""
    async with client.ws_connect("/api/events", protocols=["roost.v1"]) as ws:
        hello = await _next(ws)
        assert hello["type"] == "hello"
        await new_session(client, "fresh", title="Hi")
        ev = await _next(ws)
        assert ev["type"] == "session.created" and ev["session"]["id"] == "fresh"
        assert ev["seq"] == hello["seq"] + 1
        await _patch(client, "fresh", pinned=True)
        ev = await _next(ws)
        assert ev["type"] == "session.updated" and ev["session"]["pinned"] is True
        r = await client.delete("/api/sessions/fresh")
        assert r.status == 204
        ev = await _next(ws)
        assert ev == {"type": "session.deleted", "seq": ev["seq"], "session_id": "fresh"}


async def test_list_feed_replays_after_reconnect(client: Any) -> None:
    """Events missed while away are replayed with ``since``, then the feed is live."""
    async with client.ws_connect("/api/events", protocols=["roost.v1"]) as ws:
        seq = (await _next(ws))["seq"]
    await new_session(client, "x")
    await new_session(client, "y")
    async with client.ws_connect(f"/api/events?since={seq}", protocols=["roost.v1"]) as ws:
        assert (await _next(ws))["type"] == "hello"
        got = [await _next(ws), await _next(ws)]
        assert [(e["type"], e["session"]["id"]) for e in got] == [
            ("session.created", "x"),
            ("session.created", "y"),
        ]
    async with client.ws_connect("/api/events?since=5", protocols=["roost.v1"]) as ws:
        assert (await _next(ws))["type"] == "hello"
        assert (await _next(ws))["type"] == "resync"  # not a seq of this server's


async def test_list_feed_over_sse(client: Any) -> None:
    """The same feed as SSE: hello, then the created session."""
    async with client.get("/api/events") as r:
        assert r.headers["Content-Type"].startswith("text/event-stream")
        line = await asyncio.wait_for(r.content.readline(), TIMEOUT)
        while not line.startswith(b"data:"):
            line = await asyncio.wait_for(r.content.readline(), TIMEOUT)
        assert orjson.loads(line[5:])["type"] == "hello"
        await new_session(client, "z")
        while True:
            line = await asyncio.wait_for(r.content.readline(), TIMEOUT)
            if line.startswith(b"data:"):
                ev = orjson.loads(line[5:])
                break
        assert ev["type"] == "session.created" and ev["session"]["id"] == "z"


async def test_list_feed_is_per_user(make_client: Any, tmp_path: Path) -> None:
    """Bob's feed never carries Alice's sessions."""
    client = await make_client(tokens_file=_tokens(tmp_path))
    async with client.ws_connect("/api/events", protocols=["roost.v1"], headers=BOB) as ws:
        await _next(ws)
        r = await client.post("/api/sessions", json={"id": "a1"}, headers=ALICE)
        assert r.status == 201
        r = await client.post("/api/sessions", json={"id": "b1"}, headers=BOB)
        assert r.status == 201
        ev = await _next(ws)
        assert ev["session"]["id"] == "b1"


# ---------------------------------------------------------------------------- retention


async def test_temporary_session_expires_and_its_tabs_get_deleted(make_client: Any) -> None:
    """A temporary session is hidden from the list, then swept; its socket gets
    session.deleted and the list feed says so."""
    client = await make_client(temporary_ttl=0.3, sweep_interval=0.05)
    doc = await new_session(client, "tmp", temporary=True)
    assert doc["temporary"] is True
    await new_session(client, "keep")
    assert [s["id"] for s in (await _list(client))["items"]] == ["keep"]
    assert [s["id"] for s in (await _list(client, temporary="true"))["items"]] == ["tmp"]
    async with (
        client.ws_connect("/api/events", protocols=["roost.v1"]) as feed,
        client.ws_connect("/api/sessions/tmp/ws", protocols=["roost.v1"]) as tab,
    ):
        await _next(feed)
        assert (await _next(tab))["type"] == "hello"
        ev = await _next(tab)
        assert ev["type"] == "session.deleted"
        gone = await _next(feed)
        assert gone["type"] == "session.deleted" and gone["session_id"] == "tmp"
    r = await client.get("/api/sessions/tmp")
    assert r.status == 404
    assert (await client.get("/api/sessions/keep")).status == 200


async def test_expires_at_deletes_at_that_time(make_client: Any) -> None:
    """A session whose expires_at passed is deleted by the sweep; a later one is kept."""
    client = await make_client(sweep_interval=0.05)
    await new_session(client, "soon", expires_at="2000-01-01T00:00:00Z")
    await new_session(client, "later", expires_at="2999-01-01T00:00:00+02:00")
    assert (await _session(client, "later"))["expires_at"] == "2998-12-31T22:00:00.000Z"
    for _ in range(int(TIMEOUT / 0.02)):
        if (await client.get("/api/sessions/soon")).status == 404:
            break
        await asyncio.sleep(0.02)
    assert (await client.get("/api/sessions/soon")).status == 404
    assert (await client.get("/api/sessions/later")).status == 200
    for _ in range(int(TIMEOUT / 0.02)):  # counted just after the delete is seen
        r = await client.get("/metrics")
        if "roost_expired_sessions_total 1.0" in await r.text():
            break
        await asyncio.sleep(0.02)
    assert "roost_expired_sessions_total 1.0" in await r.text()


# ---------------------------------------------------------------------------- feedback


async def test_feedback_is_set_replaced_exported_counted_and_removed(client: Any) -> None:
    """PUT rates a message (a second PUT replaces it), the message and the export show
    it, /metrics counts it, DELETE removes it."""
    await new_session(client)
    m = await append(client, "s1", "rate me")
    url = f"/api/sessions/s1/messages/{m['id']}/feedback"
    r = await client.put(url, json={"rating": 1, "tags": ["helpful"]})
    assert r.status == 200, await r.text()
    r = await client.put(url, json={"rating": -1, "comment": "wrong"})
    fb = (await r.json())["feedback"]
    assert (fb["rating"], fb["comment"], fb["tags"]) == (-1, "wrong", [])
    r = await client.get(f"/api/sessions/s1/messages/{m['id']}")
    assert (await r.json())["feedback"]["rating"] == -1
    r = await client.get("/api/sessions/s1/export")
    exported = orjson.loads(await r.read())
    assert exported["messages"][0]["feedback"]["rating"] == -1
    r = await client.post(
        "/api/sessions/import?id=again",
        data=orjson.dumps(exported),
        headers={"Content-Type": "application/json"},
    )
    assert r.status == 201, await r.text()
    text = await (await client.get("/metrics")).text()
    assert 'roost_feedback_total{rating="1"} 1.0' in text
    assert 'roost_feedback_total{rating="-1"} 1.0' in text
    r = await client.delete(url)
    assert r.status == 204
    r = await client.get(f"/api/sessions/s1/messages/{m['id']}")
    assert (await r.json())["feedback"] is None
    r = await client.put(url, json={"rating": 2})
    assert r.status == 400


# ---------------------------------------------------------------------------- admin


async def test_admin_reindex_rebuilds_from_the_session_files(client: Any, tmp_path: Path) -> None:
    """``roost-admin reindex`` rebuilds the users' search files from the session files."""
    from scripts.admin import main
    from storage.layout import DataDir
    from storage.usersearch import UserIndex, user_index_path

    await new_session(client, "a")
    await append(client, "a", "a quokka smiles")
    await append(client, "a", "the second message")
    assert len((await _search(client, "quokka"))["items"]) == 1
    dd = DataDir(tmp_path / "data")
    path = user_index_path(dd, "")
    assert main(["--data-dir", str(dd.root), "reindex"]) == 0
    idx = UserIndex(path)
    try:
        assert idx.count() == 2
        assert [h["session_id"] for h in idx.search("quokka", limit=5)] == ["a"]
    finally:
        idx.close()


async def test_admin_sweep_dry_run_lists_expired(client: Any, tmp_path: Path, capsys: Any) -> None:
    """``roost-admin sweep --dry-run`` lists sessions past expires_at, and no others."""
    from scripts.admin import main

    await new_session(client, "old", expires_at="2001-01-01T00:00:00Z")
    await new_session(client, "new")
    await client.get("/api/sessions")  # the catalog mirror is written
    capsys.readouterr()
    code = main(["--data-dir", str(tmp_path / "data"), "--json", "sweep", "--dry-run"])
    assert code == 0
    out = orjson.loads(capsys.readouterr().out)
    assert out["items"] == [{"id": "old", "owner": "", "reason": "expires_at"}]
    assert main(["--data-dir", str(tmp_path / "data"), "sweep"]) == 2
