"""Who a token names: the tokens file, the app's own JWTs, and Roost-signed scoped tokens.

No aiohttp application state: :class:`Identity` is built from the settings in
``server.app`` and asked by ``server.auth`` to turn a presented token into a
:class:`~server.tokens.Principal` (or to raise :class:`InvalidToken` with a
message for the client). Crypto is PyJWT's (``pyjwt[crypto]``); nothing here
signs or checks a signature by hand.

Three kinds of token are accepted, tried in this order:

1. an opaque token of the tokens file (``--tokens-file``);
2. a **Roost-signed** JWT (``iss`` = :data:`ROOST_ISSUER`, HS256 with the
   server's signing key: ``--token-signing-key``, or a random key made when
   the first token is minted and kept in ``<data dir>/token-signing.key``, mode
   0600, so tokens survive a restart).
   ``POST /api/sessions/{sid}/tokens`` makes them; they always name one session;
3. the **app's JWT**: verified with ``--jwt-secret`` (HS256/384/512),
   ``--jwt-public-key`` (a PEM file: RSA → RS256, EC → ES256/384/512, Ed25519 →
   EdDSA) or the keys of ``--jwt-jwks-url``. ``exp`` is required; ``iss`` and
   ``aud`` are checked when ``--jwt-issuer`` / ``--jwt-audience`` are set;
   ``--jwt-leeway`` seconds of clock skew are allowed. The user is the
   ``--jwt-user-claim`` (default ``sub``); with ``--jwt-tenant-claim`` the
   tenant claim is required too and the owner is ``(tenant, user)``.

The algorithm is never taken from the token alone: a secret accepts only HMAC,
a public key or a JWKS key only its own algorithm, and ``alg: none`` never.
Optional claims ``roost_sid`` and ``roost_scope`` (``read`` | ``write``) scope
any JWT to one session.

JWKS (:class:`JwksCache`): fetched on first use and kept; a token whose ``kid``
is unknown refetches at most once per ``--jwt-jwks-min-interval`` seconds
(concurrent misses share one fetch), so a flood of made-up kids costs the JWKS
server one request per interval.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import aiohttp
import jwt
import orjson
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from server.settings import Settings
from server.tokens import MAX_JWT_CHARS, Principal, Tokens, TokensError

log = logging.getLogger("roost.identity")

ROOST_ISSUER = "urn:roost"
ROOST_AUDIENCE = "urn:roost"
SIGNING_KEY_FILE = "token-signing.key"
MAX_CLAIM_CHARS = 256
MAX_JWKS_BYTES = 1 << 20
JWKS_TIMEOUT = 10.0
HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")
# what a JWKS key may verify (never HMAC: a published key is no secret)
ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
Scope = Literal["read", "write"]


class IdentityError(TokensError):
    """A JWT or signing-key setting cannot be used (the server does not start)."""


class InvalidToken(Exception):
    """A presented token is refused; ``message`` says why (sent to the client)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def owner_key(user: str, tenant: str | None) -> str:
    """The owner id sessions are stored under: ``user``, or ``tenant:<t>/<user>``
    with the tenant percent-encoded (so no two (tenant, user) pairs share one)."""
    if tenant is None:
        return user
    return f"tenant:{quote(tenant, safe='')}/{user}"


def looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2 and len(token) <= MAX_JWT_CHARS


def _scope_of(claims: dict[str, Any]) -> tuple[str | None, Scope | None]:
    sid, scope = claims.get("roost_sid"), claims.get("roost_scope")
    if sid is None and scope is None:
        return None, None
    if not isinstance(sid, str) or not sid or len(sid) > MAX_CLAIM_CHARS:
        raise InvalidToken("roost_scope needs roost_sid, a session id string")
    if scope not in ("read", "write"):
        raise InvalidToken('roost_scope must be "read" or "write"')
    return sid, scope


def _claim_str(claims: dict[str, Any], name: str) -> str:
    value = claims.get(name)
    if not isinstance(value, str) or not value or len(value) > MAX_CLAIM_CHARS:
        raise InvalidToken(
            f"the token has no {name} claim (a non-empty string of at most {MAX_CLAIM_CHARS})"
        )
    return value


