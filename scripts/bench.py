#!/usr/bin/env python3
"""Benchmark Roost side by side with Cloudflare's workerd Durable Object peer.

Run from anywhere (``python scripts/bench.py``; see ``--help`` and
docs/performance.md). The bench starts both servers itself on loopback with fresh
temporary data dirs, runs the same workloads against both for ``--rounds``
rounds (interleaving the servers so drift on a noisy machine hits both), and
prints one table of per-metric medians over the rounds:

    workload | metric | roost | workerd | roost/workerd | better

Throughput workloads run in a pool of client processes (``--procs``) that start
their timed work together behind a barrier; single-client latency probes and
WebSocket posters run in the coordinating process. Workloads a server does not
serve (Roost-only routes, or Roost routes answering 404/405 while under
construction) show ``n/a`` and say why.

Exit status: 0 when every selected workload ran (or was cleanly ``n/a``), 1 when
any failed, 2 on bad arguments. No timing is ever asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import bench_across
import orjson
from _benchlib_client import (
    AppendJob,
    AppendResult,
    ChatJob,
    ChatResult,
    ClientPool,
    CreateResult,
    CreateSessionsJob,
    WsListenJob,
    WsListenResult,
    expect_json,
)
from _benchlib_rawhttp import RawConnection, encode_post
from _benchlib_servers import (
    BenchError,
    PeerServer,
    PeerUnavailable,
    RoostServer,
    Server,
    Unsupported,
    free_port,
    prepare_peer,
)
from _benchlib_stats import (
    Histogram,
    diff_histogram,
    format_table,
    histogram_quantile,
    latency_summary,
    median,
    parse_histograms,
    ratio,
)

ROOST, PEER = "roost", "workerd"
PAGE = 25
WALK_LIMITS = (200, 100, 50, PAGE)  # page sizes tried, largest first, to walk history fast
DEEP_FRACTION = 0.9
MESSAGE_TEXT = (
    "The quick brown fox jumps over the lazy dog while the bench measures how fast "
    "a durable chat append really is."
)
PERSIST_LAG_PREFIX = "roost_stream_persist_lag"
_T0 = time.monotonic()


def progress(text: str) -> None:
    """Write one timestamped progress line to stderr."""
    print(f"[bench {time.monotonic() - _T0:6.1f}s] {text}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Sizes:
    """Workload sizes: ``FULL`` for real runs, ``QUICK`` for the CI smoke run."""

    append_duration_s: float
    append_clients: int
    history_messages: int
    history_fetches: int
    big_messages: int
    seed_clients: int
    fanout_sockets: int
    fanout_posts: int
    fanout_gap_s: float
    wide_sessions: int
    wide_sockets_per_session: int
    wide_posts: int
    chat_streams: int
    chat_words: int
    cold_sessions: int
    cold_fetches: int


FULL = Sizes(
    append_duration_s=5.0,
    append_clients=64,
    history_messages=10_000,
    history_fetches=200,
    big_messages=1_000_000,
    seed_clients=32,
    fanout_sockets=50,
    fanout_posts=200,
    fanout_gap_s=0.005,
    wide_sessions=100,
    wide_sockets_per_session=10,
    wide_posts=20,
    chat_streams=100,
    chat_words=20,
    cold_sessions=100_000,
    cold_fetches=200,
)
QUICK = Sizes(
    append_duration_s=1.0,
    append_clients=64,
    history_messages=1_000,
    history_fetches=20,
    big_messages=20_000,
    seed_clients=16,
    fanout_sockets=50,
    fanout_posts=10,
    fanout_gap_s=0.005,
    wide_sessions=20,
    wide_sockets_per_session=5,
    wide_posts=3,
    chat_streams=10,
    chat_words=5,
    cold_sessions=1_000,
    cold_fetches=20,
)


@dataclass
class Target:
    """A server under test plus the coordinator's HTTP session and per-workload setup cache."""

    name: str
    server: Server
    http: aiohttp.ClientSession
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def base(self) -> str:
        """The server's ``http://127.0.0.1:PORT``."""
        return self.server.base_url


@dataclass
class Context:
    """Everything a workload needs besides its target."""

    args: argparse.Namespace
    sizes: Sizes
    pool: ClientPool
    workdir: Path
    tag: str
    notes: list[str] = field(default_factory=list)
    cold: dict[str, Any] = field(default_factory=dict)

    def sid(self, *parts: object) -> str:
        """A session id unique to this run: ``b<tag>-<parts...>`` (valid per SPEC section 6)."""
        return "-".join([f"b{self.tag}", *(str(p) for p in parts)])


Metrics = dict[str, float]
RunFn = Callable[[Context, Target, int], Awaitable[Metrics]]


@dataclass(frozen=True)
class Workload:
    """A named measurement. ``run(ctx, target, round)`` returns metric name -> value.

    ``roost_only`` workloads are not run against the peer; ``big`` ones only with ``--big``.
    """

    name: str
    description: str
    run: RunFn
    roost_only: bool = False
    big: bool = False


# ------------------------------------------------------------------ helpers


def split(items: Sequence[str], parts: int) -> list[tuple[str, ...]]:
    """Deal ``items`` round-robin into at most ``parts`` non-empty tuples."""
    n = max(1, min(parts, len(items)))
    return [tuple(items[i::n]) for i in range(n)]


