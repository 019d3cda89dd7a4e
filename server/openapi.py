"""``GET /openapi.json``: the API description, generated from the routes and models.

Each handler may carry a description made by :func:`describe` (request body
model, query and header parameters, responses by status). The document walks
the app's route table, so every route appears, described or not; schemas come
from the pydantic models (``server.requests``, ``server.responses``, and the
models of the routes); limits that are settings (page size, content length)
are filled in from the running server's settings.

To document a new route: put ``@describe(...)`` under its ``@routes.<verb>``.
``public=True`` there also makes the route answer without a token
(``server.auth`` reads it from the matched handler) and documents it with
``security: []``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from server.http import json_response
from server.keys import IDENTITY, OPENAPI, SETTINGS, state_of
from server.responses import Error
from server.settings import Settings

SSE = "text/event-stream"
JSON = "application/json"
MULTIPART = "multipart/form-data"
ZIP = "application/zip"  # session bundles (issue 25)
ANY = "*/*"  # bytes of any type (attachments): documented without a schema

Schema = dict[str, Any] | Callable[[Settings], dict[str, Any]]

# the events of a streamed reply (chat, regenerate, resume)
REPLY_EVENTS = ("ack", "delta", "message", "done", "error")
# the events of a session's feed (GET /events)
FEED_EVENTS = (
    "hello",
    "message.created",
    "message.updated",
    "message.delta",
    "message.deleted",
    "session.updated",
    "session.deleted",
    "resync",
    "lagged",
)


def sse_event_schema(events: tuple[str, ...]) -> dict[str, Any]:
    """One server-sent event as OpenAPI 3.1 tools read it: ``{event, data, id?, retry?}``."""
    return {
        "type": "object",
        "properties": {
            "event": {"enum": list(events)},
            "data": {"type": "string", "contentMediaType": JSON},
            "id": {"type": "string"},
            "retry": {"type": "integer"},
        },
        "required": ["event", "data"],
    }


@dataclass(frozen=True)
class Param:
    """A query or header parameter."""

    name: str
    where: str  # "query" | "header"
    schema: Schema
    description: str = ""
    required: bool = False


@dataclass(frozen=True)
class Reply:
    """One documented response: a model (JSON), a content type with no model, or nothing.

    ``headers`` names the headers the response always carries (name → description);
    ``item`` replaces the default schema of one server-sent event (``{event, data}``)
    for streams whose events have no name. Statuses 101, 204 and 304 have no body.
    """

    description: str
    model: type[BaseModel] | None = None
    media: tuple[str, ...] = (JSON,)
    events: tuple[str, ...] = REPLY_EVENTS
    headers: dict[str, str] = field(default_factory=dict)
    item: dict[str, Any] | None = None


@dataclass(frozen=True)
class Doc:
    body: type[BaseModel] | None = None
    body_required: bool = True
    params: tuple[Param, ...] = ()
    responses: dict[int, Reply] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    body_content: dict[str, dict[str, Any]] | None = None
    public: bool = False


def describe(
    *,
    body: type[BaseModel] | None = None,
    body_required: bool = True,
    params: tuple[Param, ...] = (),
    responses: dict[int, Reply] | None = None,
    tags: tuple[str, ...] = (),
    body_content: dict[str, dict[str, Any]] | None = None,
    public: bool = False,
) -> Callable[[Any], Any]:
    """Attach an OpenAPI description to a handler (returns the handler unchanged).

    ``body`` is a JSON request body's model; ``body_content`` instead gives a
    body that is not JSON as media type → OpenAPI media type object (for
    example a multipart upload). ``public`` routes answer without a token
    (see :func:`is_public_route`); every other route needs one when tokens are
    configured.
    """
    doc = Doc(body, body_required, params, responses or {}, tags, body_content, public)

    def mark(fn: Any) -> Any:
        fn.__openapi__ = doc
        return fn

    return mark


def is_public_route(handler: Any) -> bool:
    """Whether ``handler`` was described ``public=True`` (False for undescribed
    handlers and for aiohttp's 404/405 handlers)."""
    doc = getattr(handler, "__openapi__", None)
    return isinstance(doc, Doc) and doc.public


# ---------------------------------------------------------------------------- common parameters


def limit_param() -> Param:
    return Param(
        "limit",
        "query",
        lambda s: {"type": "integer", "minimum": 1, "maximum": s.max_page_limit, "default": 25},
        "page size",
    )


def cursor_param(name: str) -> Param:
    return Param(name, "query", {"type": "string", "maxLength": 512}, "a cursor from a page")


SESSION_ID = {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"}
# Message and attachment ids: uuid7 when made here, any 1..128 characters when imported.
RECORD_ID = {"type": "string", "minLength": 1, "maxLength": 128}
PATH_PARAMS: dict[str, dict[str, Any]] = {
    "sid": SESSION_ID,
    "id": SESSION_ID,  # the AI SDK's chat id is the session id
    "mid": RECORD_ID,
    "aid": RECORD_ID,
    "name": {
        "type": "string",
        "pattern": r"^[A-Za-z0-9][A-Za-z0-9_-]*\.(html|css|js|svg|png|ico|json|txt)$",
    },
}


# ---------------------------------------------------------------------------- the document


def _path_schema(name: str) -> dict[str, Any]:
    return PATH_PARAMS.get(name, {"type": "string", "minLength": 1})


def _schema(schema: Schema, settings: Settings) -> dict[str, Any]:
    return schema(settings) if callable(schema) else schema


def build_openapi(app: web.Application) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``app``'s routes, for its settings."""
    settings = app[SETTINGS]
    secured = app[IDENTITY].enabled
    entries: list[tuple[str, str, str, Any, Doc]] = []
    models: set[type[BaseModel]] = {Error}
    for route in app.router.routes():
        if route.method in ("HEAD", "OPTIONS", "*") or route.resource is None:
            continue
        path = route.resource.canonical
        doc: Doc = getattr(route.handler, "__openapi__", Doc())
        entries.append((path, route.method.lower(), route.name or "", route.handler, doc))
        if doc.body is not None:
            models.add(doc.body)
        models.update(r.model for r in doc.responses.values() if r.model is not None)
    refs, defs = models_json_schema(
        [(m, "validation") for m in sorted(models, key=lambda m: m.__name__)],
        ref_template="#/components/schemas/{model}",
    )

    def ref(model: type[BaseModel]) -> dict[str, Any]:
        return dict(refs[(model, "validation")])

    components = _limit_components(defs.get("$defs", {}), settings)
    paths: dict[str, dict[str, Any]] = {}
    for path, method, _, handler, doc in sorted(entries, key=lambda e: (e[0], e[1])):
        op: dict[str, Any] = {
            "operationId": f"{method}_{_slug(path)}",
            "summary": _summary(handler),
            "parameters": [
                {
                    "name": name,
                    "in": "path",
                    "required": True,
                    "schema": _path_schema(name),
                }
                for name in re.findall(r"\{([^}:]+)", path)
            ]
            + [
                {
                    "name": p.name,
                    "in": p.where,
                    "required": p.required,
                    "schema": _schema(p.schema, settings),
                    "description": p.description,
                }
                for p in doc.params
            ],
            "responses": {},
        }
        if doc.tags:
            op["tags"] = list(doc.tags)
        if doc.body is not None:  # with body_content too: other media types beside JSON
            op["requestBody"] = {
                "required": doc.body_required,
                "content": {JSON: {"schema": ref(doc.body)}, **(doc.body_content or {})},
            }
        elif doc.body_content is not None:
            op["requestBody"] = {"required": doc.body_required, "content": doc.body_content}
        for status, reply in sorted(doc.responses.items()):
            entry: dict[str, Any] = {"description": reply.description}
            if status not in NO_BODY:
                entry["content"] = {media: _media(media, reply, ref) for media in reply.media}
            if reply.headers:
                entry["headers"] = {
                    name: {"description": text, "required": True, "schema": {"type": "string"}}
                    for name, text in reply.headers.items()
                }
            op["responses"][str(status)] = entry
        if not doc.responses:
            op["responses"]["200"] = {"description": "success (not described in detail)"}
        op["responses"]["default"] = {
            "description": "an error: {error: {code, message, details}}",
            "content": {JSON: {"schema": ref(Error)}},
        }
        if secured and doc.public:
            op["security"] = []
        paths.setdefault(path, {})[method] = op
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Roost",
            "version": "1",
            "description": "Chat sessions, each owned by an actor with its own SQLite file.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": BEARER_SCHEME},
        },
        "security": [{"bearer": []}] if secured else [{"bearer": []}, {}],
    }


