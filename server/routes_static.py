"""The web page: ``/`` and ``/static/<name>`` from ``server/static`` (SPEC section 4).

The files are read once when the app is built; a request names a file by its
base name only (no directories), so no request path ever reaches the file
system. Third-party code lives in ``server/static/vendor`` (each library with its
LICENSE) and is served at ``/static/vendor/<name>`` the same way. ``index.html``
is served with ``Cache-Control: no-cache``; assets carry a strong ``ETag``
(content hash) and answer ``If-None-Match`` with 304.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from server.errors import ApiError
from server.openapi import Param, Reply, describe

STATIC_DIR = Path(__file__).resolve().parent / "static"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*\.(?:html|css|js|svg|png|ico|json|txt)$")
_TYPES = {
    ".js": "text/javascript",
    ".css": "text/css",
    ".html": "text/html",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/vnd.microsoft.icon",
    ".json": "application/json",
    ".txt": "text/plain",
}

# The page talks only to its own origin; no inline script or style, nothing fetched elsewhere.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "media-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)


@dataclass(slots=True, frozen=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


VENDOR = "vendor"


def load_assets(directory: Path = STATIC_DIR) -> dict[str, Asset]:
    """Every servable file in ``directory`` and its ``vendor`` folder.

    Keys are base names (``app.js``) and ``vendor/<base name>``; a missing
    directory gives none. Nothing deeper than ``vendor/`` is ever loaded.
    """
    assets: dict[str, Asset] = {}
    for folder, prefix in ((directory, ""), (directory / VENDOR, f"{VENDOR}/")):
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if not path.is_file() or not _NAME.match(path.name):
                continue
            body = path.read_bytes()
            ctype = _TYPES[path.suffix]  # _NAME admits only these suffixes
            etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
            assets[prefix + path.name] = Asset(body, ctype, etag)
    return assets


ASSETS: web.AppKey[dict[str, Asset]] = web.AppKey("static_assets", dict)


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
    asset = request.app[ASSETS].get(prefix + name) if _NAME.match(name) else None
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
)
async def index(request: web.Request) -> web.Response:
    """The page itself; never cached without revalidation."""
    return _serve(request, "index.html", "no-cache")


@describe(
    params=(IF_NONE_MATCH,),
    responses={
        200: Reply("the file", None, tuple(sorted(set(_TYPES.values()))), headers=ASSET_HEADERS),
        304: Reply("unchanged: If-None-Match matched", headers={"ETag": "as for 200"}),
    },
)
async def static_file(request: web.Request) -> web.Response:
    """An asset by base name; revalidated by ETag (cheap 304s)."""
    return _serve(request, request.match_info["name"], "no-cache")


@describe(
    params=(IF_NONE_MATCH,),
    responses={
        200: Reply("the file", None, tuple(sorted(set(_TYPES.values()))), headers=ASSET_HEADERS),
        304: Reply("unchanged: If-None-Match matched", headers={"ETag": "as for 200"}),
    },
)
async def vendor_file(request: web.Request) -> web.Response:
    """A vendored library file (or its LICENSE) by base name; revalidated by ETag."""
    return _serve(request, request.match_info["name"], "no-cache", f"{VENDOR}/")


def setup_static(app: web.Application) -> None:
    """Load ``server/static``; add ``GET /``, ``/static/{name}``, ``/static/vendor/{name}``."""
    app[ASSETS] = load_assets()
    app.router.add_get("/", index)
    app.router.add_get("/static/{name}", static_file)
    app.router.add_get(f"/static/{VENDOR}/{{name}}", vendor_file)
