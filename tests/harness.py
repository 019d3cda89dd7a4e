"""The suite's one harness: the wait scale, bounded waits, a server process, writers.

Every wait in the tests is bounded by :data:`TIMEOUT` (one scale; slow machines
raise it with ``ROOST_TEST_TIMEOUT``). Nothing here sleeps to prove that
something did *not* happen: tests prove absence with gates and with a positive
observation of a later event.

* :func:`eventually` / :func:`eventually_blocking`: poll a predicate until it is
  true, fail with ``AssertionError`` after ``TIMEOUT`` seconds.
* :func:`deadline`: bound a loop of individually bounded steps as a whole.
* :class:`ServerProcess`: ``roost serve`` as a real child process on a free
  loopback port over a given data dir; its output goes to a log file.
  :func:`running_server` is the context-manager form for module fixtures.
* :class:`Appender` / :class:`Appenders`: concurrent writers that post messages
  and record exactly which ones the server acknowledged (2xx).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
# One scale for every wait in the suite: slow CI machines raise it.
TIMEOUT = float(os.environ.get("ROOST_TEST_TIMEOUT", "10"))
# a new server process: interpreter start and imports take seconds on a loaded
# machine (two cores shared by two test workers, browsers and Ray nodes)
START_TIMEOUT = max(3 * TIMEOUT, 30.0)
POLL = 0.01  # seconds between two looks of a polling wait


async def eventually(pred: Callable[[], Any], what: str, timeout: float = TIMEOUT) -> None:
    """Wait until ``pred()`` is truthy, polling every 10 ms.

    Raises ``AssertionError`` naming ``what`` after ``timeout`` seconds (TIMEOUT
    unless given). ``pred`` is called at least once, the last time after the
    deadline, so a condition that became true at the very end still passes.
    """
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(POLL)


@contextlib.asynccontextmanager
async def deadline(what: str, timeout: float = TIMEOUT) -> AsyncIterator[None]:
    """Bound the ``async with`` body (a read loop, a walk over pages) to ``timeout`` s.

    Raises ``AssertionError`` naming ``what`` when the body runs longer; the body
    is cancelled at that point. Use it for loops whose every step is bounded but
    whose number of steps is not.
    """
    try:
        async with asyncio.timeout(timeout):
            yield
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout}s waiting for {what}") from None


def eventually_blocking(pred: Callable[[], Any], what: str, timeout: float = TIMEOUT) -> None:
    """:func:`eventually` for code without an event loop (blocks the thread)."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(POLL)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the kernel picked it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# --------------------------------------------------------------------------- a server process


