"""Origins, CORS, loopback hosts and rate limits: the gates in front of the routes.

- **Origins.** A request from a browser page carries ``Origin``. Same-origin
  pages and origins in ``--allowed-origins`` (comma list; ``*`` allows any) may
  use the API; any other origin gets 403 ``forbidden_origin`` on every
  state-changing request and on WebSocket/SSE feeds (so a hostile page cannot
  drive a local server through a user's browser). Requests without ``Origin``
  (curl, servers) are not browsers and pass.
- **CORS.** Preflights from allowed origins answer 204 with the allowed methods
  and headers; responses to allowed cross-origin requests carry
  ``Access-Control-Allow-Origin`` (with ``Vary: Origin``) and expose
  ``X-User-Message-Id``, ``X-Assistant-Message-Id`` and ``ETag``. Credentials
  (cookies) are not allowed cross-origin: such clients send a bearer token.
- **Loopback hosts.** Without tokens (and without ``--insecure``) the server
  answers only requests addressed to a loopback name (``localhost``,
  ``127.0.0.1``, ``[::1]``): a DNS-rebinding page that points its own name at
  127.0.0.1 gets 403 ``forbidden_host``.
- **Rate limits.** Changes (POST, PUT, PATCH, DELETE, and chat frames on a
  WebSocket) take a token from the caller's bucket, from its tenant's bucket
  (when its JWT names a tenant: ``--rate-tenant-*``) and from the bucket of the
  (caller, session) pair; an empty bucket answers 429 ``rate_limited`` with
  ``Retry-After``. Limits apply whenever the server is reachable by more than
  one party (tokens configured, or ``--insecure``); a loopback server without
  tokens has one user and no limits. Without tokens the caller is its address.
"""

from __future__ import annotations

import functools
import ipaddress
from urllib.parse import urlsplit

from aiohttp import web

from server.errors import ApiError, Handler, error_response
from server.http import user_of
from server.keys import IDENTITY, LIMITS, PRINCIPAL, SETTINGS, state_of
from server.ratelimit import Limits, RateLimiter, retry_after

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
ALLOW_METHODS = "GET, HEAD, POST, PUT, PATCH, DELETE"
ALLOW_HEADERS = "Authorization, Content-Type, Accept, If-Match, Last-Event-ID"
EXPOSE_HEADERS = "X-User-Message-Id, X-Assistant-Message-Id, ETag, Retry-After"


def make_limits(app: web.Application) -> Limits:
    """The buckets for ``app``'s settings (active with tokens or ``--insecure``)."""
    settings = app[SETTINGS]
    return Limits(
        RateLimiter(settings.rate_user_per_sec, settings.rate_user_burst),
        RateLimiter(settings.rate_session_per_sec, settings.rate_session_burst),
        active=app[IDENTITY].enabled or settings.insecure,
        tenant=RateLimiter(settings.rate_tenant_per_sec, settings.rate_tenant_burst),
    )


# ---------------------------------------------------------------------------- origins


def listed_origin(request: web.Request) -> bool:
    """Whether the request's ``Origin`` is in the allow-list (``*`` = any)."""
    origin = request.headers.get("Origin")
    if origin is None:
        return False
    allowed = state_of(request)[SETTINGS].allowed_origin_list()
    return "*" in allowed or origin.rstrip("/") in allowed


def origin_allowed(request: web.Request) -> bool:
    """No ``Origin`` (not a browser), the server's own origin, or a listed one."""
    origin = request.headers.get("Origin")
    if origin is None or listed_origin(request):
        return True
    try:
        return urlsplit(origin).netloc.lower() == request.host.lower()
    except ValueError:
        return False


@functools.lru_cache(maxsize=256)
def is_loopback_host(host: str) -> bool:
    """Whether a ``Host`` header names this machine's loopback interface (memoized:
    clients send the same few Host values over and over)."""
    try:
        name = urlsplit("//" + host).hostname
    except ValueError:
        return False
    if name is None:
        return False
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@web.middleware
async def gate_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Loopback hosts, CORS preflights and foreign origins, before anything else."""
    if (
        not state_of(request)[IDENTITY].enabled
        and not state_of(request)[SETTINGS].insecure
        and not is_loopback_host(request.host)
    ):
        return error_response(
            403,
            "forbidden_host",
            f"this server runs without tokens and answers only loopback names "
            f"(localhost, 127.0.0.1, [::1]), not {request.host[:100]!r}; configure tokens "
            "to serve other names",
        )
    if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
        if not listed_origin(request):
            return _forbidden_origin(request)
        return web.Response(
            status=204,
            headers={
                "Access-Control-Allow-Methods": ALLOW_METHODS,
                "Access-Control-Allow-Headers": ALLOW_HEADERS,
                "Access-Control-Max-Age": "600",
            },
        )
    if request.method in UNSAFE_METHODS and not origin_allowed(request):
        return _forbidden_origin(request)
    return await handler(request)


def _forbidden_origin(request: web.Request) -> web.Response:
    origin = request.headers.get("Origin", "")
    return error_response(
        403,
        "forbidden_origin",
        f"origin {origin[:200]!r} is not allowed; the server's --allowed-origins lists "
        "the browser origins it serves",
    )


async def cors_headers(request: web.BaseRequest, response: web.StreamResponse) -> None:
    """on_response_prepare: CORS headers on every answer to a listed origin."""
    if "Origin" not in request.headers:
        return
    response.headers.add("Vary", "Origin")
    if isinstance(request, web.Request) and listed_origin(request):
        response.headers["Access-Control-Allow-Origin"] = request.headers["Origin"]
        if request.method != "OPTIONS":
            response.headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS


# ---------------------------------------------------------------------------- rate limits


def caller_key(request: web.Request) -> str:
    """Who the rate limits count: the signed-in user, else the peer address."""
    user = user_of(request)
    if state_of(request)[IDENTITY].enabled and user:
        return "u:" + user
    return "a:" + (request.remote or "")


def check_rate(request: web.Request, sid: str | None) -> None:
    """Take a token for a change by this caller (to ``sid``); raise 429 if none is left."""
    limits = state_of(request)[LIMITS]
    if not limits.active:
        return
    who = caller_key(request)
    wait = limits.user.take(who)
    principal = request.get(PRINCIPAL)
    if wait <= 0 and principal is not None and principal.tenant is not None:
        wait = limits.tenant.take(principal.tenant)
    if wait <= 0 and sid is not None:
        wait = limits.session.take((who, sid))
    _refuse_if_waiting(wait)


def check_session_rate(request: web.Request, sid: str) -> None:
    """Take a token from this caller's bucket for session ``sid`` only; raise 429 if none.

    For routes that carry the session id in the body (``POST /api/ai/chat``):
    :func:`rate_middleware` already took the caller's own token but could not
    see the session.
    """
    limits = state_of(request)[LIMITS]
    if limits.active:
        _refuse_if_waiting(limits.session.take((caller_key(request), sid)))


def _refuse_if_waiting(wait: float) -> None:
    if wait > 0:
        raise ApiError(
            429,
            "rate_limited",
            f"too many changes; retry in {retry_after(wait)} s",
            {"retry_after": int(retry_after(wait))},
            {"Retry-After": retry_after(wait)},
        )


@web.middleware
async def rate_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """429 with ``Retry-After`` when the caller's or session's bucket is empty."""
    if request.method in UNSAFE_METHODS:
        check_rate(request, request.match_info.get("sid"))
    return await handler(request)
