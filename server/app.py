"""The aiohttp application: how the server is composed, and its lifecycle.

Composition. The **root** application serves what is not the API and holds all
the state; the **``/api`` sub-app** (``root.add_subapp("/api", api)``) serves the
API. Paths, route templates in ``/metrics`` labels and ``/openapi.json`` all
carry the ``/api`` prefix as before.

Middlewares, outermost first, and why each lives where it does:

- root ``metrics_middleware`` (``server.routes_ops``): times every request,
  API or not, 404s included, by its route template;
- root ``gate_middleware`` (``server.access``): loopback hosts, CORS
  preflights and foreign origins concern every request, the page and
  ``/healthz`` included, and must answer before any route runs;
- root ``error_middleware`` (``server.errors``): every failure anywhere
  (a sub-app's middleware or handler too) leaves in the one JSON error shape;
- ``/api`` ``auth_middleware`` (``server.auth``): only the API needs a
  caller; routes described ``public=True`` (login, logout) pass without one;
  unknown ``/api`` paths answer 401 without a token (not enumerable);
- ``/api`` ``rate_middleware`` (``server.access``): changes are API requests,
  and the limits count the authenticated caller, so it runs after auth.

Security headers (CORS ``Access-Control-*``, ``Vary: Origin``) are added for
every response by the root's ``on_response_prepare`` hook; the page's own
headers (CSP, nosniff) come with it from ``server.routes_static``. At the root,
``/healthz``, ``/openapi.json``, ``/`` and ``/static/*`` are public (described
``public=True``) and ``/metrics`` authenticates itself (``server.routes_ops``).

State. Every key (``server.keys``) is on the root; handlers read it with
``state_of(request)[KEY]``. Long-lived resources each open in their own
``cleanup_ctx`` (an ``@asynccontextmanager``), in this order (cleanup runs in
reverse): the HTTP client, the actor registry, the responder, the metrics'
attachment to the registry, the rate limiter, the open streams. A context's
cleanup runs if and only if its startup succeeded.

Shutdown. ``on_shutdown`` (``close_realtime``) starts the drain while
connections are still up: running replies get ``--shutdown-grace`` and are
then stopped as ``interrupted`` (their streams get an ``error`` event
``shutting_down`` and the final ``message``; feeds the ``message.updated``),
then feeds end and sockets close with 1001. Meanwhile aiohttp waits for the
handlers in flight (an upload) for the grace and a margin
(``server.listen.serve``'s ``shutdown_timeout``) and cancels those still
running; then the contexts clean up, the streams' first (it waits for the
drain), the registry's after it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from actors.feed import Feed
from actors.process import limit_malloc_arenas, raise_nofile_limit
from actors.pubsub import Subscription
from actors.registry import ActorRegistry
from server.access import cors_headers, gate_middleware, make_limits, rate_middleware
from server.auth import auth_middleware
from server.auth import routes as auth_routes
from server.drain import Drain
from server.errors import Handler, error_middleware
from server.identity import Identity
from server.import_slots import ImportSlots
from server.keys import (
    DRAIN,
    HTTP_CLIENT,
    IDENTITY,
    IMPORT_SLOTS,
    LIMITS,
    LOGINS,
    METRICS,
    OPEN_FEEDS,
    OPEN_SOCKETS,
    OPEN_STREAMS,
    OPENAPI,
    REGISTRY,
    SETTINGS,
    state_of,
)
from server.listen import fd_budget
from server.logs import access_middlewares
from server.metrics import Metrics
from server.openapi import openapi_json
from server.responder_factory import make_responder, shard_responder
from server.routes_across import routes as across_routes
from server.routes_aisdk import routes as aisdk_routes
from server.routes_chat import routes as chat_routes
from server.routes_context import routes as context_routes
from server.routes_core import routes as core_routes
from server.routes_files import routes as files_routes
from server.routes_identity import routes as identity_routes
from server.routes_meta import routes as meta_routes
from server.routes_ops import add_ops_routes, metrics_middleware
from server.routes_realtime import close_realtime
from server.routes_realtime import routes as realtime_routes
from server.routes_static import setup_static
from server.routes_tools import routes as tools_routes
from server.settings import Settings
from server.tokens import Logins, load_tokens
from storage.layout import DataDir

if TYPE_CHECKING:
    from actors.cluster.placement import ShardSpec

log = logging.getLogger("roost.server")


async def nosniff(request: web.BaseRequest, response: web.StreamResponse) -> None:
    """on_response_prepare: no browser may guess another type than the one sent."""
    response.headers.setdefault("X-Content-Type-Options", "nosniff")


# Changes the disk reserve never refuses: they free space or only end work under way.
_REFUSAL_EXEMPT = frozenset({"/api/login", "/api/logout"})
CHANGE_METHODS = frozenset({"POST", "PUT", "PATCH"})


@web.middleware
async def disk_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse new writes with 507 ``storage_full`` while the disk is under its reserve.

    Reads, deletes, logins and cancels always pass; so does everything when
    ``--disk-reserve`` is 0. Runs before the body is read, so a full disk never
    takes an upload's bytes first.
    """
    if (
        request.method in CHANGE_METHODS
        and request.path not in _REFUSAL_EXEMPT
        and not request.path.endswith("/cancel")
    ):
        state_of(request)[REGISTRY].check_disk()
    return await handler(request)


