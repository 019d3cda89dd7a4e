"""SIGTERM or Ctrl-C while a reply streams, with a real server process (issue 20).

The reply gets ``--shutdown-grace``, then stops as ``interrupted`` with its text
kept. Before its connection closes, a chat's SSE client gets an ``error`` event
``shutting_down`` and the final ``message``; a session feed's WebSocket gets the
``message.updated`` (interrupted) event before its 1001 close. After a restart
the reply reads back ``interrupted`` with the text that was streamed.
"""

from __future__ import annotations

import signal
from typing import Any

import aiohttp
import orjson
import pytest

from tests.conftest import TIMEOUT, deadline
from tests.sse import SSEReader

WORDS = " ".join(f"w{i}" for i in range(200))
# slow enough that the reply is still streaming when the grace ends
SERVE = ("--echo-words-per-second", "20", "--shutdown-grace", "0.3")


async def _message(url: str, sid: str, mid: str) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{url}/api/sessions/{sid}/messages/{mid}") as r,
    ):
        assert r.status == 200, await r.text()
        data: dict[str, Any] = await r.json()
        return data


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
async def test_signal_mid_reply_sends_error_and_final_message_before_close(
    server_process: Any, sig: signal.Signals
) -> None:
    """The SSE client of a streaming reply gets ``error`` (shutting_down), ``message``
    (interrupted, the text it was sent) and ``done`` before the stream ends; the
    process exits 0; after a restart the reply is interrupted with that text."""
    srv = server_process(*SERVE)
    await srv.wait_ready()
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{srv.url}/api/sessions", json={"id": "s1"}) as r:
            assert r.status == 201
        resp = await http.post(f"{srv.url}/api/sessions/s1/chat", json={"content": WORDS})
        sse = SSEReader(resp)
        ack = await sse.next()
        assert ack is not None and ack.event == "ack"
        mid = ack.json()["assistant_message_id"]
        first = await sse.until("delta")
        srv.proc.send_signal(sig)
        rest = await sse.all()
        resp.close()
    assert await srv.wait_exit() == 0
    events = first + rest
    names = [e.event for e in events]
    assert names[-3:] == ["error", "message", "done"], names
    error, final = events[-3].json(), events[-2].json()
    assert error["code"] == "shutting_down" and error["message"]
    assert final["id"] == mid and final["status"] == "interrupted"
    streamed = "".join(e.json()["text"] for e in events if e.event == "delta")
    assert streamed and final["content"] == streamed
    assert len(streamed) < len(WORDS), "the reply should have been cut short"

    again = server_process()
    await again.wait_ready()
    stored = await _message(again.url, "s1", mid)
    assert stored["status"] == "interrupted"
    assert stored["content"] == streamed


async def test_sigterm_mid_reply_feed_gets_interrupted_update_before_1001(
    server_process: Any,
) -> None:
    """A tab on the session's WebSocket feed gets ``message.updated`` with the reply
    ``interrupted`` (its text kept), then a 1001 close."""
    srv = server_process(*SERVE)
    await srv.wait_ready()
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{srv.url}/api/sessions", json={"id": "s1"}) as r:
            assert r.status == 201
        ws = await http.ws_connect(f"{srv.url}/api/sessions/s1/ws")
        resp = await http.post(f"{srv.url}/api/sessions/s1/chat", json={"content": WORDS})
        sse = SSEReader(resp)
        ack = await sse.next()
        assert ack is not None
        mid = ack.json()["assistant_message_id"]
        frames: list[dict[str, Any]] = []
        async with deadline("a delta on the feed"):
            while not any(f["type"] == "message.delta" for f in frames):
                msg = await ws.receive(timeout=TIMEOUT)
                assert msg.type is aiohttp.WSMsgType.TEXT, msg
                frames.append(orjson.loads(msg.data))
        srv.proc.send_signal(signal.SIGTERM)
        async with deadline("the 1001 close"):
            while True:
                msg = await ws.receive(timeout=TIMEOUT)
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    break
                frames.append(orjson.loads(msg.data))
        assert msg.type is aiohttp.WSMsgType.CLOSE, msg
        assert msg.data == aiohttp.WSCloseCode.GOING_AWAY
        await ws.close()
        resp.close()
    assert await srv.wait_exit() == 0
    updates = [
        f["message"] for f in frames if f["type"] == "message.updated" and f["message"]["id"] == mid
    ]
    assert updates and updates[-1]["status"] == "interrupted", updates
    streamed = ""
    for f in frames:
        if f["type"] == "message.delta" and f["message_id"] == mid:
            streamed = streamed[: f["offset"]] + f["text"]
    assert updates[-1]["content"] == streamed
