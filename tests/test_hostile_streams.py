"""Issue 16, replies under hostile conditions (points 2, 3 and 9): a failed final
flush, a delete during a stream, shutdown. Not fixed in this wave: the causes
live in the actor, replies and registry code being restructured; each test
is a strict xfail that the next wave flips."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from tests.conftest import TIMEOUT, new_session, registry_of
from tests.sse import SSEReader
from tests.test_hostile_limits import Server

WORDS = " ".join(f"w{i}" for i in range(60))


async def _recv_until(ws: Any, kind: str) -> dict[str, Any] | None:
    """Frames until one of type ``kind`` (returned) or the socket closes (None)."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        msg = await ws.receive(timeout=TIMEOUT)
        if msg.type != aiohttp.WSMsgType.TEXT:
            return None
        frame: dict[str, Any] = orjson.loads(msg.data)
        if frame["type"] == kind:
            return frame
    return None


# ---------------------------------------------------------------------------- point 3


async def test_delete_during_stream_tells_every_subscriber(tmp_path: Path) -> None:
    """A session deleted while a reply streams: its WebSocket and SSE subscribers both get
    ``session.deleted``, and the socket is closed with 4004."""
    s = Server(tmp_path / "data", "--echo-words-per-second", "10")
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(s.url + "/api/sessions", json={"id": "del"}) as r:
                assert r.status == 201
            ws = await http.ws_connect(s.url + "/api/sessions/del/ws")
            assert await _recv_until(ws, "hello") is not None
            sse_resp = await http.get(s.url + "/api/sessions/del/events")
            sse = SSEReader(sse_resp)
            await ws.send_str(orjson.dumps({"type": "chat", "content": WORDS}).decode())
            assert await _recv_until(ws, "message.delta") is not None
            async with http.delete(s.url + "/api/sessions/del") as r:
                assert r.status == 204
            ws_got = await _recv_until(ws, "session.deleted")
            closing = await ws.receive(timeout=TIMEOUT)
            sse_names = [e.event for e in await sse.all()]
            assert ws_got is not None, "the WebSocket never got session.deleted"
            assert "session.deleted" in sse_names, sse_names
            assert closing.type == aiohttp.WSMsgType.CLOSE and closing.data == 4004
            sse_resp.close()
    finally:
        s.close()


# ---------------------------------------------------------------------------- point 2


async def _cancel_with_a_failed_final_flush(
    client: Any, sid: str
) -> tuple[str, Any, dict[str, Any], list[Any], str]:
    """Start a reply in ``sid``, let one delta through, then fail every flush (through
    the syncer) and cancel it. Returns ``(mid, cancel response, its body, the rest of
    the reply's stream, the text streamed before the failure)``."""
    await new_session(client, sid)
    syncer = registry_of(client).syncer
    real = syncer.fdatasync
    armed = asyncio.Event()

    def fdatasync(fd: int) -> asyncio.Future[None]:
        if armed.is_set():
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            fut.set_exception(OSError(errno.EIO, "injected flush failure"))
            return fut
        return real(fd)

    syncer.fdatasync = fdatasync  # type: ignore[method-assign]
    resp = await client.post(f"/api/sessions/{sid}/chat", json={"content": WORDS})
    assert resp.status == 200
    sse = SSEReader(resp)
    ack = await sse.next()
    assert ack is not None and ack.event == "ack"
    mid = ack.json()["assistant_message_id"]
    first = await sse.next()
    assert first is not None and first.event == "delta"
    armed.set()
    r = await client.post(f"/api/sessions/{sid}/messages/{mid}/cancel")
    cancel_body = await r.json()
    rest = await sse.all()
    syncer.fdatasync = real  # type: ignore[method-assign]
    shown = first.json()["text"] + "".join(e.json()["text"] for e in rest if e.event == "delta")
    return mid, r, cancel_body, rest, shown


async def test_failed_final_flush_announces_no_final_status(make_client: Any) -> None:
    """When the flush of a reply's last commit fails, cancel does not answer
    ``cancelled`` and the stream sends no final ``message`` but ``interrupted``
    (what the file holds after a power cut)."""
    client = await make_client(echo_words_per_second=10)
    _, r, cancel_body, rest, _ = await _cancel_with_a_failed_final_flush(client, "ff")
    finals = [e.json()["status"] for e in rest if e.event == "message"]
    assert not (r.status == 200 and cancel_body.get("status") == "cancelled"), cancel_body
    assert set(finals) <= {"interrupted"}, finals