def _decode(token: str, key: Any, algorithms: list[str], **checks: Any) -> dict[str, Any]:
    """PyJWT's decode with its errors turned into :class:`InvalidToken`."""
    try:
        claims: dict[str, Any] = jwt.decode(token, key, algorithms=algorithms, **checks)
    except jwt.ExpiredSignatureError as exc:
        raise InvalidToken("the token has expired") from exc
    except jwt.InvalidAudienceError as exc:
        raise InvalidToken("the token's audience (aud) is not this server's") from exc
    except jwt.InvalidIssuerError as exc:
        raise InvalidToken("the token's issuer (iss) is not the one this server trusts") from exc
    except jwt.MissingRequiredClaimError as exc:
        raise InvalidToken(f"the token has no {exc.claim} claim") from exc
    except jwt.ImmatureSignatureError as exc:
        raise InvalidToken("the token is not valid yet (nbf or iat in the future)") from exc
    except jwt.InvalidSignatureError as exc:
        raise InvalidToken("the token's signature is not valid") from exc
    except jwt.InvalidAlgorithmError as exc:
        raise InvalidToken("the token's algorithm (alg) is not accepted") from exc
    except jwt.PyJWTError as exc:
        raise InvalidToken(f"the token is not a valid JWT ({exc})") from exc
    return claims


def _header(token: str) -> dict[str, Any]:
    try:
        header: dict[str, Any] = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise InvalidToken(f"the token is not a valid JWT ({exc})") from exc
    return header


# ---------------------------------------------------------------------------- JWKS


class JwksCache:
    """The keys of a JWKS URL by ``kid``, refetched on a miss at most once per interval.

    Concurrency-safe on one event loop: misses that arrive during a fetch wait
    for it. A failed fetch keeps the keys already known (and still counts as a
    fetch for the interval). ``fetches`` counts requests made (for tests and logs).
    """

    def __init__(self, url: str, min_interval: float) -> None:
        self.url = url
        self.min_interval = min_interval
        self.fetches = 0
        self._keys: dict[str | None, jwt.PyJWK] = {}
        self._fetched_at: float | None = None
        self._lock = asyncio.Lock()

    async def key_for(self, kid: str | None, http: aiohttp.ClientSession) -> jwt.PyJWK | None:
        """The key named ``kid`` (None: the only key, if the set has one), or None."""
        found = self._lookup(kid)
        if found is not None:
            return found
        async with self._lock:
            found = self._lookup(kid)
            due = self._fetched_at is None or (
                time.monotonic() - self._fetched_at >= self.min_interval
            )
            if found is None and due:
                await self._fetch(http)
                found = self._lookup(kid)
        return found

    def _lookup(self, kid: str | None) -> jwt.PyJWK | None:
        if kid is None and len(self._keys) == 1:
            return next(iter(self._keys.values()))
        return self._keys.get(kid)

    async def _fetch(self, http: aiohttp.ClientSession) -> None:
        self.fetches += 1
        self._fetched_at = time.monotonic()
        try:
            async with http.get(
                self.url, timeout=aiohttp.ClientTimeout(total=JWKS_TIMEOUT), allow_redirects=False
            ) as resp:
                if resp.status != 200:
                    raise ValueError(f"HTTP {resp.status}")
                raw = bytearray()
                async for chunk in resp.content.iter_chunked(1 << 16):
                    raw += chunk
                    if len(raw) > MAX_JWKS_BYTES:
                        raise ValueError(f"over {MAX_JWKS_BYTES} bytes")
            data = orjson.loads(raw)
            keys = data.get("keys") if isinstance(data, dict) else None
            if not isinstance(keys, list):
                raise ValueError('not a JSON object with a "keys" list')
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:  # JSONDecodeError too
            log.warning("cannot fetch the JWKS %s: %s (keeping %d keys)", self.url, exc, len(self))
            return
        found: dict[str | None, jwt.PyJWK] = {}
        for entry in keys:
            if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
                continue
            try:
                key = jwt.PyJWK(entry)
            except jwt.PyJWTError:
                continue  # a key type or algorithm this server does not verify with
            if key.algorithm_name in ASYMMETRIC_ALGORITHMS:
                found[entry.get("kid")] = key
        self._keys = found

    def __len__(self) -> int:
        return len(self._keys)


