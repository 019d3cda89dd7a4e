"""Share links: a read-only snapshot anyone with the id may read; revoke; continue as a copy."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from storage.catalog import Catalog
from storage.layout import DataDir
from storage.schema import CATALOG_MIGRATIONS, split_statements
from tests.conftest import registry_of

A = {"Authorization": "Bearer tok-a"}
B = {"Authorization": "Bearer tok-b"}


@pytest.fixture
async def shclient(make_client: Any, tmp_path: Path) -> Any:
    """alice (tok-a) owns s1: root m1 with two replies m2 and m3 (m3 active); bob is tok-b."""
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({"tok-a": "alice", "tok-b": "bob"}))
    client = await make_client(tokens_file=str(tokens))
    assert (await client.post("/api/sessions", json={"id": "s1"}, headers=A)).status == 201
    ids = []
    for content, parent in (("root", None), ("left", 0), ("right", 0)):
        body: dict[str, Any] = {"role": "user", "content": content}
        if parent is not None:
            body["parent_id"] = ids[parent]
        r = await client.post("/api/sessions/s1/messages", json=body, headers=A)
        assert r.status == 201, await r.text()
        ids.append((await r.json())["id"])
    return client


async def _share(client: Any, branch: str = "active", headers: dict[str, str] = A) -> str:
    r = await client.post("/api/sessions/s1/shares", json={"branch": branch}, headers=headers)
    assert r.status == 201, await r.text()
    body = await r.json()
    assert body["url"] == f"/s/{body['id']}" and body["branch"] == branch
    assert len(body["id"]) >= 20
    share_id: str = body["id"]
    return share_id


async def _contents(client: Any, share_id: str) -> list[str]:
    r = await client.get(f"/api/shares/{share_id}")
    assert r.status == 200, await r.text()
    return [m["content"] for m in (await r.json())["messages"]]


async def test_share_stranger_without_token_reads_it(shclient: Any) -> None:
    """No token at all: the share answers 200 with the chat, and nothing about the owner."""
    share_id = await _share(shclient)
    r = await shclient.get(f"/api/shares/{share_id}")
    assert r.status == 200
    body = await r.json()
    assert "owner" not in body and "alice" not in await r.text()
    assert body["messages"][0]["content"] == "root"


async def test_share_active_branch_hides_other_branches(shclient: Any) -> None:
    """branch: active shows the active path only; the sibling branch is absent."""
    assert await _contents(shclient, await _share(shclient, "active")) == ["root", "right"]


async def test_share_all_branches_shows_every_branch(shclient: Any) -> None:
    """branch: all shows every message of every branch."""
    assert await _contents(shclient, await _share(shclient, "all")) == ["root", "left", "right"]


async def test_share_is_a_snapshot(shclient: Any) -> None:
    """A message added after sharing does not appear in the share."""
    share_id = await _share(shclient)
    r = await shclient.post(
        "/api/sessions/s1/messages", json={"role": "user", "content": "later"}, headers=A
    )
    assert r.status == 201
    assert await _contents(shclient, share_id) == ["root", "right"]


async def test_share_stranger_cannot_write(shclient: Any) -> None:
    """Without a token, the share's session, its copy and its revocation are all 401."""
    share_id = await _share(shclient)
    post = {"role": "user", "content": "x"}
    assert (await shclient.post("/api/sessions/s1/messages", json=post)).status == 401
    assert (await shclient.post(f"/api/shares/{share_id}/copy")).status == 401
    assert (await shclient.delete(f"/api/shares/{share_id}")).status == 401
    assert (await shclient.get("/api/sessions/s1")).status == 401


async def test_share_revoke_makes_it_404(shclient: Any) -> None:
    """DELETE by the owner: 204, and the link answers 404 from then on."""
    share_id = await _share(shclient)
    assert (await shclient.delete(f"/api/shares/{share_id}", headers=A)).status == 204
    r = await shclient.get(f"/api/shares/{share_id}")
    assert r.status == 404
    assert (await r.json())["error"]["code"] == "not_found"
    assert (await shclient.delete(f"/api/shares/{share_id}", headers=A)).status == 404


async def test_share_revoke_by_another_user_is_404(shclient: Any) -> None:
    """bob cannot revoke alice's share (404); it stays readable."""
    share_id = await _share(shclient)
    assert (await shclient.delete(f"/api/shares/{share_id}", headers=B)).status == 404
    assert (await shclient.get(f"/api/shares/{share_id}")).status == 200


