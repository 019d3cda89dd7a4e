"""Access: tokens, ownership on every route, origins and CORS, loopback hosts, rate limits."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import WSServerHandshakeError

from server.app import make_app
from server.cli import main as cli_main
from server.ratelimit import RateLimiter, retry_after
from server.settings import Settings
from server.tokens import TokensError, load_tokens
from tests.conftest import TIMEOUT, deadline

TOKENS = {"tok-a": "alice", "tok-b": "bob"}
A = {"Authorization": "Bearer tok-a"}
B = {"Authorization": "Bearer tok-b"}


def _tokens_file(tmp_path: Path, data: Any = None) -> str:
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps(TOKENS if data is None else data))
    return str(path)


@pytest.fixture
async def tclient(make_client: Any, tmp_path: Path) -> Any:
    """A server with two users, alice (tok-a) and bob (tok-b)."""
    return await make_client(tokens_file=_tokens_file(tmp_path))


async def _session_of_a(tclient: Any, sid: str = "a1") -> dict[str, Any]:
    r = await tclient.post("/api/sessions", json={"id": sid, "title": "A's"}, headers=A)
    assert r.status == 201, await r.text()
    r = await tclient.post(
        f"/api/sessions/{sid}/messages", json={"role": "user", "content": "secret"}, headers=A
    )
    assert r.status == 201, await r.text()
    msg: dict[str, Any] = await r.json()
    return msg


# ---------------------------------------------------------------------------- tokens


async def test_request_without_token_is_401(tclient: Any) -> None:
    """No token: 401 JSON with a Bearer challenge."""
    r = await tclient.get("/api/sessions")
    assert r.status == 401
    assert (await r.json())["error"]["code"] == "unauthorized"
    assert r.headers["WWW-Authenticate"].startswith("Bearer")


async def test_request_with_unknown_token_is_401(tclient: Any) -> None:
    """A token not in the file: 401 with error=invalid_token."""
    r = await tclient.get("/api/sessions", headers={"Authorization": "Bearer nope"})
    assert r.status == 401
    assert 'error="invalid_token"' in r.headers["WWW-Authenticate"]


async def test_unknown_route_without_token_is_401(tclient: Any) -> None:
    """Routes are not enumerable without a token: unknown paths answer 401 too."""
    r = await tclient.get("/api/no-such-thing")
    assert r.status == 401


async def test_valid_token_is_served_as_its_user(tclient: Any) -> None:
    """A valid token passes and names its user."""
    r = await tclient.get("/api/whoami", headers=A)
    assert r.status == 200
    assert await r.json() == {"user": "alice"}


async def test_healthz_is_public_with_tokens(tclient: Any) -> None:
    """Liveness needs no token."""
    r = await tclient.get("/healthz")
    assert r.status == 200


async def test_login_sets_httponly_strict_cookie_that_authenticates(tclient: Any) -> None:
    """POST /api/login keeps the token in an HttpOnly SameSite=Strict cookie."""
    r = await tclient.post("/api/login", json={"token": "tok-b"})
    assert r.status == 200
    assert await r.json() == {"user": "bob"}
    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    r = await tclient.get("/api/whoami")
    assert await r.json() == {"user": "bob"}


async def test_login_with_bad_token_is_401_and_sets_no_cookie(tclient: Any) -> None:
    """A wrong token at login: 401, no cookie."""
    r = await tclient.post("/api/login", json={"token": "guess"})
    assert r.status == 401
    assert "Set-Cookie" not in r.headers


async def test_logout_forgets_the_cookie(tclient: Any) -> None:
    """After logout the browser is anonymous again."""
    await tclient.post("/api/login", json={"token": "tok-a"})
    r = await tclient.post("/api/logout")
    assert r.status == 204
    r = await tclient.get("/api/whoami")
    assert r.status == 401


async def test_websocket_token_in_subprotocol(tclient: Any) -> None:
    """Browsers pass the token as a subprotocol; the server echoes only roost.v1."""
    await _session_of_a(tclient)
    ws = await tclient.ws_connect("/api/sessions/a1/ws", protocols=("roost.v1", "bearer.tok-a"))
    try:
        assert ws.protocol == "roost.v1"
        hello = await ws.receive_json(timeout=TIMEOUT)
        assert hello["type"] == "hello"
    finally:
        await ws.close()


async def test_websocket_login_cookie_from_own_page_connects(tclient: Any) -> None:
    """A browser tab's upgrade: only roost.v1, the login cookie and its own Origin."""
    await _session_of_a(tclient)
    await tclient.post("/api/login", json={"token": "tok-a"})
    origin = str(tclient.make_url("")).rstrip("/")
    ws = await tclient.ws_connect(
        "/api/sessions/a1/ws", protocols=("roost.v1",), headers={"Origin": origin}
    )
    try:
        assert ws.protocol == "roost.v1"
        hello = await ws.receive_json(timeout=TIMEOUT)
        assert hello["type"] == "hello"
    finally:
        await ws.close()


