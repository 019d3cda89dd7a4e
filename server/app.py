"""The aiohttp application: wiring, lifecycle, operations routes."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from actors.registry import ActorRegistry
from actors.responders import EchoResponder, Responder
from server.errors import Handler, error_middleware, error_response
from server.http import DISK, REGISTRY, SETTINGS, json_response
from server.listen import fd_budget
from server.metrics import METRICS
from server.metrics import install as install_metrics
from server.openapi import OPENAPI, Reply, describe, openapi_json
from server.schemas import Health
from server.settings import Settings
from server.sse import OPEN_STREAMS
from storage.layout import DataDir, DiskReserve, limit_malloc_arenas, raise_nofile_limit

log = logging.getLogger("roost.server")


@describe(responses={200: Reply("the server is up", Health)})
async def healthz(request: web.Request) -> web.Response:
    """Liveness: ``{status, live_actors}``."""
    reg = request.app[REGISTRY]
    return json_response({"status": "ok", "live_actors": reg.live})


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
    ``--disk-reserve`` is 0.
    """
    if (
        request.method in CHANGE_METHODS
        and request.path not in _REFUSAL_EXEMPT
        and not request.path.endswith("/cancel")
    ):
        request.app[DISK].check()
    return await handler(request)


async def _not_found(request: web.Request) -> web.Response:
    return error_response(404, "not_found", f"no route for {request.method} {request.path}")


def make_responder(settings: Settings, http: aiohttp.ClientSession) -> Responder:
    """The responder the settings name."""
    if settings.responder == "openai":
        from server.openai import OpenAIResponder

        return OpenAIResponder(
            http,
            base_url=settings.openai_base_url,
            api_key=settings.openai_api_key,
            model=settings.openai_model,
            fallbacks=[m.strip() for m in settings.openai_fallback_models.split(",")],
            timeout=settings.openai_timeout,
        )
    return EchoResponder(settings.echo_words_per_second)


def make_app(settings: Settings) -> web.Application:
    """Build the application; resources open in ``cleanup_ctx`` when it starts.

    Raises ``server.auth.TokensError`` if the tokens file cannot be used.
    """
    from server.access import LIMITS, cors_headers, gate_middleware, make_limits, rate_middleware
    from server.auth import LOGINS, TOKENS, Logins, auth_middleware, load_tokens
    from server.auth import routes as auth_routes
    from server.routes_chat import routes as chat_routes
    from server.routes_core import routes as core_routes
    from server.routes_files import IMPORT_SLOTS
    from server.routes_files import routes as files_routes
    from server.routes_realtime import OPEN_FEEDS, OPEN_SOCKETS, close_realtime
    from server.routes_realtime import routes as realtime_routes
    from server.routes_static import setup_static

    app = web.Application(
        middlewares=[
            gate_middleware,
            error_middleware,
            auth_middleware,
            rate_middleware,
            disk_middleware,
        ],
        client_max_size=settings.max_body_bytes,
    )
    app[SETTINGS] = settings
    app[DISK] = DiskReserve(DataDir(settings.data_dir).root, settings.disk_reserve)
    app[TOKENS] = load_tokens(settings.tokens_file)
    app[LOGINS] = Logins(settings.login_cookie_max_age)
    app[IMPORT_SLOTS] = asyncio.Semaphore(settings.max_concurrent_imports)
    app[LIMITS] = make_limits(app)
    app.on_response_prepare.append(cors_headers)
    app.on_response_prepare.append(nosniff)

    async def registry_ctx(app: web.Application) -> AsyncIterator[None]:
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
        )
        await registry.start()
        if settings.synchronous in ("FULL", "EXTRA"):
            log.info("durable commits are flushed with %s", registry.syncer.kind)
        app[REGISTRY] = registry
        app[METRICS].attach(registry)
        http = aiohttp.ClientSession()
        registry.responder = make_responder(settings, http)
        try:
            yield
        finally:
            await registry.close()
            await http.close()

    app[OPEN_STREAMS] = set()
    app[OPEN_SOCKETS] = set()
    app[OPEN_FEEDS] = set()
    app.cleanup_ctx.append(registry_ctx)
    app.on_shutdown.append(close_realtime)
    install_metrics(app)
    app.router.add_get("/healthz", healthz)
    app.router.add_routes(core_routes)
    app.router.add_routes(chat_routes)
    app.router.add_routes(realtime_routes)
    app.router.add_routes(files_routes)
    from server.routes_aisdk import routes as aisdk_routes

    app.router.add_routes(aisdk_routes)
    setup_static(app)
    app.router.add_routes(auth_routes)
    app[OPENAPI] = {}
    app.router.add_get("/openapi.json", openapi_json)
    return app