async def test_failed_final_flush_cancel_is_503_and_the_stream_gets_error(
    make_client: Any,
) -> None:
    """The cancel whose final commit failed answers 503 ``unavailable``; the reply's
    stream gets an ``error`` frame, then ``message`` (``interrupted``) and ``done``."""
    client = await make_client(echo_words_per_second=10)
    _, r, cancel_body, rest, _ = await _cancel_with_a_failed_final_flush(client, "ff2")
    assert r.status == 503, cancel_body
    assert cancel_body["error"]["code"] == "unavailable"
    names = [e.event for e in rest]
    assert names[-3:] == ["error", "message", "done"], names
    assert rest[-2].json()["status"] == "interrupted"


async def test_failed_final_flush_leaves_the_session_readable(make_client: Any) -> None:
    """After the failed final commit the session is still readable (a fresh actor
    from disk, which flushes the WAL before serving) and the reply holds every
    character that was streamed. (Whether it reads ``cancelled`` or ``interrupted``
    depends on whether the page cache kept the unflushed commit: in-process it does;
    after a power cut the file says ``interrupted``.)"""
    client = await make_client(echo_words_per_second=10)
    mid, _, _, _, shown = await _cancel_with_a_failed_final_flush(client, "ff3")
    r = await client.get(f"/api/sessions/ff3/messages/{mid}")
    assert r.status == 200
    msg = await r.json()
    assert msg["status"] in ("cancelled", "interrupted")
    assert msg["content"].startswith(shown)
    r = await client.get("/api/sessions/ff3/messages")
    assert r.status == 200


# ---------------------------------------------------------------------------- point 9


async def test_sigterm_stops_running_replies_after_the_grace(tmp_path: Path) -> None:
    """SIGTERM with an upload in flight and a reply streaming: the process exits within
    the grace plus a little, and the reply reads back ``interrupted`` (not ``complete``)."""
    data = tmp_path / "data"
    s = Server(data, "--echo-words-per-second", "20", "--shutdown-grace", "0.5")
    gate = asyncio.Event()

    async def slow_upload() -> Any:
        yield (
            b'--B\r\nContent-Disposition: form-data; name="file"; filename="a.bin"\r\n'
            b"Content-Type: application/octet-stream\r\n\r\n" + b"x" * 1000
        )
        await gate.wait()
        yield b"\r\n--B--\r\n"

    upload: asyncio.Task[Any] | None = None
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(s.url + "/api/sessions", json={"id": "term"}) as r:
                assert r.status == 201
            upload = asyncio.create_task(
                http.post(
                    s.url + "/api/sessions/term/attachments",
                    data=slow_upload(),
                    headers={"Content-Type": "multipart/form-data; boundary=B"},
                )
            )
            resp = await http.post(
                s.url + "/api/sessions/term/chat", json={"content": WORDS + " " + WORDS}
            )
            sse = SSEReader(resp)
            ack = await sse.next()
            assert ack is not None
            mid = ack.json()["assistant_message_id"]
            assert (await sse.next()) is not None
            started = time.monotonic()
            s.proc.send_signal(signal.SIGTERM)
            try:
                s.proc.wait(timeout=2.5)
                took = time.monotonic() - started
            except subprocess.TimeoutExpired:
                took = float("inf")  # s.close() kills it below
            resp.close()
    finally:
        gate.set()
        s.close()
        if upload is not None:
            upload.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
                (await upload).close()
    s = Server(data)
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{s.url}/api/sessions/term/messages/{mid}") as r,
        ):
            status = (await r.json())["status"]
    finally:
        s.close()
    assert status == "interrupted"
    assert took < 2.5, f"shutdown took {took:.1f} s"


async def test_aborted_export_logs_no_traceback(tmp_path: Path) -> None:
    """A client that goes away in the middle of an export is not an error."""
    s = Server(tmp_path / "data", "--rate-user-per-sec", "0", "--rate-session-per-sec", "0")
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(s.url + "/api/sessions", json={"id": "exp"}) as r:
                assert r.status == 201
            url = s.url + "/api/sessions/exp/messages"
            body = "e" * 20_000
            for _ in range(60):
                async with http.post(url, json={"role": "user", "content": body}) as r:
                    assert r.status == 201
            for _ in range(5):
                async with http.get(s.url + "/api/sessions/exp/export") as r:
                    assert r.status == 200
                    await r.content.read(1024)
                    r.close()
            async with http.get(s.url + "/healthz") as r:
                assert r.status == 200
        assert "Traceback" not in s.log.read_text()
    finally:
        s.close()
