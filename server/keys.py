"""Every typed key of the application and of a request, in one place.

All application state lives on the **root** application (``server.app``): the
``/api`` sub-app holds routes and middlewares only. Handlers and middlewares
therefore read state with ``state_of(request)[KEY]`` (the root app, from a
route of any app; cheaper than ``request.config_dict``, which builds a chain
of the apps on every access); ``request.app`` is the *matched* app and has
none of these keys inside ``/api``.

Each key says who sets it and when:

- set when the app is built (``make_app``): ``SETTINGS``, ``IDENTITY``,
  ``METRICS``, ``OPENAPI`` (an empty dict the first ``/openapi.json`` fills),
  ``ASSETS``;
- set by a ``cleanup_ctx`` at startup, gone after cleanup: ``HTTP_CLIENT``,
  ``REGISTRY``, ``LIMITS``, ``OPEN_STREAMS``, ``OPEN_SOCKETS`` (each socket's
  feed sender task by socket), ``OPEN_FEEDS``, ``DRAIN`` (started by
  ``on_shutdown``);
- per request: ``USER`` and ``PRINCIPAL`` (set by ``server.auth``; read the
  user with ``server.http.user_of``).

This module imports only the modules that define the values' types, none of
which imports it, so any module may import it without making a cycle.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from aiohttp import web

from actors.feed import Feed
from actors.places import Places
from actors.pubsub import Subscription
from server.assets import Asset
from server.drain import Drain
from server.identity import Identity
from server.import_slots import ImportSlots
from server.metrics import Metrics
from server.ratelimit import Limits
from server.settings import Settings
from server.tokens import Logins, Principal

# ---------------------------------------------------------------- set when the app is built

SETTINGS = web.AppKey("settings", Settings)
IDENTITY = web.AppKey("identity", Identity)
METRICS = web.AppKey("metrics", Metrics)
OPENAPI: web.AppKey[dict[str, Any]] = web.AppKey("openapi", dict)
ASSETS: web.AppKey[dict[str, Asset]] = web.AppKey("static_assets", dict)

# ---------------------------------------------------------------- set by a cleanup_ctx

HTTP_CLIENT = web.AppKey("http_client", aiohttp.ClientSession)
# the place that owns each session: in-process (ActorRegistry) or a cluster's shards
REGISTRY: web.AppKey[Places] = web.AppKey("registry")
LIMITS = web.AppKey("limits", Limits)
LOGINS = web.AppKey("logins", Logins)
IMPORT_SLOTS = web.AppKey("import_slots", ImportSlots)
OPEN_STREAMS: web.AppKey[set[Subscription]] = web.AppKey("open_streams", set)
OPEN_SOCKETS: web.AppKey[dict[web.WebSocketResponse, asyncio.Task[None]]] = web.AppKey(
    "open_sockets", dict
)
OPEN_FEEDS: web.AppKey[set[Feed]] = web.AppKey("open_feeds", set)
DRAIN = web.AppKey("drain", Drain)

# ---------------------------------------------------------------- per request

USER = web.RequestKey("user", str)
PRINCIPAL = web.RequestKey("principal", Principal)

__all__ = [
    "ASSETS",
    "DRAIN",
    "HTTP_CLIENT",
    "IDENTITY",
    "LIMITS",
    "METRICS",
    "OPENAPI",
    "OPEN_FEEDS",
    "OPEN_SOCKETS",
    "OPEN_STREAMS",
    "PRINCIPAL",
    "REGISTRY",
    "SETTINGS",
    "USER",
]


def state_of(request: web.Request) -> web.Application:
    """The root application, where every key above lives, from any request (a route
    of the root or of the ``/api`` sub-app).

    Use it instead of ``request.config_dict``, which builds a new chain of the
    matched apps on every access (measured: ~1.5 µs a lookup, about a tenth of an
    append's CPU over the ten lookups of a request); this is one tuple index.
    """
    return request.match_info.apps[0]
