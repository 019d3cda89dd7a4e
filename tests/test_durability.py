"""Crash and shutdown with a real server process."""

from __future__ import annotations

import sqlite3
from typing import Any

import aiohttp

from tests.conftest import TIMEOUT, Appender, Appenders, deadline


async def _all_contents(s: aiohttp.ClientSession, url: str, sid: str) -> list[str]:
    out: list[str] = []
    nxt = f"{url}/api/sessions/{sid}/messages?view=all&limit=200"
    async with s.get(nxt) as r:
        page = await r.json()
    out = [m["content"] for m in page["items"]]
    async with deadline(f"the walk over {sid}'s pages"):
        while page["before"]:
            async with s.get(f"{nxt}&before={page['before']}") as r:
                page = await r.json()
            out = [m["content"] for m in page["items"]] + out
    return out


async def test_kill9_under_concurrent_appends_loses_nothing_acked(server_process: Any) -> None:
    """kill -9 mid-load: after restart every 2xx'd message is present exactly once."""
    srv = server_process()
    await srv.wait_ready()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as s:
        for sid in ("k1", "k2"):
            async with s.post(f"{srv.url}/api/sessions", json={"id": sid}) as r:
                assert r.status == 201
        writers = Appenders(
            [Appender(s, srv.url, f"k{1 + w % 2}", name=f"w{w}") for w in range(16)]
        ).start()
        await writers.wait_acked(300)
        srv.kill9()
        await writers.stop()
    acked = writers.acked
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
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as s:
        async with s.post(f"{srv.url}/api/sessions", json={"id": "t1"}) as r:
            assert r.status == 201
        writers = Appenders([Appender(s, srv.url, "t1", name=f"w{w}") for w in range(8)]).start()
        await writers.wait_acked(100)
        code = await srv.sigterm()
        await writers.stop()
    acked = writers.acked
    assert code == 0, srv.log.read_text()
    db = next(srv.data_dir.rglob("t1/session.db"))
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    stored = {r[0] for r in conn.execute("SELECT content FROM messages")}
    conn.close()
    assert set(acked) <= stored
