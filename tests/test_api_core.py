"""Sessions and messages over HTTP: shapes, pagination, branching, bad input."""

from __future__ import annotations

import asyncio
import io
import itertools
import re
from typing import Any

import pytest

from tests.conftest import append, deadline, new_session

TS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


async def test_create_session_returns_session_shape(client: Any) -> None:
    """POST /sessions answers 201 with every Session field."""
    s = await new_session(client, "abc", title="T", metadata={"k": 1})
    assert s["id"] == "abc" and s["title"] == "T" and s["metadata"] == {"k": 1}
    assert s["message_count"] == 0 and s["last_message_at"] is None
    assert s["active_leaf_id"] is None
    assert TS.fullmatch(s["created_at"]) and TS.fullmatch(s["updated_at"])


async def test_create_session_without_id_makes_one(client: Any) -> None:
    """An id is made when none is given."""
    r = await client.post("/api/sessions", json={})
    assert r.status == 201
    sid = (await r.json())["id"]
    assert (await client.get(f"/api/sessions/{sid}")).status == 200


async def test_create_session_existing_id_conflicts(client: Any) -> None:
    """The same id twice answers 409 and keeps the first session."""
    await new_session(client, "dup", title="first")
    r = await client.post("/api/sessions", json={"id": "dup", "title": "second"})
    assert r.status == 409
    assert (await r.json())["error"]["code"] == "conflict"
    got = await (await client.get("/api/sessions/dup")).json()
    assert got["session"]["title"] == "first"


async def test_create_session_concurrent_same_id_one_wins(client: Any) -> None:
    """Racing creates of one id: exactly one 201."""
    rs = await asyncio.gather(
        *(client.post("/api/sessions", json={"id": "race"}) for _ in range(8))
    )
    assert sorted(r.status for r in rs) == [201] + [409] * 7


async def test_append_answers_201_with_message_shape(client: Any) -> None:
    """An append answers 201 with every field of the Message shape, first in its chain."""
    await new_session(client)
    m = await append(client, "s1", "hello", metadata={"a": 1})
    for key in (
        "id",
        "session_id",
        "seq",
        "role",
        "content",
        "parts",
        "status",
        "parent_id",
        "client_id",
        "model_id",
        "provider_id",
        "fallback_notice",
        "tool_name",
        "tool_call",
        "tool_result",
        "attachments",
        "metadata",
        "error",
        "created_at",
        "updated_at",
        "version",
    ):
        assert key in m, key
    assert m["seq"] == 1 and m["status"] == "complete" and m["version"] == 1
    assert m["parent_id"] is None and m["session_id"] == "s1"


async def test_append_second_message_chains_to_the_first(client: Any) -> None:
    """A second append's parent is the first message; its seq and id are larger."""
    await new_session(client)
    m = await append(client, "s1", "hello", metadata={"a": 1})
    m2 = await append(client, "s1", "again")
    assert m2["parent_id"] == m["id"] and m2["seq"] == 2 and m2["id"] > m["id"]


async def test_append_updates_session_counters(client: Any) -> None:
    """Appends update the session's message_count, active_leaf_id and last_message_at."""
    await new_session(client)
    await append(client, "s1", "hello", metadata={"a": 1})
    m2 = await append(client, "s1", "again")
    s = (await (await client.get("/api/sessions/s1")).json())["session"]
    assert s["message_count"] == 2 and s["active_leaf_id"] == m2["id"]
    assert s["last_message_at"] == m2["created_at"]


async def test_append_same_client_id_is_idempotent(client: Any) -> None:
    """A retried client_id answers 200 with the stored message and adds nothing."""
    await new_session(client)
    body = {"role": "user", "content": "once", "client_id": "c-1"}
    r1 = await client.post("/api/sessions/s1/messages", json=body)
    r2 = await client.post("/api/sessions/s1/messages", json=body)
    assert (r1.status, r2.status) == (201, 200)
    assert (await r1.json()) == (await r2.json())
    r3 = await client.post("/api/sessions/s1/messages", json={**body, "content": "other"})
    assert r3.status == 409
    page = await (await client.get("/api/sessions/s1/messages?view=all")).json()
    assert [m["content"] for m in page["items"]] == ["once"]


