"""HTTP/WebSocket/SSE load clients for ``scripts/bench.py``, run in a pool of processes.

A single asyncio process tops out at a few thousand requests per second, so the
throughput workloads run in ``ClientPool`` worker processes (``spawn`` start
method, each with its own event loop and keep-alive ``aiohttp`` session).

Protocol between the coordinator and a worker (over a ``multiprocessing`` pipe):

1. coordinator sends ``("job", job)``; the worker prepares (opens connections,
   creates warm-up load) and answers ``("ready", info)``;
2. once every worker is ready, the coordinator sends ``("go",)`` (a barrier:
   timed work starts at the same moment everywhere) or ``("abort",)``;
3. the worker answers ``("done", result)``, ``("aborted", None)`` or, at any
   point, ``("unsupported", reason)`` (a 404/405 route: the pool raises
   ``Unsupported``) or ``("error", text)`` (the pool raises ``BenchError``).

Timestamps are ``time.monotonic()``, which on Linux is one system-wide clock,
so arrivals recorded in one process can be compared with sends in another.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, Protocol

import aiohttp
import orjson
from _benchlib_rawhttp import HandshakeError, RawConnection, RawWebSocket, encode_post
from _benchlib_servers import BenchError, Unsupported

__all__ = [
    "JSON_HEADERS",
    "AppendJob",
    "AppendResult",
    "ChatJob",
    "ChatResult",
    "ClientPool",
    "CreateResult",
    "CreateSessionsJob",
    "WsListenJob",
    "WsListenResult",
    "expect_json",
    "read_sse",
]

JSON_HEADERS = {"Content-Type": "application/json"}
MAX_CONSECUTIVE_ERRORS = 20
ReadyFn = Callable[[object], Awaitable[bool]]


def _describe(method: str, url: str, expected: Sequence[int], status: int, body: bytes) -> str:
    """One-line 'expected X, got Y: body' error text."""
    want = "/".join(str(s) for s in expected)
    text = body[:300].decode(errors="replace")
    return f"{method} {url}: expected {want}, got {status}: {text}"


async def expect_json(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    expected: Sequence[int],
    body: object = None,
    headers: dict[str, str] | None = None,
) -> Any:
    """Send one request and return its decoded JSON body.

    Raises ``BenchError`` naming the expected and the actual status (with the
    body) when the status is not in ``expected``, or when the body is not JSON.
    """
    data = None if body is None else orjson.dumps(body)
    hdrs = {**JSON_HEADERS, **(headers or {})} if data is not None else headers
    async with http.request(method, url, data=data, headers=hdrs) as resp:
        raw = await resp.read()
        if resp.status not in expected:
            raise BenchError(_describe(method, url, expected, resp.status, raw))
    if not raw:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise BenchError(f"{method} {url}: expected JSON, got {raw[:200]!r}") from e


async def read_sse(resp: aiohttp.ClientResponse) -> AsyncIterator[tuple[str, str]]:
    """Yield ``(event, data)`` for each Server-Sent Event of ``resp``.

    ``event`` defaults to ``message``; multi-line ``data`` is joined with newlines;
    comment lines (heartbeats) are skipped. Ends at EOF.
    """
    event = "message"
    data: list[str] = []
    async for raw in resp.content:
        line = raw.decode(errors="replace").rstrip("\r\n")
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = "message", []
        elif line.startswith(":"):
            continue
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                event = value
            elif name == "data":
                data.append(value)
    if data:
        yield event, "\n".join(data)


async def _warm_connections(http: aiohttp.ClientSession, base_url: str, n: int) -> None:
    """Open ``n`` keep-alive connections by sending ``n`` concurrent ``GET /healthz``."""

    async def one() -> None:
        async with http.get(base_url + "/healthz") as resp:
            await resp.read()

    await asyncio.gather(*(one() for _ in range(n)))


class Job(Protocol):
    """A unit of client work for one worker process."""

    def connections(self) -> int:
        """How many keep-alive connections the worker's connector may hold."""
        ...

    async def run(self, http: aiohttp.ClientSession, ready: ReadyFn) -> object:
        """Prepare, ``await ready(info)`` (False: abort), then do the timed work; return a result.

        Returns ``None`` only when aborted.
        """
        ...


