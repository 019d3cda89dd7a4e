"""What the replica (S3-compatible storage) holds: target parsing and positions.

Layout under ``s3://BUCKET/PREFIX`` (one Litestream replica path per writer epoch)::

    PREFIX/sessions/<sid>/<epoch>/<level>/<min txid>-<max txid>.ltx
    PREFIX/catalogs/<name>/<epoch>/<level>/<min txid>-<max txid>.ltx

``<epoch>`` is 8 hex digits, one more than the highest epoch already there when a
writer (a registry incarnation) starts writing the database; ``<level>`` is
Litestream's 4 hex digits. A database's **position** in the replica is the
newest epoch that holds any LTX file and the highest TXID in that epoch; local
positions (:func:`local_txid`) read the names of Litestream's own LTX files
next to the database, so nothing here opens a database.

boto3 is imported only when a :class:`Store` is made (only with ``--replica``).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

LTX_NAME = re.compile(r"^([0-9a-f]{16})-([0-9a-f]{16})\.ltx$")
EPOCH = re.compile(r"^[0-9a-f]{8}$")
SIDECAR_SUFFIX = ".replica"


@dataclass(frozen=True, slots=True)
class Target:
    """``--replica s3://BUCKET/PREFIX`` and ``--replica-endpoint URL``."""

    bucket: str
    prefix: str
    endpoint: str | None = None
    region: str = "us-east-1"

    @classmethod
    def parse(cls, url: str, endpoint: str | None = None) -> Target:
        """Raises ``ValueError`` with a message for the operator on a bad URL."""
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise ValueError(f"--replica must look like s3://BUCKET/PREFIX, got {url!r}")
        if parts.query or parts.fragment:
            raise ValueError("--replica takes no query; give --replica-endpoint for the store")
        prefix = parts.path.strip("/")
        if not prefix:
            raise ValueError("--replica needs a prefix: s3://BUCKET/PREFIX")
        if endpoint is not None:
            ep = urlsplit(endpoint)
            if ep.scheme not in ("http", "https") or not ep.netloc:
                raise ValueError(f"--replica-endpoint must be an http(s) URL, got {endpoint!r}")
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        return cls(parts.netloc, prefix, endpoint or None, region)

    def session_base(self, sid: str) -> str:
        return f"{self.prefix}/sessions/{sid}"

    def catalog_base(self, name: str) -> str:
        return f"{self.prefix}/catalogs/{name}"

    def url(self, base: str, epoch: int) -> str:
        """Litestream's replica URL of ``base`` in ``epoch``."""
        query = f"region={quote(self.region)}"
        if self.endpoint is not None:
            query += f"&endpoint={quote(self.endpoint, safe=':/')}&forcePathStyle=true"
        return f"s3://{self.bucket}/{base}/{epoch:08x}?{query}"


def meta_dir(db: Path) -> Path:
    """Litestream's own folder next to ``db`` (its local LTX files)."""
    return db.parent / f".{db.name}-litestream"


def local_txid(db: Path) -> int:
    """The highest TXID among Litestream's local LTX files of ``db`` (0: none)."""
    top = 0
    ltx = meta_dir(db) / "ltx"
    try:
        levels = list(ltx.iterdir())
    except FileNotFoundError:
        return 0
    for level in levels:
        try:
            names = os.listdir(level)
        except (FileNotFoundError, NotADirectoryError):
            continue
        for name in names:
            m = LTX_NAME.match(name)
            if m is not None:
                top = max(top, int(m.group(2), 16))
    return top


def sidecar(db: Path) -> Path:
    return db.with_name(db.name + SIDECAR_SUFFIX)


def read_epoch(db: Path) -> int | None:
    """The epoch ``db`` was last replicated into (its sidecar), or None."""
    try:
        data = json.loads(sidecar(db).read_text())
        epoch = data["epoch"]
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None
    return epoch if isinstance(epoch, int) else None


def write_epoch(db: Path, epoch: int) -> None:
    """Record durably that ``db`` is now replicated into ``epoch``."""
    path = sidecar(db)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(json.dumps({"epoch": epoch}))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Store:
    """Lists the replica (boto3; blocking: call it on a thread)."""

    def __init__(self, target: Target) -> None:
        import boto3  # type: ignore[import-untyped]  # only with --replica
        from botocore.config import Config  # type: ignore[import-untyped]

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
