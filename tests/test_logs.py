"""The access log and the JSON log format."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from server.logs import BatchingStderrHandler, JsonFormatter
from tests.conftest import new_session


def access_records(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [r.fields for r in caplog.records if r.name == "roost.access"]  # type: ignore[attr-defined]


async def test_access_log_line_has_route_template_status_and_session(
    client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """One line per request: method, route template (not the path), status, session."""
    caplog.set_level(logging.INFO, logger="roost.access")
    await new_session(client)
    r = await client.get("/api/sessions/nope")
    assert r.status == 404
    records = access_records(caplog)
    assert [(f["method"], f["route"], f["status"], f["session"]) for f in records] == [
        ("POST", "/api/sessions", 201, "-"),
        ("GET", "/api/sessions/{sid}", 404, "nope"),
    ]
    assert all(f["duration_ms"] >= 0 and f["user"] == "-" for f in records)
    line = next(r for r in caplog.records if r.name == "roost.access").getMessage()
    assert line.startswith("POST /api/sessions 201 ") and "user=- session=-" in line


async def test_access_log_names_the_user(
    make_client: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With tokens the line carries the signed-in user; a refused request is logged too."""
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({"tok-alice": "alice"}))
    client = await make_client(tokens_file=str(tokens))
    caplog.set_level(logging.INFO, logger="roost.access")
    await client.get("/api/sessions", headers={"Authorization": "Bearer tok-alice"})
    await client.get("/api/sessions")
    assert [(f["user"], f["status"]) for f in access_records(caplog)] == [
        ("alice", 200),
        ("-", 401),
    ]


async def test_access_log_off_logs_nothing(
    make_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """--access-log off: no access lines."""
    client = await make_client(access_log="off")
    caplog.set_level(logging.INFO, logger="roost.access")
    await client.get("/healthz")
    assert access_records(caplog) == []


async def test_access_log_sample_logs_one_in_n(
    make_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """--access-log sample:3 logs the 1st, 4th, 7th ... request."""
    client = await make_client(access_log="sample:3")
    caplog.set_level(logging.INFO, logger="roost.access")
    for _ in range(7):
        await client.get("/healthz")
    assert len(access_records(caplog)) == 3


def test_json_formatter_puts_fields_in_the_object() -> None:
    """A JSON line holds ts, level, logger, message and the record's fields."""
    record = logging.LogRecord("roost.access", logging.INFO, __file__, 1, "GET %s", ("/x",), None)
    record.fields = {"status": 200}
    doc = json.loads(JsonFormatter().format(record))
    assert doc["message"] == "GET /x" and doc["status"] == 200
    assert doc["level"] == "info" and doc["logger"] == "roost.access" and doc["ts"].endswith("Z")


class _CountingStream:
    def __init__(self) -> None:
        self.writes: list[str] = []

    def write(self, text: str) -> None:
        self.writes.append(text)

    def flush(self) -> None:
        pass


async def test_batching_handler_writes_one_batch_per_loop_iteration() -> None:
    """INFO lines made in one loop iteration reach stderr in one write, after it;
    a WARNING is written at once, after what was buffered (order kept)."""
    handler = BatchingStderrHandler()
    stream = _CountingStream()
    handler.setStream(stream)  # type: ignore[arg-type]
    handler.setFormatter(logging.Formatter("%(message)s"))
    log = logging.getLogger("roost.test.batching")
    log.propagate, log.level = False, logging.INFO
    log.addHandler(handler)
    try:
        for i in range(50):
            log.info("line %d", i)
        assert stream.writes == []
        await asyncio.sleep(0)
        assert len(stream.writes) == 1 and stream.writes[0].count("\n") == 50
        log.info("before")
        log.warning("now")
        assert stream.writes[1:] == ["before\nnow\n"]
    finally:
        log.removeHandler(handler)


def test_fast_access_line_has_the_text_formats_shape(
    server_process: Any,
) -> None:
    """The access log's direct text line (no LogRecord) reads like every other line:
    ``time LEVEL logger message``."""
    proc = server_process()
    proc.wait_ready_blocking()
    with urllib.request.urlopen(proc.url + "/api/sessions") as r:
        assert r.status == 200
    proc.close()
    lines = [ln for ln in proc.log_text().splitlines() if " roost.access " in ln]
    assert any(
        re.fullmatch(
            r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO roost\.access GET /api/sessions 200 "
            r"[0-9.]+ms user=- session=-",
            ln,
        )
        for ln in lines
    ), lines