@dataclass
class _ErrorLog:
    """Counts failed requests and keeps the first description."""

    errors: int = 0
    first: str | None = None

    def add(self, text: str) -> None:
        self.errors += 1
        if self.first is None:
            self.first = text


@dataclass(frozen=True)
class AppendResult:
    """What one worker measured for an ``AppendJob``."""

    latencies: list[float]
    started: float
    ended: float
    errors: int
    first_error: str | None


@dataclass(frozen=True)
class AppendJob:
    """Each entry of ``sessions`` is one client appending to that session in a closed loop.

    A client stops after ``max_per_client`` appends or ``duration_s`` seconds after
    "go", whichever comes first (or after ``MAX_CONSECUTIVE_ERRORS`` failures in a
    row). With ``warmup``, each client first makes one untimed append (this also
    opens its keep-alive connection). ``client`` is ``"raw"`` (the lean keep-alive
    client, one connection per client) or ``"aiohttp"`` (``http.post`` on the worker's
    ordinary ``aiohttp.ClientSession``, sized to one connection per client).
    """

    base_url: str
    sessions: tuple[str, ...]
    duration_s: float
    max_per_client: int
    content: str
    warmup: bool = True
    client: str = "raw"

    def connections(self) -> int:
        return len(self.sessions)

    async def run(self, http: aiohttp.ClientSession, ready: ReadyFn) -> AppendResult | None:
        body = orjson.dumps({"role": "user", "content": self.content})
        log = _ErrorLog()
        latencies: list[float] = []
        # One keep-alive connection per client (sessions repeat for 64 clients on 1 session).
        clients = [(sid, RawConnection(self.base_url)) for sid in self.sessions]

        headers = {"Content-Type": "application/json"}

        async def append(sid: str, conn: RawConnection) -> float | None:
            path = f"/api/sessions/{sid}/messages"
            t0 = time.monotonic()
            try:
                if self.client == "aiohttp":
                    async with http.post(self.base_url + path, data=body, headers=headers) as r:
                        status, answer = r.status, await r.read()
                else:
                    status, answer = await conn.request(encode_post(conn.host_port, path, body))
            except (TimeoutError, OSError, aiohttp.ClientError) as e:
                log.add(f"POST {path}: expected 201, got {type(e).__name__}: {e}")
                return None
            if status != 201:
                log.add(_describe("POST", path, (201,), status, answer))
                return None
            return time.monotonic() - t0

        async def client(sid: str, conn: RawConnection, deadline: float) -> None:
            done = consecutive = 0
            while done < self.max_per_client and time.monotonic() < deadline:
                lat = await append(sid, conn)
                done += 1
                if lat is None:
                    consecutive += 1
                    if consecutive >= MAX_CONSECUTIVE_ERRORS:
                        return
                else:
                    consecutive = 0
                    latencies.append(lat)

        try:
            if self.warmup:
                await asyncio.gather(*(append(sid, c) for sid, c in clients))
                if log.errors:
                    raise BenchError(f"warm-up append failed: {log.first}")
            if not await ready(len(self.sessions)):
                return None
            started = time.monotonic()
            deadline = started + self.duration_s
            await asyncio.gather(*(client(sid, c, deadline) for sid, c in clients))
            return AppendResult(latencies, started, time.monotonic(), log.errors, log.first)
        finally:
            for _, c in clients:
                c.close()


@dataclass(frozen=True)
class CreateResult:
    """How many ``POST /api/sessions`` of a ``CreateSessionsJob`` failed."""

    created: int
    errors: int
    first_error: str | None


@dataclass(frozen=True)
class CreateSessionsJob:
    """Create the sessions ``ids`` with ``concurrency`` requests in flight (untimed)."""

    base_url: str
    ids: tuple[str, ...]
    concurrency: int = 32

    def connections(self) -> int:
        return self.concurrency

    async def run(self, http: aiohttp.ClientSession, ready: ReadyFn) -> CreateResult | None:
        if not await ready(len(self.ids)):
            return None
        log = _ErrorLog()
        queue = iter(self.ids)
        url = f"{self.base_url}/api/sessions"

        async def creator() -> None:
            for sid in queue:
                try:
                    await expect_json(http, "POST", url, (201,), {"id": sid})
                except (BenchError, aiohttp.ClientError, OSError) as e:
                    log.add(str(e))
                    if log.errors >= MAX_CONSECUTIVE_ERRORS:
                        return

        await asyncio.gather(*(creator() for _ in range(self.concurrency)))
        return CreateResult(len(self.ids) - log.errors, log.errors, log.first)