async def test_concurrent_appends_all_land_in_seq_order(client: Any) -> None:
    """50 concurrent appends: all land with distinct seqs; list order is seq order."""
    await new_session(client)
    msgs = await asyncio.gather(*(append(client, "s1", f"m{i}") for i in range(50)))
    seqs = sorted(m["seq"] for m in msgs)
    assert seqs == list(range(1, 51))
    page = await (await client.get("/api/sessions/s1/messages?view=all&limit=200")).json()
    assert [m["seq"] for m in page["items"]] == seqs
    assert {m["content"] for m in page["items"]} == {f"m{i}" for i in range(50)}
    # one linear chain: each parent is the previous message in seq order
    items = page["items"]
    assert all(b["parent_id"] == a["id"] for a, b in itertools.pairwise(items))


async def _walk(client: Any, sid: str, view: str, direction: str) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    url = f"/api/sessions/{sid}/messages?view={view}&limit=7"
    async with deadline(f"the walk over {sid}'s pages"):
        if direction == "after":
            # the oldest page first: walk back to the start, then forward
            page = await (await client.get(url)).json()
            while page["before"]:
                page = await (await client.get(f"{url}&before={page['before']}")).json()
            seen.extend(page["items"])
            while page["after"]:
                page = await (await client.get(f"{url}&after={page['after']}")).json()
                seen.extend(page["items"])
            return seen
        page = await (await client.get(url)).json()
        seen = page["items"]
        while page["before"]:
            page = await (await client.get(f"{url}&before={page['before']}")).json()
            seen = page["items"] + seen
        return seen


@pytest.mark.parametrize("view", ["all", "active"])
@pytest.mark.parametrize("direction", ["before", "after"])
async def test_walk_300_messages_gives_each_once_in_order(
    client: Any, view: str, direction: str
) -> None:
    """Walking 300 messages with before or after cursors yields each once, in order."""
    await new_session(client)
    for i in range(300):
        await append(client, "s1", f"m{i}")
    seen = await _walk(client, "s1", view, direction)
    assert [m["content"] for m in seen] == [f"m{i}" for i in range(300)]


async def test_page_cursors_null_at_ends(client: Any) -> None:
    """The newest page has no `after`; the oldest has no `before`; empty session has none."""
    await new_session(client)
    empty = await (await client.get("/api/sessions/s1/messages")).json()
    assert empty == {"items": [], "before": None, "after": None}
    for i in range(3):
        await append(client, "s1", f"m{i}")
    page = await (await client.get("/api/sessions/s1/messages?limit=2")).json()
    assert page["after"] is None and page["before"] is not None
    older = await client.get(f"/api/sessions/s1/messages?limit=2&before={page['before']}")
    older_page = await older.json()
    assert [m["content"] for m in older_page["items"]] == ["m0"]
    assert older_page["before"] is None and older_page["after"] is not None


async def test_get_session_returns_latest_active_page(client: Any) -> None:
    """GET /sessions/{sid} gives the session, the newest page oldest first, and `before`."""
    await new_session(client)
    for i in range(30):
        await append(client, "s1", f"m{i}")
    body = await (await client.get("/api/sessions/s1")).json()
    assert [m["content"] for m in body["messages"]] == [f"m{i}" for i in range(5, 30)]
    older = await (await client.get(f"/api/sessions/s1/messages?before={body['before']}")).json()
    assert [m["content"] for m in older["items"]] == [f"m{i}" for i in range(5)]


async def _branched(client: Any) -> dict[str, Any]:
    """s1 holds a → b1 → c1 and a sibling b2 of b1 (appended with parent_id=a)."""
    await new_session(client)
    a = await append(client, "s1", "a")
    b1 = await append(client, "s1", "b1")
    c1 = await append(client, "s1", "c1")
    b2 = await append(client, "s1", "b2", parent_id=a["id"])
    return {"a": a, "b1": b1, "c1": c1, "b2": b2}


async def test_branching_explicit_parent_makes_sibling(client: Any) -> None:
    """An append with parent_id makes a sibling; active view follows the new leaf."""
    await _branched(client)
    active = await (await client.get("/api/sessions/s1/messages")).json()
    assert [m["content"] for m in active["items"]] == ["a", "b2"]
    assert active["items"][1]["siblings"] == {"index": 1, "count": 2}
    assert active["items"][0]["siblings"] == {"index": 0, "count": 1}


async def test_branching_all_view_lists_every_branch_without_siblings(client: Any) -> None:
    """view=all lists both branches in seq order and carries no siblings field."""
    await _branched(client)
    every = await (await client.get("/api/sessions/s1/messages?view=all")).json()
    assert [m["content"] for m in every["items"]] == ["a", "b1", "c1", "b2"]
    assert "siblings" not in every["items"][0]


