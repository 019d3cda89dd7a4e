"""Scoped tokens: ``POST /api/sessions/{sid}/tokens`` (README "Identity").

A scoped token is a JWT signed by this server (:meth:`server.identity.Identity.mint`)
that opens one session, read-only or read-write, for as long as it lasts; an
app hands it to a browser that has no account in Roost. It cannot be revoked
before it expires (keep ``expires_in`` short); rotating ``--token-signing-key``
(or deleting ``token-signing.key`` in the data dir) revokes them all.
"""

from __future__ import annotations

from aiohttp import web

from server.auth import require_unscoped
from server.errors import ApiError
from server.http import json_response, parse_body, user_of
from server.keys import IDENTITY, PRINCIPAL, REGISTRY, SETTINGS
from server.openapi import Reply, describe
from server.requests import ScopedTokenCreate
from server.responses import ScopedToken
from server.tokens import Principal

routes = web.RouteTableDef()  # mounted under /api


@routes.post("/sessions/{sid}/tokens")
@describe(body=ScopedTokenCreate, responses={201: Reply("the scoped token", ScopedToken)})
async def create_scoped_token(request: web.Request) -> web.Response:
    """Make a token that opens only this session: 201 ``{token, session_id, scope, expires_at}``.

    The owner's own (unscoped) token is needed: 403 ``forbidden_scope`` for a
    scoped one. 404 for a session that does not exist or is another user's.
    400 when ``expires_in`` is over ``--max-scoped-token-ttl``. Not idempotent:
    each call makes a new token.
    """
    require_unscoped(request)
    body = await parse_body(request, ScopedTokenCreate)
    ttl = request.config_dict[SETTINGS].max_scoped_token_ttl
    if body.expires_in > ttl:
        raise ApiError(
            400,
            "invalid_input",
            f"expires_in is at most {ttl} seconds (--max-scoped-token-ttl)",
            {"loc": ["body", "expires_in"]},
        )
    sid = request.match_info["sid"]
    async with request.config_dict[REGISTRY].session(sid, user_of(request)) as s:
        await s.read_session()  # 404 unless it is the caller's
    principal = request.get(PRINCIPAL) or Principal(user_of(request))
    minted = request.config_dict[IDENTITY].mint(principal, sid, body.scope, body.expires_in)
    return json_response(
        {
            "token": minted.token,
            "session_id": sid,
            "scope": body.scope,
            "expires_at": minted.expires_at,
        },
        201,
    )
