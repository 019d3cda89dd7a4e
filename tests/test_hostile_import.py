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


async def test_one_import_peaks_under_two_bodies(tmp_path: Path) -> None:
    """One import of an 8 MiB export (a thousand messages) grows a fresh server's peak
    by less than two bodies: the messages are decoded one at a time, never held as one
    tree (before: the body, its decoded tree and the validated models at once, about
    3.3 bodies)."""
    limits = ("--rate-user-per-sec", "0", "--rate-session-per-sec", "0")
    src = Server(tmp_path / "src", "--synchronous", "OFF", *limits)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(src.url + "/api/sessions", json={"id": "src"}) as r:
                assert r.status == 201
            for i in range(1000):
                body = {"role": "user", "content": f"{i} " + "lorem ipsum " * 700}
                async with http.post(src.url + "/api/sessions/src/messages", json=body) as r:
                    assert r.status == 201
            async with http.get(src.url + "/api/sessions/src/export") as r:
                assert r.status == 200
                doc = await r.read()
    finally:
        src.close()
    assert len(doc) > 8 * MIB
    # a fresh server, so that nothing before the import has raised its peak already
    s = Server(tmp_path / "dst", *limits, "--max-import-bytes", str(16 * MIB))
    try:
        base_peak = _rss(s.proc.pid, "VmHWM")
        async with aiohttp.ClientSession() as http:
            async with http.post(
                s.url + "/api/sessions/import",
                data=io.BytesIO(doc),
                headers={"Content-Type": "application/json"},
            ) as r:
                assert r.status == 201
                imported = await r.json()
            async with http.get(s.url + f"/api/sessions/{imported['id']}/export") as r:
                again = await r.json()
        grown = _rss(s.proc.pid, "VmHWM") - base_peak
        assert len(again["messages"]) == 1000
        assert grown < 2 * len(doc), (
            f"peak grew by {grown / MIB:.1f} MiB ({grown / len(doc):.2f} bodies)"
        )
    finally:
        s.close()
