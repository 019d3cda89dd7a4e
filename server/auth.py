"""Who is asking: bearer tokens, the login cookie, the WebSocket subprotocol; scopes.

With any way to authenticate configured (``--tokens-file``: a JSON object
``{"<token>": "<user id>"}``; the app's JWTs: ``--jwt-jwks-url``,
``--jwt-secret`` or ``--jwt-public-key``; see :mod:`server.identity`), every
request must name a token, in this order of preference:

1. ``Authorization: Bearer <token>`` (any client);
2. for a WebSocket upgrade, a ``bearer.<token>`` entry in ``Sec-WebSocket-Protocol``
   next to ``roost.v1`` (browsers cannot set headers on a WebSocket; the server
   answers with ``roost.v1`` only, never echoing the token);
3. the ``roost_token`` cookie set by ``POST /api/login`` (HttpOnly, SameSite=Strict).
   It never holds the token: it holds a random login id that names a server-side
   login (:class:`Logins`) which expires after ``--login-cookie-max-age`` seconds
   (or when the JWT it was made with expires, if sooner) and which
   ``POST /api/logout`` revokes. Logins live in memory: a restart signs
   browsers out. A login cookie authenticates only same-origin changes: a page of
   a listed origin (``--allowed-origins``) that carries it cannot change anything
   (403 ``forbidden_origin``); such clients send a bearer token.

A request without a valid token answers 401 ``unauthorized`` with
``WWW-Authenticate: Bearer`` and a message saying why the token was refused.
The caller is put in ``request[PRINCIPAL]`` and its owner id in ``request[USER]``
(read it with :func:`server.http.user_of`); without authentication configured
it stays ``''`` and every session belongs to that one local user (presented
tokens are then ignored).

**Scopes.** A token scoped to one session (claims ``roost_sid`` and
``roost_scope``) opens only that session's routes: another session answers 404
``not_found`` exactly as a session that does not exist; a route that is about
no session (listing, creating, importing, sharing, minting tokens) answers 403
``forbidden_scope``, except ``whoami``, ``models`` and ``capabilities``; a change
(any POST, PUT, PATCH, DELETE or a WebSocket) with a ``read`` scope answers 403
``read_only``. ``POST /api/ai/chat`` names its session in the body: its
handler calls :func:`check_scope`.

Which routes need no token is a property of the route: ``@describe(...,
public=True)`` (``server.openapi``); the middleware reads it from the matched
handler, so a route and its openness are declared in one place.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from aiohttp import web

from server.errors import ApiError, Handler, error_response
from server.http import json_response, parse_body, user_of
from server.identity import InvalidToken
from server.keys import HTTP_CLIENT, IDENTITY, LOGINS, PRINCIPAL, SETTINGS, USER, state_of
from server.openapi import Reply, describe, is_public_route
from server.requests import LoginRequest
from server.responses import User
from server.tokens import Principal

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


# routes a session-scoped token may use besides its session's own
SCOPE_FREE_PATHS = frozenset({"/api/whoami", "/api/models", "/api/capabilities", "/api/logout"})
BODY_SESSION_PATHS = frozenset({"/api/ai/chat"})  # the handler calls check_scope
SESSION_PARAMS = ("sid", "id")


def _principal(request: web.Request) -> Principal | None:
    found: Principal | None = request.get(PRINCIPAL)
    return found


def check_scope(request: web.Request, sid: str) -> None:
    """Raise the answer for a scoped caller reaching session ``sid``, if it may not.

    404 ``not_found`` (the same as a missing session) for another session; 403
    ``read_only`` for a change with a read scope. A caller without a scope
    passes. Idempotent.
    """
    principal = _principal(request)
    if principal is None or principal.sid is None:
        return
    if sid != principal.sid:
        raise ApiError(404, "not_found", f"session {sid!r} not found", {"session_id": sid})
    if principal.scope != "write" and _is_change(request):
        raise ApiError(
            403, "read_only", "this token may only read this session (its roost_scope is read)"
        )


def require_unscoped(request: web.Request) -> None:
    """Raise 403 ``forbidden_scope`` when the caller's token opens one session only."""
    principal = _principal(request)
    if principal is not None and principal.sid is not None:
        raise ApiError(
            403,
            "forbidden_scope",
            f"this token opens only session {principal.sid!r}; this route needs the "
            "owner's own token",
        )


