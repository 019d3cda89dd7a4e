"""``--event-loop``: uvloop by default, asyncio's own loop on request, and both serve.

The in-process suite runs on the loop ``roost serve`` uses by default (see
``pytest_asyncio_loop_factories`` in ``conftest.py``); here real ``roost serve``
processes on each loop take a durable append, flush it through Linux AIO (the
eventfd reader must work on either loop) and broadcast it to a WebSocket.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from server.loops import LoopError, loop_factory, loop_name
from tests.harness import TIMEOUT, ServerProcess


async def test_this_async_test_runs_on_the_chosen_loop() -> None:
    want = "asyncio" if os.environ.get("ROOST_TEST_LOOP") == "asyncio" else "uvloop"
    assert loop_name(asyncio.get_running_loop()) == want


def test_choices() -> None:
    assert loop_factory("asyncio") is None
    assert loop_factory("auto", cluster=True) is None  # fronts stay on asyncio unless asked
    for choice, cluster in (("auto", False), ("uvloop", False), ("uvloop", True)):
        factory = loop_factory(choice, cluster=cluster)
        assert factory is not None
        loop = factory()
        try:
            assert loop_name(loop) == "uvloop"
        finally:
            loop.close()
    standard = asyncio.new_event_loop()
    try:
        assert loop_name(standard) == "asyncio"
    finally:
        standard.close()


def test_uvloop_asked_for_but_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # makes `import uvloop` fail
    assert loop_factory("auto") is None  # auto falls back to asyncio's loop
    with pytest.raises(LoopError, match="--event-loop asyncio"):
        loop_factory("uvloop")


@pytest.mark.parametrize("choice", ["auto", "uvloop", "asyncio"])
async def test_serves_durably_on_either_loop(
    server_process: Callable[..., ServerProcess], choice: str
) -> None:
    proc = server_process("--event-loop", choice)
    await proc.wait_ready()
    want = "asyncio" if choice == "asyncio" else "uvloop"
    log = proc.log_text()
    assert f"loop={want}" in log, log
    assert "durable commits are flushed with aio" in log, log
    async with aiohttp.ClientSession(proc.url) as http:
        async with http.post("/api/sessions", json={}) as r:
            assert r.status == 201, await r.text()
            sid = (await r.json())["id"]
        async with http.ws_connect(f"/api/sessions/{sid}/ws") as ws:
            texts = [f"on {choice} {i}" for i in range(20)]

            async def post(text: str) -> dict[str, Any]:
                async with http.post(
                    f"/api/sessions/{sid}/messages", json={"role": "user", "content": text}
                ) as r:
                    assert r.status == 201, await r.text()
                    body: dict[str, Any] = await r.json()
                    return body

            acked = await asyncio.gather(*(post(t) for t in texts))
            seen: list[str] = []
            while len(seen) < len(texts):
                frame = await ws.receive_json(timeout=TIMEOUT)
                if frame.get("type") == "message.created":
                    seen.append(frame["message"]["content"])
            assert sorted(seen) == sorted(texts)
            assert len({m["seq"] for m in acked}) == len(texts)
    assert await proc.sigterm() == 0
    restarted = server_process("--event-loop", choice)
    await restarted.wait_ready()
    async with aiohttp.ClientSession(restarted.url) as http:
        async with http.get(f"/api/sessions/{sid}/messages?limit=100") as r:
            assert r.status == 200
            page = await r.json()
    assert sorted(m["content"] for m in page["items"]) == sorted(texts)


def test_a_bad_choice_is_a_usage_error(server_process: Callable[..., ServerProcess]) -> None:
    proc = server_process("--event-loop", "libev")
    assert proc.proc.wait(TIMEOUT) == 2
    assert "--event-loop" in proc.log_text()
