"""Issue 16, hostile input and limits, against a real ``roost serve`` process:
Unicode digits (point 7), nosniff, the login cookie and cross-origin changes
(point 10), descriptors and idle connections (point 6)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import resource
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import ROOT, TIMEOUT, free_port
from tests.harness import START_TIMEOUT


class Server:
    """``roost serve`` in a child process, readiness checked without an event loop."""

    def __init__(
        self,
        data_dir: Path,
        *extra: str,
        nofile: int | None = None,
        env: dict[str, str] | None = None,
        log_dir: Path | None = None,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = (log_dir or data_dir.parent) / f"server-{self.port}.log"
        self._logf = open(self.log, "wb")  # noqa: SIM115

        def limit_descriptors() -> None:
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "server.cli",
                "serve",
                "--port",
                str(self.port),
                "--data-dir",
                str(data_dir),
                *extra,
            ],
            cwd=ROOT,
            stdout=self._logf,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            preexec_fn=limit_descriptors,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                self._logf.close()
                raise AssertionError(f"server exited early: {self.log.read_text()}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.close()  # no caller holds it yet: never leave the process running
                raise AssertionError(f"server not ready: {self.log.read_text()}")
            time.sleep(0.05)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=TIMEOUT)
        self._logf.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = Server(tmp_path_factory.mktemp("limits") / "data", "--echo-words-per-second", "0")
    yield s
    s.close()


@pytest.fixture(scope="module")
def tokens_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("tokens")
    tokens = tmp / "tokens.json"
    tokens.write_text(json.dumps({"tok-a": "alice"}))
    s = Server(
        tmp / "data",
        "--tokens-file",
        str(tokens),
        "--allowed-origins",
        "http://localhost:3000",
        "--rate-user-per-sec",
        "0",
        "--rate-session-per-sec",
        "0",
    )
    yield s
    s.close()


async def _prepare(url: str) -> tuple[str, str]:
    """A session with one exchange: its id and the assistant message id."""
    async with aiohttp.ClientSession() as http:
        async with http.post(url + "/api/sessions", json={}) as r:
            assert r.status == 201
            sid = (await r.json())["id"]
        async with http.post(
            f"{url}/api/sessions/{sid}/chat",
            json={"content": "hello there"},
            headers={"Accept": "application/json"},
        ) as r:
            assert r.status in (200, 201, 202), await r.text()
            mid = (await r.json())["assistant_message"]["id"]
    return sid, mid


def _cursor(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


# ---------------------------------------------------------------------------- point 7

BAD_NUMBERS = [
    "\u00b2",
    "\u0663",
    "1\u0660",
    "\uff11",
]  # superscript 2, Arabic-Indic 3 and 10, fullwidth 1


@pytest.mark.parametrize("value", BAD_NUMBERS)
@pytest.mark.parametrize("name", ["limit_sessions", "limit_messages", "since", "offset", "cursor"])
async def test_unicode_digits_in_query_answer_400(server: Server, name: str, value: str) -> None:
    """A numeric query parameter made of non-ASCII digits is a 400, never a 500 or a value."""
    sid, mid = await _prepare(server.url)
    path, params = {
        "limit_sessions": ("/api/sessions", {"limit": value}),
        "limit_messages": (f"/api/sessions/{sid}/messages", {"limit": value}),
        "since": (f"/api/sessions/{sid}/events", {"since": value}),
        "offset": (f"/api/sessions/{sid}/messages/{mid}/stream", {"offset": value}),
        "cursor": (f"/api/sessions/{sid}/messages", {"after": _cursor("s:" + value)}),
    }[name]
    async with aiohttp.ClientSession() as http:
        async with http.get(server.url + path, params=params) as r:
            assert r.status == 400, await r.text()
            assert (await r.json())["error"]["code"] == "invalid_input"


@pytest.mark.parametrize("header", ["Last-Event-ID", "If-Match"])
async def test_unicode_digits_in_headers_answer_400(server: Server, header: str) -> None:
    """``²`` (a latin-1 header byte that ``str.isdigit`` accepts) in a numeric header is 400."""
    sid, mid = await _prepare(server.url)
    raw = "\u00b2".encode("latin-1")
    async with aiohttp.ClientSession() as http:
        if header == "Last-Event-ID":
            req = http.get(
                f"{server.url}/api/sessions/{sid}/messages/{mid}/stream",
                headers={"Last-Event-ID": raw.decode("latin-1")},
            )
        else:
            req = http.patch(
                f"{server.url}/api/sessions/{sid}/messages/{mid}",
                json={"content": "edited"},
                headers={"If-Match": '"' + raw.decode("latin-1") + '"'},
            )
        async with req as r:
            assert r.status == 400, await r.text()
            assert (await r.json())["error"]["code"] == "invalid_input"


async def test_unicode_digits_in_import_timestamps_answer_400(server: Server) -> None:
    """An import whose timestamps use Arabic-Indic digits is refused, not stored."""
    ts = "\u0662\u0660\u0662\u0666-01-01T00:00:00Z"
    doc = {
        "format": "roost.session.v1",
        "session": {"id": "imp-digits", "title": None, "metadata": {}, "created_at": ts},
        "messages": [],
    }
    async with aiohttp.ClientSession() as http:
        async with http.post(server.url + "/api/sessions/import", json=doc) as r:
            assert 400 <= r.status < 500, await r.text()


# ---------------------------------------------------------------------------- point 10


async def test_json_responses_carry_nosniff(server: Server) -> None:
    """Every JSON answer, errors included, says ``X-Content-Type-Options: nosniff``."""
    async with aiohttp.ClientSession() as http:
        for path in ("/api/sessions", "/api/sessions/nope", "/healthz"):
            async with http.get(server.url + path) as r:
                assert r.headers.get("X-Content-Type-Options") == "nosniff", path


async def _login(http: aiohttp.ClientSession, url: str) -> str:
    async with http.post(url + "/api/login", json={"token": "tok-a"}) as r:
        assert r.status == 200
        cookie = r.cookies["roost_token"].value
    return cookie


async def test_login_cookie_is_not_the_token(tokens_server: Server) -> None:
    """The cookie names a server-side login; it never carries the token itself."""
    async with aiohttp.ClientSession() as http:
        cookie = await _login(http, tokens_server.url)
    assert cookie != "tok-a"
    assert "tok-a" not in cookie
    async with aiohttp.ClientSession(cookies={"roost_token": cookie}) as http:
        async with http.get(tokens_server.url + "/api/whoami") as r:
            assert r.status == 200
            assert (await r.json())["user"] == "alice"


async def test_logout_revokes_a_copied_login_cookie(tokens_server: Server) -> None:
    """After logout, a copy of the cookie kept by someone else no longer authenticates."""
    async with aiohttp.ClientSession() as http:
        cookie = await _login(http, tokens_server.url)
    async with aiohttp.ClientSession(cookies={"roost_token": cookie}) as http:
        async with http.post(tokens_server.url + "/api/logout") as r:
            assert r.status == 204
    async with aiohttp.ClientSession(cookies={"roost_token": cookie}) as http:
        async with http.get(tokens_server.url + "/api/whoami") as r:
            assert r.status == 401


async def test_listed_origin_with_login_cookie_cannot_change(tokens_server: Server) -> None:
    """A page of a listed origin that carries the login cookie gets 403 for a change."""
    async with aiohttp.ClientSession() as http:
        cookie = await _login(http, tokens_server.url)
    headers = {"Origin": "http://localhost:3000"}
    async with aiohttp.ClientSession(cookies={"roost_token": cookie}) as http:
        async with http.post(tokens_server.url + "/api/sessions", json={}, headers=headers) as r:
            assert r.status == 403, await r.text()
            assert (await r.json())["error"]["code"] == "forbidden_origin"


async def test_listed_origin_with_bearer_token_can_change(tokens_server: Server) -> None:
    """The same listed origin sending a bearer token still creates sessions."""
    headers = {"Origin": "http://localhost:3000", "Authorization": "Bearer tok-a"}
    async with aiohttp.ClientSession() as http:
        async with http.post(tokens_server.url + "/api/sessions", json={}, headers=headers) as r:
            assert r.status == 201, await r.text()


async def test_own_page_with_login_cookie_can_change(tokens_server: Server) -> None:
    """The server's own page (same origin) keeps working with the cookie."""
    async with aiohttp.ClientSession() as http:
        cookie = await _login(http, tokens_server.url)
    headers = {"Origin": tokens_server.url}
    async with aiohttp.ClientSession(cookies={"roost_token": cookie}) as http:
        async with http.post(tokens_server.url + "/api/sessions", json={}, headers=headers) as r:
            assert r.status == 201, await r.text()