def _enforce_scope(request: web.Request) -> None:
    principal = _principal(request)
    if principal is None or principal.sid is None or is_public(request):
        return
    resource = request.match_info.route.resource
    if resource is None:
        return  # no route: the 404 or 405 follows
    path = resource.canonical
    sid = next((request.match_info[p] for p in SESSION_PARAMS if p in request.match_info), None)
    if sid is not None and not path.endswith(("/tokens", "/shares")):
        check_scope(request, sid)
    elif path in BODY_SESSION_PATHS:
        if principal.scope != "write":
            check_scope(request, principal.sid)  # a change: 403 read_only
    elif not (path in SCOPE_FREE_PATHS and (path == "/api/logout" or not _is_change(request))):
        require_unscoped(request)


async def resolve(request: web.Request, token: str) -> Principal:
    """The principal ``token`` names; raises :class:`InvalidToken` saying why not."""
    identity = state_of(request)[IDENTITY]
    return await identity.principal_for(token, state_of(request)[HTTP_CLIENT])


async def authenticate(request: web.Request) -> web.Response | None:
    """Put the caller in ``request[PRINCIPAL]`` and ``request[USER]``; the 401/403/404
    to answer, or None to go on.

    Without authentication configured every caller is the local user ``''``. A
    valid token is recognised on public routes too (``whoami`` after login); a
    missing or refused one is refused only where the route is not public. A
    scoped token is held to its session (see the module docstring). Idempotent.
    """
    if not state_of(request)[IDENTITY].enabled:
        request[USER] = ""
        return None
    token = presented_token(request)
    principal: Principal | None = None
    refusal = "the token is not valid"
    if token is not None:
        try:
            principal = await resolve(request, token)
        except InvalidToken as exc:
            refusal = exc.message
    elif COOKIE in request.cookies:
        token = request.cookies[COOKIE]
        principal = state_of(request)[LOGINS].principal_for(token)
        refusal = "the login has expired or was revoked; sign in again"
        if principal is not None and _is_change(request) and not _same_origin(request):
            return error_response(
                403,
                "forbidden_origin",
                "the login cookie works only for the server's own pages; a page of another "
                "origin must send Authorization: Bearer <token>",
            )
    if principal is not None:
        request[PRINCIPAL] = principal
        request[USER] = principal.user
        try:
            _enforce_scope(request)
        except ApiError as exc:
            return error_response(exc.status, exc.code, exc.message, exc.details)
    elif not is_public(request):
        if token is None:
            return _unauthorized(
                "a token is required: send Authorization: Bearer <token>", invalid=False
            )
        return _unauthorized(refusal, invalid=True)
    return None


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """On the ``/api`` sub-app: :func:`authenticate` every request, or answer 401."""
    refused = await authenticate(request)
    return refused if refused is not None else await handler(request)


# ---------------------------------------------------------------------------- routes

routes = web.RouteTableDef()  # mounted under /api


@routes.post("/login")
@describe(
    body=LoginRequest, responses={200: Reply("signed in; the cookie is set", User)}, public=True
)
async def login(request: web.Request) -> web.Response:
    """Check a token and sign the browser in with an HttpOnly cookie: ``{user}``.

    Any token the server accepts works (a tokens-file token, a JWT, a scoped
    token: the login keeps its scope and ends when the token expires). The
    cookie holds a new server-side login id, never the token. 401 (saying why)
    for a refused token. Without authentication configured it answers
    ``{user: ""}`` and sets no cookie. Each call makes a new login (not idempotent).
    """
    body = await parse_body(request, LoginRequest)
    if not state_of(request)[IDENTITY].enabled:
        return json_response({"user": ""})
    try:
        principal = await resolve(request, body.token)
    except InvalidToken as exc:
        return _unauthorized(exc.message, invalid=True)
    resp = json_response({"user": principal.user})
    resp.set_cookie(
        COOKIE,
        state_of(request)[LOGINS].open(principal),
        httponly=True,
        samesite="Strict",
        secure=request.secure,
        path="/",
        max_age=state_of(request)[SETTINGS].login_cookie_max_age,
    )
    return resp


@routes.post("/logout")
@describe(responses={204: Reply("signed out")}, public=True)
async def logout(request: web.Request) -> web.Response:
    """Revoke the cookie's login and clear the cookie: 204 (also when there was none).

    Idempotent. A copy of the cookie kept elsewhere no longer authenticates.
    """
    state_of(request)[LOGINS].revoke(request.cookies.get(COOKIE))
    resp = web.Response(status=204)
    resp.del_cookie(COOKIE, path="/")
    return resp


@routes.get("/whoami")
@describe(responses={200: Reply("the caller", User)})
async def whoami(request: web.Request) -> web.Response:
    """The caller's user id: ``{user}`` (``""`` when the server runs without tokens)."""
    return json_response({"user": user_of(request)})
