"""Where a new shard is placed: spread over the shard nodes, sticky on restarts.

Ray's default scheduler packs actors whose demand is tiny (``roost_shard: 0.001``
each), so every shard of a small cluster landed on one node: one node's loss took
every shard with it and made the survivor start them all at once. A shard is
created instead with a *soft* node affinity to the node :func:`spread_node` names
(the shard nodes sorted by id, shard ``k`` on the ``k % n``-th). Soft: while that
node is alive a restarted shard process comes back there, next to its files;
when it is gone (or full) Ray places the shard anywhere it may go, as before.
Only creation uses it (``get_if_exists``: an existing shard keeps its place).
"""

from __future__ import annotations

import time
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from actors.cluster.placement import SHARD_RESOURCE

# how long a listing of the shard nodes is reused (a front asks for a handle again
# after each failed call; the listing is a GCS request)
NODES_TTL = 5.0
_nodes: tuple[float, list[str]] = (float("-inf"), [])


def spread_node(k: int, nodes: list[str]) -> str | None:
    """The node shard ``k`` is created on: ``k % n`` over ``nodes`` sorted (pure)."""
    if not nodes:
        return None
    ordered = sorted(nodes)
    return ordered[k % len(ordered)]


def shard_nodes() -> list[str]:
    """Ids of the alive nodes offering ``roost_shard`` (cached for ``NODES_TTL`` s)."""
    global _nodes
    now = time.monotonic()
    if now - _nodes[0] > NODES_TTL:
        alive = [
            str(n["NodeID"])
            for n in ray.nodes()  # type: ignore[no-untyped-call]
            if n.get("Alive") and n.get("Resources", {}).get(SHARD_RESOURCE, 0) > 0
        ]
        _nodes = (now, alive)
    return _nodes[1]


def shard_strategy(k: int) -> Any:
    """The scheduling strategy shard ``k`` is created with ("DEFAULT" without nodes)."""
    node = spread_node(k, shard_nodes())
    if node is None:
        return "DEFAULT"
    return NodeAffinitySchedulingStrategy(node_id=node, soft=True)
