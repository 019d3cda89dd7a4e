"""Replication figures (issue 18) that ``scripts/bench.py`` does not take itself.

    flock /tmp/roost-bench.lock python -m scripts.bench_replica [--rounds 3]

With a real moto S3 server on loopback (:mod:`scripts.s3_standin`) and
``roost serve --replica`` as a child process, prints medians of:

- ``restore-10k``: a 10,000-message session (made by an import) after ``kill -9``
  and the data dir deleted: seconds from the restarted server's ready to the
  first page of its history (the lazy restore of that one session);
- ``idle``: Litestream's CPU share, resident memory and open descriptors with
  ``--files`` hibernated session files on disk (not registered: they should cost
  nothing), with ``--idle`` live idle sessions registered, and once
  ``--replica-idle`` has parked those.

- ``failover``: the node-and-disk-loss case of ``tests/test_replica_cluster.py``
  (:mod:`scripts.failover_rig`: 3 Ray nodes, 2 fronts, moto, 20 writers over 8
  sessions) with each writer pausing ``--pace`` seconds after an acknowledged post
  (0: closed loop, as the test), a new cluster per round: seconds from the kill to
  the last victim session's first acknowledged write. Needs the cluster extra.

- ``appends``: ``scripts/bench.py --roost-only`` append-1x1, append-64x1 and
  append-64x64, each without and then with ``--replica`` (its ``--roost-env
  ROOST_REPLICA=...``), each workload in a bench run (a server) of its own: a
  64x64 round leaves 64 registered files that Litestream compacts and polls for
  ``--replica-idle`` after it ends, which a 1x1 round run next in the same server
  would measure as its own latency.

Figures and how to read them: ``docs/performance.md``, "Replication".
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from scripts.s3_standin import S3StandIn
from tests.harness import ROOT, ServerProcess


def _serve(s3: S3StandIn, data: Path, prefix: str, *extra: str) -> ServerProcess:
    return ServerProcess(data, *s3.replica_args(prefix), *extra, env=s3.env)


async def _seed_export(base: Path, n: int) -> bytes:
    """An export of one session with ``n`` messages, made on a plain server."""
    srv = ServerProcess(base / "plain", "--synchronous", "NORMAL")
    try:
        await srv.wait_ready()
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{srv.url}/api/sessions", json={"id": "big"}) as r:
                assert r.status == 201
            sem = asyncio.Semaphore(32)

            async def one(i: int) -> None:
                async with (
                    sem,
                    http.post(
                        f"{srv.url}/api/sessions/big/messages",
                        json={"role": "user", "content": f"message {i} " + "x" * 80},
                    ) as r,
                ):
                    assert r.status == 201

            await asyncio.gather(*(one(i) for i in range(n)))
            async with http.get(f"{srv.url}/api/sessions/big/export") as r:
                return await r.read()
    finally:
        srv.close()


async def restore_10k(s3: S3StandIn, base: Path, export: bytes, i: int) -> float:
    data = base / f"r{i}"
    srv = _serve(s3, data, f"restore{i}")
    try:
        await srv.wait_ready()
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{srv.url}/api/sessions/import?id=big",
                data=export,
                headers={"Content-Type": "application/json"},
            ) as r,
        ):
            assert r.status == 201, await r.text()
        srv.kill9()
    finally:
        srv.close()
    shutil.rmtree(data)
    srv = _serve(s3, data, f"restore{i}")
    try:
        await srv.wait_ready()
        async with aiohttp.ClientSession() as http:
            started = time.perf_counter()
            async with http.get(f"{srv.url}/api/sessions/big/messages?limit=25") as r:
                assert r.status == 200, await r.text()
                await r.read()
            return time.perf_counter() - started
    finally:
        srv.close()


def _children(pid: int, name: bytes) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid and name in cmd:
                out.append(int(entry))
    return out


def _usage(pid: int) -> tuple[float, int, int]:
    """(CPU seconds so far, resident bytes, open descriptors) of ``pid``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / tick
    rss = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    return cpu, rss, len(os.listdir(f"/proc/{pid}/fd"))