async def test_branching_new_sibling_becomes_active_leaf(client: Any) -> None:
    """The session's active_leaf_id is the sibling just appended."""
    msgs = await _branched(client)
    s = (await (await client.get("/api/sessions/s1")).json())["session"]
    assert s["active_leaf_id"] == msgs["b2"]["id"]


async def test_branching_switch_back_follows_latest_descendant(client: Any) -> None:
    """PATCH active_leaf_id to b1 follows its latest descendant down to c1."""
    msgs = await _branched(client)
    r = await client.patch("/api/sessions/s1", json={"active_leaf_id": msgs["b1"]["id"]})
    assert r.status == 200
    leaf = (await r.json())["active_leaf_id"]
    active = await (await client.get("/api/sessions/s1/messages")).json()
    assert [m["content"] for m in active["items"]] == ["a", "b1", "c1"]
    assert active["items"][1]["siblings"] == {"index": 0, "count": 2}
    assert leaf == active["items"][-1]["id"]


async def test_branching_plain_append_continues_active_branch(client: Any) -> None:
    """After switching back to b1's branch, a plain append's parent is its leaf."""
    msgs = await _branched(client)
    r = await client.patch("/api/sessions/s1", json={"active_leaf_id": msgs["b1"]["id"]})
    leaf = (await r.json())["active_leaf_id"]
    d = await append(client, "s1", "d")
    assert d["parent_id"] == leaf


async def test_patch_session_title_and_metadata(client: Any) -> None:
    """PATCH changes title and metadata and bumps updated_at."""
    s = await new_session(client)
    r = await client.patch("/api/sessions/s1", json={"title": "new", "metadata": {"x": [1]}})
    assert r.status == 200
    body = await r.json()
    assert body["title"] == "new" and body["metadata"] == {"x": [1]}
    assert body["updated_at"] >= s["updated_at"]


async def test_list_sessions_most_recent_first_with_cursor(client: Any) -> None:
    """GET /sessions pages by most recently updated first."""
    for i in range(5):
        await new_session(client, f"s{i}")
    await append(client, "s2", "bump")
    r = await client.get("/api/sessions?limit=2")
    page = await r.json()
    assert page["items"][0]["id"] == "s2" and page["items"][0]["message_count"] == 1
    ids = [s["id"] for s in page["items"]]
    async with deadline("the walk over the session pages"):
        while page["next_cursor"]:
            page = await (
                await client.get(f"/api/sessions?limit=2&cursor={page['next_cursor']}")
            ).json()
            ids += [s["id"] for s in page["items"]]
    assert sorted(ids) == [f"s{i}" for i in range(5)] and len(ids) == 5


async def test_message_patch_with_if_match(client: Any) -> None:
    """PATCH with the current version succeeds; with a stale one answers 412."""
    await new_session(client)
    m = await append(client, "s1", "v1")
    url = f"/api/sessions/s1/messages/{m['id']}"
    r = await client.patch(url, json={"content": "v2"}, headers={"If-Match": '"1"'})
    assert r.status == 200 and (await r.json())["version"] == 2
    r = await client.patch(url, json={"content": "v3"}, headers={"If-Match": "1"})
    assert r.status == 412
    got = await (await client.get(url)).json()
    assert got["content"] == "v2" and got["version"] == 2


async def test_message_delete_leaves_tombstone(client: Any) -> None:
    """DELETE answers 204; the message is gone from reads, its child keeps its parent."""
    await new_session(client)
    a = await append(client, "s1", "a")
    b = await append(client, "s1", "b")
    c = await append(client, "s1", "c")
    r = await client.delete(f"/api/sessions/s1/messages/{b['id']}")
    assert r.status == 204
    assert (await client.get(f"/api/sessions/s1/messages/{b['id']}")).status == 404
    assert (await client.delete(f"/api/sessions/s1/messages/{b['id']}")).status == 404
    page = await (await client.get("/api/sessions/s1/messages")).json()
    assert [m["content"] for m in page["items"]] == ["a", "c"]
    got_c = await (await client.get(f"/api/sessions/s1/messages/{c['id']}")).json()
    assert got_c["parent_id"] == b["id"]
    s = (await (await client.get("/api/sessions/s1")).json())["session"]
    assert s["message_count"] == 2
    # deleting the leaf moves the active leaf to its nearest live ancestor
    await client.delete(f"/api/sessions/s1/messages/{c['id']}")
    s = (await (await client.get("/api/sessions/s1")).json())["session"]
    assert s["active_leaf_id"] == a["id"]


