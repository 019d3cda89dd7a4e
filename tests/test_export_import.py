"""Export (JSON, Markdown) and import: round trips, validation, bounded memory."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from storage.file import SessionFile
from storage.ids import now_iso
from storage.layout import DataDir, connect
from storage.lifecycle import create_session_file
from storage.ops import op_index_search
from tests.conftest import TIMEOUT, append, eventually, new_session, registry_of

VOLATILE = {"session_id", "attachments"}


async def build_branchy(client: Any, sid: str = "s1") -> dict[str, Any]:
    """u1 → a1 | a2 (sibling) → u2 → gone (deleted); u1' (edited root); with an attachment."""
    await new_session(client, sid, title="Trip plans", metadata={"k": [1, 2]})
    form = aiohttp.FormData()
    form.add_field("file", b"ticket bytes", filename="ticket.pdf", content_type="application/pdf")
    att = await (await client.post(f"/api/sessions/{sid}/attachments", data=form)).json()
    u1 = await append(client, sid, "where to go?", client_id="c-1", attachments=[att["id"]])
    a1 = await append(client, sid, "Paris", role="assistant")
    a2 = await append(client, sid, "Rome", role="assistant", parent_id=u1["id"])
    u2 = await append(client, sid, "why Rome?", metadata={"x": True})
    gone = await append(client, sid, "oops")
    assert (await client.delete(f"/api/sessions/{sid}/messages/{gone['id']}")).status == 204
    r = await client.post(
        f"/api/sessions/{sid}/messages", json={"role": "user", "content": "x", "parent_id": None}
    )
    root2 = await r.json()
    r = await client.patch(f"/api/sessions/{sid}", json={"active_leaf_id": u2["id"]})
    assert r.status == 200
    return {"att": att, "u1": u1, "a1": a1, "a2": a2, "u2": u2, "gone": gone, "root2": root2}


async def export_json(client: Any, sid: str) -> dict[str, Any]:
    r = await client.get(f"/api/sessions/{sid}/export", params={"format": "json"})
    assert r.status == 200, await r.text()
    assert r.headers["Content-Type"].startswith("application/json")
    assert "attachment;" in r.headers["Content-Disposition"]
    doc: dict[str, Any] = orjson.loads(await r.read())
    return doc


async def import_doc(client: Any, doc: Any, **params: str) -> Any:
    return await client.post(
        "/api/sessions/import",
        data=orjson.dumps(doc),
        params=params,
        headers={"Content-Type": "application/json"},
    )


def comparable(msgs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in m.items() if k not in VOLATILE} for m in msgs]


async def all_messages(client: Any, sid: str, view: str) -> list[dict[str, Any]]:
    r = await client.get(f"/api/sessions/{sid}/messages", params={"view": view, "limit": 200})
    items: list[dict[str, Any]] = (await r.json())["items"]
    return items


async def test_export_json_holds_every_branch_tombstone_and_attachment(client: Any) -> None:
    """The JSON export has every message of every branch, the leaf, and attachment records."""
    ids = await build_branchy(client)
    doc = await export_json(client, "s1")
    assert doc["format"] == "roost.session.v1"
    assert doc["active_leaf_id"] == ids["u2"]["id"]
    assert [m["id"] for m in doc["messages"]] == [
        ids[k]["id"] for k in ("u1", "a1", "a2", "u2", "gone", "root2")
    ]
    assert [m["deleted"] for m in doc["messages"]] == [False] * 4 + [True, False]
    assert doc["attachments"] == [ids["att"]]
    assert doc["session"]["title"] == "Trip plans" and doc["session"]["metadata"] == {"k": [1, 2]}