# ---------------------------------------------------------------------------- keys


def _public_key_algorithms(key: Any) -> list[str]:
    if isinstance(key, rsa.RSAPublicKey):
        return ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"]
    if isinstance(key, ec.EllipticCurvePublicKey):
        by_curve = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
        if key.curve.name in by_curve:
            return [by_curve[key.curve.name]]
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return ["EdDSA"]
    raise IdentityError("--jwt-public-key: an RSA, EC (P-256/384/521) or Ed25519 key is needed")


def load_public_key(path: str) -> tuple[Any, list[str]]:
    """The PEM public key at ``path`` and the algorithms it verifies.

    Raises :class:`IdentityError` when the file cannot be read or holds no
    supported public key.
    """
    try:
        pem = Path(path).read_bytes()
    except OSError as exc:
        raise IdentityError(f"cannot read --jwt-public-key {path}: {exc.strerror or exc}") from exc
    try:
        key = load_pem_public_key(pem)
    except ValueError as exc:
        raise IdentityError(f"--jwt-public-key {path} is not a PEM public key: {exc}") from exc
    return key, _public_key_algorithms(key)


def load_signing_key(data_dir: str, *, create: bool) -> bytes | None:
    """The key in ``<data_dir>/token-signing.key``; with ``create``, made (32 random
    bytes as hex, mode 0600, fsynced) if there is none, else None when there is none.

    Raises OSError (its message names the file) when the file cannot be read
    or made, or holds fewer than 32 characters.
    """
    path = Path(data_dir) / SIGNING_KEY_FILE
    if not create and not path.exists():
        return None
    try:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            key = path.read_bytes().strip()
        else:
            key = secrets.token_hex(32).encode()
            with os.fdopen(fd, "wb") as f:
                f.write(key + b"\n")
                f.flush()
                os.fsync(f.fileno())
    except OSError as exc:
        raise OSError(f"cannot read or make {path}: {exc.strerror or exc}") from exc
    if len(key) < 32:
        raise OSError(f"{path} holds a key shorter than 32 characters; delete it")
    return key


# ---------------------------------------------------------------------------- identity


@dataclass(frozen=True, slots=True)
class MintedToken:
    token: str
    expires_at: int