# ---------------------------------------------------------------------------- resources


@asynccontextmanager
async def http_client_ctx(app: web.Application) -> AsyncIterator[None]:
    """The outgoing HTTP client (the OpenAI responder's); closed last."""
    http = aiohttp.ClientSession()
    app[HTTP_CLIENT] = http
    try:
        yield
    finally:
        await http.close()


@asynccontextmanager
async def registry_ctx(app: web.Application) -> AsyncIterator[None]:
    """The actor registry over the data directory; closing it ends every actor
    (their replies and commits) before the resources opened earlier go.

    With ``--cluster`` it is the cluster's remote façade instead (the one
    choice between single node and cluster mode; the routes do not know).
    """
    settings = app[SETTINGS]
    if settings.cluster is not None:
        async with cluster_ctx(app):
            yield
        return
    soft, _ = raise_nofile_limit()
    budget = fd_budget(soft, settings.max_live_actors)
    log.info(
        "descriptor limit %d: at most %d live actors (--max-live-actors %d) "
        "and %d client connections",
        budget.limit,
        budget.actors,
        settings.max_live_actors,
        budget.connections,
    )
    limit_malloc_arenas()
    datadir = DataDir(settings.data_dir)
    datadir.ensure()
    registry = ActorRegistry(
        datadir,
        dataclasses.replace(settings.actor_config(), max_live=budget.actors),
        write_threads=settings.write_threads,
        fsync=settings.fsync,
        disk_reserve=settings.disk_reserve,
    )
    if settings.replica is not None:  # Litestream and boto3 only with --replica
        from actors.replica import Replica
        from actors.replica_store import Target

        target = Target.parse(settings.replica, settings.replica_endpoint)
        registry.replica = Replica(target, name="node", l0_retention=settings.replica_l0_retention)
        registry.replica.park_after = settings.replica_idle
    await registry.start()
    if settings.synchronous in ("FULL", "EXTRA"):
        log.info("durable commits are flushed with %s", registry.syncer.kind)
    app[REGISTRY] = registry
    try:
        yield
    finally:
        await registry.close()


@asynccontextmanager
async def cluster_ctx(app: web.Application) -> AsyncIterator[None]:
    """Cluster mode: join the Ray cluster (``--cluster``) and serve through its shards."""
    from actors.cluster.front import ClusterRegistry, connect

    settings = app[SETTINGS]
    assert settings.cluster is not None
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(
        None,
        connect,
        settings.cluster,
        settings.cluster_name,
        settings.shards,
        settings.request_timeout,
    )
    spec = shard_spec(settings)
    registry = ClusterRegistry(
        spec,
        request_timeout=settings.request_timeout,
        subscriber_queue=settings.subscriber_queue,
        transport=settings.shard_transport,
    )
    log.info(
        "cluster mode: front of Ray cluster %s (namespace %s, %d shards, %s transport)",
        settings.cluster,
        settings.cluster_name,
        settings.shards,
        settings.shard_transport,
    )
    app[REGISTRY] = registry
    try:
        yield
    finally:
        await registry.close()


