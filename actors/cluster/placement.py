"""Where things live in a cluster: pure functions, no Ray.

A session id maps by a stable hash (BLAKE2b, the same in every process and
Python version, unlike ``hash()``) to one of ``shards`` shards; a user's
session list (the directory) lives on the shard its user id maps to.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

META_NAME = "roost-meta"
SHARD_RESOURCE = "roost_shard"
# what one shard takes of a node's roost_shard resource: a node offering N hosts
# up to N / SHARD_SLICE shards
SHARD_SLICE = 0.001


def shard_of(sid: str, shards: int) -> int:
    """The shard of session ``sid`` (0 <= k < shards)."""
    digest = hashlib.blake2b(sid.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shards


def home_of(user: str, shards: int) -> int:
    """The shard holding ``user``'s directory (their session list)."""
    digest = hashlib.blake2b(b"user:" + user.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shards


def shard_name(k: int) -> str:
    """The Ray actor name of shard ``k``."""
    return f"roost-shard-{k}"


def shard_dir(data_dir: str | Path, node_id: str, k: int) -> Path:
    """Where shard ``k`` keeps its files on node ``node_id``."""
    return Path(data_dir).resolve() / "nodes" / node_id / f"shard-{k}"


@dataclass(frozen=True, slots=True)
class ShardSpec:
    """What a shard is made with (plain values: it crosses Ray when created).

    The first front to create shard ``k`` sets them; a later front's spec is
    ignored (``get_if_exists``). ``config`` holds ``ActorConfig``'s fields;
    ``responder`` is a picklable callable, run inside the shard's event loop
    with the shard's ``DataDir`` (where its attachments are), that makes its
    responder (None: the echo responder).
    """

    data_dir: str
    shards: int
    namespace: str
    config: dict[str, Any]
    write_threads: int = 16
    fsync: str = "auto"
    disk_reserve: int = 0
    responder: Any = None
    extra: dict[str, Any] = field(default_factory=dict)