async def idle(
    s3: S3StandIn, base: Path, live: int, files: int, seconds: float, park: float
) -> dict[str, Any]:
    data = base / "idle"
    srv = _serve(
        s3,
        data,
        "idle",
        "--idle-timeout",
        "3600",
        "--max-live-actors",
        str(live + 100),
        "--replica-idle",
        str(park),
    )
    out: dict[str, Any] = {}
    try:
        await srv.wait_ready()
        (ls,) = _children(srv.proc.pid, b"litestream")
        async with aiohttp.ClientSession() as http:
            sem = asyncio.Semaphore(16)

            async def make(i: int) -> None:
                async with (
                    sem,
                    http.post(f"{srv.url}/api/sessions", json={"id": f"i{i}"}) as r,
                ):
                    assert r.status == 201

            await asyncio.gather(*(make(i) for i in range(files)))
            out["files_on_disk"] = files
            c0, rss, fds = _usage(ls)
            await asyncio.sleep(seconds)
            c1, rss, fds = _usage(ls)
            out["hibernated_cpu_share"] = (c1 - c0) / seconds
            out["hibernated_rss_mb"] = rss / 2**20
            out["hibernated_fds"] = fds

            async def touch(i: int) -> None:
                async with sem, http.get(f"{srv.url}/api/sessions/i{i}") as r:
                    assert r.status == 200

            await asyncio.gather(*(touch(i) for i in range(live)))
            await asyncio.sleep(2.0)  # the registrations' first snapshots settle
            c0, _, _ = _usage(ls)
            await asyncio.sleep(seconds)
            c1, rss, fds = _usage(ls)
            out["live_idle_sessions"] = live
            out["live_cpu_share"] = (c1 - c0) / seconds
            out["live_rss_mb"] = rss / 2**20
            out["live_fds"] = fds
            await asyncio.sleep(park * 1.5)  # --replica-idle passed: they are parked
            c0, _, _ = _usage(ls)
            await asyncio.sleep(seconds)
            c1, rss, fds = _usage(ls)
            out["parked_cpu_share"] = (c1 - c0) / seconds
            out["parked_rss_mb"] = rss / 2**20
            out["parked_fds"] = fds
    finally:
        srv.close()
    return out


APPEND_WORKLOADS = ("append-1x1", "append-64x1", "append-64x64")


def appends(s3: S3StandIn, rounds: int, workloads: tuple[str, ...] = APPEND_WORKLOADS) -> None:
    """``scripts/bench.py``'s append workloads without, then with ``--replica``; each
    workload (both ways) in bench runs of its own (see the module docstring)."""
    env = [f"ROOST_REPLICA={s3.replica_url('bench')}", f"ROOST_REPLICA_ENDPOINT={s3.endpoint}"]
    env += [f"{k}={v}" for k, v in s3.env.items()]
    for workload in workloads:
        cmd = [sys.executable, "scripts/bench.py", "--roost-only", "--only", workload]
        cmd += ["--rounds", str(rounds)]
        print(f"== {workload} without --replica", flush=True)
        subprocess.run(cmd, check=True, cwd=ROOT)
        print(f"== {workload} with --replica (moto on loopback)", flush=True)
        subprocess.run([*cmd, *(x for e in env for x in ("--roost-env", e))], check=True, cwd=ROOT)


def failover(base: Path, rounds: int, pace: float) -> list[float]:
    """Node-and-disk-loss failover times, one new cluster per round (see above)."""
    from scripts.failover_rig import Rig, check, lose_node, running_rig, under_load

    async def one(r: Rig) -> float:
        fail, victims, lost, _ = lose_node(r)
        async with aiohttp.ClientSession() as http:
            writers, took = await under_load(r, http, fail, victims, "f", pace=pace)
            await check(r, http, writers)
        print(f"failover round: {len(lost)} of the shards lost, {took:.2f} s", flush=True)
        return took

    times = []
    for i in range(rounds):
        with running_rig(base / f"failover{i}") as r:
            times.append(asyncio.run(one(r)))
    return times


async def main_async(args: argparse.Namespace) -> None:
    base = Path(tempfile.mkdtemp(prefix="roost-brep-"))
    s3 = S3StandIn(base / "s3").start()
    try:
        if "appends" in args.only:
            await asyncio.get_running_loop().run_in_executor(None, appends, s3, args.rounds)
        if "failover" in args.only:
            loop = asyncio.get_running_loop()
            times = await loop.run_in_executor(None, failover, base, args.rounds, args.pace)
            print(
                f"failover (node and disk lost, --pace {args.pace:g}): median "
                f"{statistics.median(times):.2f} s (runs {', '.join(f'{t:.2f}' for t in times)})"
            )
        if "restore" in args.only:
            export = await _seed_export(base, args.messages)
            times = [await restore_10k(s3, base, export, i) for i in range(args.rounds)]
            print(
                f"restore-{args.messages}: median {statistics.median(times):.3f} s "
                f"(runs {', '.join(f'{t:.3f}' for t in times)})"
            )
        if "idle" in args.only:
            res = await idle(s3, base, args.idle, args.files, args.seconds, args.replica_idle)
            for k, v in res.items():
                print(f"idle {k}: {v:.3f}" if isinstance(v, float) else f"idle {k}: {v}")
    finally:
        s3.stop()
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--messages", type=int, default=10_000)
    p.add_argument("--idle", type=int, default=200, help="live idle sessions")
    p.add_argument("--files", type=int, default=10_000, help="session files on disk")
    p.add_argument("--seconds", type=float, default=10.0, help="idle measurement window")
    p.add_argument("--replica-idle", type=float, default=10.0, help="--replica-idle of the run")
    p.add_argument(
        "--pace", type=float, default=0.5, help="failover: seconds a writer waits after an ack"
    )
    p.add_argument("--only", default="appends,restore,idle", help="also: failover")
    asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    main()
