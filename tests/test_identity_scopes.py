"""Identity: tokens scoped to one session (Roost-signed, or the app's JWT with roost_* claims)."""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest

from server.identity import ROOST_AUDIENCE, ROOST_ISSUER, SIGNING_KEY_FILE

A = {"Authorization": "Bearer tok-a"}
B = {"Authorization": "Bearer tok-b"}
SECRET = "a-test-secret-of-at-least-32-bytes!!"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _tokens_file(tmp_path: Path) -> str:
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps({"tok-a": "alice", "tok-b": "bob"}))
    return str(path)


@pytest.fixture
async def sclient(make_client: Any, tmp_path: Path) -> Any:
    """alice (tok-a) owns sessions s1 and s2, each with one message; bob is tok-b."""
    client = await make_client(tokens_file=_tokens_file(tmp_path), jwt_secret=SECRET)
    for sid in ("s1", "s2"):
        assert (await client.post("/api/sessions", json={"id": sid}, headers=A)).status == 201
        r = await client.post(
            f"/api/sessions/{sid}/messages", json={"role": "user", "content": "hi"}, headers=A
        )
        assert r.status == 201, await r.text()
    return client


async def _mint(client: Any, sid: str, scope: str, headers: dict[str, str] = A) -> str:
    r = await client.post(f"/api/sessions/{sid}/tokens", json={"scope": scope}, headers=headers)
    assert r.status == 201, await r.text()
    body = await r.json()
    assert (body["session_id"], body["scope"]) == (sid, scope)
    assert body["expires_at"] > time.time()
    token: str = body["token"]
    return token


async def _code(r: Any) -> tuple[int, str]:
    return r.status, (await r.json())["error"]["code"]


# ---------------------------------------------------------------------------- read scope


async def test_read_token_reads_its_session(sclient: Any) -> None:
    """A read-scoped token reads its session and its messages."""
    h = bearer(await _mint(sclient, "s1", "read"))
    assert (await sclient.get("/api/sessions/s1", headers=h)).status == 200
    r = await sclient.get("/api/sessions/s1/messages", headers=h)
    assert r.status == 200
    assert [m["content"] for m in (await r.json())["items"]] == ["hi"]


async def test_read_token_cannot_write_its_session(sclient: Any) -> None:
    """A read-scoped token's changes to its own session: 403 read_only."""
    h = bearer(await _mint(sclient, "s1", "read"))
    r = await sclient.post(
        "/api/sessions/s1/messages", json={"role": "user", "content": "x"}, headers=h
    )
    assert await _code(r) == (403, "read_only")
    assert await _code(await sclient.delete("/api/sessions/s1", headers=h)) == (403, "read_only")
    r = await sclient.patch("/api/sessions/s1", json={"title": "t"}, headers=h)
    assert await _code(r) == (403, "read_only")


async def test_read_token_cannot_open_a_websocket(sclient: Any) -> None:
    """A WebSocket can send changes: a read-scoped token cannot open one (403)."""
    token = await _mint(sclient, "s1", "read")
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await sclient.ws_connect("/api/sessions/s1/ws", protocols=("roost.v1", f"bearer.{token}"))
    assert info.value.status == 403


async def test_read_token_cannot_read_another_session(sclient: Any) -> None:
    """Another session of the same owner answers 404, exactly like a missing session."""
    h = bearer(await _mint(sclient, "s1", "read"))
    other = await sclient.get("/api/sessions/s2", headers=h)
    missing = await sclient.get("/api/sessions/nope", headers=A)
    assert await _code(other) == await _code(missing) == (404, "not_found")
    r = await sclient.get("/api/sessions/s2/messages", headers=h)
    assert r.status == 404


async def test_scoped_token_cannot_list_or_create_sessions(sclient: Any) -> None:
    """Routes about no session answer 403 forbidden_scope to a scoped token."""
    h = bearer(await _mint(sclient, "s1", "write"))
    assert await _code(await sclient.get("/api/sessions", headers=h)) == (403, "forbidden_scope")
    r = await sclient.post("/api/sessions", json={"id": "s9"}, headers=h)
    assert await _code(r) == (403, "forbidden_scope")


async def test_scoped_token_may_ask_whoami(sclient: Any) -> None:
    """whoami answers a scoped token with its owner."""
    h = bearer(await _mint(sclient, "s1", "read"))
    assert await (await sclient.get("/api/whoami", headers=h)).json() == {"user": "alice"}


async def test_scoped_token_cannot_mint_tokens(sclient: Any) -> None:
    """A scoped token cannot make more tokens, even for its own session."""
    h = bearer(await _mint(sclient, "s1", "write"))
    r = await sclient.post("/api/sessions/s1/tokens", json={"scope": "write"}, headers=h)
    assert await _code(r) == (403, "forbidden_scope")


# ---------------------------------------------------------------------------- write scope


async def test_write_token_writes_its_session(sclient: Any) -> None:
    """A write-scoped token appends to its session."""
    h = bearer(await _mint(sclient, "s1", "write"))
    r = await sclient.post(
        "/api/sessions/s1/messages", json={"role": "user", "content": "more"}, headers=h
    )
    assert r.status == 201, await r.text()