class Identity:
    """Turns presented tokens into principals. Immutable after construction, except
    for the JWKS cache. ``enabled``: any way to authenticate is configured."""

    def __init__(self, settings: Settings, tokens: Tokens | None) -> None:
        self.settings = settings
        self.tokens = tokens
        given = settings.token_signing_key
        # read (or made) from the data dir on first use, unless given
        self.signing_key: bytes | None = given.encode() if given is not None else None
        self.jwks: JwksCache | None = None
        self._key: Any = None
        self._algorithms: list[str] = []
        if settings.jwt_jwks_url is not None:
            self.jwks = JwksCache(settings.jwt_jwks_url, settings.jwt_jwks_min_interval)
        elif settings.jwt_public_key is not None:
            self._key, self._algorithms = load_public_key(settings.jwt_public_key)
        elif settings.jwt_secret is not None:
            self._key, self._algorithms = settings.jwt_secret.encode(), list(HMAC_ALGORITHMS)

    @property
    def jwt_enabled(self) -> bool:
        return self.jwks is not None or self._key is not None

    @property
    def enabled(self) -> bool:
        return self.tokens is not None or self.jwt_enabled

    @property
    def mode(self) -> str:
        """``none``, ``tokens``, ``jwt`` or ``tokens+jwt``."""
        parts = [n for n, on in (("tokens", self.tokens), ("jwt", self.jwt_enabled)) if on]
        return "+".join(parts) or "none"

    async def principal_for(self, token: str, http: aiohttp.ClientSession) -> Principal:
        """Who ``token`` names; raises :class:`InvalidToken` saying why it is refused."""
        if self.tokens is not None:
            user = self.tokens.user_for(token)
            if user is not None:
                return Principal(user)
        if not looks_like_jwt(token):
            raise InvalidToken("the token is not valid")
        try:
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"the token is not a valid JWT ({exc})") from exc
        if unverified.get("iss") == ROOST_ISSUER:
            return self._roost_principal(token)
        if not self.jwt_enabled:
            raise InvalidToken("the token is not valid")
        return await self._app_principal(token, http)

    def _key_to_sign(self, *, create: bool) -> bytes | None:
        """The signing key; the data dir's file is read (or, to sign, made) on first
        use, so a server that never mints a token keeps no key file."""
        if self.signing_key is None:
            self.signing_key = load_signing_key(self.settings.data_dir, create=create)
        return self.signing_key

    def _roost_principal(self, token: str) -> Principal:
        key = self._key_to_sign(create=False)
        if key is None:
            raise InvalidToken("the token's signature is not valid (this server signed none)")
        claims = _decode(
            token,
            key,
            ["HS256"],
            issuer=ROOST_ISSUER,
            audience=ROOST_AUDIENCE,
            leeway=self.settings.jwt_leeway,
            options={"require": ["exp", "sub", "roost_sid", "roost_scope"]},
        )
        sid, scope = _scope_of(claims)
        tenant = claims.get("roost_tenant")
        return Principal(
            _claim_str(claims, "sub"),
            tenant if isinstance(tenant, str) else None,
            sid,
            scope,
            float(claims["exp"]),
        )

    async def _app_principal(self, token: str, http: aiohttp.ClientSession) -> Principal:
        settings = self.settings
        header = _header(token)
        alg = header.get("alg")
        if self.jwks is not None:
            kid = header.get("kid")
            key = await self.jwks.key_for(kid if isinstance(kid, str) else None, http)
            if key is None:
                raise InvalidToken(
                    f"the token's signing key (kid {str(kid)[:64]!r}) is not in the JWKS"
                )
            verify_with: Any = key
            algorithms = [key.algorithm_name]
        else:
            verify_with, algorithms = self._key, self._algorithms
        if alg not in algorithms:
            raise InvalidToken(f"the token's algorithm (alg {str(alg)[:16]!r}) is not accepted")
        required = ["exp"] + (["iss"] if settings.jwt_issuer else [])
        if settings.jwt_audience:
            required.append("aud")
        claims = _decode(
            token,
            verify_with,
            algorithms,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            leeway=settings.jwt_leeway,
            options={"require": required, "verify_aud": bool(settings.jwt_audience)},
        )
        user = _claim_str(claims, settings.jwt_user_claim)
        tenant = None
        if settings.jwt_tenant_claim:
            tenant = _claim_str(claims, settings.jwt_tenant_claim)
        sid, scope = _scope_of(claims)
        return Principal(owner_key(user, tenant), tenant, sid, scope, float(claims["exp"]))

    def mint(self, principal: Principal, sid: str, scope: Scope, expires_in: int) -> MintedToken:
        """A Roost-signed token opening session ``sid`` of ``principal`` with ``scope``,
        valid for ``expires_in`` seconds. Not idempotent (each has its own ``jti``)."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": ROOST_ISSUER,
            "aud": ROOST_AUDIENCE,
            "sub": principal.user,
            "iat": now,
            "exp": now + expires_in,
            "jti": secrets.token_urlsafe(12),
            "roost_sid": sid,
            "roost_scope": scope,
        }
        if principal.tenant is not None:
            claims["roost_tenant"] = principal.tenant
        key = self._key_to_sign(create=True)
        assert key is not None  # made if missing
        token = jwt.encode(claims, key, algorithm="HS256")
        return MintedToken(token, now + expires_in)