async def create_sessions(t: Target, ids: Sequence[str], concurrency: int = 16) -> None:
    """Create sessions from the coordinator (``POST /api/sessions`` → 201 each)."""
    gate = asyncio.Semaphore(concurrency)

    async def one(sid: str) -> None:
        async with gate:
            await expect_json(t.http, "POST", f"{t.base}/api/sessions", (201,), {"id": sid})

    await asyncio.gather(*(one(sid) for sid in ids))


async def timed_get(t: Target, url: str, count: int) -> tuple[list[float], Any]:
    """GET ``url`` ``count`` times in a row; return the latencies and the last JSON body."""
    latencies, body = [], None
    for _ in range(count):
        t0 = time.monotonic()
        async with t.http.get(url) as resp:
            raw = await resp.read()
            status = resp.status
        latencies.append(time.monotonic() - t0)
        if status != 200:
            raise BenchError(f"GET {url}: expected 200, got {status}: {raw[:300]!r}")
        body = raw
    return latencies, orjson.loads(body) if body is not None else None


async def probe_route(t: Target, method: str, path: str, body: object = None) -> int:
    """Send one request and return its status; raise ``Unsupported`` on 404/405."""
    data = None if body is None else orjson.dumps(body)
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    async with t.http.request(method, t.base + path, data=data, headers=headers) as resp:
        raw = await resp.read()
        if resp.status in (404, 405):
            raise Unsupported(f"{method} {path} answered {resp.status}: {raw[:120]!r}")
        return resp.status


def settle_page_cache() -> bool:
    """Write out dirty pages and, where allowed (root), drop the clean page cache.

    On the VM this bench was tuned on, fsync-bound figures depend on how much
    memory the page cache holds: with 14 GB cached (left by the cold-activation
    setup and earlier runs) Roost's append-64x64 measured 4,476-4,860 msgs/s, and
    5,424-5,861 right after dropping it, same build, same files on disk. The bench
    settles the cache before the first round and after that setup, so every round
    of every server starts from the same state. Returns whether the drop happened.
    """
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("1\n")
    except OSError:
        return False
    return True


async def run_pool(ctx: Context, jobs: Sequence[Any], run_timeout: float) -> list[Any]:
    """Run jobs on the client pool (barrier-synchronised) without blocking the event loop."""
    return await asyncio.to_thread(ctx.pool.run, jobs, 120.0, run_timeout)


def merge_appends(results: Sequence[AppendResult], what: str) -> tuple[list[float], float]:
    """Combine worker results: all latencies and the wall time from first go to last end.

    Raises ``BenchError`` when any append failed.
    """
    latencies = [x for r in results for x in r.latencies]
    errors = sum(r.errors for r in results)
    if errors:
        first = next(r.first_error for r in results if r.first_error)
        raise BenchError(f"{what}: {errors} append(s) failed; first: {first}")
    wall = max(r.ended for r in results) - min(r.started for r in results)
    return latencies, wall


# ------------------------------------------------------------------ appends


def append_workload(many_clients: bool, many_sessions: bool, client: str = "raw") -> RunFn:
    """Closed-loop durable appends by 1 or ``append_clients`` clients.

    With ``many_sessions`` every client has its own session; otherwise all share one.
    ``client="raw"`` spreads the clients over the pool with the lean raw client;
    ``client="aiohttp"`` runs them all in ONE client process on ``aiohttp``. Both report
    ``server cpu us/append``: utime+stime of the server's process tree (``/proc``) over
    the pool run (warm-up included) divided by the appends acknowledged in it.
    """

    async def run(ctx: Context, t: Target, rnd: int) -> Metrics:
        n_clients = ctx.sizes.append_clients if many_clients else 1
        n_sessions = n_clients if many_sessions else 1
        sids = [ctx.sid("append", client, n_clients, n_sessions, rnd, i) for i in range(n_sessions)]
        await create_sessions(t, sids)
        per_client = [sids[i % n_sessions] for i in range(n_clients)]
        bases = t.server.base_urls  # cluster mode: the fronts, one job each in turn
        parts = [tuple(per_client)] if client == "aiohttp" else split(per_client, ctx.pool.size)
        jobs = [
            AppendJob(
                bases[i % len(bases)],
                part,
                ctx.sizes.append_duration_s,
                1_000_000,
                MESSAGE_TEXT,
                client=client,
            )
            for i, part in enumerate(parts)
        ]
        cpu0 = t.server.cpu_seconds()
        results = await run_pool(ctx, jobs, ctx.sizes.append_duration_s + 60)
        cpu = t.server.cpu_seconds() - cpu0
        latencies, wall = merge_appends(results, f"{n_clients} clients")
        acked = len(latencies) + len(per_client)  # timed appends + one warm-up per client
        return {
            "throughput msgs/s": len(latencies) / wall,
            **latency_summary(latencies),
            "server cpu us/append": 1e6 * cpu / max(acked, 1),
            "client procs": float(len(jobs)),
        }

    return run


# ------------------------------------------------------------------ history


