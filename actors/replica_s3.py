"""The replica's listing through boto3 (only imported with ``--replica``).

:meth:`Store.positions` reads the layout described in :mod:`actors.replica_store`.
"""

from __future__ import annotations

from typing import Any

import boto3  # type: ignore[import-untyped]
from botocore.config import Config  # type: ignore[import-untyped]
from botocore.exceptions import ClientError  # type: ignore[import-untyped]

from actors.replica_store import CLAIMS, EPOCH, LTX_NAME, Target


class Store:
    """Lists the replica (boto3; blocking: call it on a thread)."""

    def __init__(self, target: Target) -> None:
        self.target = target
        # base -> LTX files (every level) in its newest epoch at the last listing, until
        # the activation's log line takes it (so this never outgrows the activations)
        self.files: dict[str, int] = {}
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
        return self.state(base)[0]

    def state(self, base: str) -> tuple[dict[int, int], list[int]]:
        """:meth:`positions` and :meth:`claims` of ``base`` from one listing."""
        out: dict[int, int] = {}
        files: dict[int, int] = {}
        claimed: list[int] = []
        pages = self._s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.target.bucket, Prefix=base + "/"
        )
        for page in pages:
            for obj in page.get("Contents", ()):
                rest = obj["Key"][len(base) + 1 :].split("/")
                if len(rest) == 2 and "/" + rest[0] + "/" == CLAIMS and EPOCH.match(rest[1]):
                    claimed.append(int(rest[1], 16))
                    continue
                if len(rest) != 3 or not EPOCH.match(rest[0]):
                    continue
                m = LTX_NAME.match(rest[2])
                if m is None:
                    continue
                epoch = int(rest[0], 16)
                out[epoch] = max(out.get(epoch, 0), int(m.group(2), 16))
                files[epoch] = files.get(epoch, 0) + 1
        self.files[base] = files[max(files)] if files else 0
        return out, sorted(claimed)

    def claims(self, base: str) -> list[int]:
        """The epochs claimed under ``base`` (``base/claims/<epoch>``), ascending."""
        out: list[int] = []
        pages = self._s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.target.bucket, Prefix=base + CLAIMS
        )
        for page in pages:
            for obj in page.get("Contents", ()):
                name = obj["Key"][len(base + CLAIMS) :]
                if EPOCH.match(name):
                    out.append(int(name, 16))
        return sorted(out)

    def claim(self, base: str, epoch: int) -> bool:
        """Create ``base/claims/<epoch>`` unless it exists (a conditional PUT,
        ``If-None-Match: *``): whether this call made it."""
        try:
            self._s3.put_object(
                Bucket=self.target.bucket,
                Key=f"{base}{CLAIMS}{epoch:08x}",
                Body=b"",
                IfNoneMatch="*",
            )
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (
                409,
                412,
            ):
                return False
            raise
        return True

    def superseded(self, base: str, epoch: int) -> bool:
        """Whether an epoch above ``epoch`` is claimed under ``base``: one HEAD of
        ``claims/<epoch + 1>`` (a lookup by key, where a listing costs what the
        bucket holds on some stores; moto's grows with every key in the bucket).

        That one key suffices while claims are never deleted: the first claim
        above ``epoch`` to be created is ``epoch + 1``. A claimer takes one above
        every claim, every epoch holding data and its own sidecar's epoch. When
        the first claim above ``epoch`` was listed for, every claim it saw was at
        most ``epoch``. Data and sidecars above ``epoch`` exist only after a claim
        above it. So it saw at most ``epoch`` everywhere, and took ``epoch + 1``.
        """
        try:
            self._s3.head_object(Bucket=self.target.bucket, Key=f"{base}{CLAIMS}{epoch + 1:08x}")
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if status == 404 or code in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def check(self) -> None:
        """Raise if the bucket cannot be reached (at start: a clear error early)."""
        self._s3.head_bucket(Bucket=self.target.bucket)