# ---------------------------------------------------------------------------- point 6


def _raise_own_nofile(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        if hard < need:
            pytest.skip(f"the test needs {need} descriptors; the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


@pytest.mark.timeout(300)  # 3,000 requests: minutes on a loaded two-core machine
async def test_actor_cap_fits_the_descriptor_limit(tmp_path: Path) -> None:
    """At ``ulimit -n 4096``, 1,500 sessions touched at once all answer 200."""
    _raise_own_nofile(8192)
    s = Server(
        tmp_path / "data",
        "--synchronous",
        "OFF",
        "--rate-user-per-sec",
        "0",
        "--rate-session-per-sec",
        "0",
        nofile=4096,
    )
    try:
        assert "descriptor limit 4096" in s.log.read_text()
        n = 1500
        conn = aiohttp.TCPConnector(limit=200)
        async with aiohttp.ClientSession(connector=conn) as http:

            async def create(i: int) -> int:
                async with http.post(s.url + "/api/sessions", json={"id": f"fd{i}"}) as r:
                    return r.status

            async def touch(i: int) -> int:
                async with http.post(
                    f"{s.url}/api/sessions/fd{i}/messages", json={"role": "user", "content": "x"}
                ) as r:
                    return r.status

            created = await asyncio.gather(*(create(i) for i in range(n)))
            assert created.count(201) == n, sorted(set(created))
            touched = await asyncio.gather(*(touch(i) for i in range(n)))
            assert touched.count(201) == n, {st: touched.count(st) for st in set(touched)}
        assert s.proc.poll() is None
    finally:
        s.close()


async def test_idle_connections_do_not_lock_out_healthz(tmp_path: Path) -> None:
    """1,100 idle TCP connections at ``ulimit -n 1024``: /healthz still answers, and the
    log holds no traceback per refused accept."""
    _raise_own_nofile(4096)
    s = Server(tmp_path / "data", nofile=1024)
    idle: list[socket.socket] = []
    try:
        for _ in range(1100):
            try:
                idle.append(socket.create_connection(("127.0.0.1", s.port), timeout=TIMEOUT))
            except OSError:
                break
        deadline = time.monotonic() + TIMEOUT
        status = None
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                try:
                    async with http.get(
                        s.url + "/healthz", timeout=aiohttp.ClientTimeout(total=2)
                    ) as r:
                        status = r.status
                        if status == 200:
                            break
                except (aiohttp.ClientError, TimeoutError):
                    pass
                await asyncio.sleep(0.05)
        assert status == 200
        assert s.proc.poll() is None
        assert s.log.read_text().count("Traceback") <= 1
    finally:
        for sock in idle:
            sock.close()
        s.close()
