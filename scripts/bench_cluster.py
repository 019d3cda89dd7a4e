"""Cluster mode of ``scripts/bench.py`` (issue 17): single node vs a loopback Ray cluster.

    flock /tmp/roost-bench.lock .venv/bin/python scripts/bench.py --cluster --rounds 3

starts, in one run, single-node ``roost serve`` (column ``roost``) and the local
trial cluster of :mod:`scripts.cluster_trial` (column ``cluster``): a Ray head on
127.0.0.2 (no shards), 2 worker nodes on 127.0.0.3/4 offering ``roost_shard``,
``--cluster-shards`` shards (default 4) and 2 fronts (``roost serve --cluster``)
on 127.0.0.1. Then it runs bench.py's own workloads against both, interleaved
round by round as bench.py does for the peer:

* ``append-1x1``: one client, one session, through front A (the p50 difference
  is what the front -> shard hop adds);
* ``append-64x64``: 64 clients on 64 sessions, the client processes dealt over
  both fronts (one each);
* ``history-10k``: newest page and the page at 90% depth, through front A;
* ``ws-fanout-50``: 50 sockets on **front B**, posts through **front A** (the
  real time path across fronts: shard -> subscription stream -> front B).

Every workload also reports the CPU the server side used (all its processes:
fronts, Ray's raylets and GCS, the shards' workers) and the machine's busy
cores while it ran, which is what bounds throughput on a 2-core machine. The
table's ratio is cluster / single node; the summary quotes the median of the
per-round ratios (each round's single-node figure is from the same round).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import bench
from _benchlib_client import ClientPool
from _benchlib_servers import (
    BenchError,
    RoostServer,
    Server,
    _descendants,
    _status_kb,
    process_cpu_seconds,
)
from _benchlib_stats import format_table, median, ratio
from cluster_trial import Front, LocalRayCluster

SINGLE, CLUSTER = bench.ROOST, "cluster"
NODES, FRONTS = 2, 2
DEFAULT_WORKLOADS = ("append-1x1", "append-64x64", "history-10k", "ws-fanout-50")


@dataclass
class ClusterServer(Server):
    """The local trial cluster as one "server": its fronts serve, its Ray nodes host.

    ``base_url`` is front A (``port``), ``base_urls`` every front (throughput
    jobs are dealt over them), ``listen_url`` the last front (WebSocket
    listeners). CPU and memory add up every process of the cluster: the fronts
    and each Ray node's process tree (raylet, GCS on the head, the shards'
    workers).
    """

    shards: int = 4
    extra_env: dict[str, str] = field(default_factory=dict)
    cluster: LocalRayCluster | None = None
    fronts: list[Front] = field(default_factory=list)

    @property
    def base_urls(self) -> list[str]:
        return [f.url for f in self.fronts] or [self.base_url]

    @property
    def listen_url(self) -> str:
        return self.fronts[-1].url if self.fronts else self.base_url

    def start(self) -> float:
        """Start the Ray nodes (one at a time), then the fronts; seconds to all healthy."""
        t0 = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        # short: Ray's socket paths under it must stay within AF_UNIX's 107 bytes
        cluster = LocalRayCluster(self.workdir / "c", NODES)
        cluster.env.update(self.extra_env)
        self.cluster = cluster
        try:
            cluster.start()
            for i in range(FRONTS):
                port = self.port if i == 0 else None
                front = Front(cluster, self.data_dir, "--shards", str(self.shards), port=port)
                self.fronts.append(front)
            for front in self.fronts:
                front.wait_ready()
        except (RuntimeError, OSError) as e:
            self.stop()
            raise BenchError(f"cluster did not start: {e}") from e
        return time.monotonic() - t0

    def stop(self) -> int | None:
        """Stop the fronts, then every Ray node, by PID (never ``ray stop``)."""
        for front in self.fronts:
            front.stop()
        self.fronts = []
        if self.cluster is not None:
            self.cluster.stop()
            self.cluster = None
        return None

    def _roots(self) -> list[int]:
        roots = [f.proc.pid for f in self.fronts]
        if self.cluster is not None:
            roots += [p.pid for p in self.cluster.procs]
        return roots

    def pids(self) -> list[int]:
        """Every live process of the cluster (fronts and Ray nodes, with descendants)."""
        return [p for root in self._roots() for p in _descendants(root)]

    def cpu_seconds(self) -> float:
        return sum(process_cpu_seconds(p) for p in self.pids())

    def memory_mb(self) -> dict[str, float]:
        pids = self.pids()
        if not pids:
            return {}
        return {
            "rss MB": sum(_status_kb(p, "VmRSS") for p in pids) / 1024.0,
            "peak rss MB": sum(_status_kb(p, "VmHWM") for p in pids) / 1024.0,
        }

    def placement(self) -> dict[str, int]:
        """Shard worker processes per worker node (``ray::Shard`` in their title)."""
        out: dict[str, int] = {}
        if self.cluster is None:
            return out
        for i in range(self.cluster.workers):
            pids = _descendants(self.cluster.worker_pid(i))
            out[f"127.0.0.{3 + i}"] = sum(1 for p in pids if "Shard" in _cmdline(p))
        return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _machine_busy() -> tuple[float, float]:
    """``(busy, total)`` CPU seconds of the whole machine so far (``/proc/stat``)."""
    values = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values) - idle) / tick, sum(values) / tick


def with_cpu(run: bench.RunFn) -> bench.RunFn:
    """``run`` plus the server side's CPU and the machine's busy cores while it ran."""

    async def wrapped(ctx: bench.Context, t: bench.Target, rnd: int) -> bench.Metrics:
        cpu0, (busy0, total0), wall0 = t.server.cpu_seconds(), _machine_busy(), time.monotonic()
        metrics = await run(ctx, t, rnd)
        wall = max(time.monotonic() - wall0, 1e-9)
        busy1, total1 = _machine_busy()
        cores = (total1 - total0) / wall
        metrics["server cpu cores"] = (t.server.cpu_seconds() - cpu0) / wall
        metrics["machine busy cores"] = (busy1 - busy0) / wall if cores else 0.0
        rate = metrics.get("throughput msgs/s")
        if rate:
            metrics["server cpu ms/msg"] = 1000.0 * metrics["server cpu cores"] / rate
        return metrics

    return wrapped


def cluster_workloads(args: argparse.Namespace) -> list[bench.Workload]:
    """bench.py's workloads named by ``--only`` (default :data:`DEFAULT_WORKLOADS`)."""
    known = {w.name: w for w in bench.WORKLOADS}
    wanted = [w.strip() for w in (args.only or ",".join(DEFAULT_WORKLOADS)).split(",")]
    bad = [w for w in wanted if w not in known or known[w].roost_only]
    if bad:
        shared = sorted(n for n, w in known.items() if not w.roost_only)
        raise SystemExit(f"bench --cluster: unknown or Roost-only workload(s) {bad}; use {shared}")
    return [replace(known[w], run=with_cpu(known[w].run)) for w in wanted if w]