async def test_export_import_round_trip_reproduces_tree(client: Any) -> None:
    """Importing an export gives the same messages, branches, siblings and active leaf."""
    ids = await build_branchy(client)
    doc = await export_json(client, "s1")
    r = await import_doc(client, doc)
    assert r.status == 201, await r.text()
    new = await r.json()
    assert new["id"] != "s1" and r.headers["Location"] == f"/api/sessions/{new['id']}"
    assert new["active_leaf_id"] == ids["u2"]["id"]
    assert new["message_count"] == 5 and new["title"] == "Trip plans"
    for view in ("all", "active"):
        before = await all_messages(client, "s1", view)
        after = await all_messages(client, new["id"], view)
        assert comparable(after) == comparable(before)
    again = await export_json(client, new["id"])
    assert comparable(again["messages"]) == comparable(doc["messages"])
    assert again["active_leaf_id"] == doc["active_leaf_id"]
    assert again["attachments"] == [
        {**a, "url": a["url"].replace("/s1/", f"/{new['id']}/")} for a in doc["attachments"]
    ]


async def test_imported_session_accepts_new_messages_on_the_active_branch(client: Any) -> None:
    """After import, an append continues the active branch and search sees old text."""
    ids = await build_branchy(client)
    new = await (await import_doc(client, await export_json(client, "s1"))).json()
    m = await append(client, new["id"], "and then?")
    assert m["parent_id"] == ids["u2"]["id"]
    r = await client.get(f"/api/sessions/{new['id']}/search", params={"q": "Rome"})
    assert {i["message"]["id"] for i in (await r.json())["items"]} == {
        ids["a2"]["id"],
        ids["u2"]["id"],
    }


async def test_import_same_export_twice_makes_two_sessions(client: Any) -> None:
    """Two imports of one export are two independent sessions."""
    await build_branchy(client)
    doc = await export_json(client, "s1")
    a = await (await import_doc(client, doc)).json()
    b = await (await import_doc(client, doc)).json()
    assert a["id"] != b["id"]
    await append(client, a["id"], "only in a")
    assert (await client.get(f"/api/sessions/{b['id']}")).status == 200
    got_b = await (await client.get(f"/api/sessions/{b['id']}")).json()
    assert got_b["session"]["message_count"] == 5


async def test_import_with_id_names_the_session(client: Any) -> None:
    """?id= names the new session; a taken id answers 409."""
    await build_branchy(client)
    doc = await export_json(client, "s1")
    r = await import_doc(client, doc, id="copy-1")
    assert r.status == 201 and (await r.json())["id"] == "copy-1"
    r = await import_doc(client, doc, id="s1")
    assert r.status == 409
    r = await import_doc(client, doc, id="../x")
    assert r.status == 400


async def test_imported_attachment_without_bytes_is_410(client: Any) -> None:
    """Imported attachment records keep their metadata; their bytes are not exported."""
    ids = await build_branchy(client)
    new = await (await import_doc(client, await export_json(client, "s1"))).json()
    r = await client.get(f"/api/sessions/{new['id']}/attachments/{ids['att']['id']}")
    assert r.status == 410 and (await r.json())["error"]["code"] == "attachment_gone"


def _bad_docs(doc: dict[str, Any]) -> list[tuple[str, Any]]:
    msgs = doc["messages"]
    return [
        ("not an object", [1, 2]),
        ("wrong format", {**doc, "format": "other.v9"}),
        ("unknown field", {**doc, "extra": 1}),
        ("bad role", {**doc, "messages": [{**msgs[0], "role": "admin"}, *msgs[1:]]}),
        ("orphan parent", {**doc, "messages": [msgs[0], {**msgs[1], "parent_id": "nope"}]}),
        ("seq order", {**doc, "messages": [msgs[1], msgs[0]]}),
        ("duplicate id", {**doc, "messages": [msgs[0], {**msgs[1], "id": msgs[0]["id"]}]}),
        ("leaf unknown", {**doc, "active_leaf_id": "nope"}),
        ("leaf deleted", {**doc, "active_leaf_id": msgs[4]["id"]}),
        ("bad timestamp", {**doc, "messages": [{**msgs[0], "created_at": "yesterday"}]}),
        ("ref unknown", {**doc, "attachments": []}),
        ("content type", {**doc, "messages": [{**msgs[0], "content": 5}]}),
    ]