async def seed_messages(ctx: Context, t: Target, sid: str, count: int) -> None:
    """Append about ``count`` messages to ``sid`` (rounded up to whole client shares).

    Uses ``--roost-seed-route`` for Roost when given (the hook for a bulk route);
    otherwise concurrent single appends from the client pool, in chunks with
    progress lines.
    """
    route = ctx.args.roost_seed_route
    if route and t.name == ROOST:
        await seed_via_route(ctx, t, sid, count, route)
        return
    clients = ctx.sizes.seed_clients
    chunk = max(clients, min(count, 50_000))
    done, t0 = 0, time.monotonic()
    while done < count:
        share = math.ceil(min(chunk, count - done) / clients)
        jobs = [
            AppendJob(t.base, part, 3600.0, share, MESSAGE_TEXT, warmup=False)
            for part in split([sid] * clients, ctx.pool.size)
        ]
        merge_appends(await run_pool(ctx, jobs, 3600.0), f"seeding {sid}")
        done += share * clients
        rate = done / (time.monotonic() - t0)
        progress(f"{t.name}: seeded {done:,}/{count:,} messages in {sid} ({rate:,.0f}/s)")


async def seed_via_route(ctx: Context, t: Target, sid: str, count: int, route: str) -> None:
    """Seed through Roost's bulk route: POST ``{"messages": [{role, content}, ...]}``.

    ``route`` is a path template with ``{sid}``; batches of 1,000; expects 200 or 201.
    """
    url = t.base + route.format(sid=sid)
    done = 0
    while done < count:
        n = min(1000, count - done)
        batch = [{"role": "user", "content": MESSAGE_TEXT} for _ in range(n)]
        await expect_json(t.http, "POST", url, (200, 201), {"messages": batch})
        done += n
        if done % 50_000 < n or done == count:
            progress(f"{t.name}: seeded {done:,}/{count:,} messages via {route}")


async def page(t: Target, sid: str, limit: int, before: str | None) -> dict[str, Any]:
    """One ``GET .../messages?limit=&before=`` page (200 expected)."""
    url = f"{t.base}/api/sessions/{sid}/messages?limit={limit}"
    if before is not None:
        url += f"&before={before}"
    body: dict[str, Any] = await expect_json(t.http, "GET", url, (200,))
    return body


