"""The web page: ``/`` and ``/static/<name>`` from ``server/static`` (SPEC section 4).

The files are read once when the app is built; a request names a file by its
base name only (no directories), so no request path ever reaches the file
system. Third-party code lives in ``server/static/vendor`` (each library with its
LICENSE) and is served at ``/static/vendor/<name>`` the same way. ``index.html``
is served with ``Cache-Control: no-cache``; assets carry a strong ``ETag``
(content hash) and answer ``If-None-Match`` with 304.
"""

from __future__ import annotations

from aiohttp import web

from server.assets import NAME, STATIC_DIR, TYPES, VENDOR, Asset, load_assets
from server.errors import ApiError
from server.keys import ASSETS, state_of
from server.openapi import Param, Reply, describe

__all__ = ["CSP", "STATIC_DIR", "index", "setup_static", "share_page", "static_file"]

# The page talks only to its own origin; no inline script or style, nothing fetched elsewhere.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "media-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)


def _headers(asset: Asset, cache: str) -> dict[str, str]:
    headers = {
        "ETag": asset.etag,
        "Cache-Control": cache,
        "X-Content-Type-Options": "nosniff",
    }
    if asset.content_type == "text/html":
        headers["Content-Security-Policy"] = CSP
        headers["Referrer-Policy"] = "no-referrer"
    return headers


def _serve(request: web.Request, name: str, cache: str, prefix: str = "") -> web.Response:
    asset = state_of(request)[ASSETS].get(prefix + name) if NAME.match(name) else None
    if asset is None:
        raise ApiError(404, "not_found", f"no static file {name[:80]!r}")
    headers = _headers(asset, cache)
    inm = request.headers.get("If-None-Match", "")
    if asset.etag in {t.strip().removeprefix("W/") for t in inm.split(",")}:
        return web.Response(status=304, headers=headers)
    charset = "utf-8" if asset.content_type.startswith(("text/", "image/svg")) else None
    return web.Response(
        body=asset.body, content_type=asset.content_type, charset=charset, headers=headers
    )


IF_NONE_MATCH = Param("If-None-Match", "header", {"type": "string"}, "an ETag you have")
ASSET_HEADERS = {"ETag": "a hash of the file", "Cache-Control": "no-cache (revalidate)"}


@describe(
    params=(IF_NONE_MATCH,),
    responses={
        200: Reply("the page", None, ("text/html",), headers=ASSET_HEADERS),
        304: Reply("unchanged: If-None-Match matched", headers={"ETag": "as for 200"}),
    },
    public=True,
)
async def index(request: web.Request) -> web.Response:
    """The page itself; never cached without revalidation."""
    return _serve(request, "index.html", "no-cache")


@describe(
    params=(IF_NONE_MATCH,),
    responses={
        200: Reply("the file", None, tuple(sorted(set(TYPES.values()))), headers=ASSET_HEADERS),
        304: Reply("unchanged: If-None-Match matched", headers={"ETag": "as for 200"}),
    },
    public=True,
)
async def static_file(request: web.Request) -> web.Response:
    """An asset by base name; revalidated by ETag (cheap 304s)."""
    return _serve(request, request.match_info["name"], "no-cache")


@describe(
    params=(IF_NONE_MATCH,),
    responses={
        200: Reply("the file", None, tuple(sorted(set(TYPES.values()))), headers=ASSET_HEADERS),
        304: Reply("unchanged: If-None-Match matched", headers={"ETag": "as for 200"}),
    },
    public=True,
)
async def vendor_file(request: web.Request) -> web.Response:
    """A vendored library file (or its LICENSE) by base name; revalidated by ETag."""
    return _serve(request, request.match_info["name"], "no-cache", f"{VENDOR}/")


@describe(
    params=(Param("share_id", "path", {"type": "string"}), IF_NONE_MATCH),
    responses={
        200: Reply("the page of a share link", None, ("text/html",), headers=ASSET_HEADERS),
        304: Reply("unchanged: If-None-Match matched", headers={"ETag": "as for 200"}),
    },
    public=True,
)
async def share_page(request: web.Request) -> web.Response:
    """The page of a share link: it reads ``GET /api/shares/{id}`` (the same page for
    every id; an unknown one says so once loaded)."""
    return _serve(request, "share.html", "no-cache")


def setup_static(app: web.Application) -> None:
    """Load ``server/static``; add ``GET /``, ``/s/{share_id}``, ``/static/{name}``,
    ``/static/vendor/{name}``."""
    app[ASSETS] = load_assets()
    app.router.add_get("/", index)
    app.router.add_get("/s/{share_id}", share_page)
    app.router.add_get("/static/{name}", static_file)
    app.router.add_get(f"/static/{VENDOR}/{{name}}", vendor_file)
