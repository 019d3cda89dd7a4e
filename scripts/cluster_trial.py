"""A loopback Roost cluster for a trial run (and the cluster tests' fixture).

    python -m scripts.cluster_trial --nodes 2 --fronts 2 --shards 4

starts a Ray head on 127.0.0.2 (no ``roost_shard`` resource, so no shard runs
there), ``--nodes`` worker nodes on 127.0.0.3, 127.0.0.4, ... (each offering
``roost_shard``), each a separate ``ray start --block`` process, and
``--fronts`` fronts (``roost serve --cluster``) on 127.0.0.1, prints the front
URLs and waits; Ctrl-C (or SIGTERM) stops everything by PID (never
``ray stop``, which would stop every Ray process of the machine). Everything
lives under ``--dir`` (a fresh temporary folder by default): Ray's temp dir
(``--temp-dir``, ``RAY_TMPDIR``), the data dir and the logs. Usage stats are
off.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAD_IP = "127.0.0.2"
READY_LINE = "Ray runtime started"
OBJECT_STORE_BYTES = 80 * 1024 * 1024
# the longest temp dir whose Ray socket paths stay within the 107 bytes of AF_UNIX
RAY_TEMP_MAX_CHARS = 40
# Ray's health checks of nodes, tuned down for failover (defaults: a dead node is
# noticed after about 5 x 3 s): a node that misses 3 checks 0.5 s apart is dead;
# and a node starts up to 4 worker processes at once (default: one per CPU, so the
# shards a lost node's restart brings were started one after the other)
FAST_FAILOVER = {
    "RAY_health_check_initial_delay_ms": "1000",
    "RAY_health_check_period_ms": "500",
    "RAY_health_check_timeout_ms": "500",
    "RAY_health_check_failure_threshold": "3",
    "RAY_worker_maximum_startup_concurrency": "4",
}


def _ray_bin() -> str:
    """The ``ray`` command beside this Python (the venv's)."""
    here = Path(sys.executable).parent / "ray"
    return str(here) if here.exists() else "ray"


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class LocalRayCluster:
    """A Ray head and ``workers`` worker nodes on loopback, as child processes.

    :meth:`start` launches them and waits until each says it started;
    :meth:`stop` (idempotent) ends them by PID: SIGTERM to each ``ray start
    --block`` process (which ends its node's processes), SIGKILL after a bound.
    """

    def __init__(
        self,
        base: Path,
        workers: int = 2,
        *,
        num_cpus: int = 1,
        env: dict[str, str] | None = None,
        fast_failover: bool = False,
    ) -> None:
        self.base = base
        self.workers = workers
        self.num_cpus = num_cpus
        # Ray puts its sockets ~64 characters under the temp dir, and a socket
        # path may have at most 107: a deep ``base`` (pytest-xdist's) gets a short
        # temp dir of its own, removed by ``stop``.
        self.temp_dir = base / "ray"
        self._own_temp: Path | None = None
        if len(str(self.temp_dir)) > RAY_TEMP_MAX_CHARS:
            self.temp_dir = self._own_temp = Path(tempfile.mkdtemp(prefix="roost-ray-"))
        self.port = _free_port(HEAD_IP)
        self.address = f"{HEAD_IP}:{self.port}"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []
        self.env = {
            **os.environ,
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_TMPDIR": str(self.temp_dir),
            "PYTHONPATH": str(ROOT),
            **(FAST_FAILOVER if fast_failover else {}),
            **(env or {}),
        }

    def _launch(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = self.base / f"{name}.log"
        self.logs.append(log)
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [_ray_bin(), "start", "--block", "--disable-usage-stats", *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=ROOT,
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    def start(self, timeout: float = 60.0) -> None:
        """Start the head, then the workers; raise if one is not up within ``timeout``."""
        self.base.mkdir(parents=True, exist_ok=True)
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        common = [
            f"--num-cpus={self.num_cpus}",
            f"--object-store-memory={OBJECT_STORE_BYTES}",
        ]
        self._launch(
            "ray-head",
            [
                "--head",
                f"--node-ip-address={HEAD_IP}",
                f"--port={self.port}",
                f"--temp-dir={self.temp_dir}",
                "--include-dashboard=false",
                "--resources={}",
                *common,
            ],
        )
        self._wait(0, timeout)
        for i in range(self.workers):
            self._launch(
                f"ray-worker-{i + 1}",
                [
                    f"--address={self.address}",
                    f"--node-ip-address=127.0.0.{3 + i}",
                    '--resources={"roost_shard": 1}',
                    *common,
                ],
            )
            # one at a time: nodes joining together can time out on a loaded machine
            self._wait(i + 1, timeout)

    def _wait(self, i: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            text = self.logs[i].read_text(errors="replace") if self.logs[i].exists() else ""
            if READY_LINE in text:
                return
            if self.procs[i].poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"ray node {i} did not start:\n{text[-3000:]}")
            time.sleep(0.1)

    def worker_pid(self, i: int) -> int:
        """The PID of worker node ``i``'s ``ray start`` process (0-based)."""
        return self.procs[1 + i].pid

    def stop(self, grace: float = 15.0) -> None:
        """Stop every node by PID (workers first). Idempotent."""
        for proc in reversed(self.procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=grace)
            # whatever of that node's own process group is left (each node was
            # started in a session of its own, so this reaches nothing else)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        if self._own_temp is not None:
            shutil.rmtree(self._own_temp, ignore_errors=True)


class Front:
    """``roost serve --cluster`` as a child process on 127.0.0.1."""

    def __init__(
        self, cluster: LocalRayCluster, data_dir: Path, *extra: str, port: int | None = None
    ) -> None:
        self.port = port or _free_port("127.0.0.1")
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = cluster.base / f"front-{self.port}.log"
        argv = [
            sys.executable,
            "-m",
            "server.cli",
            "serve",
            "--port",
            str(self.port),
            "--data-dir",
            str(data_dir),
            "--cluster",
            cluster.address,
            *extra,
        ]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, env=cluster.env, cwd=ROOT
            )

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"front exited:\n{self.log.read_text(errors='replace')}")
            with (
                contextlib.suppress(OSError, urllib.error.URLError),
                urllib.request.urlopen(self.url + "/healthz", timeout=5) as r,
            ):
                if r.status == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"front not ready:\n{self.log.read_text(errors='replace')}")
            time.sleep(0.1)

    def stop(self, grace: float = 15.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=grace)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cluster_trial", description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=2, help="worker nodes (default 2)")
    parser.add_argument("--fronts", type=int, default=2, help="fronts (default 2)")
    parser.add_argument("--shards", type=int, default=4, help="--shards of the cluster (4)")
    parser.add_argument("--port", type=int, default=8080, help="first front's port (8080)")
    parser.add_argument("--dir", default=None, help="where everything lives (a temp dir)")
    parser.add_argument(
        "--replica",
        action="store_true",
        help="replicate with Litestream to a local S3 stand-in (moto) started on loopback",
    )
    args = parser.parse_args(argv)
    base = Path(args.dir or tempfile.mkdtemp(prefix="roost-cluster-")).resolve()
    s3 = None
    replica: list[str] = []
    if args.replica:
        from scripts.s3_standin import S3StandIn

        s3 = S3StandIn(base / "s3").start()
        replica = s3.replica_args()
        print(f"S3 stand-in (moto) at {s3.endpoint}, replica {s3.replica_url()}")
    cluster = LocalRayCluster(
        base, args.nodes, env=None if s3 is None else s3.env, fast_failover=args.replica
    )
    fronts: list[Front] = []
    stopping = False

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        print(f"starting Ray: head {HEAD_IP}, {args.nodes} worker node(s); files in {base}")
        cluster.start()
        for i in range(args.fronts):
            fronts.append(
                Front(
                    cluster,
                    base / "data",
                    "--shards",
                    str(args.shards),
                    *replica,
                    port=args.port + i,
                )
            )
        for f in fronts:
            f.wait_ready()
        print(f"ray cluster at {cluster.address} (namespace roost, {args.shards} shards)")
        for f in fronts:
            print(f"front {f.url}  (log {f.log})")
        print("Ctrl-C stops everything")
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        stopping = True
    finally:
        if stopping:
            print("\nstopping fronts and ray nodes (by pid)")
        for f in fronts:
            f.stop()
        cluster.stop()
        if s3 is not None:
            s3.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
