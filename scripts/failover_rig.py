"""A loopback cluster with a replica, under writers, losing a shard or a node (issue 18).

What ``tests/test_replica_cluster.py`` asserts and ``scripts.bench_replica --only
failover`` times: a Ray head and two worker nodes (:mod:`scripts.cluster_trial`,
Ray's health checks tuned for failover), two fronts with ``--replica`` on a moto
server (:mod:`scripts.s3_standin`), 8 sessions (two per shard) and 20 writers
over them through both fronts (:class:`Writer`: closed loop, or ``pace`` seconds
between a writer's acknowledged posts). :func:`under_load` fails something while
they write and returns the failover time: from the failure to the last victim
session's first acknowledged write. All real processes, stopped by PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from actors.cluster.placement import shard_of
from scripts.cluster_trial import Front, LocalRayCluster
from scripts.s3_standin import S3StandIn
from tests.harness import TIMEOUT, contents

SHARDS = 4
REQUEST_TIMEOUT = 5.0
WAIT = max(TIMEOUT, 60.0)
# a request may take the front's timeout plus what it needs to answer
BOUND = REQUEST_TIMEOUT + 5.0


@dataclass
class Rig:
    ray: LocalRayCluster
    fronts: list[Front]
    data: Path
    s3: S3StandIn
    sessions: list[str]


def session_ids() -> list[str]:
    """8 session ids, two on each shard."""
    per: dict[int, list[str]] = {k: [] for k in range(SHARDS)}
    n = 0
    while any(len(v) < 2 for v in per.values()):
        sid = f"rc-{n}"
        k = shard_of(sid, SHARDS)
        if len(per[k]) < 2:
            per[k].append(sid)
        n += 1
    return [sid for v in per.values() for sid in v]


@contextlib.contextmanager
def running_rig(base: Path) -> Iterator[Rig]:
    """Start moto, the Ray cluster and two fronts under ``base``, create the
    sessions; stop everything (by PID) on exit."""
    s3 = S3StandIn(base / "s3").start()
    ray = LocalRayCluster(base, workers=2, env=s3.env, fast_failover=True)
    fronts: list[Front] = []
    try:
        ray.start(timeout=WAIT)
        data = base / "data"
        extra = (
            "--shards",
            str(SHARDS),
            "--request-timeout",
            str(REQUEST_TIMEOUT),
            *s3.replica_args("cl"),
        )
        for _ in range(2):
            fronts.append(Front(ray, data, *extra))
            fronts[-1].wait_ready(WAIT)
        r = Rig(ray, fronts, data, s3, session_ids())
        asyncio.run(create(r))
        yield r
    finally:
        for f in fronts:
            f.stop()
        ray.stop()
        s3.stop()


async def create(r: Rig) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT * 2)) as http:

        async def one(i: int, sid: str) -> None:
            url = r.fronts[i % 2].url + "/api/sessions"
            for _ in range(int(WAIT * 2)):  # a shard's first start makes a worker process
                async with http.post(url, json={"id": sid}) as resp:
                    if resp.status in (201, 409):  # 409: an earlier try timed out, yet made it
                        return
                    assert resp.status == 503, await resp.text()
                await asyncio.sleep(0.5)
            raise AssertionError(f"{sid} not created")

        await asyncio.gather(*(one(i, sid) for i, sid in enumerate(r.sessions)))


@dataclass
class Writer:
    """Posts ``<name>-<i>`` to one session through one front; records what was acked."""

    http: aiohttp.ClientSession
    front: str
    sid: str
    name: str
    acked: list[str] = field(default_factory=list)
    answers: list[tuple[float, int, float]] = field(default_factory=list)  # (when, status, s)
    slow: list[float] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    pace: float = 0.0  # seconds between an acknowledged post and the next

    async def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            text = f"{self.name}-{i}"
            started = time.monotonic()
            status = 0
            try:
                async with self.http.post(
                    f"{self.front}/api/sessions/{self.sid}/messages",
                    json={"role": "user", "content": text},
                    timeout=aiohttp.ClientTimeout(total=BOUND + 20),
                ) as resp:
                    status = resp.status
                    if status == 503:
                        assert "Retry-After" in resp.headers
                    await resp.read()
            except (aiohttp.ClientError, TimeoutError):
                status = -1
            took = time.monotonic() - started
            self.answers.append((started, status, took))
            if took > BOUND:
                self.slow.append(took)
            if status in (200, 201):
                self.acked.append(text)
                if self.pace:
                    await asyncio.sleep(self.pace)
            else:
                await asyncio.sleep(0.2)  # the Retry-After of a client in a hurry
            i += 1  # an unacknowledged text may or may not be stored: never reused


async def readable(http: aiohttp.ClientSession, r: Rig, sid: str) -> list[str]:
    deadline = time.monotonic() + WAIT * 2
    while True:
        try:
            return await contents(http, r.fronts[1].url, sid)
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


def shard_dirs(data: Path, k: int) -> list[Path]:
    return sorted(
        (p.parent for p in data.glob(f"nodes/*/shard-{k}/roost.lock")),
        key=lambda p: (p / "roost.lock").stat().st_mtime,
        reverse=True,
    )


def shard_pid(data: Path, k: int) -> int:
    return int((shard_dirs(data, k)[0] / "roost.lock").read_text().strip())


async def under_load(
    r: Rig,
    http: aiohttp.ClientSession,
    fail: Callable[[], Awaitable[None]],
    victims: set[str],
    tag: str,
    pace: float = 0.0,
) -> tuple[list[Writer], float]:
    """Run 20 writers (texts ``<tag>w<n>-<i>``), call ``fail()`` once each has acks,
    keep writing until every victim session has taken a write again; the failover
    time (from ``fail()`` to the last victim's first acknowledged write)."""
    writers = [
        Writer(http, r.fronts[w % 2].url, r.sessions[w % len(r.sessions)], f"{tag}w{w}", pace=pace)
        for w in range(20)
    ]
    tasks = [asyncio.create_task(w.run()) for w in writers]
    try:
        deadline = time.monotonic() + WAIT * 2
        while not all(len(w.acked) >= 3 for w in writers):
            assert time.monotonic() < deadline, "writers got no acknowledgements"
            await asyncio.sleep(0.05)
        failed_at = time.monotonic()
        print(f"\n{tag}: failing at {time.time():.3f} (unix s)")
        await fail()
        back: dict[str, float] = {}
        deadline = time.monotonic() + WAIT * 3
        while len(back) < len(victims):
            assert time.monotonic() < deadline, f"no failover: {victims - set(back)} stay down"
            for w in writers:
                if w.sid in victims and w.sid not in back:
                    ok = [t + d for t, s, d in w.answers if s in (200, 201) and t > failed_at]
                    if ok:
                        back[w.sid] = min(ok) - failed_at
            await asyncio.sleep(0.05)
        n = sum(len(w.acked) for w in writers)
        while sum(len(w.acked) for w in writers) < n + 40:  # and some more after it
            assert time.monotonic() < deadline, "writes stopped after the failover"
            await asyncio.sleep(0.05)
    finally:
        for w in writers:
            w.stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), BOUND + 30)
    return writers, max(back.values())