async def test_delete_session_removes_files(client: Any, tmp_path: Any) -> None:
    """DELETE /sessions/{sid}: 204, its folder is gone, then 404 everywhere."""
    from tests.conftest import registry_of

    await new_session(client)
    await append(client, "s1", "x")
    folder = registry_of(client).datadir.session_dir("s1")
    assert folder.exists()
    assert (await client.delete("/api/sessions/s1")).status == 204
    assert not folder.exists()
    assert (await client.get("/api/sessions/s1")).status == 404
    assert (await client.delete("/api/sessions/s1")).status == 404
    listing = await (await client.get("/api/sessions")).json()
    assert listing["items"] == []
    # the id can be used again
    await new_session(client)


SID_ROUTES = [
    ("GET", "/api/sessions/{sid}", None),
    ("PATCH", "/api/sessions/{sid}", {"title": "x"}),
    ("DELETE", "/api/sessions/{sid}", None),
    ("GET", "/api/sessions/{sid}/messages", None),
    ("POST", "/api/sessions/{sid}/messages", {"role": "user", "content": "x"}),
    ("GET", "/api/sessions/{sid}/messages/m1", None),
    ("PATCH", "/api/sessions/{sid}/messages/m1", {"content": "x"}),
    ("DELETE", "/api/sessions/{sid}/messages/m1", None),
]


@pytest.mark.parametrize(("method", "path", "body"), SID_ROUTES)
async def test_unknown_session_is_404_on_every_route(
    client: Any, method: str, path: str, body: Any
) -> None:
    """Every session route answers 404 JSON for a session that does not exist."""
    r = await client.request(method, path.format(sid="ghost"), json=body)
    assert r.status == 404
    assert (await r.json())["error"]["code"] == "not_found"


async def _snapshot(client: Any) -> Any:
    every = await (await client.get("/api/sessions/s1/messages?view=all&limit=200")).json()
    sess = (await (await client.get("/api/sessions/s1")).json())["session"]
    return every, sess


BAD_APPENDS: list[tuple[str, Any, dict[str, str] | None, int]] = [
    ("malformed json", b"{nope", None, 400),
    ("not an object", b"[1,2]", None, 400),
    ("unknown field", {"role": "user", "content": "x", "bogus": 1}, None, 400),
    ("wrong type", {"role": "user", "content": 5}, None, 400),
    ("bad role", {"role": "wizard", "content": "x"}, None, 400),
    ("missing role", {"content": "x"}, None, 400),
    ("empty content", {"role": "user", "content": ""}, None, 400),
    ("blank content", {"role": "user", "content": " \n\t"}, None, 400),
    ("content too long", {"role": "user", "content": "x" * 100_001}, None, 413),
    (
        "metadata too big",
        {"role": "user", "content": "x", "metadata": {"k": "v" * 20_000}},
        None,
        413,
    ),
    (
        "metadata too deep",
        {
            "role": "user",
            "content": "x",
            "metadata": {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {}}}}}}}}},
        },
        None,
        400,
    ),
    ("metadata not object", {"role": "user", "content": "x", "metadata": [1]}, None, 400),
    ("unknown parent", {"role": "user", "content": "x", "parent_id": "nope"}, None, 400),
    ("bad part type", {"role": "user", "content": "x", "parts": [{"type": "video"}]}, None, 400),
    ("unknown attachment", {"role": "user", "content": "x", "attachments": ["a1"]}, None, 400),
    ("wrong media type", b'{"role":"user","content":"x"}', {"Content-Type": "text/plain"}, 415),
    ("body too large", b"{" + b" " * (1 << 20) + b"}", None, 413),
]


@pytest.mark.parametrize(
    ("name", "body", "headers", "status"), BAD_APPENDS, ids=[b[0] for b in BAD_APPENDS]
)
async def test_bad_append_is_4xx_json_and_changes_nothing(
    client: Any, name: str, body: Any, headers: dict[str, str] | None, status: int
) -> None:
    """Each kind of bad append gets its 4xx JSON error and leaves the data unchanged."""
    await new_session(client)
    await append(client, "s1", "keep")
    before = await _snapshot(client)
    if isinstance(body, bytes):
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        r = await client.post("/api/sessions/s1/messages", data=io.BytesIO(body), headers=hdrs)
    else:
        r = await client.post("/api/sessions/s1/messages", json=body, headers=headers)
    assert r.status == status, await r.text()
    err = (await r.json())["error"]
    assert err["code"] and err["message"]
    assert await _snapshot(client) == before


