"""Who is asking: bearer tokens, the login cookie, the WebSocket subprotocol.

With a tokens file (``--tokens-file``: a JSON object ``{"<token>": "<user id>"}``)
every request must name a token, in this order of preference:

1. ``Authorization: Bearer <token>`` (any client);
2. for a WebSocket upgrade, a ``bearer.<token>`` entry in ``Sec-WebSocket-Protocol``
   next to ``roost.v1`` (browsers cannot set headers on a WebSocket; the server
   answers with ``roost.v1`` only, never echoing the token);
3. the ``roost_token`` cookie set by ``POST /api/login`` (HttpOnly, SameSite=Strict).
   It never holds the token: it holds a random login id that names a server-side
   login (:class:`Logins`) which expires after ``--login-cookie-max-age`` seconds
   and which ``POST /api/logout`` revokes. Logins live in memory: a restart signs
   browsers out. A login cookie authenticates only same-origin changes: a page of
   a listed origin (``--allowed-origins``) that carries it cannot change anything
   (403 ``forbidden_origin``); such clients send a bearer token.

A request without a valid token answers 401 ``unauthorized`` with
``WWW-Authenticate: Bearer``. The authenticated user id is put in
``request[USER]`` (read it with :func:`server.http.user_of`); without a tokens
file it stays ``''`` and every session belongs to that one local user.

Tokens are held and looked up only as SHA-256 digests, so the time a lookup
takes says nothing about how much of a guessed token was right (what an attacker
could time is a match on the digest of their guess, which tells them nothing).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections import OrderedDict
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

import orjson
from aiohttp import web
from pydantic import StringConstraints

from server.errors import Handler, error_response
from server.http import SETTINGS, USER, json_response, parse_body, user_of
from server.models import Strict
from server.openapi import Reply, describe
from server.schemas import User

COOKIE = "roost_token"
WS_PROTOCOL_PREFIX = "bearer."
# Paths anyone may fetch: liveness, the API description, the web page and its assets,
# and the login/logout endpoints themselves.
PUBLIC_PATHS = frozenset({"/healthz", "/openapi.json", "/", "/index.html", "/favicon.ico"})
PUBLIC_PREFIXES = ("/static/",)
LOGIN_PATHS = frozenset({"/api/login", "/api/logout"})
MAX_TOKEN_CHARS = 512


class TokensError(ValueError):
    """The tokens file is missing, unreadable or not a JSON object of strings."""


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class Tokens:
    """Token → user id, held as digests. Immutable after construction."""

    def __init__(self, mapping: dict[str, str]) -> None:
        self._users = {_digest(t): u for t, u in mapping.items()}

    def __len__(self) -> int:
        return len(self._users)

    def user_for(self, token: str | None) -> str | None:
        """The user id of ``token``, or None if it is not a known token."""
        if not token or len(token) > MAX_TOKEN_CHARS:
            return None
        return self._users.get(_digest(token))


class Logins:
    """Server-side logins of the cookie: random id → (user id, expiry).

    Ids come from :func:`secrets.token_urlsafe` (256 bits) and are held as
    SHA-256 digests, like tokens. At most ``max_logins`` are kept; making one
    more forgets the oldest. Not thread-safe (the event loop owns it).
    """

    def __init__(self, max_age: float, max_logins: int = 10_000) -> None:
        self.max_age = max_age
        self.max_logins = max_logins
        self._logins: OrderedDict[bytes, tuple[str, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._logins)

    def open(self, user: str) -> str:
        """Make a login for ``user``; return its id (the cookie value)."""
        login_id = secrets.token_urlsafe(32)
        self._logins[_digest(login_id)] = (user, time.monotonic() + self.max_age)
        while len(self._logins) > self.max_logins:
            self._logins.popitem(last=False)
        return login_id

    def user_for(self, login_id: str | None) -> str | None:
        """The user of a live login, or None (unknown, revoked or expired)."""
        if not login_id or len(login_id) > MAX_TOKEN_CHARS:
            return None
        key = _digest(login_id)
        found = self._logins.get(key)
        if found is None:
            return None
        user, expires = found
        if time.monotonic() >= expires:
            del self._logins[key]
            return None
        return user

    def revoke(self, login_id: str | None) -> None:
        """Forget a login; idempotent (an unknown id is fine)."""
        if login_id and len(login_id) <= MAX_TOKEN_CHARS:
            self._logins.pop(_digest(login_id), None)


LOGINS = web.AppKey("logins", Logins)
TOKENS: web.AppKey[Tokens | None] = web.AppKey("tokens", Tokens | None)  # type: ignore[arg-type]


def load_tokens(path: str | None) -> Tokens | None:
    """Read a tokens file; None when ``path`` is None (the server runs open).

    Raises :class:`TokensError` with a message for the operator when the file
    cannot be read, is not a JSON object mapping non-empty token strings to
    non-empty user id strings, or holds no token at all.
    """
    if path is None:
        return None
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise TokensError(f"cannot read tokens file {path}: {exc.strerror or exc}") from exc
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise TokensError(f"tokens file {path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or not data:
        raise TokensError(
            f'tokens file {path} must be a non-empty JSON object like {{"tok-a": "alice"}}'
        )
    for token, user in data.items():
        if not token or not isinstance(user, str) or not user:
            raise TokensError(
                f"tokens file {path}: every token must map to a non-empty user id string"
            )
        if len(token) > MAX_TOKEN_CHARS or any(c.isspace() or c in ",;" for c in token):
            raise TokensError(
                f"tokens file {path}: tokens must be at most {MAX_TOKEN_CHARS} characters "
                "without spaces, commas or semicolons"
            )
    return Tokens(data)


def is_public_path(path: str) -> bool:
    """Whether ``path`` may be fetched without a token."""
    return path in PUBLIC_PATHS or path in LOGIN_PATHS or path.startswith(PUBLIC_PREFIXES)


def is_public(request: web.Request) -> bool:
    """Whether ``request`` may be served without a token (public paths, CORS preflights)."""
    return is_public_path(request.path) or (
        request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers
    )


def presented_token(request: web.Request) -> str | None:
    """The token the request carries (header or WebSocket subprotocol), else None."""
    auth = request.headers.get("Authorization")
    if auth is not None:
        scheme, _, value = auth.strip().partition(" ")
        return value.strip() if scheme.lower() == "bearer" else None
    protocols = request.headers.get("Sec-WebSocket-Protocol")
    if protocols is not None:
        for proto in protocols.split(","):
            proto = proto.strip()
            if proto.startswith(WS_PROTOCOL_PREFIX):
                return proto[len(WS_PROTOCOL_PREFIX) :]
    return None


def _same_origin(request: web.Request) -> bool:
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    try:
        return urlsplit(origin).netloc.lower() == request.host.lower()
    except ValueError:
        return False


def _is_change(request: web.Request) -> bool:
    return request.method not in ("GET", "HEAD", "OPTIONS") or (
        request.headers.get("Upgrade", "").lower() == "websocket"
    )


def _unauthorized(message: str, invalid: bool) -> web.Response:
    challenge = 'Bearer realm="roost"' + (', error="invalid_token"' if invalid else "")
    return error_response(401, "unauthorized", message, None, {"WWW-Authenticate": challenge})


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Put the caller's user id in ``request[USER]``, or answer 401."""
    tokens = request.app[TOKENS]
    if tokens is None:
        request[USER] = ""
        return await handler(request)
    token = presented_token(request)
    user = tokens.user_for(token)
    if token is None and COOKIE in request.cookies:
        token = request.cookies[COOKIE]
        user = request.app[LOGINS].user_for(token)
        if user is not None and _is_change(request) and not _same_origin(request):
            return error_response(
                403,
                "forbidden_origin",
                "the login cookie works only for the server's own pages; a page of another "
                "origin must send Authorization: Bearer <token>",
            )
    if user is not None:
        request[USER] = user
    elif not is_public(request):
        if token is None:
            return _unauthorized(
                "a token is required: send Authorization: Bearer <token>", invalid=False
            )
        return _unauthorized("the token is not valid", invalid=True)
    return await handler(request)


