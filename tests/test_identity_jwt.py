"""Identity: the app's own JWTs (JWKS served by a real local HTTP server, HS256, PEM keys)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from pydantic import ValidationError

from server.cli import main as cli_main
from server.settings import Settings
from tests.conftest import deadline, free_port

ISS = "https://issuer.test/"
AUD = "roost-test"
SECRET = "a-test-secret-of-at-least-32-bytes!!"


class Jwks:
    """A JWKS endpoint on a real local socket; ``keys`` may change; ``hits`` counts GETs."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.hits = 0
        self.server: TestServer | None = None

    async def handle(self, request: web.Request) -> web.Response:
        self.hits += 1
        return web.json_response({"keys": self.keys})

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("/.well-known/jwks.json"))


def public_jwk(private: Any, kid: str, alg: str) -> dict[str, Any]:
    """The public JWK of ``private`` (made by PyJWT's own encoders)."""
    algo = jwt.get_algorithm_by_name(alg)
    jwk: dict[str, Any] = json.loads(algo.to_jwk(private.public_key()))
    return {**jwk, "kid": kid, "alg": alg, "use": "sig"}


def claims(**extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": "alice", "iss": ISS, "aud": AUD, "iat": now, "exp": now + 300, **extra}


def sign(private: Any, alg: str, kid: str | None = None, **extra: Any) -> str:
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode(claims(**extra), private, algorithm=alg, headers=headers)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def jwks() -> AsyncIterator[Jwks]:
    endpoint = Jwks()
    app = web.Application()
    app.router.add_get("/.well-known/jwks.json", endpoint.handle)
    endpoint.server = TestServer(app)
    await endpoint.server.start_server()
    yield endpoint
    await endpoint.server.close()


@pytest.fixture
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
async def jclient(make_client: Any, jwks: Jwks, rsa_key: Any, ec_key: Any) -> Any:
    """A server trusting the JWKS (an RS256 key ``r1`` and an ES256 key ``e1``)."""
    jwks.keys = [public_jwk(rsa_key, "r1", "RS256"), public_jwk(ec_key, "e1", "ES256")]
    return await make_client(
        jwt_jwks_url=jwks.url,
        jwt_issuer=ISS,
        jwt_audience=AUD,
        jwt_jwks_min_interval=3600,
        jwt_leeway=0,
    )


async def _refused(client: Any, token: str) -> str:
    """Assert ``token`` is refused with 401 invalid_token; return the message."""
    r = await client.get("/api/whoami", headers=bearer(token))
    assert r.status == 401, await r.text()
    assert 'error="invalid_token"' in r.headers["WWW-Authenticate"]
    body = await r.json()
    assert body["error"]["code"] == "unauthorized"
    message: str = body["error"]["message"]
    return message


# ---------------------------------------------------------------------------- accepted


async def test_jwt_rs256_from_jwks_is_accepted(jclient: Any, rsa_key: Any) -> None:
    """An RS256 JWT whose kid is in the JWKS names its sub as the user."""
    r = await jclient.get("/api/whoami", headers=bearer(sign(rsa_key, "RS256", "r1")))
    assert r.status == 200, await r.text()
    assert await r.json() == {"user": "alice"}


async def test_jwt_es256_from_jwks_is_accepted(jclient: Any, ec_key: Any) -> None:
    """An ES256 JWT whose kid is in the JWKS is accepted."""
    r = await jclient.get("/api/whoami", headers=bearer(sign(ec_key, "ES256", "e1", sub="bob")))
    assert r.status == 200, await r.text()
    assert await r.json() == {"user": "bob"}


async def test_jwt_hs256_with_secret_is_accepted(make_client: Any) -> None:
    """With --jwt-secret, an HS256 JWT is accepted (iss/aud unchecked when not configured)."""
    client = await make_client(jwt_secret=SECRET)
    r = await client.get("/api/whoami", headers=bearer(sign(SECRET, "HS256", sub="carol")))
    assert r.status == 200, await r.text()
    assert await r.json() == {"user": "carol"}


async def test_jwt_user_owns_what_it_creates(jclient: Any, rsa_key: Any, ec_key: Any) -> None:
    """A session made with alice's JWT is hers: bob's JWT gets 404, as for no session."""
    alice = bearer(sign(rsa_key, "RS256", "r1"))
    bob = bearer(sign(ec_key, "ES256", "e1", sub="bob"))
    r = await jclient.post("/api/sessions", json={"id": "j1"}, headers=alice)
    assert r.status == 201, await r.text()
    assert (await jclient.get("/api/sessions/j1", headers=alice)).status == 200
    r = await jclient.get("/api/sessions/j1", headers=bob)
    assert r.status == 404
    missing = await jclient.get("/api/sessions/nope", headers=bob)
    assert (await r.json())["error"]["code"] == (await missing.json())["error"]["code"]
    listed = await (await jclient.get("/api/sessions", headers=bob)).json()
    assert listed["items"] == []


async def test_jwt_user_claim_names_the_user(make_client: Any) -> None:
    """--jwt-user-claim picks another claim than sub."""
    client = await make_client(jwt_secret=SECRET, jwt_user_claim="email")
    token = sign(SECRET, "HS256", email="dora@example.test")
    r = await client.get("/api/whoami", headers=bearer(token))
    assert await r.json() == {"user": "dora@example.test"}
    message = await _refused(client, sign(SECRET, "HS256"))
    assert "email" in message


async def test_jwt_in_websocket_subprotocol_connects(jclient: Any, rsa_key: Any) -> None:
    """A JWT works as the bearer.<token> WebSocket subprotocol."""
    token = sign(rsa_key, "RS256", "r1")
    await jclient.post("/api/sessions", json={"id": "w1"}, headers=bearer(token))
    ws = await jclient.ws_connect("/api/sessions/w1/ws", protocols=("roost.v1", f"bearer.{token}"))
    assert ws.protocol == "roost.v1"
    await ws.close()


async def test_jwt_login_cookie_authenticates(jclient: Any, rsa_key: Any) -> None:
    """POST /api/login takes a JWT; the cookie then names its user."""
    r = await jclient.post("/api/login", json={"token": sign(rsa_key, "RS256", "r1")})
    assert r.status == 200, await r.text()
    r = await jclient.get("/api/whoami")
    assert await r.json() == {"user": "alice"}


async def test_jwt_login_lasts_no_longer_than_the_jwt(make_client: Any) -> None:
    """A login made with an already-expired-for-the-cookie JWT (exp within leeway) fails later."""
    client = await make_client(jwt_secret=SECRET, jwt_leeway=60)
    token = sign(SECRET, "HS256", exp=int(time.time()) - 1)  # expired, inside the leeway
    r = await client.post("/api/login", json={"token": token})
    assert r.status == 200, await r.text()
    r = await client.get("/api/whoami")
    assert r.status == 401


async def test_tokens_file_keeps_working_beside_jwt(
    make_client: Any, tmp_path: Path, rsa_key: Any
) -> None:
    """With a tokens file and a JWT key both configured, both kinds of token work."""
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({"tok-a": "alice"}))
    client = await make_client(tokens_file=str(tokens), jwt_secret=SECRET)
    r = await client.get("/api/whoami", headers=bearer("tok-a"))
    assert await r.json() == {"user": "alice"}
    r = await client.get("/api/whoami", headers=bearer(sign(SECRET, "HS256", sub="bob")))
    assert await r.json() == {"user": "bob"}
    assert (await client.get("/api/whoami", headers=bearer("tok-x"))).status == 401