async def test_write_token_cannot_touch_another_session(sclient: Any) -> None:
    """A write-scoped token's reads and changes to another session: 404."""
    h = bearer(await _mint(sclient, "s1", "write"))
    r = await sclient.post(
        "/api/sessions/s2/messages", json={"role": "user", "content": "x"}, headers=h
    )
    assert r.status == 404
    assert (await sclient.delete("/api/sessions/s2", headers=h)).status == 404
    assert (await sclient.get("/api/sessions/s2", headers=A)).status == 200


async def test_write_token_ai_chat_only_for_its_session(sclient: Any) -> None:
    """POST /api/ai/chat names its session in the body: another one is 404."""
    h = bearer(await _mint(sclient, "s1", "write"))
    body = {
        "id": "s2",
        "trigger": "submit-message",
        "messages": [{"id": "u1", "role": "user", "parts": [{"type": "text", "text": "hi"}]}],
    }
    r = await sclient.post("/api/ai/chat", json=body, headers=h)
    assert r.status == 404, await r.text()


# ---------------------------------------------------------------------------- minting


async def test_mint_for_another_users_session_is_404(sclient: Any) -> None:
    """bob cannot mint a token for alice's session: 404 as for no session."""
    r = await sclient.post("/api/sessions/s1/tokens", json={"scope": "read"}, headers=B)
    assert await _code(r) == (404, "not_found")


async def test_mint_expires_in_over_the_cap_is_400(sclient: Any) -> None:
    """expires_in over --max-scoped-token-ttl: 400 invalid_input."""
    r = await sclient.post(
        "/api/sessions/s1/tokens", json={"scope": "read", "expires_in": 10**9}, headers=A
    )
    assert await _code(r) == (400, "invalid_input")


async def test_mint_bad_scope_is_400(sclient: Any) -> None:
    """A scope that is not read or write: 400."""
    r = await sclient.post("/api/sessions/s1/tokens", json={"scope": "admin"}, headers=A)
    assert r.status == 400


async def test_roost_token_forged_with_another_key_is_401(sclient: Any) -> None:
    """A token that claims Roost's issuer but is signed with another key: 401."""
    now = int(time.time())
    forged = jwt.encode(
        {
            "iss": ROOST_ISSUER,
            "aud": ROOST_AUDIENCE,
            "sub": "alice",
            "exp": now + 60,
            "roost_sid": "s1",
            "roost_scope": "write",
        },
        "x" * 40,
        algorithm="HS256",
    )
    r = await sclient.get("/api/sessions/s1", headers=bearer(forged))
    assert r.status == 401


async def test_roost_token_expired_is_401(make_client: Any, tmp_path: Path) -> None:
    """A Roost-signed token past its exp is refused."""
    key = "k" * 40
    client = await make_client(tokens_file=_tokens_file(tmp_path), token_signing_key=key)
    token = jwt.encode(
        {
            "iss": ROOST_ISSUER,
            "aud": ROOST_AUDIENCE,
            "sub": "alice",
            "exp": int(time.time()) - 60,
            "roost_sid": "s1",
            "roost_scope": "read",
        },
        key,
        algorithm="HS256",
    )
    r = await client.get("/api/whoami", headers=bearer(token))
    assert r.status == 401
    assert "expired" in (await r.json())["error"]["message"]


async def test_scoped_tokens_survive_a_restart(make_client: Any, tmp_path: Path) -> None:
    """The random signing key is kept in the data dir (0600): tokens work after a restart."""
    first = await make_client(tokens_file=_tokens_file(tmp_path))
    assert (await first.post("/api/sessions", json={"id": "r1"}, headers=A)).status == 201
    token = await _mint(first, "r1", "read")
    await first.close()
    key_file = tmp_path / "data" / SIGNING_KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    second = await make_client(tokens_file=_tokens_file(tmp_path))
    assert (await second.get("/api/sessions/r1", headers=bearer(token))).status == 200


# ---------------------------------------------------------------------------- app JWTs


async def test_app_jwt_with_roost_scope_is_held_to_its_session(sclient: Any) -> None:
    """The app's own JWT may carry roost_sid and roost_scope: it opens that session only."""
    now = int(time.time())
    token = jwt.encode(
        {"sub": "alice", "exp": now + 60, "roost_sid": "s1", "roost_scope": "read"},
        SECRET,
        algorithm="HS256",
    )
    h = bearer(token)
    assert (await sclient.get("/api/sessions/s1", headers=h)).status == 200
    assert (await sclient.get("/api/sessions/s2", headers=h)).status == 404
    r = await sclient.post(
        "/api/sessions/s1/messages", json={"role": "user", "content": "x"}, headers=h
    )
    assert r.status == 403


async def test_app_jwt_with_bad_roost_scope_is_401(sclient: Any) -> None:
    """roost_scope other than read or write, or without roost_sid: 401."""
    now = int(time.time())
    for extra in ({"roost_sid": "s1", "roost_scope": "admin"}, {"roost_scope": "read"}):
        token = jwt.encode({"sub": "alice", "exp": now + 60, **extra}, SECRET, algorithm="HS256")
        r = await sclient.get("/api/sessions/s1", headers=bearer(token))
        assert r.status == 401, extra
