"""Shared fixtures: a real app on a real socket over a temporary data dir, and a real
``roost serve`` process. The harness itself (waits, the process, writers) is
``tests/harness.py``; its names are re-exported here for existing imports."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from server.app import make_app
from server.keys import REGISTRY
from server.settings import Settings
from tests.harness import (
    ROOT,
    TIMEOUT,
    Appender,
    Appenders,
    ServerProcess,
    deadline,
    eventually,
    eventually_blocking,
    free_port,
    running_server,
)

__all__ = [
    "ROOT",
    "TIMEOUT",
    "Appender",
    "Appenders",
    "ServerProcess",
    "deadline",
    "eventually",
    "eventually_blocking",
    "free_port",
    "running_server",
]


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    """The loop the in-process tests run on: uvloop, as ``roost serve`` does by default
    (``--event-loop auto``); ``ROOST_TEST_LOOP=asyncio`` runs them on asyncio's own."""
    if os.environ.get("ROOST_TEST_LOOP", "uvloop") == "asyncio":
        return {"asyncio": asyncio.new_event_loop}
    import uvloop

    return {"uvloop": uvloop.new_event_loop}


def make_settings(tmp_path: Path, **kw: Any) -> Settings:
    return Settings(data_dir=str(tmp_path / "data"), **kw)


@pytest.fixture
async def make_client(
    tmp_path: Path,
) -> AsyncIterator[Callable[..., Any]]:
    """Factory: ``await make_client(**settings)`` → a TestClient on a real socket."""
    clients: list[TestClient[web.Request, web.Application]] = []

    async def factory(**kw: Any) -> TestClient[web.Request, web.Application]:
        settings = make_settings(tmp_path, **kw)
        app = make_app(settings)
        client = TestClient(TestServer(app))
        await client.start_server()
        clients.append(client)
        return client

    yield factory
    for c in clients:
        await c.close()


@pytest.fixture
async def client(make_client: Callable[..., Any]) -> TestClient[web.Request, web.Application]:
    c: TestClient[web.Request, web.Application] = await make_client()
    return c


def registry_of(client: TestClient[web.Request, web.Application]) -> Any:
    return client.server.app[REGISTRY]


async def new_session(client: Any, sid: str = "s1", **body: Any) -> dict[str, Any]:
    r = await client.post("/api/sessions", json={"id": sid, **body})
    assert r.status == 201, await r.text()
    data: dict[str, Any] = await r.json()
    return data


async def append(client: Any, sid: str, content: str, **body: Any) -> dict[str, Any]:
    r = await client.post(
        f"/api/sessions/{sid}/messages", json={"role": "user", "content": content, **body}
    )
    assert r.status in (200, 201), await r.text()
    data: dict[str, Any] = await r.json()
    return data


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Factory: ``server_process(*extra, env=)`` → a started (not yet ready)
    :class:`ServerProcess` over ``tmp_path/data``; every one is stopped (SIGTERM,
    then SIGKILL after a bound) at teardown and its log printed (pytest shows it
    when the test failed). Several calls share the data dir (restart tests)."""
    procs: list[ServerProcess] = []

    def start(*extra: str, env: dict[str, str] | None = None) -> ServerProcess:
        p = ServerProcess(tmp_path / "data", *extra, env=env)
        procs.append(p)
        return p

    yield start
    for p in procs:
        p.close()
        # shown by pytest only when the test failed
        print(f"--- log of roost serve on port {p.port} (exit {p.proc.returncode}) ---")
        print(p.log_text()[-20000:])