@dataclass(frozen=True)
class WsListenResult:
    """Arrival times of ``message.created`` frames in one worker.

    ``arrivals`` maps ``(session, seq)`` to the latest arrival among this worker's
    sockets on that session; ``missing`` counts (socket, seq) pairs never seen.
    """

    arrivals: dict[tuple[str, int], float]
    connect_latencies: list[float]
    missing: int
    first_error: str | None


@dataclass(frozen=True)
class WsListenJob:
    """Open one WebSocket per entry of ``sockets`` (a session id) and record arrivals.

    Prepare: connect every socket (``connect_concurrency`` handshakes at a time)
    and wait for its ``hello`` (no ``since``: live events only). After "go": read
    until each socket saw ``expected_seq`` ``message.created`` frames (the number
    of timed posts to its session), or until ``timeout_s``.
    """

    base_url: str
    sockets: tuple[str, ...]
    expected_seq: int
    timeout_s: float
    connect_concurrency: int = 50

    def connections(self) -> int:
        return len(self.sockets) + 4

    async def run(self, http: aiohttp.ClientSession, ready: ReadyFn) -> WsListenResult | None:
        # A raw WebSocket client (see _benchlib_rawhttp): each frame is handled in the
        # protocol's data_received, with no task switch, so the 1,000-socket burst
        # measures the server rather than the listeners' own frame handling.
        gate = asyncio.Semaphore(self.connect_concurrency)
        connect_latencies: list[float] = []
        loop = asyncio.get_running_loop()

        async def connect(sid: str) -> RawWebSocket:
            path = f"/api/sessions/{sid}/ws"  # live from now on: the posts come after "go"
            async with gate:
                t0 = time.monotonic()
                try:
                    ws = await RawWebSocket.connect(self.base_url, path)
                except HandshakeError as e:
                    if e.status in (404, 405):
                        raise Unsupported(f"GET {path} (WebSocket) answered {e.status}") from e
                    raise BenchError(f"GET {path}: {e}") from e
                hello: asyncio.Future[bytes] = loop.create_future()

                def first_frame(data: bytes, _arrival: float) -> None:
                    if not hello.done():
                        hello.set_result(data)

                ws.on_text(first_frame)
                try:
                    async with asyncio.timeout(10):
                        first = orjson.loads(await hello)
                except TimeoutError:
                    ws.close()
                    raise BenchError(f"GET {path}: no hello frame within 10 s") from None
                if not isinstance(first, dict) or first.get("type") != "hello":
                    ws.close()
                    raise BenchError(f"GET {path}: expected a hello frame first, got {first!r}")
                connect_latencies.append(time.monotonic() - t0)
                return ws

        sockets: list[RawWebSocket] = []
        try:
            for ws in await asyncio.gather(
                *(connect(sid) for sid in self.sockets), return_exceptions=True
            ):
                if isinstance(ws, BaseException):
                    raise ws
                sockets.append(ws)
            arrivals: dict[tuple[str, int], float] = {}
            log = _ErrorLog()
            seen = [0] * len(sockets)
            done: list[asyncio.Future[None]] = [loop.create_future() for _ in sockets]

            def listener(i: int, sid: str) -> Callable[[bytes, float], None]:
                def on_text(data: bytes, now: float) -> None:
                    try:
                        frame = orjson.loads(data)
                    except orjson.JSONDecodeError:
                        log.add(f"socket on {sid}: expected JSON text frames, got {data[:80]!r}")
                        return
                    if frame.get("type") != "message.created" or done[i].done():
                        return
                    key = (sid, int(frame["seq"]))
                    arrivals[key] = max(arrivals.get(key, 0.0), now)
                    seen[i] += 1
                    if seen[i] >= self.expected_seq:
                        done[i].set_result(None)

                return on_text

            for i, (sid, ws) in enumerate(zip(self.sockets, sockets, strict=True)):
                ws.on_text(listener(i, sid))
            if not await ready(len(sockets)):
                return None
            closed = [asyncio.ensure_future(ws.closed) for ws in sockets]
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.timeout_s):
                    await asyncio.gather(
                        *(
                            asyncio.wait([d, c], return_when=asyncio.FIRST_COMPLETED)
                            for d, c in zip(done, closed, strict=True)
                        )
                    )
            missing = sum(max(0, self.expected_seq - n) for n in seen)
            if missing and log.first is None:
                log.add(f"{missing} frame(s) not received within {self.timeout_s:.0f}s")
            return WsListenResult(arrivals, connect_latencies, missing, log.first)
        finally:
            for ws in sockets:
                ws.close()


