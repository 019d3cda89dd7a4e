"""The import direction server → actors → storage holds."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _imports(package: str) -> set[str]:
    found: set[str] = set()
    for path in (ROOT / package).rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module.split(".")[0])
    return found


def test_storage_imports_no_http_and_no_actors() -> None:
    """storage/ knows nothing of aiohttp, actors or server."""
    assert not _imports("storage") & {"aiohttp", "actors", "server"}


def test_actors_import_no_http() -> None:
    """actors/ knows nothing of aiohttp or server."""
    assert not _imports("actors") & {"aiohttp", "server"}


def test_layering_check_sees_imports() -> None:
    """The checker itself finds the imports it looks for."""
    assert "aiohttp" in _imports("server")
    assert "storage" in _imports("actors")