BAD_QUERIES = [
    "/api/sessions/s1/messages?limit=0",
    "/api/sessions/s1/messages?limit=201",
    "/api/sessions/s1/messages?limit=abc",
    "/api/sessions/s1/messages?limit=-1",
    "/api/sessions/s1/messages?before=notacursor",
    "/api/sessions/s1/messages?before=%00",
    "/api/sessions/s1/messages?after=ZDox&before=ZDox",
    "/api/sessions/s1/messages?view=everything",
    "/api/sessions/s1/messages?view=all&before=ZDox",  # an active-view cursor on the log view
    "/api/sessions?limit=1000",
    "/api/sessions?cursor=garbage",
]


@pytest.mark.parametrize("url", BAD_QUERIES)
async def test_bad_query_is_400(client: Any, url: str) -> None:
    """Bad cursors, limits out of range and unknown views answer 400 JSON."""
    await new_session(client)
    await append(client, "s1", "x")
    r = await client.get(url)
    assert r.status == 400, await r.text()
    assert (await r.json())["error"]["code"] == "invalid_input"


BAD_IDS = [
    "..",
    "%2e%2e",
    ".hidden",
    "a%00b",
    "a" * 129,
    "-lead",
    "sp%20ace",
    "a%2Fb",
    "%2e%2e%2f%2e%2e%2fetc",
]


@pytest.mark.parametrize("sid", BAD_IDS)
async def test_bad_session_id_in_path_is_4xx(client: Any, sid: str) -> None:
    """Path tricks and illegal ids never reach the file system."""
    r = await client.get(f"/api/sessions/{sid}/messages")
    assert 400 <= r.status < 500
    assert (await r.json())["error"]


@pytest.mark.parametrize("sid", ["..", "../x", "a/b", "", "a\x00b", ".x", "x" * 129, 5])
async def test_bad_session_id_on_create_is_400(client: Any, tmp_path: Any, sid: Any) -> None:
    """Creating a session with an illegal id answers 400 and makes no file."""
    r = await client.post("/api/sessions", json={"id": sid})
    assert r.status == 400
    data_dir = tmp_path / "data"
    assert not any(
        p.name not in ("catalog.db", "catalog.db-wal", "catalog.db-shm", "sessions", "trash")
        for p in data_dir.iterdir()
    )
    assert not any((data_dir / "sessions").rglob("*.db"))


async def test_bad_patch_changes_nothing(client: Any) -> None:
    """Empty or unknown-field PATCHes answer 400 and change nothing."""
    await new_session(client, title="t")
    m = await append(client, "s1", "x")
    before = await _snapshot(client)
    for url, body in [
        ("/api/sessions/s1", {}),
        ("/api/sessions/s1", {"owner": "me"}),
        ("/api/sessions/s1", {"title": "x" * 201}),
        ("/api/sessions/s1", {"active_leaf_id": "nope"}),
        (f"/api/sessions/s1/messages/{m['id']}", {}),
        (f"/api/sessions/s1/messages/{m['id']}", {"role": "assistant"}),
        (f"/api/sessions/s1/messages/{m['id']}", {"content": ""}),
    ]:
        r = await client.patch(url, json=body)
        assert r.status == 400, (url, body, await r.text())
    r = await client.patch(
        f"/api/sessions/s1/messages/{m['id']}", json={"content": "y"}, headers={"If-Match": "abc"}
    )
    assert r.status == 400
    assert await _snapshot(client) == before


async def test_unknown_route_and_method_are_json(client: Any) -> None:
    """Unknown paths answer 404 JSON, wrong methods 405 JSON."""
    r = await client.get("/api/nope")
    assert r.status == 404 and (await r.json())["error"]["code"] == "not_found"
    r = await client.put("/api/sessions")
    assert r.status == 405 and (await r.json())["error"]["code"] == "method_not_allowed"


async def test_healthz(client: Any) -> None:
    r = await client.get("/healthz")
    assert r.status == 200 and (await r.json())["status"] == "ok"
