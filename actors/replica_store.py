"""What the replica (S3-compatible storage) holds: target parsing and positions.

Layout under ``s3://BUCKET/PREFIX`` (one Litestream replica path per writer epoch)::

    PREFIX/sessions/<sid>/<epoch>/<level>/<min txid>-<max txid>.ltx
    PREFIX/catalogs/<name>/<epoch>/<level>/<min txid>-<max txid>.ltx
    PREFIX/sessions/<sid>/claims/<epoch>      (and catalogs/<name>/claims/<epoch>)

``<epoch>`` is 8 hex digits, one more than the highest epoch already there (with
data or claimed) when a writer (a registry incarnation) starts writing the
database; the writer first creates its empty ``claims/<epoch>`` object with a
conditional PUT (the fence of :mod:`actors.replica`); ``<level>`` is
Litestream's 4 hex digits. A database's **position** in the replica is the
newest epoch that holds any LTX file and the highest TXID in that epoch; local
positions (:func:`local_txid`) read the names of Litestream's own LTX files
next to the database, so nothing here opens a database.

Nothing here imports boto3 (the settings check ``--replica`` with :class:`Target`);
the replica's listing is :mod:`actors.replica_s3`.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit

LTX_NAME = re.compile(r"^([0-9a-f]{16})-([0-9a-f]{16})\.ltx$")
EPOCH = re.compile(r"^[0-9a-f]{8}$")
SIDECAR_SUFFIX = ".replica"
# a writer's claim of an epoch, made before it reads the replica: ``<base>/claims/<epoch>``
CLAIMS = "/claims/"


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