async def test_share_of_another_users_session_is_404(shclient: Any) -> None:
    """bob cannot share alice's session: 404 as for no session."""
    r = await shclient.post("/api/sessions/s1/shares", json={}, headers=B)
    assert r.status == 404


async def test_share_list_shows_the_owners_only(shclient: Any) -> None:
    """GET /api/shares lists the caller's shares, newest first."""
    first, second = await _share(shclient), await _share(shclient, "all")
    mine = await (await shclient.get("/api/shares", headers=A)).json()
    assert {s["id"] for s in mine["items"]} == {first, second}
    theirs = await (await shclient.get("/api/shares", headers=B)).json()
    assert theirs["items"] == []


async def test_share_unknown_or_malformed_id_is_404(shclient: Any) -> None:
    """A made-up id, long or short, is 404."""
    for share_id in ("x" * 22, "nope", "../../etc"):
        assert (await shclient.get(f"/api/shares/{share_id}")).status == 404


async def test_share_expired_is_404(shclient: Any) -> None:
    """A share past its expires_at answers 404."""
    registry_of(shclient).catalog.insert_share(
        {
            "id": "expired-share-000000000",
            "owner": "alice",
            "session_id": "s1",
            "branch": "active",
            "created_at": "2020-01-01T00:00:00.000Z",
            "expires_at": "2020-01-02T00:00:00.000Z",
        },
        b'{"session": {}, "messages": []}',
    )
    assert (await shclient.get("/api/shares/expired-share-000000000")).status == 404


async def test_share_with_expiry_reports_it(shclient: Any) -> None:
    """expires_in sets expires_at; the share is readable until then."""
    r = await shclient.post("/api/sessions/s1/shares", json={"expires_in": 3600}, headers=A)
    body = await r.json()
    assert body["expires_at"] is not None and body["expires_at"] > body["created_at"]
    assert (await shclient.get(f"/api/shares/{body['id']}")).status == 200


async def test_share_deleting_the_session_deletes_its_shares(shclient: Any) -> None:
    """The owner deletes the session: its shares answer 404."""
    share_id = await _share(shclient)
    assert (await shclient.delete("/api/sessions/s1", headers=A)).status == 204
    assert (await shclient.get(f"/api/shares/{share_id}")).status == 404


async def test_share_copy_makes_a_session_of_the_caller(shclient: Any) -> None:
    """bob continues alice's share as his own copy: a new session of his, same chat."""
    share_id = await _share(shclient)
    r = await shclient.post(f"/api/shares/{share_id}/copy", headers=B)
    assert r.status == 201, await r.text()
    copy = await r.json()
    assert copy["id"] != "s1"
    r = await shclient.get(f"/api/sessions/{copy['id']}/messages", headers=B)
    assert [m["content"] for m in (await r.json())["items"]] == ["root", "right"]
    assert (await shclient.get(f"/api/sessions/{copy['id']}", headers=A)).status == 404
    r = await shclient.post(
        f"/api/sessions/{copy['id']}/messages", json={"role": "user", "content": "mine"}, headers=B
    )
    assert r.status == 201


async def test_share_scoped_token_cannot_share(shclient: Any) -> None:
    """A session-scoped token cannot make, list or copy shares: 403 forbidden_scope."""
    r = await shclient.post("/api/sessions/s1/tokens", json={"scope": "write"}, headers=A)
    h = {"Authorization": f"Bearer {(await r.json())['token']}"}
    r = await shclient.post("/api/sessions/s1/shares", json={}, headers=h)
    assert (r.status, (await r.json())["error"]["code"]) == (403, "forbidden_scope")
    assert (await shclient.get("/api/shares", headers=h)).status == 403


def test_catalog_v1_migrates_to_shares(tmp_path: Path) -> None:
    """A catalog made before share links gains the shares table on open."""
    datadir = DataDir(tmp_path / "data")
    datadir.ensure()
    conn = sqlite3.connect(datadir.catalog_path)
    for stmt in split_statements(CATALOG_MIGRATIONS[0]):
        conn.execute(stmt)
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    catalog = Catalog(datadir)
    try:
        assert catalog.list_shares("alice") == []
        version = catalog.conn.execute("PRAGMA user_version").fetchone()[0]
        assert version == len(CATALOG_MIGRATIONS)
    finally:
        catalog.close()
