"""Issue 16 point 8: import memory, against a real ``roost serve`` process."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import aiohttp

from tests.test_hostile_limits import Server

MIB = 1 << 20


def _rss(pid: int, field: str) -> int:
    """``VmRSS`` or ``VmHWM`` (peak) of ``pid`` in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/{pid}/status")


async def test_concurrent_imports_are_bounded_and_give_memory_back(tmp_path: Path) -> None:
    """Four concurrent 8 MiB imports all succeed; the server's peak grows by less than
    six bodies (before: all four at once, over eight bodies; the issue measured five
    times each body), and afterwards it keeps less than one body's worth (before: seven)."""
    s = Server(
        tmp_path / "data",
        "--synchronous",
        "OFF",
        "--rate-user-per-sec",
        "0",
        "--rate-session-per-sec",
        "0",
        "--max-import-bytes",
        str(16 * MIB),
    )
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(s.url + "/api/sessions", json={"id": "src"}) as r:
                assert r.status == 201
            content = "m" * 90_000
            for _ in range(100):
                async with http.post(
                    s.url + "/api/sessions/src/messages", json={"role": "user", "content": content}
                ) as r:
                    assert r.status == 201
            async with http.get(s.url + "/api/sessions/src/export") as r:
                assert r.status == 200
                doc = await r.read()
            assert len(doc) > 8 * MIB
            # what the server holds before: its peak so far is the baseline
            base_peak = _rss(s.proc.pid, "VmHWM")
            base_rss = _rss(s.proc.pid, "VmRSS")

            async def one(i: int) -> int:
                async with http.post(
                    s.url + "/api/sessions/import",
                    params={"id": f"imp{i}"},
                    data=io.BytesIO(doc),
                    headers={"Content-Type": "application/json"},
                ) as r:
                    return r.status

            statuses = await asyncio.gather(*(one(i) for i in range(4)))
            assert statuses == [201] * 4
            grown = _rss(s.proc.pid, "VmHWM") - base_peak
            kept = _rss(s.proc.pid, "VmRSS") - base_rss
        assert grown < 6 * len(doc), f"peak grew by {grown / MIB:.0f} MiB"
        assert kept < len(doc), f"kept {kept / MIB:.0f} MiB after the imports"
    finally:
        s.close()
