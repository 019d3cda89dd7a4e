"""Replication and failover in cluster mode (issue 18): real Ray nodes, real moto.

A Ray head on 127.0.0.2 and two worker nodes (``scripts.cluster_trial``, with
Ray's health checks tuned for failover), two fronts with ``--replica``, and a
moto S3 server, all real processes stopped by PID. 20 writers over 8 sessions
(two per shard) write through both fronts while (a) a shard's process is
SIGKILLed (its Litestream mid-sync: writes never pause) and then (b) every
process of a worker node is SIGKILLed and its data directory deleted. Every
acknowledged message must then be readable through the fronts, once and in
order; every request during failover answered 201 or 503 within the bound.
The two tests share the cluster and run in this order (b loses a node).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

pytest.importorskip("ray", reason="cluster mode needs ray: pip install -e '.[cluster]'")
pytest.importorskip("moto", reason="the S3 stand-in needs the replica extra")

from actors.cluster.placement import shard_of
from scripts.cluster_trial import Front, LocalRayCluster
from scripts.s3_standin import S3StandIn
from tests.harness import TIMEOUT, contents

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]

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


def _sessions() -> list[str]:
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


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    base = tmp_path_factory.mktemp("rcluster")
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
        r = Rig(ray, fronts, data, s3, _sessions())
        asyncio.run(_create(r))
        yield r
    finally:
        for f in fronts:
            f.stop()
        ray.stop()
        s3.stop()


async def _create(r: Rig) -> None:
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
            else:
                await asyncio.sleep(0.2)  # the Retry-After of a client in a hurry
            i += 1  # an unacknowledged text may or may not be stored: never reused


async def _readable(http: aiohttp.ClientSession, r: Rig, sid: str) -> list[str]:
    deadline = time.monotonic() + WAIT * 2
    while True:
        try:
            return await contents(http, r.fronts[1].url, sid)
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


def _shard_dirs(data: Path, k: int) -> list[Path]:
    return sorted(
        (p.parent for p in data.glob(f"nodes/*/shard-{k}/roost.lock")),
        key=lambda p: (p / "roost.lock").stat().st_mtime,
        reverse=True,
    )


def _shard_pid(data: Path, k: int) -> int:
    return int((_shard_dirs(data, k)[0] / "roost.lock").read_text().strip())


async def _under_load(
    r: Rig, http: aiohttp.ClientSession, fail: Any, victims: set[str], tag: str
) -> tuple[list[Writer], float]:
    """Run 20 writers (texts ``<tag>w<n>-<i>``), call ``fail()`` once each has acks,
    keep writing until every victim session has taken a write again; the failover
    time (from ``fail()`` to the last victim's first acknowledged write)."""
    writers = [
        Writer(http, r.fronts[w % 2].url, r.sessions[w % len(r.sessions)], f"{tag}w{w}")
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


async def _check(r: Rig, http: aiohttp.ClientSession, writers: list[Writer]) -> None:
    stored = {sid: await _readable(http, r, sid) for sid in r.sessions}
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


async def test_shard_killed_mid_sync_loses_nothing_acknowledged(rig: Rig) -> None:
    """SIGKILL of a shard's process (and so its Litestream child) under 20 writers:
    Ray restarts it on the same node; its sessions' local copies are at least as
    new as the replica and are kept; nothing acknowledged is lost."""
    k = shard_of(rig.sessions[0], SHARDS)
    pid = _shard_pid(rig.data, k)
    victims = {sid for sid in rig.sessions if shard_of(sid, SHARDS) == k}

    async def fail() -> None:
        os.kill(pid, signal.SIGKILL)

    async with aiohttp.ClientSession() as http:
        writers, took = await _under_load(rig, http, fail, victims, "a")
        print(f"\nfailover after a shard process was killed: {took:.2f} s")
        await _check(rig, http, writers)
    assert _shard_pid(rig.data, k) != pid


def _node_pids(pgid: int) -> list[int]:
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


def _node_of(pid: int, nodes: set[int]) -> int:
    """The ``ray start`` process (of ``nodes``) that ``pid`` descends from."""
    p = pid
    while p > 1:
        if p in nodes or os.getpgid(p) in nodes:
            return p if p in nodes else os.getpgid(p)
        p = int(Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[1])
    raise AssertionError(f"process {pid} is on no worker node")


async def test_node_and_disk_lost_loses_nothing_acknowledged(rig: Rig) -> None:
    """SIGKILL every process of the worker node hosting a shard and delete its data
    directory: Ray restarts its shards on the other node, which restore each
    session from the replica before serving it."""
    k = shard_of(rig.sessions[2], SHARDS)
    pid = _shard_pid(rig.data, k)
    node_dir = _shard_dirs(rig.data, k)[0].parent
    pgid = _node_of(pid, {rig.ray.worker_pid(i) for i in range(rig.ray.workers)})
    lost_shards = {
        j
        for j in range(SHARDS)
        if _shard_dirs(rig.data, j) and _shard_dirs(rig.data, j)[0].parent == node_dir
    }
    victims = {sid for sid in rig.sessions if shard_of(sid, SHARDS) in lost_shards}

    async def fail() -> None:
        for p in _node_pids(pgid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
        shutil.rmtree(node_dir)

    async with aiohttp.ClientSession() as http:
        writers, took = await _under_load(rig, http, fail, victims, "b")
        print(f"\nfailover after node and disk loss ({len(lost_shards)} shards): {took:.2f} s")
        await _check(rig, http, writers)
    assert not node_dir.exists() or _shard_dirs(rig.data, k)[0].parent != node_dir
