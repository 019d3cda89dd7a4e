"""The benchmark runs end to end (`--quick`): a smoke test, no timing is asserted."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

from tests.conftest import ROOT


def test_bench_quick_runs_both_servers(tmp_path: Path) -> None:
    """bench.py --quick exits 0 and reports every workload for Roost (and the peer when npm
    can install it; in CI the peer is required)."""
    out = tmp_path / "bench.json"
    peer = shutil.which("npm") is not None and (ROOT.parent / "shared").exists()
    args = [sys.executable, str(ROOT / "scripts" / "bench.py"), "--quick", "--json", str(out)]
    if not peer and not os.environ.get("CI"):
        args.append("--roost-only")
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    doc = json.loads(out.read_text())
    text = json.dumps(doc)
    assert "append-64x1" in text and "history-10k" in text
    assert "roost" in text
    if peer:
        assert "workerd" in text


def _rawhttp() -> types.ModuleType:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import _benchlib_rawhttp
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    return _benchlib_rawhttp


def test_raw_client_parses_responses_whole_or_in_pieces() -> None:
    """The bench's lean HTTP client finds the end of a response for both framings, waits
    for the rest of a partial one, and leaves the next response's bytes in the buffer."""
    parse = _rawhttp()._parse
    one = (
        b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n"
        b'Content-Length: 7\r\n\r\n{"a":1}'
    )
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n"
    )
    for whole, status, body in ((one, 201, b'{"a":1}'), (chunked, 200, b"abcde")):
        for cut in range(len(whole)):
            assert parse(bytearray(whole[:cut])) is None, cut
        assert parse(bytearray(whole + b"HTTP/1.1 204")) == (status, body, len(whole))
    assert parse(bytearray(b"HTTP/1.1 204 No Content\r\n\r\n")) == (204, b"", 27)


def test_raw_client_rejects_what_is_not_http() -> None:
    parse = _rawhttp()._parse
    for bad in (b"SSH-2.0-OpenSSH\r\n\r\n", b"HTTP/1.1 200 OK\r\nX: y\r\n\r\nbody"):
        try:
            parse(bytearray(bad))
        except ValueError:
            continue
        raise AssertionError(f"accepted {bad!r}")