async def test_import_malformed_export_is_400_and_creates_nothing(client: Any) -> None:
    """Every malformed document answers 400 with details; no session appears."""
    await build_branchy(client)
    doc = await export_json(client, "s1")
    for label, bad in _bad_docs(doc):
        r = await import_doc(client, bad)
        body = await r.json()
        assert r.status == 400, (label, body)
        assert body["error"]["code"] == "invalid_input", label
    listing = await (await client.get("/api/sessions")).json()
    assert [s["id"] for s in listing["items"]] == ["s1"]
    sessions_root = registry_of(client).datadir.sessions_root
    assert len([p for p in sessions_root.rglob("session.db")]) == 1


async def test_import_not_json_is_rejected(client: Any) -> None:
    """Malformed JSON is 400; another media type is 415."""
    r = await client.post(
        "/api/sessions/import", data=b"{nope", headers={"Content-Type": "application/json"}
    )
    assert r.status == 400 and (await r.json())["error"]["code"] == "malformed_json"
    r = await client.post("/api/sessions/import", data=b"x", headers={"Content-Type": "text/x"})
    assert r.status == 415


async def test_import_over_limit_is_413(make_client: Any) -> None:
    """An import larger than max_import_bytes answers 413, also when streamed."""
    client = await make_client(max_import_bytes=4096)
    await build_branchy(client)
    doc = await export_json(client, "s1")
    doc["session"]["metadata"] = {"pad": "x" * 5000}
    r = await import_doc(client, doc)
    assert r.status == 413

    async def chunks() -> Any:
        data = orjson.dumps(doc)
        for i in range(0, len(data), 1000):
            yield data[i : i + 1000]

    r = await client.post(
        "/api/sessions/import", data=chunks(), headers={"Content-Type": "application/json"}
    )
    assert r.status == 413


async def test_import_bigger_than_json_body_limit_is_accepted(make_client: Any) -> None:
    """Imports have their own limit, above the JSON body limit."""
    client = await make_client(max_body_bytes=2048)
    await new_session(client)
    for i in range(30):
        await append(client, "s1", f"message number {i} " + "z" * 50)
    doc = await export_json(client, "s1")
    assert len(orjson.dumps(doc)) > 2048
    r = await import_doc(client, doc)
    assert r.status == 201


async def test_export_markdown_renders_active_path(client: Any) -> None:
    """Markdown: the title, then the active path's live messages with attachment links."""
    ids = await build_branchy(client)
    r = await client.get("/api/sessions/s1/export", params={"format": "markdown"})
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/markdown")
    text = await r.text()
    url = ids["att"]["url"]
    assert text == (
        "# Trip plans\n\n"
        f"## user\n\nwhere to go?\n\n- [ticket.pdf](<{url}>)\n\n"
        "## assistant\n\nRome\n\n"
        "## user\n\nwhy Rome?\n\n"
    )


async def test_export_unknown_session_or_format_is_4xx(client: Any) -> None:
    """An unknown session is 404; an unknown format is 400."""
    assert (await client.get("/api/sessions/none/export")).status == 404
    await new_session(client)
    r = await client.get("/api/sessions/s1/export", params={"format": "pdf"})
    assert r.status == 400


async def test_export_abandoned_by_client_ends_its_snapshot(client: Any) -> None:
    """A client that stops reading mid-export does not leave a read transaction open."""
    await new_session(client)
    dd = registry_of(client).datadir
    conn = connect(dd.session_db("s1"))
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO messages (id, depth, sibling_index, role, content, status, created_at, "
        "updated_at) VALUES (?, 0, 0, 'user', ?, 'complete', 't', 't')",
        ((f"m{i}", "w" * 2000) for i in range(3000)),
    )
    conn.execute("COMMIT")
    conn.execute("PRAGMA busy_timeout = 0")  # a blocked checkpoint answers at once
    r = await client.get("/api/sessions/s1/export")
    assert r.status == 200
    await r.content.readexactly(1000)
    await append(client, "s1", "written after the export's snapshot")

    def checkpoint_blocked() -> bool:
        busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        return bool(busy)

    try:
        assert checkpoint_blocked()  # the export's snapshot pins the WAL while it runs
        r.close()
        await eventually(lambda: not checkpoint_blocked(), "the export to release the WAL")
    finally:
        conn.close()
    assert (await client.delete("/api/sessions/s1")).status == 204


