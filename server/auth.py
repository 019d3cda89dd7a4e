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

Which routes need no token is a property of the route: ``@describe(...,
public=True)`` (``server.openapi``); the middleware reads it from the matched
handler, so a route and its openness are declared in one place. The tokens
themselves (file, digests) are :mod:`server.tokens`.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from aiohttp import web

from server.errors import Handler, error_response
from server.http import json_response, parse_body, user_of
from server.keys import LOGINS, SETTINGS, TOKENS, USER
from server.openapi import Reply, describe, is_public_route
from server.requests import LoginRequest
from server.responses import User

COOKIE = "roost_token"
WS_PROTOCOL_PREFIX = "bearer."


def is_public(request: web.Request) -> bool:
    """Whether ``request`` may be served without a token: its matched route is
    described ``public=True``, or it is a CORS preflight. An unmatched request
    (404, 405) is not public, so routes cannot be enumerated without a token."""
    return is_public_route(request.match_info.handler) or (
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


def authenticate(request: web.Request) -> web.Response | None:
    """Put the caller's user id in ``request[USER]``; the 401 to answer, or None to go on.

    Without a tokens file every caller is the local user ``''``. A valid token
    is recognised on public routes too (``whoami`` after login); a missing or
    unknown one is refused only where the route is not public. Idempotent.
    """
    tokens = request.config_dict[TOKENS]
    if tokens is None:
        request[USER] = ""
        return None
    token = presented_token(request)
    user = tokens.user_for(token)
    if token is None and COOKIE in request.cookies:
        token = request.cookies[COOKIE]
        user = request.config_dict[LOGINS].user_for(token)
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
    return None


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """On the ``/api`` sub-app: :func:`authenticate` every request, or answer 401."""
    refused = authenticate(request)
    return refused if refused is not None else await handler(request)


# ---------------------------------------------------------------------------- routes

routes = web.RouteTableDef()  # mounted under /api


@routes.post("/login")
@describe(
    body=LoginRequest, responses={200: Reply("signed in; the cookie is set", User)}, public=True
)
async def login(request: web.Request) -> web.Response:
    """Check a token and sign the browser in with an HttpOnly cookie: ``{user}``.

    The cookie holds a new server-side login id, never the token. 401 for an
    unknown token. Without tokens configured it answers ``{user: ""}`` and sets
    no cookie. Each call makes a new login (not idempotent).
    """
    body = await parse_body(request, LoginRequest)
    tokens = request.config_dict[TOKENS]
    if tokens is None:
        return json_response({"user": ""})
    user = tokens.user_for(body.token)
    if user is None:
        return _unauthorized("the token is not valid", invalid=True)
    resp = json_response({"user": user})
    resp.set_cookie(
        COOKIE,
        request.config_dict[LOGINS].open(user),
        httponly=True,
        samesite="Strict",
        secure=request.secure,
        path="/",
        max_age=request.config_dict[SETTINGS].login_cookie_max_age,
    )
    return resp


@routes.post("/logout")
@describe(responses={204: Reply("signed out")}, public=True)
async def logout(request: web.Request) -> web.Response:
    """Revoke the cookie's login and clear the cookie: 204 (also when there was none).

    Idempotent. A copy of the cookie kept elsewhere no longer authenticates.
    """
    request.config_dict[LOGINS].revoke(request.cookies.get(COOKIE))
    resp = web.Response(status=204)
    resp.del_cookie(COOKIE, path="/")
    return resp


@routes.get("/whoami")
@describe(responses={200: Reply("the caller", User)})
async def whoami(request: web.Request) -> web.Response:
    """The caller's user id: ``{user}`` (``""`` when the server runs without tokens)."""
    return json_response({"user": user_of(request)})
