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


# What server/ may still take from storage/: error types and pure helpers only
# (no file, no connection, no op). Everything else goes through actors.session.
SERVER_STORAGE_ALLOWED: dict[str, set[str] | None] = {
    "storage.errors": None,  # the error types (any)
    "storage.ids": {"validate_session_id", "ascii_int"},  # pure parsers
    "storage.layout": {  # app setup, and the data dir's error type
        "DataDir",
        "DataDirError",
        "limit_malloc_arenas",
        "raise_nofile_limit",
    },
}


def _storage_imports(package: str) -> list[tuple[str, str, str | None]]:
    """``(file, module, name)`` for every import of ``storage.*`` under ``package``."""
    found: list[tuple[str, str, str | None]] = []
    for path in sorted((ROOT / package).rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found += [(path.name, a.name, None) for a in node.names if a.name == "storage"]
                found += [
                    (path.name, a.name, None) for a in node.names if a.name.startswith("storage.")
                ]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                mod = node.module
                if mod == "storage" or mod.startswith("storage."):
                    found += [(path.name, mod, a.name) for a in node.names]
    return found


def test_server_imports_from_storage_only_errors_and_pure_helpers() -> None:
    """server/ imports from storage/ only what SERVER_STORAGE_ALLOWED lists."""
    bad = []
    for file, module, name in _storage_imports("server"):
        allowed = SERVER_STORAGE_ALLOWED.get(module, set())
        if name is None or (allowed is not None and name not in allowed):
            bad.append(f"{file}: {module}.{name or '*'}")
    assert not bad, bad


def test_layering_scan_sees_storage_imports() -> None:
    """The scan finds the storage imports actors/ makes (so an empty result means something)."""
    assert ("session.py", "storage.ops", "op_append") in _storage_imports("actors")


def _function_level_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    out = []
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            for node in ast.walk(fn):
                if isinstance(node, ast.Import | ast.ImportFrom):
                    out.append(f"{path.name}:{node.lineno}")
    return out


def test_actors_have_no_lazy_imports() -> None:
    """No import inside a function in actors/: the import graph is what the top says."""
    lazy = [hit for path in (ROOT / "actors").glob("*.py") for hit in _function_level_imports(path)]
    assert not lazy, lazy


def test_replies_and_maintenance_do_not_import_the_actor() -> None:
    """The actor holds Replies and Maintenance through a one-way import."""
    for name in ("replies.py", "maintenance.py", "gate.py", "hooks.py"):
        tree = ast.parse((ROOT / "actors" / name).read_text())
        modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not modules & {"actors.actor", "actors.registry", "actors.session"}, name


def test_storage_is_synchronous() -> None:
    """storage/ has no event loop: its contract is synchronous calls on some thread."""
    assert "asyncio" not in _imports("storage")