async def test_websocket_login_cookie_from_foreign_page_is_403(tclient: Any) -> None:
    """A cookie the browser attaches for a foreign page's socket does not open it."""
    await _session_of_a(tclient)
    await tclient.post("/api/login", json={"token": "tok-a"})
    with pytest.raises(WSServerHandshakeError) as info:
        await tclient.ws_connect(
            "/api/sessions/a1/ws",
            protocols=("roost.v1",),
            headers={"Origin": "https://evil.example"},
        )
    assert info.value.status == 403


async def test_websocket_without_token_is_401(tclient: Any) -> None:
    """No token on the upgrade: the handshake fails with 401."""
    await _session_of_a(tclient)
    with pytest.raises(WSServerHandshakeError) as info:
        await tclient.ws_connect("/api/sessions/a1/ws", protocols=("roost.v1",))
    assert info.value.status == 401


def test_load_tokens_without_file_is_open() -> None:
    """No tokens file: the server runs without tokens."""
    assert load_tokens(None) is None


@pytest.mark.parametrize(
    "content",
    ["not json", "[]", "{}", '{"t": 5}', '{"t": ""}', '{"": "u"}', '{"a b": "u"}'],
)
def test_load_tokens_refuses_bad_files(tmp_path: Path, content: str) -> None:
    """A tokens file that is not a non-empty object of strings is refused clearly."""
    path = tmp_path / "t.json"
    path.write_text(content)
    with pytest.raises(TokensError, match="tokens file"):
        load_tokens(str(path))


def test_load_tokens_missing_file_is_refused(tmp_path: Path) -> None:
    """A tokens file that does not exist is an error, not an open server."""
    with pytest.raises(TokensError, match="cannot read"):
        load_tokens(str(tmp_path / "missing.json"))


def test_cli_refuses_bad_tokens_file(tmp_path: Path, capsys: Any) -> None:
    """roost serve exits 2 with a message when the tokens file is bad."""
    bad = tmp_path / "t.json"
    bad.write_text("[]")
    code = cli_main(["serve", "--tokens-file", str(bad), "--data-dir", str(tmp_path / "d")])
    assert code == 2
    assert "tokens file" in capsys.readouterr().err


def test_cli_refuses_public_bind_without_tokens(tmp_path: Path, capsys: Any) -> None:
    """A non-loopback bind without tokens needs --insecure."""
    code = cli_main(["serve", "--host", "0.0.0.0", "--data-dir", str(tmp_path / "d")])
    assert code == 2
    assert "--insecure" in capsys.readouterr().err


# ---------------------------------------------------------------------------- ownership


def _route_table() -> list[tuple[str, str]]:
    app = make_app(Settings(data_dir="/nonexistent-roost-data"))
    return sorted(
        {
            (r.method, r.resource.canonical)
            for r in app.router.routes()
            if r.resource is not None and "{sid}" in r.resource.canonical
        }
    )


SID_ROUTES = _route_table()

# Bodies that are valid for the known routes, so a refusal can only come from ownership.
BODIES: dict[tuple[str, str], Any] = {
    ("PATCH", "/api/sessions/{sid}"): {"title": "mine now"},
    ("POST", "/api/sessions/{sid}/messages"): {"role": "user", "content": "hi"},
    ("PATCH", "/api/sessions/{sid}/messages/{mid}"): {"content": "changed"},
    ("POST", "/api/sessions/{sid}/chat"): {"content": "hi"},
    ("POST", "/api/sessions/{sid}/messages/{mid}/regenerate"): {},
}
KNOWN = {
    "/api/sessions/{sid}",
    "/api/sessions/{sid}/messages",
    "/api/sessions/{sid}/messages/{mid}",
    "/api/sessions/{sid}/chat",
    "/api/sessions/{sid}/messages/{mid}/regenerate",
    "/api/sessions/{sid}/messages/{mid}/cancel",
    "/api/sessions/{sid}/messages/{mid}/stream",
    "/api/sessions/{sid}/ws",
    "/api/sessions/{sid}/events",
}


