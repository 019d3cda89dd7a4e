"""The aiohttp application: wiring, lifecycle, operations routes."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web

from actors.registry import ActorRegistry
from server.errors import error_middleware, error_response
from server.http import REGISTRY, SETTINGS, json_response
from server.settings import Settings
from storage.layout import DataDir, raise_nofile_limit

log = logging.getLogger("roost.server")


async def healthz(request: web.Request) -> web.Response:
    reg = request.app[REGISTRY]
    return json_response({"status": "ok", "live_actors": reg.live})


async def _not_found(request: web.Request) -> web.Response:
    return error_response(404, "not_found", f"no route for {request.method} {request.path}")


def make_app(settings: Settings) -> web.Application:
    """Build the application; resources open in ``cleanup_ctx`` when it starts."""
    from server.routes_core import routes as core_routes

    app = web.Application(
        middlewares=[error_middleware],
        client_max_size=settings.max_body_bytes,
    )
    app[SETTINGS] = settings

    async def registry_ctx(app: web.Application) -> AsyncIterator[None]:
        raise_nofile_limit()
        datadir = DataDir(settings.data_dir)
        datadir.ensure()
        registry = ActorRegistry(
            datadir, settings.actor_config(), write_threads=settings.write_threads
        )
        await registry.start()
        app[REGISTRY] = registry
        try:
            yield
        finally:
            await registry.close()

    app.cleanup_ctx.append(registry_ctx)
    app.router.add_get("/healthz", healthz)
    app.router.add_routes(core_routes)
    return app
