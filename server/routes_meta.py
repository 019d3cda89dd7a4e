"""What this server offers, for the web page: ``GET /api/models`` and ``GET /api/capabilities``.

The page asks once instead of probing routes with bad requests (which log red
400s in the browser's console). Both are read-only, cheap, and answer for the
caller: behind tokens they need a token like every ``/api`` route.
"""

from __future__ import annotations

from typing import Literal

from aiohttp import web
from pydantic import Field

from server.http import json_response, user_of
from server.keys import IDENTITY, SETTINGS, state_of
from server.openapi import Reply, describe
from server.responses import Shape
from server.settings import Settings

routes = web.RouteTableDef()


class ModelChoice(Shape):
    id: str = Field(description="what to send as ``model`` in a chat or regenerate request")
    role: Literal["default", "fallback"] = Field(
        description="the configured model, or one tried when it fails"
    )


class Models(Shape):
    responder: Literal["echo", "openai"] = Field(description="who writes replies")
    default: str = Field(description="the model a reply uses when the request names none")
    models: list[ModelChoice] = Field(description="the default first, then fallbacks in order")


class Features(Shape):
    search: bool = Field(description="GET /api/sessions/{sid}/search exists")
    export: bool = Field(description="GET /api/sessions/{sid}/export exists")
    attachments: bool = Field(description="POST /api/sessions/{sid}/attachments exists")
    user_events: bool = Field(
        description="GET /api/events (the user's list feed) answers (not yet in cluster mode)"
    )
    search_all: bool = Field(
        description="GET /api/search (search across sessions) answers (not yet in cluster mode)"
    )


class Capabilities(Shape):
    user: str = Field(description="the caller's user id ('' without tokens)")
    auth: Literal["none", "tokens"] = Field(description="whether the server checks tokens")
    features: Features
    max_content_chars: int
    max_attachment_bytes: int


def model_list(settings: Settings) -> Models:
    """The responder's models: the configured one first, then its fallbacks (no duplicates)."""
    if settings.responder != "openai":
        return Models(
            responder=settings.responder,
            default="echo",
            models=[ModelChoice(id="echo", role="default")],
        )
    choices = [ModelChoice(id=settings.openai_model, role="default")]
    seen = {settings.openai_model}
    for name in (m.strip() for m in settings.openai_fallback_models.split(",")):
        if name and name not in seen:
            seen.add(name)
            choices.append(ModelChoice(id=name, role="fallback"))
    return Models(responder="openai", default=settings.openai_model, models=choices)


def _route_paths(app: web.Application) -> set[tuple[str, str]]:
    return {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None
    }


@routes.get("/models")
@describe(responses={200: Reply("the models a reply may use", Models)})
async def models(request: web.Request) -> web.Response:
    """The responder's models from the settings (``openai_model`` then ``openai_fallback_models``).

    Always 200; the echo responder lists one model, ``echo``.
    """
    return json_response(model_list(state_of(request)[SETTINGS]).model_dump())


@routes.get("/capabilities")
@describe(responses={200: Reply("who is asking and which optional routes exist", Capabilities)})
async def capabilities(request: web.Request) -> web.Response:
    """The caller and the optional features of this server, read from its route table.

    Always 200 for an authenticated caller; the answer only changes when the
    server is rebuilt with other routes or settings.
    """
    settings = state_of(request)[SETTINGS]
    paths = _route_paths(request.app)
    features = Features(
        search=("GET", "/api/sessions/{sid}/search") in paths,
        export=("GET", "/api/sessions/{sid}/export") in paths,
        attachments=("POST", "/api/sessions/{sid}/attachments") in paths,
        user_events=("GET", "/api/events") in paths and settings.cluster is None,
        search_all=("GET", "/api/search") in paths and settings.cluster is None,
    )
    body = Capabilities(
        user=user_of(request),
        auth="tokens" if state_of(request)[IDENTITY].enabled else "none",
        features=features,
        max_content_chars=settings.max_content_chars,
        max_attachment_bytes=settings.max_attachment_bytes,
    )
    return json_response(body.model_dump())
