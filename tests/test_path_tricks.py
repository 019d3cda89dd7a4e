"""Path tricks in session ids never reach outside the data dir (over real HTTP)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from storage.ids import now_iso
from storage.layout import DataDir
from storage.lifecycle import create_session_file

TRICKS = [
    "..",
    "%2e%2e",
    "%2E%2E",
    "..%2Fdecoy",
    "%2e%2e%2fdecoy",
    "a%2F..%2F..%2Fdecoy",
    "a%00b",
    "%00",
    "%2Fetc%2Fpasswd",
    "%5C..%5Cdecoy",
    ".decoy",
    "~root",
]


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if "data" not in p.parts}


@pytest.fixture
def decoy(tmp_path: Path) -> Path:
    """A valid session file outside the data dir, where a traversal would find it."""
    outside = DataDir(tmp_path)
    outside.ensure()
    create_session_file(outside, "decoy", owner="", title="stolen", metadata={}, now=now_iso())
    return tmp_path


@pytest.mark.parametrize("sid", TRICKS)
@pytest.mark.parametrize(
    ("method", "suffix", "body"),
    [
        ("GET", "", None),
        ("GET", "/messages", None),
        ("POST", "/messages", {"role": "user", "content": "x"}),
        ("PATCH", "", {"title": "x"}),
        ("DELETE", "", None),
    ],
)
async def test_tricky_session_id_in_path_never_escapes(
    client: Any, decoy: Path, sid: str, method: str, suffix: str, body: Any
) -> None:
    """A tricky id is refused (4xx), touches nothing outside, and never reads the decoy."""
    before = _tree(decoy)
    r = await client.request(method, f"/api/sessions/{sid}{suffix}", json=body)
    assert 400 <= r.status < 500
    assert "stolen" not in await r.text()
    assert _tree(decoy) == before


@pytest.mark.parametrize(
    "sid", ["..", "../decoy", "a/../../decoy", "a\x00b", "/etc/passwd", "\\..\\decoy", "."]
)
async def test_tricky_session_id_on_create_makes_nothing(
    client: Any, decoy: Path, sid: str
) -> None:
    """Creating with a tricky id is 400 and creates no file anywhere."""
    before = _tree(decoy)
    r = await client.post("/api/sessions", json={"id": sid})
    assert r.status == 400
    assert _tree(decoy) == before
    assert not any((decoy / "data" / "sessions").rglob("*.db"))
