"""Start, health-check, measure and stop the servers that ``scripts/bench.py`` compares.

Two kinds of server:

* ``RoostServer``: ``<python> -m server.cli serve --host 127.0.0.1 --port P --data-dir D``
  run from the Roost repo root.
* ``PeerServer``: Cloudflare's workerd peer (``shared/peers/workerd-chat``). The peer
  directory is read-only, so it is copied into a cache directory where
  ``npm ci`` runs once (re-run when ``package-lock.json`` changes); then
  ``start.sh PORT DATADIR`` execs workerd, so the child PID is the server.

Every server listens on 127.0.0.1 on a free port, writes its output to a log
file in its own work directory, and is stopped with SIGTERM (SIGKILL after a
grace period).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "BenchError",
    "PeerServer",
    "PeerUnavailable",
    "RoostServer",
    "Server",
    "Unsupported",
    "free_port",
    "prepare_peer",
]

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0
NPM_TIMEOUT_S = 300.0
PEER_FILES = ("config.capnp", "package.json", "package-lock.json", "start.sh", "worker.js")


class BenchError(RuntimeError):
    """A benchmark step failed; the message says what was expected and what came."""


class Unsupported(BenchError):
    """The server does not serve what a workload needs (404/405): report ``n/a``, say why."""


class PeerUnavailable(BenchError):
    """The workerd peer cannot be installed or found (e.g. no npm): skip it, say why."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process so far (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def _descendants(pid: int) -> list[int]:
    """Return ``pid`` and all its live descendant PIDs (Linux ``/proc`` children lists)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            kids = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        todo.extend(int(k) for k in kids)
    return out


def _status_kb(pid: int, key: str) -> int:
    """Return a ``/proc/<pid>/status`` field in kB (e.g. ``VmRSS``), 0 if unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


