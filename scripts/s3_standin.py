"""A local S3 stand-in for replication trials and tests: a real ``moto_server`` process.

``S3StandIn(workdir).start()`` runs moto (PyPI ``moto[server]``, in the
``replica`` extra) on a free loopback port, makes a bucket and sets test
credentials in :attr:`S3StandIn.env`; :meth:`S3StandIn.stop` stops it by PID.
The data lives in moto's memory: stopping it loses the "replica".
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "roost-test",
    "AWS_SECRET_ACCESS_KEY": "roost-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


class S3StandIn:
    """moto's S3 server on ``host`` (loopback); see the module docstring."""

    def __init__(self, workdir: Path, *, bucket: str = "roost", host: str = "127.0.0.1") -> None:
        self.workdir = workdir
        self.bucket = bucket
        self.host = host
        self.port = _free_port(host)
        self.endpoint = f"http://{host}:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.env = dict(CREDENTIALS)

    def replica_url(self, prefix: str = "roost") -> str:
        return f"s3://{self.bucket}/{prefix}"

    def replica_args(self, prefix: str = "roost") -> list[str]:
        """The ``roost serve`` flags that replicate to ``prefix`` of this stand-in
        (run the server with :attr:`env` for the credentials)."""
        return ["--replica", self.replica_url(prefix), "--replica-endpoint", self.endpoint]

    def start(self, timeout: float = 60.0) -> S3StandIn:
        self.workdir.mkdir(parents=True, exist_ok=True)
        exe = Path(sys.executable).parent / "moto_server"
        argv = [str(exe)] if exe.exists() else [sys.executable, "-m", "moto.server"]
        log = open(self.workdir / f"moto-{self.port}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [*argv, "-H", self.host, "-p", str(self.port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto_server exited ({self.proc.returncode})")
            try:
                with urllib.request.urlopen(self.endpoint + "/moto-api/", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("moto_server did not answer") from None
                time.sleep(0.05)
        self.client().create_bucket(Bucket=self.bucket)
        return self

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=self.env["AWS_DEFAULT_REGION"],
            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
        )

    def keys(self, prefix: str = "") -> list[str]:
        """Every key under ``prefix`` (for tests)."""
        out: list[str] = []
        pages = self.client().get_paginator("list_objects_v2")
        for page in pages.paginate(Bucket=self.bucket, Prefix=prefix):
            out.extend(o["Key"] for o in page.get("Contents", ()))
        return out

    def stop(self) -> None:
        """Stop moto by PID (SIGTERM, then SIGKILL). Idempotent."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