def per_round_ratios(
    outcomes: dict[str, dict[str, bench.Outcome]], workload: str, metric: str
) -> list[float]:
    """cluster / single node of ``metric`` in each round that has both."""
    by = outcomes.get(workload, {})
    single, cluster = by.get(SINGLE), by.get(CLUSTER)
    if single is None or cluster is None:
        return []
    out = []
    for a, b in zip(single.rounds, cluster.rounds, strict=False):
        r = ratio(b.get(metric), a.get(metric))
        if r is not None:
            out.append(r)
    return out


def per_round_added(
    outcomes: dict[str, dict[str, bench.Outcome]], workload: str, metric: str
) -> list[float]:
    """cluster - single node of ``metric`` in each round that has both."""
    by = outcomes.get(workload, {})
    single, cluster = by.get(SINGLE), by.get(CLUSTER)
    if single is None or cluster is None:
        return []
    return [
        b[metric] - a[metric]
        for a, b in zip(single.rounds, cluster.rounds, strict=False)
        if metric in a and metric in b
    ]


def summary(outcomes: dict[str, dict[str, bench.Outcome]]) -> list[str]:
    """The goal lines of issue 17 (medians of per-round differences and ratios)."""
    lines = []
    added = per_round_added(outcomes, "append-1x1", "p50 ms")
    if added:
        lines.append(
            f"append-1x1 p50 added by the front -> shard hop: {median(added):.2f} ms "
            f"(median of {len(added)} round(s): {', '.join(f'{x:.2f}' for x in added)}; "
            "goal <= 1.5 ms)"
        )
    tput = per_round_ratios(outcomes, "append-64x64", "throughput msgs/s")
    if tput:
        lines.append(
            f"append-64x64 throughput cluster/single: {median(tput):.2f}x "
            f"(rounds: {', '.join(f'{x:.2f}' for x in tput)}; goal >= 0.6x)"
        )
    fan = outcomes.get("ws-fanout-50", {}).get(CLUSTER)
    if fan is not None and fan.rounds:
        p50 = fan.medians().get("fan-out p50 ms")
        single = outcomes["ws-fanout-50"].get(SINGLE)
        ref = single.medians().get("fan-out p50 ms") if single is not None else None
        if p50 is not None:
            lines.append(
                f"ws-fanout-50 across fronts (posts via A, 50 sockets on B) p50: {p50:.2f} ms"
                + (f" (single node {ref:.2f} ms)" if ref is not None else "")
            )
    return lines