@dataclass
class Server:
    """One server process under test.

    ``name`` is the report column (``roost`` or ``workerd``); ``workdir`` holds the
    data dir and the log. Call ``start()`` then ``stop()``; ``start()`` may be
    called again after ``stop()`` (same data dir: used for cold restarts).
    """

    name: str
    workdir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def base_url(self) -> str:
        """The ``http://127.0.0.1:PORT`` prefix of every request."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_urls(self) -> list[str]:
        """Every URL that serves the same sessions (a cluster's fronts; here just one)."""
        return [self.base_url]

    @property
    def listen_url(self) -> str:
        """Where WebSocket listeners connect (a cluster: another front than the posts')."""
        return self.base_url

    @property
    def data_dir(self) -> Path:
        """The server's (fresh, bench-owned) data directory."""
        return self.workdir / "data"

    @property
    def log_path(self) -> Path:
        """Where the server's stdout and stderr go."""
        return self.workdir / "server.log"

    def command(self) -> tuple[list[str], Path, dict[str, str]]:
        """Return ``(argv, cwd, env)`` that start the server in the foreground."""
        raise NotImplementedError

    def log_tail(self, lines: int = 20) -> str:
        """Return the last ``lines`` lines of the server log (for error messages)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"

    def start(self) -> float:
        """Start the server and wait until ``GET /healthz`` answers 200.

        Returns the seconds from spawn to healthy. Raises ``BenchError`` (with the
        log tail) if the process exits or is not healthy within ``START_TIMEOUT_S``.
        """
        if self.proc is not None:
            raise BenchError(f"{self.name}: start() while already running")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        argv, cwd, env = self.command()
        self.starts += 1
        log = self.log_path.open("ab")
        log.write(f"\n=== start #{self.starts}: {' '.join(argv)}\n".encode())
        log.flush()
        t0 = time.monotonic()
        self.proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        log.close()
        deadline = t0 + START_TIMEOUT_S
        last_error = "no answer yet"
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                self.proc = None
                raise BenchError(
                    f"{self.name}: server exited with code {code} before /healthz answered; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(self.base_url + "/healthz", timeout=2) as resp:
                    if resp.status == 200:
                        return time.monotonic() - t0
                    last_error = f"status {resp.status}"
            except urllib.error.HTTPError as e:
                last_error = f"status {e.code}: {e.read()[:200]!r}"
            except (OSError, urllib.error.URLError) as e:
                last_error = str(e)
            time.sleep(0.05)
        self.stop()
        raise BenchError(
            f"{self.name}: GET /healthz expected 200 within {START_TIMEOUT_S:.0f}s, "
            f"last: {last_error}; log {self.log_path}:\n{self.log_tail()}"
        )

    def stop(self) -> int | None:
        """Stop the server: SIGTERM, then SIGKILL after ``STOP_TIMEOUT_S``; return its exit code."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                return proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait(STOP_TIMEOUT_S)

    def cpu_seconds(self) -> float:
        """CPU time (user + system) used so far by the server's process tree, in seconds."""
        if self.proc is None:
            return 0.0
        return sum(process_cpu_seconds(p) for p in _descendants(self.proc.pid))

    def memory_mb(self) -> dict[str, float]:
        """Return ``rss MB`` (VmRSS) and ``peak rss MB`` (VmHWM) summed over the process tree."""
        if self.proc is None:
            return {}
        pids = _descendants(self.proc.pid)
        return {
            "rss MB": sum(_status_kb(p, "VmRSS") for p in pids) / 1024.0,
            "peak rss MB": sum(_status_kb(p, "VmHWM") for p in pids) / 1024.0,
        }


@dataclass
class RoostServer(Server):
    """Roost started from its repo root with ``python -m server.cli serve``."""

    repo: Path = Path(".")
    python: str = "python3"
    extra_env: dict[str, str] = field(default_factory=dict)

    def command(self) -> tuple[list[str], Path, dict[str, str]]:
        """``<python> -m server.cli serve --host 127.0.0.1 --port P --data-dir D`` in the repo."""
        argv = [
            self.python,
            "-m",
            "server.cli",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
        ]
        return argv, self.repo, {**os.environ, **self.extra_env}


@dataclass
class PeerServer(Server):
    """The workerd peer, run from an installed copy (see ``prepare_peer``)."""

    install_dir: Path = Path(".")

    def command(self) -> tuple[list[str], Path, dict[str, str]]:
        """``start.sh PORT DATADIR`` in the installed copy (it execs workerd)."""
        argv = [str(self.install_dir / "start.sh"), str(self.port), str(self.data_dir)]
        return argv, self.install_dir, dict(os.environ)


def _find_workerd(install_dir: Path) -> Path | None:
    """Return the installed workerd binary for this machine, if any."""
    for arch in ("linux-64", "linux-arm64"):
        p = install_dir / "node_modules" / "@cloudflare" / f"workerd-{arch}" / "bin" / "workerd"
        if p.is_file() and os.access(p, os.X_OK):
            return p
    return None


def prepare_peer(peer_dir: Path, cache_dir: Path, log: list[str]) -> Path:
    """Copy the peer sources into ``cache_dir/workerd-chat`` and ``npm ci`` there when needed.

    ``npm ci`` runs when no workerd binary is installed or ``package-lock.json``
    changed since the last install. Returns the install directory. Raises
    ``PeerUnavailable`` (saying why) when the sources, npm or the install are
    missing or fail. Progress lines are appended to ``log``.
    """
    missing = [f for f in PEER_FILES if not (peer_dir / f).is_file()]
    if missing:
        raise PeerUnavailable(
            f"peer sources not found in {peer_dir} (missing {', '.join(missing)})"
        )
    install = cache_dir / "workerd-chat"
    install.mkdir(parents=True, exist_ok=True)
    for name in PEER_FILES:
        dst = install / name
        if dst.exists():
            dst.chmod(0o755)
        shutil.copyfile(peer_dir / name, dst)
        dst.chmod(0o755 if name.endswith(".sh") else 0o644)
    lock_hash = hashlib.sha256((peer_dir / "package-lock.json").read_bytes()).hexdigest()
    stamp = install / ".bench-lock-sha256"
    if _find_workerd(install) is not None and stamp.exists() and stamp.read_text() == lock_hash:
        return install
    npm = shutil.which("npm")
    if npm is None:
        raise PeerUnavailable("npm is not installed (needed once to install the workerd binary)")
    log.append(f"installing the workerd peer in {install} (npm ci)")
    try:
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=install,
            capture_output=True,
            timeout=NPM_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        raise PeerUnavailable(f"npm ci did not finish within {NPM_TIMEOUT_S:.0f}s") from e
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).decode(errors="replace").strip().splitlines()[-8:]
        raise PeerUnavailable(f"npm ci failed with code {done.returncode}: " + " | ".join(tail))
    if _find_workerd(install) is None:
        raise PeerUnavailable(f"npm ci installed no workerd binary for {os.uname().machine}")
    stamp.write_text(lock_hash)
    return install
