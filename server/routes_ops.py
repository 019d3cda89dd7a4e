"""Operations routes at the root: ``GET /healthz``, ``GET /metrics``, and request timing.

``/healthz`` is public (liveness probes carry no token). ``/metrics`` needs a
token when tokens are configured, like the API: it lives at the root (outside
``/api``, whose middleware authenticates), so it calls
:func:`server.auth.authenticate` itself. :func:`metrics_middleware` is the
root's outermost middleware and times every request by its route template
(``/api/sessions/{sid}``, the ``/api`` prefix included), not its concrete path.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from server.auth import authenticate
from server.errors import Handler
from server.http import json_response
from server.keys import METRICS, REGISTRY, state_of
from server.openapi import Reply, describe
from server.responses import Health


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Time every request by its route template (not its concrete path)."""
    started = time.perf_counter()
    status = 500
    try:
        resp = await handler(request)
        status = resp.status
        return resp
    finally:
        route = request.match_info.route.resource
        name = route.canonical if route is not None else "unmatched"
        state_of(request)[METRICS].request_timer(request.method, name, status).observe(
            time.perf_counter() - started
        )


@describe(responses={200: Reply("Prometheus text exposition format", None, ("text/plain",))})
async def metrics_handler(request: web.Request) -> web.Response:
    """The server's metrics (a token is needed when tokens are configured)."""
    refused = await authenticate(request)
    if refused is not None:
        return refused
    body = generate_latest(state_of(request)[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


@describe(responses={200: Reply("the server is up", Health)}, public=True)
async def healthz(request: web.Request) -> web.Response:
    """Liveness: ``{status, live_actors}``, and in cluster mode ``cluster``
    (``{namespace, shards, shards_placed, nodes_alive}``)."""
    reg = state_of(request)[REGISTRY]
    body: dict[str, Any] = {"status": "ok", "live_actors": reg.live}
    cluster = await reg.cluster_info()
    if cluster is not None:
        body["cluster"] = cluster
    return json_response(body)


def add_ops_routes(app: web.Application) -> None:
    """Add ``GET /healthz`` and ``GET /metrics`` to the root ``app``."""
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_handler)
