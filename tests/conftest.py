"""Shared fixtures: a real app on a real socket over a temporary data dir."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from server.app import make_app
from server.keys import REGISTRY
from server.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
# One scale for every wait in the suite: slow CI machines raise it.
TIMEOUT = float(os.environ.get("ROOST_TEST_TIMEOUT", "10"))


async def eventually(pred: Callable[[], Any], what: str) -> None:
    """Wait until ``pred()`` is true, polling every 10 ms; fail after TIMEOUT s."""
    deadline = time.monotonic() + TIMEOUT
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class ServerProcess:
    """``roost serve`` in a real child process (for crash and signal tests)."""

    def __init__(self, data_dir: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = data_dir.parent / f"server-{self.port}.log"
        self._logf = open(self.log, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "server.cli",
                "serve",
                "--port",
                str(self.port),
                "--data-dir",
                str(data_dir),
                *extra,
            ],
            cwd=ROOT,
            stdout=self._logf,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )

    async def wait_ready(self) -> None:
        deadline = time.monotonic() + TIMEOUT
        async with aiohttp.ClientSession() as s:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise AssertionError(f"server exited early: {self.log.read_text()}")
                try:
                    async with s.get(self.url + "/healthz") as r:
                        if r.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
        raise AssertionError(f"server not ready after {TIMEOUT}s: {self.log.read_text()}")

    def kill9(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=TIMEOUT)

    def terminate(self) -> int:
        self.proc.terminate()
        return self.proc.wait(timeout=TIMEOUT * 2)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=TIMEOUT)
        self._logf.close()


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    procs: list[ServerProcess] = []

    def start(*extra: str, env: dict[str, str] | None = None) -> ServerProcess:
        p = ServerProcess(tmp_path / "data", *extra, env=env)
        procs.append(p)
        return p

    yield start
    for p in procs:
        p.close()
