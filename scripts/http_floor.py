"""What one HTTP request costs the server, by HTTP layer (issue 26's "different HTTP layer").

Starts a server process that answers ``POST /api/sessions/{sid}/messages`` with a fixed
201 JSON body (no storage, no Roost code), drives it with the bench's raw keep-alive
client, and prints the server process's CPU (user + system, ``/proc/<pid>/stat``) per
request. Three servers, each alone:

- ``aiohttp``: a ``web.Application`` with one route, the layer Roost uses;
- ``lowlevel``: aiohttp's low-level ``web.Server`` (no router, no middleware chain);
- ``raw``: an ``asyncio.Protocol`` that splits requests on ``Content-Length`` and writes
  a pre-encoded reply (a floor, not a server: no chunked bodies, no errors).

All serve on uvloop, as ``roost serve`` does. Usage::

    python scripts/http_floor.py [--seconds 4] [--clients 16] [--only aiohttp,raw]

The figures are what any handler pays before its own work; see docs/performance.md,
"Speed, round 2", for how they bound the CPU targets.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import cast

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts._benchlib_rawhttp import RawConnection, encode_post
from scripts._benchlib_servers import free_port, process_cpu_seconds

KINDS = ("aiohttp", "lowlevel", "raw")
REPLY = orjson.dumps(
    {"id": "m_0123456789", "seq": 1, "role": "user", "content": "A fox.", "version": 1}
)
BODY = orjson.dumps({"role": "user", "content": "The quick brown fox jumps over the lazy dog."})


def serve(kind: str, port: int) -> None:
    """Run the ``kind`` server on ``127.0.0.1:port`` until killed."""
    import uvloop
    from aiohttp import web

    async def handle(request: web.BaseRequest) -> web.Response:
        await request.read()
        return web.Response(body=REPLY, status=201, content_type="application/json")

    raw_reply = (
        b"HTTP/1.1 201 Created\r\nContent-Type: application/json; charset=utf-8\r\n"
        b"Content-Length: %d\r\n\r\n" % len(REPLY)
    ) + REPLY

    class Raw(asyncio.Protocol):
        def __init__(self) -> None:
            self.buf = b""
            self.transport: asyncio.Transport | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

        def data_received(self, data: bytes) -> None:
            self.buf += data
            while (end := self.buf.find(b"\r\n\r\n")) >= 0:
                length = 0
                for line in self.buf[:end].split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                if len(self.buf) < end + 4 + length:
                    return
                body, self.buf = self.buf[end + 4 : end + 4 + length], self.buf[end + 4 + length :]
                asyncio.get_running_loop().create_task(self.reply(body))

        async def reply(self, body: bytes) -> None:
            orjson.loads(body)
            assert self.transport is not None
            self.transport.write(raw_reply)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        if kind == "aiohttp":
            app = web.Application()
            app.router.add_post("/api/sessions/{sid}/messages", handle)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()
        elif kind == "lowlevel":
            await loop.create_server(web.Server(handle), "127.0.0.1", port)
        else:
            await loop.create_server(Raw, "127.0.0.1", port)
        await asyncio.Event().wait()

    uvloop.run(main())


async def drive(port: int, clients: int, seconds: float, pid: int) -> tuple[float, float]:
    """Closed-loop requests from ``clients`` connections: (requests/s, server µs/request)."""
    url = f"http://127.0.0.1:{port}"
    req = encode_post(f"127.0.0.1:{port}", "/api/sessions/s1/messages", BODY)
    conns = [RawConnection(url) for _ in range(clients)]
    for c in conns:  # connect and warm up, untimed
        status, body = await c.request(req)
        if status != 201:
            raise SystemExit(f"expected 201 from the {port} server, got {status}: {body[:200]!r}")
    done = 0
    end = time.monotonic() + seconds
    before = process_cpu_seconds(pid)

    async def one(c: RawConnection) -> None:
        nonlocal done
        while time.monotonic() < end:
            await c.request(req)
            done += 1

    await asyncio.gather(*(one(c) for c in conns))
    used = process_cpu_seconds(pid) - before
    for c in conns:
        c.close()
    return done / seconds, 1e6 * used / max(done, 1)


def wait_listening(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode} before listening")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"expected a server on port {port} within 10 s; none came")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--only", default=",".join(KINDS), help="comma-separated: " + ", ".join(KINDS))
    ap.add_argument("--serve", choices=KINDS, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve, args.port)
        return
    kinds = [k for k in args.only.split(",") if k]
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise SystemExit(f"--only takes {', '.join(KINDS)}; got {', '.join(unknown)}")
    print(f"{'layer':<10} {'clients':>7} {'req/s':>8} {'server us/req':>14}")
    for kind in kinds:
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", kind, "--port", str(port)],
            stdout=subprocess.DEVNULL,
        )
        try:
            wait_listening(port, proc)
            for clients in (args.clients, 1):
                rate, us = asyncio.run(drive(port, clients, args.seconds, proc.pid))
                print(f"{kind:<10} {clients:>7} {rate:>8.0f} {us:>14.1f}", flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=10)


if __name__ == "__main__":
    main()