def shard_spec(settings: Settings) -> ShardSpec:
    """What this front's settings make a cluster's shards with (the first front wins)."""
    from actors.cluster.placement import ShardSpec

    return ShardSpec(
        data_dir=os.path.abspath(settings.data_dir),
        shards=settings.shards,
        namespace=settings.cluster_name,
        config=dataclasses.asdict(settings.actor_config()),
        write_threads=settings.write_threads,
        fsync=settings.fsync,
        disk_reserve=settings.disk_reserve,
        responder=functools.partial(shard_responder, settings.model_dump()),
        extra={"log_level": settings.log_level}
        | (
            {
                "replica": [
                    settings.replica,
                    settings.replica_endpoint,
                    settings.replica_idle,
                    settings.replica_l0_retention,
                ]
            }
            if settings.replica is not None
            else {}
        ),
    )


@asynccontextmanager
async def responder_ctx(app: web.Application) -> AsyncIterator[None]:
    """The responder that writes replies, handed to the registry (a cluster's shards
    make their own)."""
    registry = app[REGISTRY]
    if isinstance(registry, ActorRegistry):
        registry.responder = make_responder(app[SETTINGS], app[HTTP_CLIENT], registry.datadir)
    yield


@asynccontextmanager
async def metrics_ctx(app: web.Application) -> AsyncIterator[None]:
    """The metrics observe the registry while it runs."""
    registry = app[REGISTRY]
    app[METRICS].attach(registry)
    try:
        yield
    finally:
        app[METRICS].detach(registry)


@asynccontextmanager
async def limits_ctx(app: web.Application) -> AsyncIterator[None]:
    """The rate limiter's buckets (in memory; nothing to release)."""
    app[LIMITS] = make_limits(app)
    yield


@asynccontextmanager
async def open_streams_ctx(app: web.Application) -> AsyncIterator[None]:
    """The registers of open SSE subscriptions, WebSockets and feeds, and the drain.

    ``close_realtime`` (on_shutdown) starts the drain that ends them gracefully
    while connections are up, and each handler deregisters its own on the way
    out; this cleanup waits for the drain, then ends any subscription or feed
    still registered (closing is idempotent). Sockets are their handlers' to
    close: by now their connections are gone.
    """
    streams: set[Subscription] = set()
    sockets: dict[web.WebSocketResponse, asyncio.Task[None]] = {}
    feeds: set[Feed] = set()
    drain = Drain()
    app[OPEN_STREAMS], app[OPEN_SOCKETS], app[OPEN_FEEDS] = streams, sockets, feeds
    app[DRAIN] = drain
    try:
        yield
    finally:
        await drain.wait()
        for feed in list(feeds):
            feed.close()
        for sub in list(streams):
            sub.close()
        feeds.clear()
        streams.clear()
        sockets.clear()


# ---------------------------------------------------------------------------- composition


def make_api() -> web.Application:
    """The ``/api`` sub-app: the API's routes behind authentication and rate limits."""
    api = web.Application(middlewares=[auth_middleware, rate_middleware, disk_middleware])
    for routes in (
        core_routes,
        chat_routes,
        realtime_routes,
        files_routes,
        aisdk_routes,
        auth_routes,
        identity_routes,
        meta_routes,
        across_routes,
        tools_routes,
        context_routes,
    ):
        api.router.add_routes(routes)
    return api


def make_app(settings: Settings) -> web.Application:
    """Build the application; resources open in ``cleanup_ctx`` when it starts.

    Raises ``server.tokens.TokensError`` if the tokens file cannot be used, and
    its subclass ``server.identity.IdentityError`` for a JWT key that cannot.
    """
    app = web.Application(
        middlewares=[
            *access_middlewares(settings),
            metrics_middleware,
            gate_middleware,
            error_middleware,
        ],
        client_max_size=settings.max_body_bytes,
    )
    app[SETTINGS] = settings
    app[IDENTITY] = Identity(settings, load_tokens(settings.tokens_file))
    app[METRICS] = Metrics()
    app[LOGINS] = Logins(settings.login_cookie_max_age)
    app[IMPORT_SLOTS] = ImportSlots(settings.max_concurrent_imports)
    app.on_response_prepare.append(nosniff)
    app[OPENAPI] = {}
    app.on_response_prepare.append(cors_headers)
    app.cleanup_ctx.extend(
        [
            http_client_ctx,
            registry_ctx,
            responder_ctx,
            metrics_ctx,
            limits_ctx,
            open_streams_ctx,
        ]
    )
    app.on_shutdown.append(close_realtime)
    add_ops_routes(app)
    app.add_subapp("/api", make_api())
    setup_static(app)
    app.router.add_get("/openapi.json", openapi_json)
    return app
