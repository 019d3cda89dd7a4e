"""The benchmark runs end to end (`--quick`): a smoke test, no timing is asserted."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

from tests.conftest import ROOT


@pytest.mark.bench
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
    for name in ("search-across", "list-filtered"):  # Roost-only, issue 23
        assert doc["workloads"][name]["status"]["roost"] == "ok", doc["workloads"][name]
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


async def test_raw_websocket_frames_split_anyhow_arrive_whole() -> None:
    """The bench's WebSocket listener reassembles frames of every length class (7-bit,
    16-bit, 64-bit lengths) and fragmented messages, however the bytes are split, and
    answers a ping with a masked pong."""
    raw = _rawhttp()

    class Sink:
        def __init__(self) -> None:
            self.written = b""

        def write(self, data: bytes) -> None:
            self.written += data

        def is_closing(self) -> bool:
            return False

    def frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
        n = len(payload)
        b0 = (0x80 if fin else 0) | opcode
        if n < 126:
            return bytes((b0, n)) + payload
        if n < 65536:
            return bytes((b0, 126)) + n.to_bytes(2, "big") + payload
        return bytes((b0, 127)) + n.to_bytes(8, "big") + payload

    texts = [b"a" * 5, b"b" * 300, b"c" * 70_000]
    stream = b"".join(frame(1, t) for t in texts)
    stream += frame(9, b"hi") + frame(1, b"frag", fin=False) + frame(0, b"ment")
    for step in (1, 7, 4096, len(stream)):
        proto = raw._WsProto(b"")
        sink = Sink()
        proto.transport = sink
        got: list[bytes] = []
        proto.on_text = lambda data, _t, got=got: got.append(data)
        proto.upgraded.set_result(None)
        for i in range(0, len(stream), step):
            proto.data_received(stream[i : i + step])
        assert got == [*texts, b"fragment"], step
        # the pong: FIN|0xA, masked, length 2, then the key and the masked payload
        assert sink.written[:2] == bytes((0x8A, 0x82))
        key, body = sink.written[2:6], sink.written[6:8]
        assert bytes(b ^ key[i % 4] for i, b in enumerate(body)) == b"hi"