class ServerProcess:
    """``roost serve`` in a real child process on a free loopback port.

    Constructing it starts the process (``python -m server.cli serve``) with
    ``--host 127.0.0.1 --port <free> --data-dir data_dir`` plus ``extra``; its
    stdout and stderr go to ``self.log``. Call :meth:`wait_ready` (or
    :meth:`wait_ready_blocking`) before using ``self.url``. :meth:`close` is
    idempotent and always leaves the process reaped.
    """

    def __init__(self, data_dir: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        self.log = data_dir.parent / f"server-{self.port}.log"
        self._logf = open(self.log, "wb")  # noqa: SIM115 - closed by close()
        argv = ["--host", "127.0.0.1", "--port", str(self.port), "--data-dir", str(data_dir)]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "serve", *argv, *extra],
            cwd=ROOT,
            stdout=self._logf,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )

    def log_text(self) -> str:
        """Everything the server wrote so far (stdout and stderr)."""
        if not self._logf.closed:
            self._logf.flush()
        return self.log.read_text(errors="replace")

    def _healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(
                f"server exited early ({self.proc.returncode}):\n{self.log_text()}"
            )
        try:
            with urllib.request.urlopen(self.url + "/healthz", timeout=TIMEOUT) as r:
                return bool(r.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    async def wait_ready(self) -> None:
        """Wait until GET /healthz answers 200. Raises if the process exits or
        START_TIMEOUT passes (the message holds the server's log)."""
        deadline = time.monotonic() + START_TIMEOUT
        async with aiohttp.ClientSession() as s:
            while True:
                if self.proc.poll() is not None:
                    raise AssertionError(f"server exited early: {self.log_text()}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with s.get(self.url + "/healthz") as r:
                        if r.status == 200:
                            return
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"server not ready after {START_TIMEOUT}s: {self.log_text()}"
                    )
                await asyncio.sleep(0.05)

    def wait_ready_blocking(self) -> None:
        """:meth:`wait_ready` for code without an event loop (blocks the thread)."""
        try:
            eventually_blocking(self._healthy, "GET /healthz to answer 200", START_TIMEOUT)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.log_text()}") from None

    async def wait_exit(self, timeout: float = TIMEOUT * 2) -> int:
        """The process's exit code, waited for off the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self.proc.wait, timeout)

    async def sigterm(self, timeout: float = TIMEOUT * 2) -> int:
        """Send SIGTERM and return the exit code (raises ``TimeoutExpired`` after
        ``timeout``: a server that ignores SIGTERM fails the test)."""
        self.proc.send_signal(signal.SIGTERM)
        return await self.wait_exit(timeout)

    def kill9(self) -> None:
        """SIGKILL (a crash) and reap the process."""
        self.proc.kill()
        self.proc.wait(timeout=TIMEOUT)

    def terminate(self) -> int:
        """SIGTERM and wait (blocking) for the exit code."""
        self.proc.terminate()
        return self.proc.wait(timeout=TIMEOUT * 2)

    def stop(self, grace: float = TIMEOUT) -> int:
        """SIGTERM, then SIGKILL if it has not exited after ``grace`` seconds.

        Returns the exit code (negative: killed by that signal). Idempotent.
        """
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=TIMEOUT)
        return self.proc.returncode

    def close(self) -> None:
        """Stop the process (SIGTERM, SIGKILL after a bound) and close the log. Idempotent."""
        self.stop()
        if not self._logf.closed:
            self._logf.close()


@contextlib.contextmanager
def running_server(
    data_dir: Path, *extra: str, env: dict[str, str] | None = None
) -> Iterator[ServerProcess]:
    """A ready :class:`ServerProcess` for the ``with`` body; stopped afterwards.

    Usable from synchronous fixtures (it waits with :meth:`wait_ready_blocking`).
    """
    proc = ServerProcess(data_dir, *extra, env=env)
    try:
        proc.wait_ready_blocking()
        yield proc
    finally:
        proc.close()


# --------------------------------------------------------------------------- writers


class Appender:
    """Posts user messages to one session; records what the server acknowledged.

    ``acked`` holds the contents and ``acked_ids`` the ids of every message
    answered 2xx, in order; ``failures`` the status of every non-2xx answer;
    ``latencies`` seconds per acknowledged post. A connection error ends
    :meth:`run` quietly (the server may have been killed on purpose).
    """

    def __init__(self, http: aiohttp.ClientSession, base: str, sid: str, name: str = "w") -> None:
        self.http, self.sid, self.name = http, sid, name
        self.url = f"{base}/api/sessions/{sid}/messages"
        self.acked: list[str] = []
        self.acked_ids: list[str] = []
        self.failures: list[int] = []
        self.latencies: list[float] = []
        self._stop = asyncio.Event()

    async def post(self, content: str) -> dict[str, Any]:
        """One append; its message as JSON when acknowledged, else ``{}``."""
        started = time.monotonic()
        async with self.http.post(self.url, json={"role": "user", "content": content}) as resp:
            if resp.status not in (200, 201):
                self.failures.append(resp.status)
                return {}
            body: dict[str, Any] = await resp.json()
        self.latencies.append(time.monotonic() - started)
        self.acked.append(content)
        self.acked_ids.append(body["id"])
        return body

    async def run(self, pause: float = 0.0) -> None:
        """Post ``<name>-<i>`` messages until :meth:`stop` or a connection error.

        ``pause`` paces the loop (seconds between posts); it proves nothing.
        """
        i = 0
        while not self._stop.is_set():
            try:
                await self.post(f"{self.name}-{i}")
            except (TimeoutError, aiohttp.ClientError):
                return
            i += 1
            if pause:
                await asyncio.sleep(pause)

    def stop(self) -> None:
        """Ask :meth:`run` to end after its current post."""
        self._stop.set()


class Appenders:
    """Several :class:`Appender` s running as tasks (``start``, ``wait_acked``, ``stop``)."""

    def __init__(self, appenders: list[Appender]) -> None:
        self.appenders = appenders
        self.tasks: list[asyncio.Task[None]] = []

    def start(self, pause: float = 0.0) -> Appenders:
        self.tasks = [asyncio.create_task(a.run(pause)) for a in self.appenders]
        return self

    @property
    def acked(self) -> list[str]:
        """Contents of every acknowledged message, over all appenders."""
        return [c for a in self.appenders for c in a.acked]

    @property
    def acked_ids(self) -> set[str]:
        return {i for a in self.appenders for i in a.acked_ids}

    @property
    def count(self) -> int:
        return sum(len(a.acked) for a in self.appenders)

    @property
    def failures(self) -> list[int]:
        return [f for a in self.appenders for f in a.failures]

    async def wait_acked(self, n: int) -> None:
        """Wait until at least ``n`` messages are acknowledged in all (bounded)."""
        await eventually(lambda: self.count >= n, f"{n} acknowledged appends")

    async def stop(self) -> None:
        """Stop every appender and wait for its task (bounded by TIMEOUT)."""
        for a in self.appenders:
            a.stop()
        await asyncio.wait_for(asyncio.gather(*self.tasks), TIMEOUT)


async def all_messages(http: aiohttp.ClientSession, api: str, sid: str) -> list[dict[str, Any]]:
    """Every message of ``sid`` in every branch (``view=all``), oldest first, read page by
    page; ``api`` is the base URL of the API (``http://host:port/api``).

    A page without a cursor is the newest one (SPEC: messages), so the walk goes
    back by ``before`` until there is nothing older."""
    pages: list[list[dict[str, Any]]] = []
    before = None
    while True:
        q = f"?view=all&limit=200{'&before=' + before if before else ''}"
        async with http.get(f"{api}/sessions/{sid}/messages{q}") as r:
            assert r.status == 200, await r.text()
            page = await r.json()
        pages.append(page["items"])
        before = page["before"]
        if not before or not page["items"]:
            return [m for items in reversed(pages) for m in items]


async def contents(http: aiohttp.ClientSession, url: str, sid: str) -> list[str]:
    """The contents of :func:`all_messages` of ``sid`` on the server at ``url``."""
    return [m["content"] for m in await all_messages(http, url + "/api", sid)]


async def create_session(http: aiohttp.ClientSession, url: str, sid: str) -> None:
    """``POST /api/sessions {"id": sid}`` on the server at ``url``; asserts 201."""
    async with http.post(f"{url}/api/sessions", json={"id": sid}) as r:
        assert r.status == 201, await r.text()