@dataclass(frozen=True)
class ChatResult:
    """Per-stream timings of a ``ChatJob`` (seconds since the POST was sent)."""

    first_delta: list[float]
    total: list[float]
    unsupported: str | None
    errors: int
    first_error: str | None


@dataclass(frozen=True)
class ChatJob:
    """One streaming ``POST /api/sessions/{sid}/chat`` per entry of ``sessions``, all at once.

    Measures time to the first ``delta`` event and to ``done``. A 404/405 answer
    means the route is not served: reported in ``unsupported``, not as an error.
    """

    base_url: str
    sessions: tuple[str, ...]
    content: str
    timeout_s: float

    def connections(self) -> int:
        return len(self.sessions)

    async def run(self, http: aiohttp.ClientSession, ready: ReadyFn) -> ChatResult | None:
        await _warm_connections(http, self.base_url, len(self.sessions))
        if not await ready(len(self.sessions)):
            return None
        body = orjson.dumps({"content": self.content})
        headers = {**JSON_HEADERS, "Accept": "text/event-stream"}
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        first_delta: list[float] = []
        total: list[float] = []
        log = _ErrorLog()
        unsupported: list[str] = []

        async def stream(sid: str) -> None:
            url = f"{self.base_url}/api/sessions/{sid}/chat"
            t0 = time.monotonic()
            got_delta = False
            try:
                async with http.post(url, data=body, headers=headers, timeout=timeout) as resp:
                    if resp.status in (404, 405):
                        unsupported.append(f"POST /chat answered {resp.status}")
                        return
                    if resp.status != 200:
                        log.add(_describe("POST", url, (200,), resp.status, await resp.read()))
                        return
                    async for event, data in read_sse(resp):
                        if event == "delta" and not got_delta:
                            got_delta = True
                            first_delta.append(time.monotonic() - t0)
                        elif event == "error":
                            log.add(f"POST {url}: stream sent an error event: {data[:200]}")
                            return
                        elif event == "done":
                            total.append(time.monotonic() - t0)
                            return
                    log.add(f"POST {url}: expected a done event, stream ended without one")
            except (aiohttp.ClientError, OSError, TimeoutError) as e:
                log.add(f"POST {url}: expected a complete stream, got {type(e).__name__}: {e}")

        await asyncio.gather(*(stream(sid) for sid in self.sessions))
        return ChatResult(
            first_delta, total, unsupported[0] if unsupported else None, log.errors, log.first
        )


# ----------------------------------------------------------------- the pool


def _worker_main(conn: Connection) -> None:
    """Worker process loop: run jobs sent by the coordinator until ``("stop",)`` or EOF."""
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg[0] == "stop":
            return
        try:
            result = asyncio.run(_run_job(msg[1], conn))
        except Unsupported as e:
            conn.send(("unsupported", str(e)))
            continue
        except BenchError as e:
            conn.send(("error", str(e)))
            continue
        except Exception:
            conn.send(("error", traceback.format_exc(limit=4)))
            continue
        conn.send(("aborted", None) if result is None else ("done", result))


async def _run_job(job: Job, conn: Connection) -> object:
    """Run ``job`` with a fresh keep-alive session sized by ``job.connections()``."""
    loop = asyncio.get_running_loop()

    async def ready(info: object) -> bool:
        conn.send(("ready", info))
        reply = await loop.run_in_executor(None, conn.recv)
        return bool(reply[0] == "go")

    connector = aiohttp.TCPConnector(limit=max(1, job.connections()), force_close=False)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        return await job.run(http, ready)


