"""Joining a Ray cluster as a front (:func:`connect`), and its error.

Split out of :mod:`actors.cluster.front` (module size); ``front`` re-exports both.
"""

from __future__ import annotations

import logging

import ray

from actors.cluster.shard import meta_handle
from storage.errors import StorageError

# how long a joining front waits for the cluster's roost-meta actor (its first start
# makes a worker process)
META_WAIT = 60.0


class ClusterError(StorageError):
    """A front cannot join the cluster it was pointed at (the message says why)."""

    code = "cluster_error"


def connect(address: str, namespace: str, shards: int, timeout: float) -> None:
    """Join the Ray cluster at ``address`` as a driver, in ``namespace``, and check
    that it has ``shards`` shards (the first front to come records its count).

    Idempotent within a process. Raises :class:`ClusterError` when the cluster
    cannot be reached or was made with another shard count.
    """
    if not ray.is_initialized():
        try:
            ray.init(
                address=address,
                namespace=namespace,
                log_to_driver=False,
                logging_level=logging.WARNING,
            )
        except Exception as exc:
            raise ClusterError(
                f"cannot join the Ray cluster at {address}: {exc}; start it with "
                "`ray start --head` (and --resources '{\"roost_shard\": 1}' on the shard "
                "nodes) or fix --cluster"
            ) from exc
    try:
        recorded = int(ray.get(meta_handle(namespace, shards).shards.remote(), timeout=META_WAIT))
    except Exception as exc:
        raise ClusterError(
            f"the Ray cluster at {address} did not say its shard count within "
            f"{META_WAIT:g} s: {exc}"
        ) from exc
    if recorded != shards:
        raise ClusterError(
            f"cluster {namespace!r} at {address} has {recorded} shards, but this front was "
            f"started with --shards {shards}: every front must use the cluster's count; "
            f"pass --shards {recorded} (or a new --cluster-name for a new cluster)"
        )