async def test_jwt_from_pem_public_key_eddsa_is_accepted(make_client: Any, tmp_path: Path) -> None:
    """--jwt-public-key with an Ed25519 PEM accepts EdDSA JWTs."""
    private = ed25519.Ed25519PrivateKey.generate()
    pem = tmp_path / "key.pem"
    pem.write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    client = await make_client(jwt_public_key=str(pem), jwt_issuer=ISS)
    r = await client.get("/api/whoami", headers=bearer(sign(private, "EdDSA")))
    assert r.status == 200, await r.text()
    assert await r.json() == {"user": "alice"}


# ---------------------------------------------------------------------------- refused


async def test_jwt_expired_is_401(jclient: Any, rsa_key: Any) -> None:
    """An expired JWT: 401 saying it expired."""
    token = sign(rsa_key, "RS256", "r1", exp=int(time.time()) - 10)
    assert "expired" in await _refused(jclient, token)


async def test_jwt_without_exp_is_401(jclient: Any, rsa_key: Any) -> None:
    """exp is required."""
    body = {k: v for k, v in claims().items() if k != "exp"}
    token = jwt.encode(body, rsa_key, algorithm="RS256", headers={"kid": "r1"})
    assert "exp" in await _refused(jclient, token)


async def test_jwt_wrong_audience_is_401(jclient: Any, rsa_key: Any) -> None:
    """A JWT for another audience: 401 naming aud."""
    assert "aud" in await _refused(jclient, sign(rsa_key, "RS256", "r1", aud="another-app"))


