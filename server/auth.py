"""Who is asking: bearer tokens, the login cookie, the WebSocket subprotocol.

With a tokens file (``--tokens-file``: a JSON object ``{"<token>": "<user id>"}``)
every request must name a token, in this order of preference:

1. ``Authorization: Bearer <token>`` (any client);
2. for a WebSocket upgrade, a ``bearer.<token>`` entry in ``Sec-WebSocket-Protocol``
   next to ``roost.v1`` (browsers cannot set headers on a WebSocket; the server
   answers with ``roost.v1`` only, never echoing the token);
3. the ``roost_token`` cookie set by ``POST /api/login`` (HttpOnly, SameSite=Strict).

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
from pathlib import Path
from typing import Annotated

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
MIN_TOKEN_CHARS = 4  # refuses typos like a one-character token; use long random tokens


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


TOKENS: web.AppKey[Tokens | None] = web.AppKey("tokens", Tokens | None)  # type: ignore[arg-type]


def load_tokens(path: str | None) -> Tokens | None:
    """Read a tokens file; None when ``path`` is None (the server runs open).

    Raises :class:`TokensError` with a message for the operator when the file
    cannot be read, is not a JSON object mapping token strings (at least
    ``MIN_TOKEN_CHARS`` characters) to non-empty user id strings, or holds no
    token at all.
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
        if not MIN_TOKEN_CHARS <= len(token) <= MAX_TOKEN_CHARS or any(
            c.isspace() or c in ",;" for c in token
        ):
            raise TokensError(
                f"tokens file {path}: tokens must be at least {MIN_TOKEN_CHARS} and at most "
                f"{MAX_TOKEN_CHARS} characters, without spaces, commas or semicolons"
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
    """The token the request carries (header, WebSocket subprotocol or cookie)."""
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
    return request.cookies.get(COOKIE)


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
    """Check a token and keep it in an HttpOnly cookie (for browsers): ``{user}``.

    401 for an unknown token. Without tokens configured it answers ``{user: ""}``
    and sets no cookie.
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
        body.token,
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
    """Forget the login cookie: 204 (also when there was none)."""
    resp = web.Response(status=204)
    resp.del_cookie(COOKIE, path="/")
    return resp


@routes.get("/api/whoami")
@describe(responses={200: Reply("the caller", User)})
async def whoami(request: web.Request) -> web.Response:
    """The caller's user id: ``{user}`` (``""`` when the server runs without tokens)."""
    return json_response({"user": user_of(request)})