def _fill(canonical: str, sid: str, mid: str) -> str:
    def sub(m: re.Match[str]) -> str:
        name = m.group(1).split(":")[0]
        return {"sid": sid, "mid": mid}.get(name, "x1")

    return re.sub(r"\{([^}]+)\}", sub, canonical)


async def _call(client: Any, method: str, path: str, body: Any) -> tuple[int, Any]:
    kw: dict[str, Any] = {"headers": B}
    if method in ("POST", "PUT", "PATCH"):
        kw["json"] = body
    r = await client.request(method, path, **kw)
    if method == "HEAD":
        return r.status, None
    try:
        return r.status, (await r.json())["error"]
    except (aiohttp.ContentTypeError, KeyError, TypeError):
        return r.status, await r.text()


def test_route_table_covers_known_session_routes() -> None:
    """The ownership sweep below sees every session route (new ones join automatically)."""
    assert {path for _, path in SID_ROUTES} >= KNOWN


@pytest.mark.parametrize(("method", "canonical"), SID_ROUTES)
async def test_other_users_session_is_404_like_a_missing_one(
    tclient: Any, method: str, canonical: str
) -> None:
    """Bob asking for Alice's session gets what he gets for a session that does not exist."""
    msg = await _session_of_a(tclient)
    before = await (await tclient.get("/api/sessions/a1/messages?view=all", headers=A)).json()
    body = BODIES.get((method, canonical), {})
    theirs = await _call(tclient, method, _fill(canonical, "a1", msg["id"]), body)
    missing = await _call(tclient, method, _fill(canonical, "zz", msg["id"]), body)
    if canonical in KNOWN:
        assert theirs[0] == 404, theirs
    assert theirs[0] == missing[0]
    if isinstance(theirs[1], dict):
        assert theirs[1]["code"] == missing[1]["code"]
        assert theirs[1]["message"].replace("a1", "zz") == missing[1]["message"]
    after = await (await tclient.get("/api/sessions/a1/messages?view=all", headers=A)).json()
    assert after == before
    r = await tclient.get("/api/sessions/a1", headers=A)
    assert (await r.json())["session"]["title"] == "A's"


async def test_other_users_session_websocket_is_404(tclient: Any) -> None:
    """Bob cannot open a socket on Alice's session: 404 at the handshake."""
    await _session_of_a(tclient)
    with pytest.raises(WSServerHandshakeError) as info:
        await tclient.ws_connect("/api/sessions/a1/ws", protocols=("roost.v1", "bearer.tok-b"))
    assert info.value.status == 404


async def test_session_list_shows_only_own_sessions(tclient: Any) -> None:
    """Each user lists only the sessions they created."""
    await _session_of_a(tclient)
    r = await tclient.post("/api/sessions", json={"id": "b1"}, headers=B)
    assert r.status == 201
    mine = await (await tclient.get("/api/sessions", headers=B)).json()
    assert [s["id"] for s in mine["items"]] == ["b1"]
    theirs = await (await tclient.get("/api/sessions", headers=A)).json()
    assert [s["id"] for s in theirs["items"]] == ["a1"]


async def test_other_users_delete_keeps_the_session(tclient: Any, tmp_path: Path) -> None:
    """Bob's DELETE on Alice's session is 404 and her file stays."""
    await _session_of_a(tclient)
    r = await tclient.delete("/api/sessions/a1", headers=B)
    assert r.status == 404
    assert list((tmp_path / "data" / "sessions").rglob("a1/session.db"))
    r = await tclient.get("/api/sessions/a1", headers=A)
    assert r.status == 200


# ---------------------------------------------------------------------------- origins and CORS


async def test_preflight_from_listed_origin_is_allowed(make_client: Any) -> None:
    """A preflight from an allowed origin answers 204 with the CORS headers."""
    client = await make_client(allowed_origins="https://app.example")
    r = await client.options(
        "/api/sessions",
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, authorization",
        },
    )
    assert r.status == 204
    assert r.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "POST" in r.headers["Access-Control-Allow-Methods"]
    assert "Authorization" in r.headers["Access-Control-Allow-Headers"]
    assert "Origin" in r.headers["Vary"]


