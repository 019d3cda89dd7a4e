"""``roost serve`` as an operator meets it: start failures, the data-dir lock, flags, logs.

Start failures run the real command in a child process and check its exit code
and its one line on stderr.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pydantic import ValidationError

from server.cli import main as cli_main
from server.settings import Settings, settings_from
from tests.conftest import ROOT, TIMEOUT, ServerProcess, free_port


def roost(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``roost serve ...`` to its end (for commands that must refuse to start)."""
    return subprocess.run(
        [sys.executable, "-m", "server.cli", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 2,
        env={**os.environ, **(env or {})},
    )


def assert_one_line_refusal(done: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Exit 1, nothing on stdout, exactly one ``roost: `` line on stderr holding ``needles``."""
    assert done.returncode == 1, done
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    line = lines[0]
    assert line.startswith("roost: ") and "serving" not in line and "Traceback" not in line
    for needle in needles:
        assert needle in line
    return line


def serve_args(data_dir: Path | str, port: int | None = None) -> list[str]:
    return ["serve", "--port", str(port or free_port()), "--data-dir", str(data_dir)]


# ------------------------------------------------------------------ start failures


def test_serve_port_in_use_is_one_line(tmp_path: Path) -> None:
    """A port another process listens on: exit 1, one line naming the port and --port."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        done = roost(*serve_args(tmp_path / "data", port))
    assert_one_line_refusal(done, f"127.0.0.1:{port}", "already in use", "--port")


def test_serve_data_dir_that_is_a_file_is_one_line(tmp_path: Path) -> None:
    """--data-dir naming a file: exit 1, one line saying a directory was expected."""
    path = tmp_path / "data"
    path.write_text("not a directory")
    done = roost(*serve_args(path))
    assert_one_line_refusal(done, str(path), "is a file", "expected a directory", "--data-dir")


# root writes anywhere: without these capabilities it obeys the permission bits
AS_MORTAL = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]


@pytest.mark.skipif(
    os.geteuid() == 0 and shutil.which("setpriv") is None,
    reason="root writes to any directory, and setpriv is missing to drop that right",
)
def test_serve_unwritable_data_dir_is_one_line(tmp_path: Path) -> None:
    """A data dir this user cannot write: exit 1, one line saying so."""
    path = tmp_path / "data"
    path.mkdir()
    path.chmod(0o500)
    prefix = AS_MORTAL if os.geteuid() == 0 else []
    try:
        done = subprocess.run(
            [*prefix, sys.executable, "-m", "server.cli", *serve_args(path)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=TIMEOUT * 2,
        )
    finally:
        path.chmod(0o700)
    assert_one_line_refusal(done, str(path), "cannot write", "--data-dir")


def test_serve_data_dir_under_a_file_is_one_line(tmp_path: Path) -> None:
    """A data dir that cannot be created (its parent is a file): exit 1, one line."""
    parent = tmp_path / "file"
    parent.write_text("x")
    done = roost(*serve_args(parent / "data"))
    assert_one_line_refusal(done, "cannot create data dir", "--data-dir")


def test_serve_damaged_catalog_is_one_line(tmp_path: Path) -> None:
    """A catalog that is not a SQLite database: exit 1, one line naming it."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "catalog.db").write_bytes(b"this is not sqlite" * 100)
    done = roost(*serve_args(data))
    assert_one_line_refusal(done, "catalog", "not a database")


def test_serve_catalog_that_is_a_directory_is_one_line(tmp_path: Path) -> None:
    """A catalog path that is a directory: exit 1, one line."""
    data = tmp_path / "data"
    (data / "catalog.db").mkdir(parents=True)
    done = roost(*serve_args(data))
    assert_one_line_refusal(done, "catalog", "directory")


async def test_serve_creates_a_missing_data_dir(tmp_path: Path) -> None:
    """A data dir that does not exist yet is created."""
    server = ServerProcess(tmp_path / "new-data")
    try:
        await server.wait_ready()
        assert (tmp_path / "new-data" / "catalog.db").exists()
    finally:
        server.close()


# ------------------------------------------------------------------ one server per data dir


async def test_second_server_on_one_data_dir_is_refused(tmp_path: Path) -> None:
    """A second server on a data dir in use exits 1 with a clear line; the first carries on."""
    data = tmp_path / "data"
    first = ServerProcess(data)
    try:
        await first.wait_ready()
        done = roost(*serve_args(data))
        assert_one_line_refusal(done, "in use by another roost server", f"pid {first.proc.pid}")
        async with aiohttp.ClientSession() as http:
            async with http.post(first.url + "/api/sessions", json={"id": "s1"}) as r:
                assert r.status == 201
            body = {"role": "user", "content": "still here"}
            async with http.post(first.url + "/api/sessions/s1/messages", json=body) as r:
                assert r.status == 201
        assert first.proc.poll() is None
    finally:
        first.close()


async def test_data_dir_lock_is_free_after_kill9(tmp_path: Path) -> None:
    """The lock dies with its process: a server starts after the last one was killed."""
    data = tmp_path / "data"
    first = ServerProcess(data)
    try:
        await first.wait_ready()
        first.kill9()
    finally:
        first.close()
    second = ServerProcess(data)
    try:
        await second.wait_ready()
    finally:
        second.close()


# ------------------------------------------------------------------ flags


def test_serve_unknown_flag_prints_serve_usage() -> None:
    """An unknown flag after ``serve`` gets serve's usage, not the top-level one."""
    done = roost("serve", "--no-such-flag")
    assert done.returncode == 2
    assert "usage: roost serve" in done.stderr
    assert "unrecognized arguments: --no-such-flag" in done.stderr


def test_serve_help_shows_choices() -> None:
    """--help lists the choices of --responder, --synchronous and --fsync."""
    done = roost("serve", "--help")
    assert done.returncode == 0
    for choices in ("{echo,openai}", "{OFF,NORMAL,FULL,EXTRA}", "{auto,threads}"):
        assert choices in done.stdout


def test_serve_bad_value_names_the_flag(tmp_path: Path, capsys: Any) -> None:
    """A bad value is reported with its flag (--idle-timeout), not the field name."""
    code = cli_main(["serve", "--idle-timeout", "-1", "--data-dir", str(tmp_path / "d")])
    assert code == 2
    err = capsys.readouterr().err
    assert "--idle-timeout" in err and "idle_timeout" not in err


def test_serve_bad_variable_names_the_variable(
    tmp_path: Path, capsys: Any, monkeypatch: Any
) -> None:
    """A bad value from the environment names its ROOST_ variable too."""
    monkeypatch.setenv("ROOST_MAX_BATCH", "0")
    assert cli_main(["serve", "--data-dir", str(tmp_path / "d")]) == 2
    assert "--max-batch (from ROOST_MAX_BATCH)" in capsys.readouterr().err


def test_serve_bad_choice_names_the_flag() -> None:
    """A value outside the choices names the flag and the choices."""
    done = roost("serve", "--fsync", "sometimes")
    assert done.returncode == 2
    assert "--fsync" in done.stderr and "auto" in done.stderr


def test_settings_choices_are_case_insensitive() -> None:
    """Choices match whatever their case, from flags and from the environment."""
    s = settings_from(
        {"synchronous": "normal", "responder": "ECHO"},
        {"ROOST_FSYNC": "Threads", "ROOST_LOG_FORMAT": "JSON", "ROOST_LOG_LEVEL": "Warning"},
    )
    assert (s.synchronous, s.responder, s.fsync) == ("NORMAL", "echo", "threads")
    assert (s.log_format, s.log_level) == ("json", "warning")


@pytest.mark.parametrize("value", ["sometimes", "sample:0", "sample:", "sample:x"])
def test_settings_bad_access_log_is_refused(value: str) -> None:
    """--access-log is on, off or sample:N with N >= 1."""
    with pytest.raises(ValidationError, match="access_log"):
        Settings(access_log=value)


def test_settings_access_log_every() -> None:
    """on logs every request, off none, sample:N one in N."""
    assert [Settings(access_log=v).access_log_every() for v in ("on", "off", "SAMPLE:10")] == [
        1,
        0,
        10,
    ]


def test_serve_bad_openai_base_url_names_the_flag() -> None:
    """A base URL without a scheme is refused at start, naming --openai-base-url."""
    done = roost("serve", "--openai-base-url", "127.0.0.1:9911/v1")
    assert done.returncode == 2
    assert "--openai-base-url" in done.stderr and "http://" in done.stderr


def test_serve_refuses_one_character_token(tmp_path: Path) -> None:
    """A tokens file with a one-character token does not start."""
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({"x": "alice"}))
    done = roost(*serve_args(tmp_path / "data"), "--tokens-file", str(tokens))
    assert done.returncode == 2
    assert "at least" in done.stderr


# ------------------------------------------------------------------ start and stop lines


async def test_serve_start_and_stop_lines(tmp_path: Path) -> None:
    """One "serving" line (with "roost" once), a tokens-mode line, shutdown and stop lines."""
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({"tok-alice": "alice"}))
    server = ServerProcess(tmp_path / "data", "--tokens-file", str(tokens))
    try:
        await server.wait_ready()
        assert server.terminate() == 0
    finally:
        server.close()
    lines = server.log.read_text().splitlines()
    serving = [line for line in lines if "serving" in line]
    assert len(serving) == 1 and "roost roost" not in serving[0], serving
    assert any("tokens mode" in line for line in lines)
    shutdown = next(i for i, line in enumerate(lines) if "shutting down" in line)
    assert "stopped" in lines[-1] and shutdown < len(lines) - 1


async def test_serve_warns_when_openai_has_no_key(tmp_path: Path) -> None:
    """The openai responder without any key logs a warning at start."""
    no_key = {"OPENAI_API_KEY": "", "ROOST_OPENAI_API_KEY": ""}
    server = ServerProcess(tmp_path / "data", "--responder", "openai", env=no_key)
    try:
        await server.wait_ready()
        assert server.terminate() == 0
    finally:
        server.close()
    warning = next(line for line in server.log.read_text().splitlines() if "WARNING" in line)
    assert "no API key" in warning and "OPENAI_API_KEY" in warning


async def test_serve_json_logs_are_json_lines(tmp_path: Path) -> None:
    """--log-format json: every line the server writes is one JSON object."""
    server = ServerProcess(tmp_path / "data", "--log-format", "json")
    try:
        await server.wait_ready()
        assert server.terminate() == 0
    finally:
        server.close()
    docs = [json.loads(line) for line in server.log.read_text().splitlines()]
    assert any(d["logger"] == "roost.access" and d["route"] == "/healthz" for d in docs)
    assert {"ts", "level", "logger", "message"} <= set(docs[0])