async def test_jwt_wrong_issuer_is_401(jclient: Any, rsa_key: Any) -> None:
    """A JWT from another issuer: 401 naming iss."""
    assert "iss" in await _refused(jclient, sign(rsa_key, "RS256", "r1", iss="https://evil/"))


async def test_jwt_bad_signature_is_401(jclient: Any) -> None:
    """Signed by another key under a known kid: 401 about the signature."""
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert "signature" in await _refused(jclient, sign(other, "RS256", "r1"))


async def test_jwt_tampered_payload_is_401(jclient: Any, rsa_key: Any) -> None:
    """Changing the payload of a good token breaks its signature."""
    head, _, sig = sign(rsa_key, "RS256", "r1").split(".")
    forged = base64.urlsafe_b64encode(json.dumps(claims(sub="root")).encode()).rstrip(b"=")
    assert "signature" in await _refused(jclient, f"{head}.{forged.decode()}.{sig}")


async def test_jwt_alg_none_is_401(jclient: Any) -> None:
    """alg: none is never accepted."""
    token = jwt.encode(claims(), None, algorithm="none", headers={"kid": "r1"})
    assert "alg" in await _refused(jclient, token)


async def test_jwt_hs256_signed_with_public_key_is_401(make_client: Any, tmp_path: Path) -> None:
    """Algorithm confusion: an HS256 token keyed with the server's public PEM is refused."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem_bytes = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "rsa.pem").write_bytes(pem_bytes)
    client = await make_client(jwt_public_key=str(tmp_path / "rsa.pem"))
    header = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=")
    payload = base64.urlsafe_b64encode(json.dumps(claims()).encode()).rstrip(b"=")
    signing_input = header + b"." + payload
    mac = hmac.new(pem_bytes, signing_input, hashlib.sha256).digest()
    token = (signing_input + b"." + base64.urlsafe_b64encode(mac).rstrip(b"=")).decode()
    assert "alg" in await _refused(client, token)


async def test_jwt_garbage_is_401(jclient: Any) -> None:
    """Three dots of nonsense: 401, not 500."""
    assert "JWT" in await _refused(jclient, "a.b.c")


async def test_jwt_hs256_against_jwks_is_401(jclient: Any) -> None:
    """A JWKS server accepts no HMAC token, whatever its kid."""
    assert "alg" in await _refused(jclient, sign(SECRET, "HS256", "r1"))


# ---------------------------------------------------------------------------- JWKS refetch


async def test_jwks_unknown_kid_after_rotation_refetches(
    make_client: Any, jwks: Jwks, rsa_key: Any
) -> None:
    """After the issuer rotates its keys, a token with the new kid is accepted (one refetch)."""
    jwks.keys = [public_jwk(rsa_key, "old", "RS256")]
    client = await make_client(jwt_jwks_url=jwks.url, jwt_jwks_min_interval=0.05)
    assert (await client.get("/api/whoami", headers=bearer(sign(rsa_key, "RS256", "old")))).ok
    assert jwks.hits == 1
    new_key = ec.generate_private_key(ec.SECP256R1())
    jwks.keys = [public_jwk(new_key, "new", "ES256")]
    token = sign(new_key, "ES256", "new")
    async with deadline("the rotated key to be fetched"):
        while not (await client.get("/api/whoami", headers=bearer(token))).ok:
            await asyncio.sleep(0.05)
    assert jwks.hits >= 2


async def test_jwks_flood_of_unknown_kids_does_not_hammer(jclient: Any, jwks: Jwks) -> None:
    """Many tokens with made-up kids: each 401, and the JWKS is fetched at most once more."""
    liar = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    first = await _refused(jclient, sign(liar, "RS256", "made-up-0"))
    assert "kid" in first
    fetched = jwks.hits
    results = await asyncio.gather(
        *(
            jclient.get("/api/whoami", headers=bearer(sign(liar, "RS256", f"k{i}")))
            for i in range(50)
        )
    )
    assert [r.status for r in results] == [401] * 50
    assert jwks.hits == fetched == 1


async def test_jwks_concurrent_first_requests_share_one_fetch(
    jclient: Any, jwks: Jwks, rsa_key: Any
) -> None:
    """Requests racing before any key is known wait for one fetch."""
    token = sign(rsa_key, "RS256", "r1")
    results = await asyncio.gather(
        *(jclient.get("/api/whoami", headers=bearer(token)) for _ in range(20))
    )
    assert [r.status for r in results] == [200] * 20
    assert jwks.hits == 1


async def test_jwks_unreachable_is_401_not_500(make_client: Any, rsa_key: Any) -> None:
    """A JWKS URL nobody answers: tokens are refused with 401 (the fetch is logged)."""
    client = await make_client(jwt_jwks_url=f"http://127.0.0.1:{free_port()}/jwks.json")
    assert "kid" in await _refused(client, sign(rsa_key, "RS256", "r1"))


# ---------------------------------------------------------------------------- tenants


async def test_tenant_claim_separates_same_user_of_two_tenants(make_client: Any) -> None:
    """alice of tenant acme and alice of tenant globex are two owners: 404 across."""
    client = await make_client(jwt_secret=SECRET, jwt_tenant_claim="org")
    acme = bearer(sign(SECRET, "HS256", org="acme"))
    globex = bearer(sign(SECRET, "HS256", org="globex"))
    assert (await client.post("/api/sessions", json={"id": "t1"}, headers=acme)).status == 201
    assert (await client.get("/api/sessions/t1", headers=acme)).status == 200
    assert (await client.get("/api/sessions/t1", headers=globex)).status == 404


async def test_tenant_claim_missing_is_401(make_client: Any) -> None:
    """With --jwt-tenant-claim the tenant claim is required."""
    client = await make_client(jwt_secret=SECRET, jwt_tenant_claim="org")
    assert "org" in await _refused(client, sign(SECRET, "HS256"))


# ---------------------------------------------------------------------------- settings


def test_settings_refuse_two_jwt_keys(tmp_path: Path) -> None:
    """One way to verify JWTs: a secret and a JWKS URL together are a bad setting."""
    with pytest.raises(ValidationError, match="one way to verify"):
        Settings(data_dir=str(tmp_path), jwt_secret=SECRET, jwt_jwks_url="https://x.test/jwks")


def test_cli_bad_public_key_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An unreadable --jwt-public-key stops the start with exit 2 and one line."""
    code = cli_main(
        ["serve", "--data-dir", str(tmp_path / "d"), "--jwt-public-key", str(tmp_path / "none")]
    )
    assert code == 2
    assert "--jwt-public-key" in capsys.readouterr().err


async def test_tenant_rate_limit_counts_all_its_users(make_client: Any) -> None:
    """The users of one tenant share the tenant's bucket; another tenant has its own."""
    client = await make_client(
        jwt_secret=SECRET, jwt_tenant_claim="org", rate_tenant_per_sec=0.001, rate_tenant_burst=2
    )

    async def create(sub: str, org: str, sid: str) -> int:
        h = bearer(sign(SECRET, "HS256", sub=sub, org=org))
        r = await client.post("/api/sessions", json={"id": sid}, headers=h)
        return int(r.status)

    assert [await create("alice", "acme", "a1"), await create("alice", "acme", "a2")] == [201, 201]
    assert await create("bob", "acme", "b1") == 429
    assert await create("bob", "globex", "g1") == 201