async def deep_cursor(t: Target, sid: str, fraction: float) -> tuple[str, int]:
    """Walk ``before`` cursors from the newest end; return ``(cursor, total)``.

    ``cursor`` is the ``before`` cursor whose page starts ``fraction`` of the way
    back from the newest message; ``total`` is the newest message's ``seq``.
    Uses the largest page size the server accepts (400 → try a smaller one).
    """
    for limit in WALK_LIMITS:
        url = f"{t.base}/api/sessions/{sid}/messages?limit={limit}"
        async with t.http.get(url) as resp:
            raw = await resp.read()
            if resp.status == 400:
                continue
            if resp.status != 200:
                raise BenchError(f"GET {url}: expected 200, got {resp.status}: {raw[:300]!r}")
        first = orjson.loads(raw)
        break
    else:
        raise BenchError(f"GET {t.base}/api/sessions/{sid}/messages: no limit in {WALK_LIMITS}")
    if not first["items"]:
        raise BenchError(f"session {sid}: expected seeded messages, got an empty page")
    total = int(first["items"][-1]["seq"])
    goal = math.ceil(total * fraction)
    skipped, cursor = len(first["items"]), first["before"]
    for _ in range(total // limit + 10):
        if skipped >= goal or cursor is None:
            break
        body = await page(t, sid, min(limit, goal - skipped), cursor)
        skipped += len(body["items"])
        cursor = body["before"]
    if cursor is None or skipped < goal:
        raise BenchError(f"session {sid}: walked {skipped} of {goal} messages, no older cursor")
    return cursor, total


def history_workload(size_attr: str) -> RunFn:
    """Latency of the newest page of 25 and of the page at 90% depth in a seeded session."""

    async def run(ctx: Context, t: Target, rnd: int) -> Metrics:
        count = getattr(ctx.sizes, size_attr)
        key = f"history-{count}"
        if key not in t.state:
            sid = ctx.sid("history", count)
            await create_sessions(t, [sid])
            await seed_messages(ctx, t, sid, count)
            cursor, total = await deep_cursor(t, sid, DEEP_FRACTION)
            t.state[key] = (sid, cursor, total)
            progress(f"{t.name}: {sid} holds {total:,} messages; 90%-depth cursor {cursor!r}")
        sid, cursor, total = t.state[key]
        base = f"{t.base}/api/sessions/{sid}/messages?limit={PAGE}"
        fetches = ctx.sizes.history_fetches
        newest, body = await timed_get(t, base, fetches)
        if len(body["items"]) != PAGE:
            raise BenchError(f"newest page: expected {PAGE} items, got {len(body['items'])}")
        deep, body = await timed_get(t, f"{base}&before={cursor}", fetches)
        if len(body["items"]) != PAGE:
            raise BenchError(f"90% page: expected {PAGE} items, got {len(body['items'])}")
        return {
            **latency_summary(newest, "newest "),
            **latency_summary(deep, "90% depth "),
            "messages": float(total),
        }

    return run


# ------------------------------------------------------------------ fan-out


def fanout_workload(wide: bool, client: str = "raw") -> RunFn:
    """POST → every subscribed socket has the ``message.created`` frame.

    ``client="aiohttp"``: the coordinator posts with its ``aiohttp.ClientSession``
    instead of the lean raw connections (the sockets still listen with the raw client).

    Narrow: ``fanout_sockets`` sockets on one session, sequential posts.
    Wide: ``wide_sessions`` sessions x ``wide_sockets_per_session`` sockets, one
    poster per session, all sessions at once. Sockets are spread over the client
    pool; the coordinator posts.
    """

    async def run(ctx: Context, t: Target, rnd: int) -> Metrics:
        z = ctx.sizes
        n_sessions = z.wide_sessions if wide else 1
        per_session = z.wide_sockets_per_session if wide else z.fanout_sockets
        posts = z.wide_posts if wide else z.fanout_posts
        sids = [ctx.sid("ws", client, n_sessions, rnd, i) for i in range(n_sessions)]
        await create_sessions(t, sids)
        sockets = [sid for sid in sids for _ in range(per_session)]
        timeout = 30.0 + posts * (z.fanout_gap_s + 0.5)
        # cluster mode: the sockets listen on another front than the posts go through
        listen = t.server.listen_url
        jobs = [WsListenJob(listen, part, posts, timeout) for part in split(sockets, ctx.pool.size)]
        # Warm-up, untimed, before the sockets connect (as for the append workloads): one
        # keep-alive connection per poster and one append per session, so the first timed
        # wave measures neither 100 TCP handshakes nor each session's first write.
        body = orjson.dumps({"role": "user", "content": MESSAGE_TEXT})
        conns = [RawConnection(t.base) for _ in sids]
        for sid, c in zip(sids, conns, strict=True):
            path = f"/api/sessions/{sid}/messages"
            status, answer = await c.request(encode_post(c.host_port, path, body))
            if status != 201:
                for x in conns:
                    x.close()
                raise BenchError(f"warm-up POST {path}: expected 201, got {status}: {answer!r}")
        t_connect = time.monotonic()
        await asyncio.to_thread(ctx.pool.dispatch, jobs, 120.0)
        connect_wall = time.monotonic() - t_connect
        await asyncio.to_thread(ctx.pool.go)
        sent: dict[tuple[str, int], float] = {}
        json_ct = {"Content-Type": "application/json"}

        async def poster(sid: str, conn: RawConnection) -> None:
            path = f"/api/sessions/{sid}/messages"
            raw = encode_post(conn.host_port, path, body)
            for _ in range(posts):
                t0 = time.monotonic()
                if client == "aiohttp":
                    async with t.http.post(t.base + path, data=body, headers=json_ct) as r:
                        status, answer = r.status, await r.read()
                else:
                    status, answer = await conn.request(raw)
                if status != 201:
                    raise BenchError(f"POST {path}: expected 201, got {status}: {answer[:300]!r}")
                sent[(sid, int(orjson.loads(answer)["seq"]))] = t0
                await asyncio.sleep(z.fanout_gap_s)

        # lean keep-alive connections (as for the append workloads): the coordinator
        # posts for 100 sessions at once and should not be the slow part
        try:
            await asyncio.gather(*(poster(sid, c) for sid, c in zip(sids, conns, strict=True)))
        finally:
            for c in conns:
                c.close()
            results: list[WsListenResult] = await asyncio.to_thread(ctx.pool.collect, timeout + 30)
        arrivals: dict[tuple[str, int], float] = {}
        for r in results:
            for key, ts in r.arrivals.items():
                arrivals[key] = max(arrivals.get(key, 0.0), ts)
        missing = sum(r.missing for r in results)
        if missing:
            first = next(r.first_error for r in results if r.first_error)
            raise BenchError(f"{missing} expected frame(s) never arrived: {first}")
        latencies = [arrivals[key] - t0 for key, t0 in sent.items()]
        connects = [x for r in results for x in r.connect_latencies]
        return {
            **latency_summary(latencies, "fan-out "),
            **latency_summary(connects, "ws connect "),
            f"connect {len(sockets)} sockets s": connect_wall,
            "client procs": float(len(jobs)),
        }

    return run


# ------------------------------------------------------------------ streaming (Roost only)


async def fetch_persist_lag(t: Target) -> dict[str, Histogram] | None:
    """Return the ``roost_stream_persist_lag*`` histograms from ``GET /metrics``, or None (404)."""
    async with t.http.get(t.base + "/metrics") as resp:
        text = await resp.text()
        if resp.status in (404, 405):
            return None
        if resp.status != 200:
            raise BenchError(f"GET /metrics: expected 200, got {resp.status}: {text[:300]}")
    return parse_histograms(text, PERSIST_LAG_PREFIX)


async def chat_run(ctx: Context, t: Target, rnd: int) -> Metrics:
    """``chat_streams`` concurrent SSE echo replies: time to first delta and to ``done``."""
    z = ctx.sizes
    if "chat" not in t.state:
        probe = ctx.sid("chat-probe")
        await create_sessions(t, [probe])
        status = await probe_route(t, "POST", f"/api/sessions/{probe}/chat", {"content": "probe"})
        if status not in (200, 201):
            raise BenchError(
                f"POST /chat (Accept: application/json): expected 200 or 201, got {status}"
            )
        t.state["chat"] = True
    sids = [ctx.sid("chat", rnd, i) for i in range(z.chat_streams)]
    await create_sessions(t, sids)
    lag_before = await fetch_persist_lag(t)
    content = " ".join(f"word{i}" for i in range(z.chat_words))
    timeout = 60.0 + z.chat_words
    jobs = [ChatJob(t.base, part, content, timeout) for part in split(sids, ctx.pool.size)]
    cpu0, wall0 = t.server.cpu_seconds(), time.monotonic()
    results: list[ChatResult] = await run_pool(ctx, jobs, timeout + 30)
    # server CPU while the streams ran (the pool's prepare step is included: it is short)
    cpu_cores = (t.server.cpu_seconds() - cpu0) / max(time.monotonic() - wall0, 1e-9)
    unsupported = next((r.unsupported for r in results if r.unsupported), None)
    if unsupported:
        raise Unsupported(unsupported)
    errors = sum(r.errors for r in results)
    if errors:
        first = next(r.first_error for r in results if r.first_error)
        raise BenchError(f"{errors} of {len(sids)} streams failed; first: {first}")
    metrics = {
        **latency_summary([x for r in results for x in r.first_delta], "first delta "),
        **latency_summary([x for r in results for x in r.total], "complete "),
        "server cpu cores": cpu_cores,
    }
    lag_after = await fetch_persist_lag(t)
    if lag_after:
        for family, hist in lag_after.items():
            h = diff_histogram(hist, (lag_before or {}).get(family))
            scale, unit = (1000.0, "ms") if family.endswith("_seconds") else (1.0, "(raw)")
            label = family.removeprefix("roost_")
            for q in (0.5, 0.99):
                value = histogram_quantile(h.buckets, q)
                if value is not None:
                    metrics[f"{label} p{round(q * 100)} {unit}"] = value * scale
            metrics[f"{label} count"] = h.count
    elif "persist-lag-note" not in t.state:
        t.state["persist-lag-note"] = True
        ctx.notes.append(f"{t.name}: /metrics has no {PERSIST_LAG_PREFIX} histogram")
    return metrics


# ------------------------------------------------------------------ cold activation (Roost only)


async def cold_run(ctx: Context, t: Target, rnd: int) -> Metrics:
    """First request to sessions untouched since a restart, among ``cold_sessions`` on disk.

    Uses its own Roost instance (own data dir) so the other workloads are not
    disturbed. Once: create the sessions, then flush the file system, so their
    write-back does not land on the workloads timed next. Each round: start that
    instance, time the first and second ``GET .../messages?limit=25`` of
    ``cold_fetches`` sessions never requested since creation, and stop it again,
    so its idle actors do not hibernate (and checkpoint) during other workloads.
    """
    z = ctx.sizes
    server = ctx.cold.get("server")
    if server is None:
        assert isinstance(t.server, RoostServer)
        server = replace(
            t.server, workdir=ctx.workdir / "roost-cold", port=free_port(), proc=None, starts=0
        )
        await asyncio.to_thread(server.start)
        ctx.cold["server"] = server
        created = [ctx.sid("cold", i) for i in range(z.cold_sessions)]
        done = 0
        for start in range(0, len(created), 20_000):
            chunk = created[start : start + 20_000]
            jobs = [
                CreateSessionsJob(server.base_url, part) for part in split(chunk, ctx.pool.size)
            ]
            results: list[CreateResult] = await run_pool(ctx, jobs, 3600.0)
            errors = sum(r.errors for r in results)
            if errors:
                first = next(r.first_error for r in results if r.first_error)
                raise BenchError(f"creating cold sessions: {errors} failed; first: {first}")
            done += len(chunk)
            progress(f"{t.name}: created {done:,}/{len(created):,} sessions for cold activation")
        ctx.cold["ids"] = created
        await asyncio.to_thread(server.stop)
        if not ctx.args.quick:
            await asyncio.to_thread(settle_page_cache)
    ids: list[str] = ctx.cold["ids"]
    stride = max(1, len(ids) // (z.cold_fetches * max(1, ctx.args.rounds)))
    picks = ids[rnd::stride][: z.cold_fetches]
    restart = await asyncio.to_thread(server.start)
    rss_restart = server.memory_mb().get("rss MB", 0.0)
    cold_t = Target(t.name, server, t.http)
    cold_gets: list[float] = []
    warm_gets: list[float] = []
    for sid in picks:
        url = f"{server.base_url}/api/sessions/{sid}/messages?limit={PAGE}"
        cold_gets += (await timed_get(cold_t, url, 1))[0]
        warm_gets += (await timed_get(cold_t, url, 1))[0]
    result: Metrics = {
        "restart to healthy s": restart,
        **latency_summary(cold_gets, "first GET "),
        **latency_summary(warm_gets, "second GET "),
        "rss after restart MB": rss_restart,
        "rss after GETs MB": server.memory_mb().get("rss MB", 0.0),
        "sessions on disk": float(len(ids)),
    }
    await asyncio.to_thread(server.stop)
    return result


# ------------------------------------------------------------------ registry

WORKLOADS: tuple[Workload, ...] = (
    Workload("append-1x1", "durable appends, 1 client on 1 session", append_workload(False, False)),
    Workload(
        "append-64x1", "durable appends, 64 clients on 1 session", append_workload(True, False)
    ),
    Workload(
        "append-64x64", "durable appends, 64 clients on 64 sessions", append_workload(True, True)
    ),
    Workload(
        "append-1x1-aiohttp",
        "append-1x1 from one aiohttp client process",
        append_workload(False, False, "aiohttp"),
    ),
    Workload(
        "append-64x1-aiohttp",
        "append-64x1 from one aiohttp client process",
        append_workload(True, False, "aiohttp"),
    ),
    Workload(
        "append-64x64-aiohttp",
        "append-64x64 from one aiohttp client process",
        append_workload(True, True, "aiohttp"),
    ),
    Workload(
        "history-10k",
        "page of 25: newest and at 90% depth (before cursor), 10k messages",
        history_workload("history_messages"),
    ),
    Workload(
        "history-1m",
        "page of 25: newest and at 90% depth, 1M messages (--big)",
        history_workload("big_messages"),
        roost_only=True,
        big=True,
    ),
    Workload("ws-fanout-50", "one append -> 50 sockets on one session", fanout_workload(False)),
    Workload(
        "ws-fanout-50-aiohttp",
        "ws-fanout-50, the posts sent with aiohttp",
        fanout_workload(False, "aiohttp"),
    ),
    Workload(
        "ws-fanout-1000",
        "appends on 100 sessions -> 10 sockets each (1,000 sockets)",
        fanout_workload(True),
    ),
    Workload(
        "chat-stream-100", "100 concurrent SSE echo replies (POST /chat)", chat_run, roost_only=True
    ),
    Workload(
        "cold-activation",
        "first GET of untouched sessions after restart, N on disk",
        cold_run,
        roost_only=True,
    ),
    *(Workload(n, d, run, roost_only=True) for n, d, run in bench_across.WORKLOADS),
)


# ------------------------------------------------------------------ orchestration


@dataclass
class Outcome:
    """Per workload and target: per-round metrics, or why there are none."""

    rounds: list[Metrics] = field(default_factory=list)
    status: str = "ok"

    def medians(self) -> Metrics:
        """Median over rounds of every metric (rounds missing a metric are skipped)."""
        names = list(dict.fromkeys(k for r in self.rounds for k in r))
        return {k: median([r[k] for r in self.rounds if k in r]) for k in names}


NEUTRAL_METRICS = ("client procs", "messages", "sessions on disk", "count")


def better_direction(metric: str) -> str:
    """``higher`` for throughput, ``""`` for sizes and counts, else ``lower`` (ms, MB, s)."""
    if metric.startswith("throughput"):
        return "higher"
    if metric.endswith(NEUTRAL_METRICS):
        return ""
    return "lower"


def sizes_for(args: argparse.Namespace) -> Sizes:
    """The ``Sizes`` preset for ``args`` with the command-line overrides applied."""
    base = QUICK if args.quick else FULL
    if args.cold_sessions is not None:
        base = replace(base, cold_sessions=args.cold_sessions)
    if args.big_messages is not None:
        base = replace(base, big_messages=args.big_messages)
    return base


def select_workloads(args: argparse.Namespace) -> list[Workload]:
    """The workloads to run: ``--only`` names (validated), else all (big ones need ``--big``)."""
    if args.only:
        wanted = [w.strip() for w in args.only.split(",") if w.strip()]
        known = {w.name: w for w in WORKLOADS}
        unknown = [w for w in wanted if w not in known]
        if unknown:
            raise SystemExit(f"bench: unknown workload(s) {unknown}; known: {sorted(known)}")
        return [known[w] for w in wanted]
    return [w for w in WORKLOADS if args.big or not w.big]


async def start_targets(
    args: argparse.Namespace,
    workdir: Path,
    notes: list[str],
    errors: list[str],
    launched: list[Server],
) -> list[tuple[str, Server]]:
    """Start the selected servers and return the healthy ones as ``(column, server)``.

    Every server is added to ``launched`` before it starts, so the caller can stop
    it even when interrupted mid-start. Failures go to ``errors`` (Roost, or the
    peer with ``--peer-only``) or to ``notes`` (the peer otherwise).
    """
    servers: list[tuple[str, Server]] = []
    if not args.peer_only:
        roost = RoostServer(
            ROOST,
            workdir / ROOST,
            repo=args.repo,
            python=args.python,
            extra_env=dict(kv.split("=", 1) for kv in args.roost_env),
        )
        launched.append(roost)
        try:
            startup = await asyncio.to_thread(roost.start)
            progress(f"roost up on {roost.base_url} in {startup:.2f}s (repo {args.repo})")
            servers.append((ROOST, roost))
        except BenchError as e:
            errors.append(f"roost did not start: {e}")
            progress(errors[-1])
    if not args.roost_only:
        try:
            log: list[str] = []
            install = await asyncio.to_thread(prepare_peer, args.peer_dir, args.cache_dir, log)
            for line in log:
                progress(line)
            peer = PeerServer(PEER, workdir / PEER, install_dir=install)
            launched.append(peer)
            startup = await asyncio.to_thread(peer.start)
            progress(f"workerd up on {peer.base_url} in {startup:.2f}s ({install})")
            servers.append((PEER, peer))
        except BenchError as e:
            kind = "unavailable" if isinstance(e, PeerUnavailable) else "did not start"
            text = f"workerd peer {kind}: {e}"
            (errors if args.peer_only else notes).append(text)
            progress(text + ("" if args.peer_only else " (continuing without it)"))
    return servers


async def run_all(
    ctx: Context,
    servers: Sequence[tuple[str, Server]],
    workloads: Sequence[Workload],
    errors: list[str],
) -> tuple[dict[str, dict[str, Outcome]], dict[str, Metrics]]:
    """Run every workload for every round on every server; return outcomes and final memory."""
    outcomes: dict[str, dict[str, Outcome]] = {w.name: {} for w in workloads}
    limits = aiohttp.TCPConnector(limit=256)
    async with aiohttp.ClientSession(connector=limits) as http:
        targets = [Target(name, server, http) for name, server in servers]
        # (not in the --quick smoke run, which times nothing)
        dropped = not ctx.args.quick and await asyncio.to_thread(settle_page_cache)
        ctx.notes.append(
            "page cache: flushed and dropped before the first round and after the "
            "cold-activation setup"
            if dropped
            else "page cache: not dropped (--quick, or not root): figures that "
            "depend on fsync can vary with what earlier runs left cached"
        )
        for rnd in range(ctx.args.rounds):
            order = targets if rnd % 2 == 0 else targets[::-1]
            for w in workloads:
                for t in order:
                    out = outcomes[w.name].setdefault(t.name, Outcome())
                    if out.status != "ok":
                        continue
                    if w.roost_only and t.name != ROOST:
                        out.status = "n/a: Roost-only workload"
                        continue
                    progress(f"round {rnd + 1}/{ctx.args.rounds}: {w.name} on {t.name}")
                    try:
                        out.rounds.append(await w.run(ctx, t, rnd))
                    except Unsupported as e:
                        out.status = f"n/a: {e}"
                        progress(f"{w.name} on {t.name}: {out.status}")
                    except (BenchError, aiohttp.ClientError, OSError, TimeoutError) as e:
                        detail = str(e) if isinstance(e, BenchError) else f"{type(e).__name__}: {e}"
                        out.status = f"error: {detail}"
                        errors.append(f"{w.name} on {t.name}: {detail}")
                        progress(f"error: {errors[-1]}")
        memory = {t.name: t.server.memory_mb() for t in targets}
    return outcomes, memory


def report(
    ctx: Context,
    workloads: Sequence[Workload],
    outcomes: dict[str, dict[str, Outcome]],
    memory: dict[str, Metrics],
    errors: Sequence[str],
) -> tuple[str, dict[str, Any]]:
    """Return the printed report (Markdown table plus notes) and the JSON document."""
    rows: list[list[str | float | None]] = []
    doc: dict[str, Any] = {"workloads": {}, "memory": memory}
    for w in workloads:
        by_target = outcomes.get(w.name, {})
        med = {name: out.medians() for name, out in by_target.items()}
        names = list(dict.fromkeys(k for m in med.values() for k in m))
        doc["workloads"][w.name] = {
            "description": w.description,
            "status": {name: out.status for name, out in by_target.items()},
            "rounds": {name: out.rounds for name, out in by_target.items()},
            "medians": med,
        }
        if not names:
            rows.append(
                [w.name, "-", _cell(by_target.get(ROOST)), _cell(by_target.get(PEER)), None, ""]
            )
        for metric in names:
            r = med.get(ROOST, {}).get(metric)
            p = med.get(PEER, {}).get(metric)
            rows.append(
                [
                    w.name,
                    metric,
                    r if r is not None else _cell(by_target.get(ROOST)),
                    p if p is not None else _cell(by_target.get(PEER)),
                    ratio(r, p),
                    better_direction(metric),
                ]
            )
    for metric in ("rss MB", "peak rss MB"):
        r, p = memory.get(ROOST, {}).get(metric), memory.get(PEER, {}).get(metric)
        if r is not None or p is not None:
            rows.append(["server memory", metric + " (end of run)", r, p, ratio(r, p), "lower"])
    header = ("workload", "metric", ROOST, PEER, "roost/workerd", "better")
    lines = [
        f"# Roost vs workerd: medians of {ctx.args.rounds} round(s)"
        f"{' (--quick: tiny sizes, smoke test only)' if ctx.args.quick else ''}",
        f"client processes: {ctx.pool.size} (throughput and WebSocket listeners; single-client"
        " latency probes and WebSocket posters run in the coordinator)",
        "ratio = roost / workerd; 'better' says whether a higher or a lower value is better.",
        "",
        format_table(header, rows),
    ]
    statuses = [
        f"- {w.name} on {name}: {out.status}"
        for w in workloads
        for name, out in outcomes.get(w.name, {}).items()
        if out.status.startswith("n/a") and out.status != "n/a: Roost-only workload"
    ]
    extra = [*ctx.notes, *(f"error: {e}" for e in errors)]
    if statuses or extra:
        lines += ["", "Notes:", *statuses, *(f"- {n}" for n in extra)]
    doc["notes"] = [*ctx.notes]
    doc["errors"] = list(errors)
    return "\n".join(lines), doc


def _cell(out: Outcome | None) -> str:
    """Table text for a missing value: ``n/a``, ``error`` or ``-`` (not run)."""
    if out is None:
        return "-"
    return "error" if out.status.startswith("error") else "n/a"


async def amain(args: argparse.Namespace) -> int:
    """Start servers and the client pool, run, report; always stop what was started."""
    workloads = select_workloads(args)
    sizes = sizes_for(args)
    workdir = Path(tempfile.mkdtemp(prefix="roost-bench-"))
    notes: list[str] = []
    errors: list[str] = []
    progress(f"workdir {workdir}; workloads: {', '.join(w.name for w in workloads)}")
    pool = await asyncio.to_thread(ClientPool, args.procs)
    launched: list[Server] = []
    outcomes: dict[str, dict[str, Outcome]] = {}
    memory: dict[str, Metrics] = {}
    ctx = Context(args, sizes, pool, workdir, tag=f"{int(time.time()) % 100000:05d}", notes=notes)
    interrupted = False
    _cancel_on_signals()
    try:
        servers = await start_targets(args, workdir, notes, errors, launched)
        outcomes, memory = await run_all(ctx, servers, workloads, errors)
    except asyncio.CancelledError:
        interrupted = True
        progress("interrupted: stopping the client processes and the servers")
    finally:
        if interrupted:
            pool.terminate()
        else:
            await asyncio.to_thread(pool.close)
        cold = ctx.cold.get("server")
        for server in [*launched, *([cold] if cold else [])]:
            code = await asyncio.to_thread(server.stop)
            if code not in (0, None, -15):
                notes.append(f"{server.name} exited with code {code} on SIGTERM")
    if interrupted:
        progress(f"kept {workdir} (server logs and data)")
        return 130
    text, doc = report(ctx, workloads, outcomes, memory, errors)
    print(text)
    doc["meta"] = {
        "rounds": args.rounds,
        "quick": args.quick,
        "client_procs": args.procs,
        "sizes": asdict(sizes),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "roost_repo": str(args.repo),
        "peer_dir": str(args.peer_dir),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if args.json:
        text_json = json.dumps(doc, indent=2) + "\n"
        await asyncio.to_thread(Path(args.json).write_text, text_json)
        progress(f"wrote {args.json}")
    if errors or args.keep:
        progress(f"kept {workdir} (server logs and data)")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if errors else 0


def _cancel_on_signals() -> None:
    """Make SIGINT and SIGTERM cancel the current task once (cleanup then runs)."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None

    def cancel() -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
            signal.signal(sig, signal.SIG_IGN)
        task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, cancel)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse and validate the command line."""
    repo = Path(__file__).resolve().parents[1]
    peer_dir = repo.parent / "shared" / "peers" / "workerd-chat"
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "roost-bench"
    p = argparse.ArgumentParser(
        description="Benchmark Roost against the workerd Durable Object peer (medians).",
        epilog="workloads: "
        + ", ".join(w.name for w in WORKLOADS)
        + ". Names ending in -aiohttp run the same workload from an ordinary aiohttp client"
        " (appends: all clients in one client process); every append workload reports"
        " server cpu us/append (server process tree, /proc/<pid>/stat, per acked append).",
    )
    p.add_argument("--rounds", type=int, default=None, help="rounds (default 3; 1 with --quick)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="CI smoke run: tiny sizes, 1 round, checks the bench end to end",
    )
    p.add_argument("--big", action="store_true", help="also run history-1m (seeds 1M messages)")
    p.add_argument("--only", help="comma-separated workload names")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--roost-only", action="store_true", help="do not start the peer")
    who.add_argument("--peer-only", action="store_true", help="do not start Roost")
    p.add_argument("--json", help="also write the results as JSON to this path")
    p.add_argument(
        "--procs",
        type=int,
        default=max(2, os.cpu_count() or 2),
        help="client worker processes (default: max(2, CPUs))",
    )
    p.add_argument(
        "--repo",
        type=Path,
        default=repo,
        help="Roost repo root to run the server from (default: this checkout)",
    )
    p.add_argument("--python", default=sys.executable, help="Python that runs Roost")
    p.add_argument(
        "--roost-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for Roost, e.g. ROOST_SYNCHRONOUS=NORMAL",
    )
    p.add_argument(
        "--peer-dir",
        type=Path,
        default=peer_dir,
        help=f"workerd peer sources (default: {peer_dir}, i.e. shared/ beside the "
        "checkout holding this script)",
    )
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=cache,
        help=f"where the peer is copied and npm-installed (default {cache})",
    )
    p.add_argument(
        "--roost-seed-route",
        default=None,
        metavar="PATH",
        help="bulk seed route on Roost, e.g. /api/sessions/{sid}/messages/bulk "
        "(POST {messages:[...]}, batches of 1000); default: single appends",
    )
    p.add_argument(
        "--cold-sessions",
        type=int,
        default=None,
        help="sessions on disk for cold-activation (default 100000; 1000 quick)",
    )
    p.add_argument(
        "--big-messages", type=int, default=None, help="messages for history-1m (default 1000000)"
    )
    bench_across.add_arguments(p)
    p.add_argument("--keep", action="store_true", help="keep the temp dir with logs and data")
    p.add_argument(
        "--cluster",
        action="store_true",
        help="cluster mode (scripts/bench_cluster.py): single node vs a loopback Ray cluster",
    )
    p.add_argument("--cluster-shards", type=int, default=4, help="--shards in cluster mode (4)")
    p.add_argument(
        "--context",
        action="store_true",
        help="context assembly at 50, 10k and 1M messages in a branch (scripts/bench_context.py;"
        " Roost only, in process; --quick: 50, 1k, 10k)",
    )
    p.add_argument("--list", action="store_true", help="list the workloads and exit")
    args = p.parse_args(argv)
    if args.list:
        for w in WORKLOADS:
            flags = " [Roost only]" if w.roost_only else ""
            flags += " [--big]" if w.big else ""
            print(f"{w.name:16} {w.description}{flags}")
        raise SystemExit(0)
    args.rounds = args.rounds if args.rounds is not None else (1 if args.quick else 3)
    args.repo = args.repo.resolve()
    args.peer_dir = args.peer_dir.resolve()
    if args.rounds < 1 or args.procs < 1:
        p.error("--rounds and --procs must be at least 1")
    if any("=" not in kv for kv in args.roost_env):
        p.error("--roost-env takes KEY=VALUE")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse arguments and run the bench; returns the exit status."""
    args = parse_args(argv)
    if args.context:
        import bench_context

        return bench_context.main(["--quick"] if args.quick else [])
    if args.cluster:
        import bench_cluster

        return asyncio.run(bench_cluster.amain(args))
    return asyncio.run(amain(args))


if __name__ == "__main__":
    sys.exit(main())