@dataclass
class ClientPool:
    """A fixed set of client worker processes (``spawn``), reused by every workload.

    ``dispatch(jobs)`` hands one job to each of the first ``len(jobs)`` workers and
    waits until all are prepared; ``go()`` releases them together; ``collect()``
    returns their results in job order. Methods block: call them from a thread
    (``asyncio.to_thread``) when the caller runs an event loop.
    """

    size: int
    _procs: list[BaseProcess] = field(default_factory=list)
    _conns: list[Connection] = field(default_factory=list)
    _busy: int = 0
    _closed: bool = False

    def __post_init__(self) -> None:
        ctx = mp.get_context("spawn")
        for _ in range(self.size):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker_main, args=(child,), daemon=True)
            proc.start()
            child.close()
            self._procs.append(proc)
            self._conns.append(parent)

    def _recv(self, i: int, timeout: float) -> tuple[str, Any]:
        conn = self._conns[i]
        if self._closed:
            raise BenchError("the client pool is closed")
        if not conn.poll(timeout):
            self._replace(i)
            raise BenchError(f"client worker {i}: no answer within {timeout:.0f}s (restarted it)")
        try:
            msg: tuple[str, Any] = conn.recv()
        except EOFError as e:
            self._replace(i)
            raise BenchError(f"client worker {i} died (restarted it)") from e
        return msg

    def _replace(self, i: int) -> None:
        """Kill worker ``i`` (it is out of step with the protocol) and start a fresh one."""
        self._procs[i].kill()
        self._procs[i].join(5)
        if self._closed:
            return
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_worker_main, args=(child,), daemon=True)
        proc.start()
        child.close()
        self._procs[i], self._conns[i] = proc, parent

    def dispatch(self, jobs: Sequence[Job], timeout: float) -> list[Any]:
        """Send the jobs and return each worker's ready info once all are prepared.

        If any worker fails to prepare, the others are aborted and ``BenchError``
        carries the failure.
        """
        if len(jobs) > self.size:
            raise BenchError(f"{len(jobs)} jobs for a pool of {self.size} client processes")
        for conn, job in zip(self._conns, jobs, strict=False):
            conn.send(("job", job))
        self._busy = len(jobs)
        infos: list[Any] = []
        failure: BenchError | None = None
        for i in range(self._busy):
            try:
                kind, payload = self._recv(i, timeout)
            except BenchError as e:
                kind, payload = "error", str(e)
            if kind == "ready":
                infos.append(payload)
                continue
            infos.append(None)
            if failure is None:
                failure = (
                    Unsupported(payload)
                    if kind == "unsupported"
                    else BenchError(f"client worker {i} failed while preparing: {payload}")
                )
        if failure is not None:
            for i, info in enumerate(infos):
                if info is not None:
                    self._conns[i].send(("abort",))
                    self._recv(i, timeout)
            self._busy = 0
            raise failure
        return infos

    def go(self) -> None:
        """Release every dispatched worker at once (the barrier)."""
        for conn in self._conns[: self._busy]:
            conn.send(("go",))

    def collect(self, timeout: float) -> list[Any]:
        """Wait up to ``timeout`` seconds for each dispatched worker's result."""
        busy, self._busy = self._busy, 0
        results: list[Any] = []
        failure: BenchError | None = None
        deadline = time.monotonic() + timeout
        for i in range(busy):
            try:
                kind, payload = self._recv(i, max(1.0, deadline - time.monotonic()))
            except BenchError as e:
                kind, payload = "error", str(e)
            if kind != "done" and failure is None:
                failure = (
                    Unsupported(payload)
                    if kind == "unsupported"
                    else BenchError(f"client worker {i}: {payload}")
                )
            results.append(payload)
        if failure is not None:
            raise failure
        return results

    def run(self, jobs: Sequence[Job], prepare_timeout: float, run_timeout: float) -> list[Any]:
        """``dispatch``, ``go`` and ``collect`` in one call."""
        self.dispatch(jobs, prepare_timeout)
        self.go()
        return self.collect(run_timeout)

    def terminate(self) -> None:
        """Kill every worker now (on interrupt); a thread blocked in the pool gets EOF and ends."""
        self._closed = True
        for proc in self._procs:
            proc.kill()
        for proc in self._procs:
            proc.join(5)

    def close(self) -> None:
        """Stop every worker (politely, then by kill after 5 s)."""
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.send(("stop",))
        for proc in self._procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
