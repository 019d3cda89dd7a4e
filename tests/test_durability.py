"""Crash and shutdown with a real server process."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
from typing import Any

import aiohttp

from tests.conftest import TIMEOUT


async def _writer(
    s: aiohttp.ClientSession, url: str, sid: str, wid: int, acked: list[str], stop: asyncio.Event
) -> None:
    i = 0
    while not stop.is_set():
        content = f"w{wid}-{i}"
        i += 1
        try:
            async with s.post(
                f"{url}/api/sessions/{sid}/messages", json={"role": "user", "content": content}
            ) as r:
                if r.status == 201:
                    acked.append(content)
        except (TimeoutError, aiohttp.ClientError):
            return


async def _all_contents(s: aiohttp.ClientSession, url: str, sid: str) -> list[str]:
    out: list[str] = []
    nxt = f"{url}/api/sessions/{sid}/messages?view=all&limit=200"
    async with s.get(nxt) as r:
        page = await r.json()
    out = [m["content"] for m in page["items"]]
    while page["before"]:
        async with s.get(f"{nxt}&before={page['before']}") as r:
            page = await r.json()
        out = [m["content"] for m in page["items"]] + out
    return out


async def test_kill9_under_concurrent_appends_loses_nothing_acked(server_process: Any) -> None:
    """kill -9 mid-load: after restart every 2xx'd message is present exactly once."""
    srv = server_process()
    await srv.wait_ready()
    acked: list[str] = []
    stop = asyncio.Event()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as s:
        for sid in ("k1", "k2"):
            async with s.post(f"{srv.url}/api/sessions", json={"id": sid}) as r:
                assert r.status == 201
        tasks = [
            asyncio.create_task(_writer(s, srv.url, f"k{1 + w % 2}", w, acked, stop))
            for w in range(16)
        ]
        deadline = time.monotonic() + TIMEOUT
        while len(acked) < 300 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        srv.kill9()
        stop.set()
        await asyncio.gather(*tasks)
    assert len(acked) >= 300
    srv2 = server_process()
    await srv2.wait_ready()
    async with aiohttp.ClientSession() as s:
        stored = await _all_contents(s, srv2.url, "k1") + await _all_contents(s, srv2.url, "k2")
    missing = set(acked) - set(stored)
    assert not missing, f"{len(missing)} acknowledged messages lost"
    assert len(stored) == len(set(stored)), "a message is stored twice"


async def test_sigterm_finishes_commits_and_leaves_files_consistent(server_process: Any) -> None:
    """SIGTERM under load: exit 0, every acked message kept, files pass integrity_check."""
    srv = server_process()
    await srv.wait_ready()
    acked: list[str] = []
    stop = asyncio.Event()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as s:
        async with s.post(f"{srv.url}/api/sessions", json={"id": "t1"}) as r:
            assert r.status == 201
        tasks = [asyncio.create_task(_writer(s, srv.url, "t1", w, acked, stop)) for w in range(8)]
        while len(acked) < 100:
            await asyncio.sleep(0.02)
        srv.proc.send_signal(signal.SIGTERM)
        code = await asyncio.get_running_loop().run_in_executor(
            None, lambda: srv.proc.wait(TIMEOUT * 2)
        )
        stop.set()
        await asyncio.gather(*tasks)
    assert code == 0, srv.log.read_text()
    db = next(srv.data_dir.rglob("t1/session.db"))
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    stored = {r[0] for r in conn.execute("SELECT content FROM messages")}
    conn.close()
    assert set(acked) <= stored