def report(
    ctx: bench.Context,
    workloads: Sequence[bench.Workload],
    outcomes: dict[str, dict[str, bench.Outcome]],
    memory: dict[str, bench.Metrics],
    errors: Sequence[str],
    placement: dict[str, int],
) -> tuple[str, dict[str, Any]]:
    """The printed report (Markdown table, goal lines, notes) and the JSON document."""
    rows: list[list[str | float | None]] = []
    doc: dict[str, Any] = {"workloads": {}, "memory": memory, "placement": placement}
    for w in workloads:
        by = outcomes.get(w.name, {})
        med = {name: out.medians() for name, out in by.items()}
        doc["workloads"][w.name] = {
            "description": w.description,
            "status": {name: out.status for name, out in by.items()},
            "rounds": {name: out.rounds for name, out in by.items()},
            "medians": med,
        }
        for metric in dict.fromkeys(k for m in med.values() for k in m):
            a, b = med.get(SINGLE, {}).get(metric), med.get(CLUSTER, {}).get(metric)
            rows.append([w.name, metric, a, b, ratio(b, a), bench.better_direction(metric)])
    for metric in ("rss MB", "peak rss MB"):
        a, b = memory.get(SINGLE, {}).get(metric), memory.get(CLUSTER, {}).get(metric)
        rows.append(["server memory", metric + " (end of run)", a, b, ratio(b, a), "lower"])
    header = ("workload", "metric", "single node", "cluster", "cluster/single", "better")
    goals = summary(outcomes)
    nodes = ", ".join(f"{ip}: {n}" for ip, n in placement.items())
    lines = [
        f"# Roost cluster mode vs single node: medians of {ctx.args.rounds} round(s)"
        f"{' (--quick: tiny sizes, smoke test only)' if ctx.args.quick else ''}",
        f"cluster: Ray head 127.0.0.2 + {NODES} worker nodes, {FRONTS} fronts, "
        f"{ctx.args.cluster_shards} shards (shard workers per node: {nodes or 'unknown'}); "
        f"client processes: {ctx.pool.size}; cpu figures cover every server-side process",
        "",
        format_table(header, rows),
        "",
        *goals,
    ]
    failed = [
        f"- {w.name} on {name}: {out.status}"
        for w in workloads
        for name, out in outcomes.get(w.name, {}).items()
        if out.status != "ok"
    ]
    extra = [*ctx.notes, *(f"error: {e}" for e in errors)]
    if failed or extra:
        lines += ["", "Notes:", *failed, *(f"- {n}" for n in extra)]
    doc["goals"] = goals
    doc["notes"] = list(ctx.notes)
    doc["errors"] = list(errors)
    return "\n".join(lines), doc


async def amain(args: argparse.Namespace) -> int:
    """Start single node and the cluster, run the workloads, report; stop what started."""
    workloads = cluster_workloads(args)
    sizes = bench.sizes_for(args)
    workdir = Path(tempfile.mkdtemp(prefix="rbc-"))
    notes: list[str] = []
    errors: list[str] = []
    bench.progress(f"workdir {workdir}; workloads: {', '.join(w.name for w in workloads)}")
    pool = await asyncio.to_thread(ClientPool, args.procs)
    env = dict(kv.split("=", 1) for kv in args.roost_env)
    single = RoostServer(
        SINGLE, workdir / SINGLE, repo=args.repo, python=args.python, extra_env=env
    )
    cluster = ClusterServer(CLUSTER, workdir / CLUSTER, shards=args.cluster_shards, extra_env=env)
    ctx = bench.Context(args, sizes, pool, workdir, tag=f"{int(time.time()) % 100000:05d}")
    ctx.notes = notes
    load = os.getloadavg()
    notes.append(
        f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (other work on the "
        "machine is not held off by the bench lock; ratios come from the same rounds)"
    )
    outcomes: dict[str, dict[str, bench.Outcome]] = {}
    memory: dict[str, bench.Metrics] = {}
    placement: dict[str, int] = {}
    started: list[Server] = []
    try:
        for server in (single, cluster):
            started.append(server)
            up = await asyncio.to_thread(server.start)
            bench.progress(f"{server.name} up on {', '.join(server.base_urls)} in {up:.1f}s")
        outcomes, memory = await bench.run_all(
            ctx, [(SINGLE, single), (CLUSTER, cluster)], workloads, errors
        )
        placement = cluster.placement()
    except BenchError as e:
        errors.append(str(e))
        bench.progress(f"error: {e}")
    finally:
        await asyncio.to_thread(pool.close)
        for launched in started:
            await asyncio.to_thread(launched.stop)
    text, doc = report(ctx, workloads, outcomes, memory, errors, placement)
    print(text)
    doc["meta"] = {
        "rounds": args.rounds,
        "quick": args.quick,
        "client_procs": args.procs,
        "shards": args.cluster_shards,
        "nodes": NODES,
        "fronts": FRONTS,
        "sizes": asdict(sizes),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if args.json:
        await asyncio.to_thread(Path(args.json).write_text, json.dumps(doc, indent=2) + "\n")
        bench.progress(f"wrote {args.json}")
    if errors or args.keep:
        bench.progress(f"kept {workdir} (server logs and data)")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if errors else 0
