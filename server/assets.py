"""The web page's files, read once: name → bytes, content type, ETag. Pure (no aiohttp).

``server.routes_static`` serves them; ``server.keys.ASSETS`` holds them on the app.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

STATIC_DIR = Path(__file__).resolve().parent / "static"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*\.(?:html|css|js|svg|png|ico|json|txt)$")
TYPES = {
    ".js": "text/javascript",
    ".css": "text/css",
    ".html": "text/html",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/vnd.microsoft.icon",
    ".json": "application/json",
    ".txt": "text/plain",
}


@dataclass(slots=True, frozen=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


VENDOR = "vendor"  # third-party code, each library with its LICENSE


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
            if not path.is_file() or not NAME.match(path.name):
                continue
            body = path.read_bytes()
            ctype = TYPES[path.suffix]  # NAME admits only these suffixes
            etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
            assets[prefix + path.name] = Asset(body, ctype, etag)
    return assets
