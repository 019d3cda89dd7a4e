"""The replica's listing through boto3 (only imported with ``--replica``).

:meth:`Store.positions` reads the layout described in :mod:`actors.replica_store`.
"""

from __future__ import annotations

from typing import Any

import boto3  # type: ignore[import-untyped]
from botocore.config import Config  # type: ignore[import-untyped]

from actors.replica_store import EPOCH, LTX_NAME, Target


class Store:
    """Lists the replica (boto3; blocking: call it on a thread)."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self._s3: Any = boto3.client(
            "s3",
            endpoint_url=target.endpoint,
            region_name=target.region,
            config=Config(
                s3={"addressing_style": "path"},
                retries={"max_attempts": 3, "mode": "standard"},
                connect_timeout=5,
                read_timeout=10,
                max_pool_connections=32,
            ),
        )

    def positions(self, base: str) -> dict[int, int]:
        """``{epoch: highest TXID}`` of every epoch under ``base`` holding an LTX file."""
        out: dict[int, int] = {}
        pages = self._s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.target.bucket, Prefix=base + "/"
        )
        for page in pages:
            for obj in page.get("Contents", ()):
                rest = obj["Key"][len(base) + 1 :].split("/")
                if len(rest) != 3 or not EPOCH.match(rest[0]):
                    continue
                m = LTX_NAME.match(rest[2])
                if m is None:
                    continue
                epoch = int(rest[0], 16)
                out[epoch] = max(out.get(epoch, 0), int(m.group(2), 16))
        return out

    def check(self) -> None:
        """Raise if the bucket cannot be reached (at start: a clear error early)."""
        self._s3.head_bucket(Bucket=self.target.bucket)