async def test_preflight_from_unlisted_origin_is_403(make_client: Any) -> None:
    """A preflight from another origin is refused and gets no CORS grant."""
    client = await make_client(allowed_origins="https://app.example")
    r = await client.options(
        "/api/sessions",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert r.status == 403
    assert "Access-Control-Allow-Origin" not in r.headers


async def test_response_to_listed_origin_carries_cors_headers(make_client: Any) -> None:
    """Answers to an allowed origin allow it, vary on Origin and expose the id headers."""
    client = await make_client(allowed_origins="https://app.example")
    r = await client.post(
        "/api/sessions", json={"id": "c1"}, headers={"Origin": "https://app.example"}
    )
    assert r.status == 201
    assert r.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "Origin" in r.headers["Vary"]
    assert "X-Assistant-Message-Id" in r.headers["Access-Control-Expose-Headers"]


async def test_sse_to_listed_origin_carries_cors_headers(make_client: Any) -> None:
    """Streamed answers (headers sent by the handler) get the CORS grant too."""
    client = await make_client(allowed_origins="https://app.example", echo_words_per_second=0)
    await client.post("/api/sessions", json={"id": "c1"})
    r = await client.post(
        "/api/sessions/c1/chat", json={"content": "hi"}, headers={"Origin": "https://app.example"}
    )
    assert r.status == 200
    assert r.headers["Content-Type"].startswith("text/event-stream")
    assert r.headers["Access-Control-Allow-Origin"] == "https://app.example"
    await r.read()


async def test_change_from_foreign_origin_is_403_and_changes_nothing(client: Any) -> None:
    """A hostile page cannot drive the server through the user's browser."""
    r = await client.post(
        "/api/sessions", json={"id": "x1"}, headers={"Origin": "https://evil.example"}
    )
    assert r.status == 403
    assert (await r.json())["error"]["code"] == "forbidden_origin"
    r = await client.get("/api/sessions/x1")
    assert r.status == 404


async def test_same_origin_change_is_allowed(client: Any) -> None:
    """The server's own pages may change things."""
    origin = f"http://{client.host}:{client.port}"
    r = await client.post("/api/sessions", json={"id": "x1"}, headers={"Origin": origin})
    assert r.status == 201


async def test_websocket_from_foreign_origin_is_403(client: Any) -> None:
    """WebSocket origins are checked against the allow-list."""
    await client.post("/api/sessions", json={"id": "w1"})
    with pytest.raises(WSServerHandshakeError) as info:
        await client.ws_connect("/api/sessions/w1/ws", origin="https://evil.example")
    assert info.value.status == 403


async def test_open_server_refuses_non_loopback_host(client: Any) -> None:
    """Without tokens, a request addressed to another name (DNS rebinding) is 403."""
    r = await client.get("/api/sessions", headers={"Host": "evil.example"})
    assert r.status == 403
    assert (await r.json())["error"]["code"] == "forbidden_host"


async def test_open_server_accepts_localhost_host(client: Any) -> None:
    """localhost is a loopback name."""
    r = await client.get("/api/sessions", headers={"Host": f"localhost:{client.port}"})
    assert r.status == 200


async def test_token_server_accepts_any_host(tclient: Any) -> None:
    """With tokens the Host header is not restricted."""
    r = await tclient.get("/api/sessions", headers={"Host": "roost.example", **A})
    assert r.status == 200


# ---------------------------------------------------------------------------- rate limits


async def test_user_over_rate_gets_429_with_retry_after(make_client: Any, tmp_path: Path) -> None:
    """A user past the burst gets 429 rate_limited with an integer Retry-After >= 1."""
    client = await make_client(
        tokens_file=_tokens_file(tmp_path), rate_user_per_sec=0.01, rate_user_burst=3
    )
    statuses = []
    for i in range(4):
        r = await client.post("/api/sessions", json={"id": f"r{i}"}, headers=A)
        statuses.append(r.status)
    assert statuses == [201, 201, 201, 429]
    assert int(r.headers["Retry-After"]) >= 1
    assert (await r.json())["error"]["code"] == "rate_limited"
    r = await client.get("/api/sessions/r3", headers=A)
    assert r.status == 404


async def test_rate_limit_is_per_user(make_client: Any, tmp_path: Path) -> None:
    """One user's empty bucket does not limit another user."""
    client = await make_client(
        tokens_file=_tokens_file(tmp_path), rate_user_per_sec=0.01, rate_user_burst=1
    )
    assert (await client.post("/api/sessions", json={"id": "a"}, headers=A)).status == 201
    assert (await client.post("/api/sessions", json={"id": "b"}, headers=A)).status == 429
    assert (await client.post("/api/sessions", json={"id": "c"}, headers=B)).status == 201


async def test_session_rate_limit_spares_other_sessions(make_client: Any, tmp_path: Path) -> None:
    """A busy session is limited on its own; the user's other sessions still take changes."""
    client = await make_client(
        tokens_file=_tokens_file(tmp_path), rate_session_per_sec=0.01, rate_session_burst=2
    )
    for sid in ("s1", "s2"):
        assert (await client.post("/api/sessions", json={"id": sid}, headers=A)).status == 201
    body = {"role": "user", "content": "x"}
    codes = [
        (await client.post("/api/sessions/s1/messages", json=body, headers=A)).status
        for _ in range(3)
    ]
    assert codes == [201, 201, 429]
    r = await client.post("/api/sessions/s2/messages", json=body, headers=A)
    assert r.status == 201


async def test_reads_are_not_rate_limited(make_client: Any, tmp_path: Path) -> None:
    """Limits count changes, not reads."""
    client = await make_client(
        tokens_file=_tokens_file(tmp_path), rate_user_per_sec=0.01, rate_user_burst=1
    )
    for _ in range(5):
        assert (await client.get("/api/sessions", headers=A)).status == 200


async def test_loopback_server_without_tokens_has_no_limits(make_client: Any) -> None:
    """A local, token-less server has one user and no limits."""
    client = await make_client(rate_user_per_sec=0.01, rate_user_burst=1)
    for i in range(3):
        assert (await client.post("/api/sessions", json={"id": f"n{i}"})).status == 201


async def test_websocket_chat_frames_are_rate_limited(make_client: Any, tmp_path: Path) -> None:
    """Chat over a socket takes from the same buckets: an error frame with status 429."""
    client = await make_client(
        tokens_file=_tokens_file(tmp_path),
        rate_session_per_sec=0.01,
        rate_session_burst=2,
        echo_words_per_second=0,
    )
    await client.post("/api/sessions", json={"id": "w"}, headers=A)
    ws = await client.ws_connect("/api/sessions/w/ws", headers=A)
    try:
        for ref in (1, 2, 3):
            await ws.send_json({"type": "chat", "content": "hi", "ref": ref})
        errors = []
        async with deadline("an error frame"):
            while not errors:
                frame = await ws.receive_json(timeout=TIMEOUT)
                if frame["type"] == "error":
                    errors.append(frame)
        assert errors[0]["status"] == 429
        assert errors[0]["ref"] == 3
    finally:
        await ws.close()


def test_bucket_refills_at_its_rate() -> None:
    """A bucket allows its burst, then one more per 1/rate seconds."""
    now = [0.0]
    lim = RateLimiter(2.0, 2, clock=lambda: now[0])
    assert [lim.take("k") for _ in range(2)] == [0.0, 0.0]
    assert lim.take("k") == pytest.approx(0.5)
    now[0] += 0.5
    assert lim.take("k") == 0.0


def test_bucket_table_is_bounded() -> None:
    """Buckets of many keys never exceed the table's bound."""
    lim = RateLimiter(1.0, 1, max_buckets=10, clock=lambda: 0.0)
    for i in range(1000):
        lim.take(i)
    assert len(lim) == 10


def test_zero_rate_is_off() -> None:
    """rate 0 never refuses."""
    lim = RateLimiter(0.0, 1)
    assert all(lim.take("k") == 0.0 for _ in range(100))


@pytest.mark.parametrize(("wait", "header"), [(0.001, "1"), (1.0, "1"), (1.2, "2"), (59.9, "60")])
def test_retry_after_is_whole_seconds_at_least_one(wait: float, header: str) -> None:
    """Retry-After rounds up to whole seconds, never 0."""
    assert retry_after(wait) == header


async def test_metrics_without_token_is_401(tclient: Any) -> None:
    """/metrics sits outside /api but still needs a token when tokens are configured."""
    r = await tclient.get("/metrics")
    assert r.status == 401
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    r = await tclient.get("/metrics", headers=A)
    assert r.status == 200
    assert "roost_request_seconds" in await r.text()


async def test_public_routes_are_the_ones_described_public(tclient: Any) -> None:
    """Routes marked public=True answer without a token and say so in the document."""
    doc = await (await tclient.get("/openapi.json")).json()
    public = {
        (path, method)
        for path, ops in doc["paths"].items()
        for method, op in ops.items()
        if op.get("security") == []
    }
    assert public == {
        ("/healthz", "get"),
        ("/openapi.json", "get"),
        ("/", "get"),
        ("/static/{name}", "get"),
        ("/static/vendor/{name}", "get"),
        ("/api/login", "post"),
        ("/api/logout", "post"),
        ("/s/{share_id}", "get"),
        ("/api/shares/{share_id}", "get"),
    }
    for path, method in public:
        if "{" not in path:
            body = {"token": "tok-a"} if path == "/api/login" else None
            r = await tclient.request(method.upper(), path, json=body)
            assert r.status in (200, 204), (path, method, r.status)
