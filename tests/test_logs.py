"""The access log and the JSON log format."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from server.logs import JsonFormatter
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
