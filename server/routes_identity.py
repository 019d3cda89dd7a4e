"""Scoped tokens and share links (README "Identity").

A scoped token is a JWT signed by this server (:meth:`server.identity.Identity.mint`)
that opens one session, read-only or read-write, for as long as it lasts; an
app hands it to a browser that has no account in Roost. It cannot be revoked
before it expires (keep ``expires_in`` short); rotating ``--token-signing-key``
(or deleting ``token-signing.key`` in the data dir) revokes them all.

A share link is a **snapshot**: ``POST /api/sessions/{sid}/shares`` stores the
session's export as it is then (the active path, or every branch) in the
catalog under an unguessable id; ``GET /api/shares/{id}`` (public) and the page
``/s/{id}`` show that snapshot, never later changes; ``DELETE`` revokes it;
deleting the session deletes its shares. ``POST /api/shares/{id}/copy``
imports the snapshot as a new session of the signed-in caller.
"""

from __future__ import annotations

import re
import secrets
from typing import Any

import orjson
from aiohttp import web

from server.auth import require_unscoped
from server.errors import ApiError
from server.http import json_response, parse_body, query_str, user_of
from server.keys import IDENTITY, PRINCIPAL, REGISTRY, SETTINGS, state_of
from server.openapi import SESSION_ID, Param, Reply, describe
from server.requests import ScopedTokenCreate, ShareCreate
from server.responses import ScopedToken, Session, SharedChat, SharedMessage, ShareInfo, ShareList
from server.tokens import Principal
from storage.ids import validate_session_id

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
    ttl = state_of(request)[SETTINGS].max_scoped_token_ttl
    if body.expires_in > ttl:
        raise ApiError(
            400,
            "invalid_input",
            f"expires_in is at most {ttl} seconds (--max-scoped-token-ttl)",
            {"loc": ["body", "expires_in"]},
        )
    sid = request.match_info["sid"]
    async with state_of(request)[REGISTRY].session(sid, user_of(request)) as s:
        await s.read_session()  # 404 unless it is the caller's
    principal = request.get(PRINCIPAL) or Principal(user_of(request))
    minted = state_of(request)[IDENTITY].mint(principal, sid, body.scope, body.expires_in)
    return json_response(
        {
            "token": minted.token,
            "session_id": sid,
            "scope": body.scope,
            "expires_at": minted.expires_at,
        },
        201,
    )


# ---------------------------------------------------------------------------- share links

SHARE_ID = re.compile(r"[A-Za-z0-9_-]{16,64}")
SHARED_FIELDS = tuple(SharedMessage.model_fields)


def _share_info(share: dict[str, Any]) -> dict[str, Any]:
    fields = ("id", "session_id", "branch", "created_at", "expires_at")
    return {**{k: share[k] for k in fields}, "url": f"/s/{share['id']}"}


def _share_id(request: web.Request) -> str:
    share_id = request.match_info["share_id"]
    if not SHARE_ID.fullmatch(share_id):
        raise ApiError(404, "not_found", "share not found", {"share_id": share_id[:80]})
    return share_id


def shared_chat(share: dict[str, Any], snapshot: bytes) -> dict[str, Any]:
    """What a share shows: the snapshot's title and live messages, nothing else
    (no owner, no metadata, no client ids, no attachment URLs)."""
    doc = orjson.loads(snapshot)
    messages = [
        {k: m.get(k) for k in SHARED_FIELDS} for m in doc["messages"] if not m.get("deleted")
    ]
    return {
        "id": share["id"],
        "branch": share["branch"],
        "title": doc["session"].get("title"),
        "shared_at": share["created_at"],
        "expires_at": share["expires_at"],
        "active_leaf_id": doc.get("active_leaf_id"),
        "messages": messages,
    }


@routes.post("/sessions/{sid}/shares")
@describe(body=ShareCreate, responses={201: Reply("the new share link", ShareInfo)})
async def create_share(request: web.Request) -> web.Response:
    """Share a snapshot of this session, read-only, with anyone who has the link: 201.

    The share holds the chat as it is now (later changes are not shown):
    ``branch: active`` the active path only, ``all`` every branch. The id is
    unguessable (``secrets.token_urlsafe``, 128 bits). 404 for a session that
    is not the caller's; 403 ``forbidden_scope`` for a scoped token; 413 when
    the session is over ``--max-import-bytes``. Not idempotent.
    """
    require_unscoped(request)
    body = await parse_body(request, ShareCreate)
    settings = state_of(request)[SETTINGS]
    registry = state_of(request)[REGISTRY]
    sid = request.match_info["sid"]
    async with registry.session(sid, user_of(request)) as s:
        snapshot = await s.snapshot(body.branch, max_bytes=settings.max_import_bytes)
    if snapshot is None:
        raise ApiError(
            413,
            "payload_too_large",
            f"the session is larger than --max-import-bytes ({settings.max_import_bytes})",
        )
    share = await registry.create_share(
        secrets.token_urlsafe(16),
        owner=user_of(request),
        sid=sid,
        branch=body.branch,
        expires_in=body.expires_in,
        snapshot=snapshot,
    )
    return json_response(_share_info(share), 201, {"Location": f"/api/shares/{share['id']}"})


@routes.get("/shares")
@describe(
    params=(Param("session_id", "query", SESSION_ID, "only the shares of this session"),),
    responses={200: Reply("the caller's share links, newest first", ShareList)},
)
async def list_shares(request: web.Request) -> web.Response:
    """The share links the caller made (expired ones included), newest first: ``{items}``."""
    require_unscoped(request)
    sid = query_str(request, "session_id", 128)
    if sid is not None:
        validate_session_id(sid)
    items = state_of(request)[REGISTRY].list_shares(user_of(request), sid)
    return json_response({"items": [_share_info(s) for s in items]})


@routes.get("/shares/{share_id}")
@describe(
    params=(Param("share_id", "path", {"type": "string"}),),
    responses={200: Reply("the shared chat (a snapshot)", SharedChat)},
    public=True,
)
async def get_share(request: web.Request) -> web.Response:
    """The shared chat as it was when it was shared; anyone with the id may read it.

    404 for an unknown, revoked or expired share. Reads only.
    """
    found = state_of(request)[REGISTRY].get_share(_share_id(request))
    if found is None:
        raise ApiError(404, "not_found", "share not found (revoked or expired?)")
    return json_response(shared_chat(*found), headers={"Cache-Control": "no-store"})


@routes.delete("/shares/{share_id}")
@describe(
    params=(Param("share_id", "path", {"type": "string"}),),
    responses={204: Reply("revoked: the link answers 404 from now on")},
)
async def delete_share(request: web.Request) -> web.Response:
    """Revoke one of the caller's shares: 204; 404 when it is not the caller's (or gone)."""
    require_unscoped(request)
    await state_of(request)[REGISTRY].delete_share(_share_id(request), user_of(request))
    return web.Response(status=204)


@routes.post("/shares/{share_id}/copy")
@describe(
    params=(Param("share_id", "path", {"type": "string"}),),
    responses={201: Reply("the caller's new session", Session)},
)
async def copy_share(request: web.Request) -> web.Response:
    """Continue as my own copy: import the shared snapshot as a new session of the caller.

    201 Session (a new id); 404 for an unknown, revoked or expired share; 403
    ``forbidden_scope`` for a scoped token. Not idempotent.
    """
    require_unscoped(request)
    doc = await state_of(request)[REGISTRY].copy_share(_share_id(request), user_of(request))
    return json_response(doc, 201, {"Location": f"/api/sessions/{doc['id']}"})
