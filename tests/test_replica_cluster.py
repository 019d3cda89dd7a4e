"""Replication and failover in cluster mode (issue 18): real Ray nodes, real moto.

A Ray head on 127.0.0.2 and two worker nodes (``scripts.cluster_trial``, with
Ray's health checks tuned for failover), two fronts with ``--replica``, and a
moto S3 server, all real processes stopped by PID (:mod:`scripts.failover_rig`).
20 writers over 8 sessions (two per shard) write through both fronts while (a) a
shard's process is SIGKILLed (its Litestream mid-sync: writes never pause) and
then (b) every process of a worker node is SIGKILLed and its data directory
deleted. Every acknowledged message must then be readable through the fronts,
once and in order; every request during failover answered 201 or 503 within the
bound. The two tests share the cluster and run in this order (b loses a node).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import aiohttp
import pytest

pytest.importorskip("ray", reason="cluster mode needs ray: pip install -e '.[cluster]'")
pytest.importorskip("moto", reason="the S3 stand-in needs the replica extra")

from actors.cluster.placement import shard_of
from scripts.failover_rig import (
    SHARDS,
    Rig,
    check,
    lose_node,
    running_rig,
    shard_dirs,
    shard_pid,
    under_load,
)

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    with running_rig(tmp_path_factory.mktemp("rcluster")) as r:
        yield r


async def test_shard_killed_mid_sync_loses_nothing_acknowledged(rig: Rig) -> None:
    """SIGKILL of a shard's process (and so its Litestream child) under 20 writers:
    Ray restarts it on the same node; its sessions' local copies are at least as
    new as the replica and are kept; nothing acknowledged is lost."""
    k = shard_of(rig.sessions[0], SHARDS)
    pid = shard_pid(rig.data, k)
    victims = {sid for sid in rig.sessions if shard_of(sid, SHARDS) == k}

    async def fail() -> None:
        os.kill(pid, signal.SIGKILL)

    async with aiohttp.ClientSession() as http:
        writers, took = await under_load(rig, http, fail, victims, "a")
        print(f"\nfailover after a shard process was killed: {took:.2f} s")
        await check(rig, http, writers)
    assert shard_pid(rig.data, k) != pid
    assert len(shard_dirs(rig.data, k)) == 1, "the restarted shard moved to another node"


async def test_node_and_disk_lost_loses_nothing_acknowledged(rig: Rig) -> None:
    """SIGKILL every process of the worker node hosting a shard and delete its data
    directory: Ray restarts its shards on the other node, which restore each
    session from the replica before serving it. Shards are spread over the two
    nodes (``actors.cluster.spread``), so the node takes only some of them."""
    k = shard_of(rig.sessions[2], SHARDS)
    fail, victims, lost, node_dir = lose_node(rig)
    assert 0 < len(lost) < SHARDS, f"shards {sorted(lost)} of {SHARDS} on one node"
    async with aiohttp.ClientSession() as http:
        writers, took = await under_load(rig, http, fail, victims, "b")
        print(f"\nfailover after node and disk loss ({len(lost)} shards): {took:.2f} s")
        await check(rig, http, writers)
    assert not node_dir.exists() or shard_dirs(rig.data, k)[0].parent != node_dir