async def check(r: Rig, http: aiohttp.ClientSession, writers: list[Writer]) -> None:
    stored = {sid: await readable(http, r, sid) for sid in r.sessions}
    for w in writers:
        mine = [c for c in stored[w.sid] if c.startswith(w.name + "-")]
        lost = set(w.acked) - set(mine)
        assert not lost, f"{w.name} lost {len(lost)} acknowledged messages: {sorted(lost)[:5]}"
        assert len(mine) == len(set(mine)), f"{w.name}: a message is stored twice"
        pos = [mine.index(c) for c in w.acked]
        assert pos == sorted(pos), f"{w.name}: acknowledged messages out of order"
        statuses = {s for _, s, _ in w.answers}
        assert statuses <= {200, 201, 503}, f"{w.name} got {statuses}"
        assert not w.slow, f"{w.name}: requests took {w.slow} s (bound {BOUND})"


def node_pids(pgid: int) -> list[int]:
    """Every process of a Ray node: its ``ray start`` process group and the
    descendants of those (a worker in a session of its own included)."""
    procs: dict[int, tuple[int, int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            procs[int(entry)] = (int(fields[1]), int(fields[2]))  # ppid, pgid
    mine = {p for p, (_, g) in procs.items() if g == pgid}
    grew = True
    while grew:
        grew = False
        for p, (pp, _) in procs.items():
            if pp in mine and p not in mine:
                mine.add(p)
                grew = True
    return sorted(mine)


def node_of(pid: int, nodes: set[int]) -> int:
    """The ``ray start`` process (of ``nodes``) that ``pid`` descends from."""
    p = pid
    while p > 1:
        if p in nodes or os.getpgid(p) in nodes:
            return p if p in nodes else os.getpgid(p)
        p = int(Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[1])
    raise AssertionError(f"process {pid} is on no worker node")


def lose_node(r: Rig) -> tuple[Callable[[], Awaitable[None]], set[str], set[int], Path]:
    """What losing the worker node that hosts the shard of ``r.sessions[2]`` takes:
    ``(fail, victim sessions, lost shards, that node's data directory)``; ``fail()``
    SIGKILLs every process of the node and deletes the directory (disk lost)."""
    k = shard_of(r.sessions[2], SHARDS)
    pid = shard_pid(r.data, k)
    node_dir = shard_dirs(r.data, k)[0].parent
    pgid = node_of(pid, {r.ray.worker_pid(i) for i in range(r.ray.workers)})
    lost = {
        j
        for j in range(SHARDS)
        if shard_dirs(r.data, j) and shard_dirs(r.data, j)[0].parent == node_dir
    }
    victims = {sid for sid in r.sessions if shard_of(sid, SHARDS) in lost}

    async def fail() -> None:
        for p in node_pids(pgid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
        shutil.rmtree(node_dir)

    return fail, victims, lost, node_dir