# ---------------------------------------------------------------------------- memory


def _generate(dd: DataDir, sid: str, n: int) -> None:
    """A linear session of ``n`` messages written straight into SQLite."""
    now = now_iso()
    create_session_file(dd, sid, owner="", title="big", metadata={}, now=now)
    conn = connect(dd.session_db(sid), synchronous="OFF")
    body = "lorem ipsum dolor sit amet " * 12  # ~320 characters per message
    try:
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO messages (seq, id, parent_seq, parent_id, depth, sibling_index, "
            "child_count, role, content, status, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, 0, ?, ?, ?, 'complete', ?, ?)",
            (
                (
                    i,
                    f"m{i}",
                    i - 1 if i > 1 else None,
                    f"m{i - 1}" if i > 1 else None,
                    i - 1,
                    1 if i < n else 0,
                    "user" if i % 2 else "assistant",
                    f"{i} {body}",
                    now,
                    now,
                )
                for i in range(1, n + 1)
            ),
        )
        conn.executemany(
            "INSERT INTO active_path (depth, seq) VALUES (?, ?)",
            ((i - 1, i) for i in range(1, n + 1)),
        )
        conn.execute(
            "UPDATE session SET message_count = ?, active_leaf_seq = ?, active_leaf_id = ?, "
            "root_count = 1",
            (n, n, f"m{n}"),
        )
        conn.execute("COMMIT")
    finally:
        conn.close()


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc status")


async def _drain(session: aiohttp.ClientSession, url: str) -> int:
    total = 0
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=TIMEOUT * 6)) as r:
        assert r.status == 200
        async for chunk in r.content.iter_chunked(1 << 16):
            total += len(chunk)
    return total


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
async def test_export_of_large_session_runs_in_bounded_memory(
    server_process: Any, tmp_path: Path
) -> None:
    """A 100k-message export barely moves the server's peak RSS (after a 1k warm-up export)."""
    dd = DataDir(tmp_path / "data")
    dd.ensure()
    _generate(dd, "small", 1_000)
    _generate(dd, "large", 100_000)
    srv = server_process()
    await srv.wait_ready()
    async with aiohttp.ClientSession() as s:
        for fmt in ("json", "markdown"):  # warm up every code path first
            await _drain(s, f"{srv.url}/api/sessions/small/export?format={fmt}")
        base = _peak_rss_kib(srv.proc.pid)
        size = await _drain(s, f"{srv.url}/api/sessions/large/export?format=json")
        md_size = await _drain(s, f"{srv.url}/api/sessions/large/export?format=markdown")
        peak = _peak_rss_kib(srv.proc.pid)
    assert size > 40 << 20 and md_size > 30 << 20  # the exports are big ...
    assert peak - base < 16 << 10, (base, peak)  # ... the server's peak barely moves (KiB)


def test_generated_session_is_consistent(tmp_path: Path) -> None:
    """The memory test's generator writes a session the server would accept."""
    dd = DataDir(tmp_path / "data")
    dd.ensure()
    _generate(dd, "g", 50)
    f = SessionFile(dd, "g")
    for _ in range(50):  # what an idle actor does, until nothing is left to index
        if not f.run_batch([op_index_search()], "t")[0][0]:
            break
    else:
        raise AssertionError("the search index never caught up")
    f.close()
    conn = sqlite3.connect(dd.session_db("g"))
    try:
        hits = "SELECT count(*) FROM messages_fts WHERE messages_fts MATCH 'lorem'"
        assert conn.execute(hits).fetchone()[0] == 50
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("SELECT max(depth) FROM active_path").fetchone()[0] == 49
    finally:
        conn.close()