# ---------------------------------------------------------------------------- routes

routes = web.RouteTableDef()

Token = Annotated[str, StringConstraints(strict=True, min_length=1, max_length=MAX_TOKEN_CHARS)]


class LoginRequest(Strict):
    token: Token


@routes.post("/api/login")
@describe(body=LoginRequest, responses={200: Reply("signed in; the cookie is set", User)})
async def login(request: web.Request) -> web.Response:
    """Check a token and sign the browser in with an HttpOnly cookie: ``{user}``.

    The cookie holds a new server-side login id, never the token. 401 for an
    unknown token. Without tokens configured it answers ``{user: ""}`` and sets
    no cookie. Each call makes a new login (not idempotent).
    """
    body = await parse_body(request, LoginRequest)
    tokens = request.app[TOKENS]
    if tokens is None:
        return json_response({"user": ""})
    user = tokens.user_for(body.token)
    if user is None:
        return _unauthorized("the token is not valid", invalid=True)
    resp = json_response({"user": user})
    resp.set_cookie(
        COOKIE,
        request.app[LOGINS].open(user),
        httponly=True,
        samesite="Strict",
        secure=request.secure,
        path="/",
        max_age=request.app[SETTINGS].login_cookie_max_age,
    )
    return resp


@routes.post("/api/logout")
@describe(responses={204: Reply("signed out")})
async def logout(request: web.Request) -> web.Response:
    """Revoke the cookie's login and clear the cookie: 204 (also when there was none).

    Idempotent. A copy of the cookie kept elsewhere no longer authenticates.
    """
    request.app[LOGINS].revoke(request.cookies.get(COOKIE))
    resp = web.Response(status=204)
    resp.del_cookie(COOKIE, path="/")
    return resp


@routes.get("/api/whoami")
@describe(responses={200: Reply("the caller", User)})
async def whoami(request: web.Request) -> web.Response:
    """The caller's user id: ``{user}`` (``""`` when the server runs without tokens)."""
    return json_response({"user": user_of(request)})