NO_BODY = (101, 204, 304)
BEARER_SCHEME: dict[str, Any] = {
    "type": "http",
    "scheme": "bearer",
    "description": (
        "A token of the tokens file, the app's own JWT (--jwt-jwks-url, --jwt-secret or "
        "--jwt-public-key; exp required, iss/aud checked when configured), or a scoped "
        "token from POST /api/sessions/{sid}/tokens. A refused token answers 401 "
        "(error=invalid_token, with the reason). A token scoped to one session "
        "(roost_sid, roost_scope) answers 403 read_only for a change with a read scope, "
        "403 forbidden_scope on routes about no session, and 404 for any other session, "
        "exactly as for one that does not exist or is another user's."
    ),
}


def _media(
    media: str, reply: Reply, ref: Callable[[type[BaseModel]], dict[str, Any]]
) -> dict[str, Any]:
    if media == SSE:
        return {"schema": reply.item or sse_event_schema(reply.events)}
    if media == JSON:
        return {"schema": ref(reply.model)} if reply.model is not None else {}
    if "*" in media:
        return {}
    return {"schema": {"type": "string"}}


def _limit_components(defs: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """Put the settings' length limits on the request fields they bound."""
    limits = {"content": settings.max_content_chars, "title": settings.max_title_chars}
    for name in ("MessageCreate", "MessagePatch", "ChatRequest", "SessionCreate", "SessionPatch"):
        props = defs.get(name, {}).get("properties", {})
        for key, limit in limits.items():
            if key in props:
                _set_max_length(props[key], limit)
        if "parts" in props:
            for alt in props["parts"].get("anyOf", [props["parts"]]):
                if alt.get("type") == "array":
                    alt["maxItems"] = settings.max_parts
    # a scoped token lives at most --max-scoped-token-ttl seconds
    token_ttl = defs.get("ScopedTokenCreate", {}).get("properties", {}).get("expires_in")
    if token_ttl is not None:
        token_ttl["maximum"] = int(settings.max_scoped_token_ttl)
    return defs


def _set_max_length(schema: dict[str, Any], limit: int) -> None:
    if schema.get("type") == "string":
        schema["maxLength"] = limit
    for alt in schema.get("anyOf", []):
        _set_max_length(alt, limit)


def _slug(path: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", path).strip("_") or "root"


def _summary(handler: Any) -> str:
    text = (getattr(handler, "__doc__", None) or "").strip()
    return text.splitlines()[0] if text else ""


@describe(responses={200: Reply("this document (OpenAPI 3.1)")}, public=True)
async def openapi_json(request: web.Request) -> web.Response:
    """The OpenAPI document of this server (public, made once)."""
    cache = state_of(request)[OPENAPI]
    if not cache:
        cache.update(build_openapi(request.app))
    return json_response(cache)


__all__ = ["Doc", "Param", "Reply", "build_openapi", "describe", "is_public_route", "openapi_json"]
