"""Real time: WebSocket and SSE event feeds, replay, fan-out, slow subscribers."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import socket
from typing import Any

import aiohttp
import orjson

from tests.conftest import TIMEOUT, append, deadline, eventually, new_session, registry_of
from tests.sse import SSEReader

TEXT = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen"


async def _recv(ws: Any, timeout: float = TIMEOUT) -> dict[str, Any]:
    msg = await ws.receive(timeout=timeout)
    assert msg.type == aiohttp.WSMsgType.TEXT, msg
    data: dict[str, Any] = orjson.loads(msg.data)
    return data


async def _recv_type(ws: Any, type_: str) -> dict[str, Any]:
    async with deadline(f"a {type_!r} frame"):
        while True:
            frame = await _recv(ws)
            if frame["type"] == type_:
                return frame


async def test_ws_hello_then_live_events_same_for_two_clients(client: Any) -> None:
    """Two sockets on a session see the same durable events in the same order."""
    await new_session(client)
    await new_session(client, "other")
    a = await client.ws_connect("/api/sessions/s1/ws")
    b = await client.ws_connect("/api/sessions/s1/ws")
    c = await client.ws_connect("/api/sessions/other/ws")
    for ws in (a, b, c):
        assert (await _recv(ws))["type"] == "hello"
    for i in range(5):
        await append(client, "s1", f"m{i}")
    got_a = [await _recv(a) for _ in range(5)]
    got_b = [await _recv(b) for _ in range(5)]
    assert got_a == got_b
    assert [f["type"] for f in got_a] == ["message.created"] * 5
    assert [f["message"]["content"] for f in got_a] == [f"m{i}" for i in range(5)]
    seqs = [f["seq"] for f in got_a]
    assert seqs == sorted(seqs) and len(set(seqs)) == 5
    # the other session's socket got nothing
    await append(client, "other", "x")
    assert (await _recv(c))["message"]["content"] == "x"
    for ws in (a, b, c):
        await ws.close()


async def test_ws_reconnect_with_since_replays_exactly_the_missed(client: Any) -> None:
    """Disconnect, 20 appends, reconnect with since: exactly those 20 in order, then live."""
    await new_session(client)
    ws = await client.ws_connect("/api/sessions/s1/ws")
    hello = await _recv(ws)
    await append(client, "s1", "seen")
    last = (await _recv(ws))["seq"]
    await ws.close()
    for i in range(20):
        await append(client, "s1", f"missed{i}")
    ws = await client.ws_connect(f"/api/sessions/s1/ws?since={last}")
    hello = await _recv(ws)
    assert hello["type"] == "hello" and hello["seq"] == last + 20
    replay = [await _recv(ws) for _ in range(20)]
    assert [f["message"]["content"] for f in replay] == [f"missed{i}" for i in range(20)]
    assert [f["seq"] for f in replay] == list(range(last + 1, last + 21))
    await append(client, "s1", "live")
    live = await _recv(ws)
    assert live["message"]["content"] == "live" and live["seq"] == last + 21
    await ws.close()


async def test_ws_replay_handover_has_no_gap_or_duplicate(client: Any) -> None:
    """Appends racing a reconnect: every seq arrives exactly once, in order."""
    await new_session(client)
    for i in range(10):
        await append(client, "s1", f"a{i}")
    writer = asyncio.ensure_future(
        asyncio.gather(*(append(client, "s1", f"b{i}") for i in range(40)))
    )
    ws = await client.ws_connect("/api/sessions/s1/ws?since=0")
    await _recv(ws)
    await writer
    seqs = []
    while len(seqs) < 50:
        seqs.append((await _recv(ws))["seq"])
    assert seqs == list(range(1, 51))
    await ws.close()


async def test_sse_events_resume_from_last_event_id(client: Any) -> None:
    """The SSE feed replays after Last-Event-ID exactly, then goes live."""
    await new_session(client)
    for i in range(3):
        await append(client, "s1", f"old{i}")
    r = await client.get("/api/sessions/s1/events", headers={"Last-Event-ID": "1"})
    reader = SSEReader(r)
    hello = await reader.next()
    assert hello is not None and hello.event == "hello" and hello.json()["seq"] == 3
    replay = [await reader.next() for _ in range(2)]
    assert [(e.id, e.event) for e in replay if e] == [
        ("2", "message.created"),
        ("3", "message.created"),
    ]
    await append(client, "s1", "new")
    live = await reader.next()
    assert live is not None and live.id == "4" and live.json()["message"]["content"] == "new"
    r.close()


async def test_since_too_old_gets_resync(make_client: Any) -> None:
    """A since older than the retained events answers resync."""
    client = await make_client(event_retention=100)
    await new_session(client)
    for i in range(300):
        await append(client, "s1", f"m{i}")
    ws = await client.ws_connect("/api/sessions/s1/ws?since=1")
    assert (await _recv(ws))["type"] == "hello"
    assert (await _recv(ws))["type"] == "resync"
    await ws.close()


async def _dead_peer(host: str, port: int, path: str) -> tuple[Any, Any]:
    """A WebSocket peer that completes the handshake and then never reads."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, port))
    sock.setblocking(False)
    reader, writer = await asyncio.open_connection(sock=sock)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    assert b" 101 " in head.split(b"\r\n")[0]
    return reader, writer


async def test_slow_subscriber_is_dropped_without_slowing_others(make_client: Any) -> None:
    """A peer that stops reading is dropped once its queue fills; others keep up."""
    client = await make_client(subscriber_queue=16)
    await new_session(client)
    reg = registry_of(client)
    _, dead_writer = await _dead_peer(client.host, client.port, "/api/sessions/s1/ws")
    try:
        good = await client.ws_connect("/api/sessions/s1/ws")
        assert (await _recv(good))["type"] == "hello"
        big = "x" * 60_000
        for i in range(120):
            await append(client, "s1", f"{i} {big}")
            frame = await _recv(good, timeout=2)  # bounded delay for the reading client
            assert frame["message"]["content"].startswith(f"{i} ")
        assert reg.hooks.dropped_subscribers >= 1
        assert len(reg.topic("s1").subs) == 1
        actor = reg.actor_if_live("s1")
        assert actor.committed_ops == 120
        await good.close()
    finally:
        # a peer that never reads holds the server's shutdown until its socket closes
        dead_writer.close()


async def test_ws_joining_mid_reply_ends_with_exact_text(make_client: Any) -> None:
    """A tab that joins mid-reply: catch-up delta + live deltas give exactly the final text."""
    client = await make_client(echo_words_per_second=30)
    await new_session(client)
    r = await client.post("/api/sessions/s1/chat", json={"content": TEXT})
    aid = r.headers["X-Assistant-Message-Id"]
    reader = SSEReader(r)
    await reader.until("delta")
    await reader.until("delta")
    ws = await client.ws_connect("/api/sessions/s1/ws")
    assert (await _recv(ws))["type"] == "hello"
    text = ""
    async with deadline("the reply's complete update"):
        while True:
            f = await _recv(ws)
            if f["type"] == "message.delta" and f["message_id"] == aid:
                assert f["offset"] <= len(text), "gap in deltas"
                text = text[: f["offset"]] + f["text"]
            elif f["type"] == "message.updated" and f["message"]["status"] == "complete":
                assert f["message"]["id"] == aid
                assert text == f["message"]["content"] == TEXT
                break
    await ws.close()
    r.close()


async def _ws_chat(make_client: Any) -> tuple[Any, Any, list[dict[str, Any]]]:
    """Chat TEXT (client_id w1, ref 7) over a socket at 200 words/s, read up to the
    reply's complete update: (client, socket, every frame after hello)."""
    client = await make_client(echo_words_per_second=200)
    await new_session(client)
    ws = await client.ws_connect("/api/sessions/s1/ws")
    await _recv(ws)
    await ws.send_json({"type": "chat", "content": TEXT, "client_id": "w1", "ref": 7})
    frames = []
    async with deadline("the reply's complete update"):
        while True:
            f = await _recv(ws)
            frames.append(f)
            if f["type"] == "message.updated" and f["message"]["status"] == "complete":
                break
    return client, ws, frames


async def test_ws_chat_acks_with_ref_and_client_id(make_client: Any) -> None:
    """chat over the socket: the chat.ack carries the frame's ref and client_id."""
    _, ws, frames = await _ws_chat(make_client)
    ack = next(f for f in frames if f["type"] == "chat.ack")
    assert ack["ref"] == 7 and ack["client_id"] == "w1"
    await ws.close()


async def test_ws_chat_sends_created_events_then_deltas_like_http_chat(make_client: Any) -> None:
    """chat over the socket: created events for both messages, deltas adding up to the
    final update, and the stored reply complete."""
    client, ws, frames = await _ws_chat(make_client)
    aid = next(f for f in frames if f["type"] == "chat.ack")["assistant_message"]["id"]
    created = [f["message"]["role"] for f in frames if f["type"] == "message.created"]
    assert created == ["user", "assistant"]
    deltas = "".join(f["text"] for f in frames if f["type"] == "message.delta")
    assert deltas == TEXT == frames[-1]["message"]["content"]
    stored = await (await client.get(f"/api/sessions/s1/messages/{aid}")).json()
    assert stored["content"] == TEXT and stored["status"] == "complete"
    await ws.close()


async def test_ws_chat_same_client_id_again_adds_nothing(make_client: Any) -> None:
    """A second chat frame with the same client_id acks the same reply, adds no messages."""
    client, ws, frames = await _ws_chat(make_client)
    aid = next(f for f in frames if f["type"] == "chat.ack")["assistant_message"]["id"]
    await ws.send_json({"type": "chat", "content": TEXT, "client_id": "w1"})
    again = await _recv_type(ws, "chat.ack")
    assert again["assistant_message"]["id"] == aid
    every = await (await client.get("/api/sessions/s1/messages?view=all")).json()
    assert len(every["items"]) == 2
    await ws.close()


async def _ws_after_hello(make_client: Any) -> Any:
    """A socket on a new session s1 (replies at 5 words/s), past its hello frame."""
    client = await make_client(echo_words_per_second=5)
    await new_session(client)
    ws = await client.ws_connect("/api/sessions/s1/ws")
    await _recv(ws)
    return ws


async def test_ws_text_ping_answers_pong(make_client: Any) -> None:
    """A text frame "ping" answers the text frame "pong"."""
    ws = await _ws_after_hello(make_client)
    await ws.send_str("ping")
    assert (await ws.receive(timeout=TIMEOUT)).data == "pong"
    await ws.close()


async def test_ws_ping_frame_answers_pong_with_its_ref(make_client: Any) -> None:
    """A JSON ping frame answers a pong frame carrying the same ref."""
    ws = await _ws_after_hello(make_client)
    await ws.send_json({"type": "ping", "ref": 1})
    assert (await _recv_type(ws, "pong"))["ref"] == 1
    await ws.close()


async def test_ws_bad_frames_answer_error_frames(make_client: Any) -> None:
    """Malformed or invalid frames each answer an error frame with status 400."""
    ws = await _ws_after_hello(make_client)
    for bad in [
        "{nope",
        '{"no": "type"}',
        '{"type": "dance"}',
        '{"type": "chat"}',
        '{"type": "chat", "content": ""}',
    ]:
        await ws.send_str(bad)
        err = await _recv_type(ws, "error")
        assert err["code"] in ("malformed_json", "invalid_input") and err["status"] == 400
    await ws.close()


async def test_ws_cancel_stops_running_reply(make_client: Any) -> None:
    """A cancel frame for a running reply answers cancel.ack with the reply cancelled."""
    ws = await _ws_after_hello(make_client)
    await ws.send_json({"type": "chat", "content": TEXT})
    ack = await _recv_type(ws, "chat.ack")
    aid = ack["assistant_message"]["id"]
    await _recv_type(ws, "message.delta")
    await ws.send_json({"type": "cancel", "message_id": aid})
    done = await _recv_type(ws, "cancel.ack")
    assert done["message"]["status"] == "cancelled"
    await ws.close()


async def test_ws_foreign_origin_is_refused(make_client: Any) -> None:
    """An Origin outside the allow-list is refused; a listed one is accepted."""
    client = await make_client(allowed_origins="http://good.example")
    await new_session(client)
    r = await client.get("/api/sessions/s1/ws", headers={"Origin": "http://evil.example"})
    assert r.status == 403
    ws = await client.ws_connect("/api/sessions/s1/ws", origin="http://good.example")
    assert (await _recv(ws))["type"] == "hello"
    await ws.close()


async def test_ws_unknown_session_is_404(client: Any) -> None:
    r = await client.get("/api/sessions/nope/ws")
    assert r.status == 404


async def test_session_delete_tells_subscribers_and_closes(client: Any) -> None:
    """Deleting a session sends session.deleted and closes sockets with 4004."""
    await new_session(client)
    ws = await client.ws_connect("/api/sessions/s1/ws")
    await _recv(ws)
    assert (await client.delete("/api/sessions/s1")).status == 204
    assert (await _recv(ws))["type"] == "session.deleted"
    msg = await ws.receive(timeout=TIMEOUT)
    assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 4004


async def test_sigterm_closes_sockets_with_going_away(server_process: Any) -> None:
    """Shutdown closes WebSockets with 1001."""
    srv = server_process()
    await srv.wait_ready()
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{srv.url}/api/sessions", json={"id": "g"}) as r:
            assert r.status == 201
        ws = await s.ws_connect(f"{srv.url}/api/sessions/g/ws")
        assert (await _recv(ws))["type"] == "hello"
        srv.proc.send_signal(signal.SIGTERM)
        msg = await ws.receive(timeout=TIMEOUT)
        assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1001
        await ws.close()
    code = await srv.wait_exit(TIMEOUT)
    assert code == 0


async def test_live_frames_written_directly_arrive_whole_at_every_size(client: Any) -> None:
    """Live frames go straight to idle sockets as bytes encoded once per event: a
    standard client reads them whole for all three WebSocket length forms (7-bit,
    16-bit, 64-bit), identical on two sockets and in order."""
    await new_session(client)
    a = await client.ws_connect("/api/sessions/s1/ws")
    b = await client.ws_connect("/api/sessions/s1/ws")
    assert (await _recv(a))["type"] == (await _recv(b))["type"] == "hello"
    reg = registry_of(client)
    sizes = [1, 200, 70_000]  # frames of ~0.5 KB, ~1 KB and > 64 KiB
    for n in sizes:
        await append(client, "s1", "y" * n)
    for ws in (a, b):
        got = [await _recv_type(ws, "message.created") for _ in sizes]
        assert [len(f["message"]["content"]) for f in got] == sizes
        assert [f["seq"] for f in got] == sorted(f["seq"] for f in got)
    subs = reg.topic("s1").subs
    assert len(subs) == 2 and all(s.sink is not None for s in subs), "direct path not in use"
    await a.close()
    await b.close()


def _failing_sink(frame: Any) -> bool:
    raise RuntimeError("this subscriber's transport is broken")


async def test_raising_subscriber_is_dropped_and_others_get_the_frame(client: Any) -> None:
    """A sink that raises drops its subscriber (counted); the others get the frame and the
    append that published it succeeds: the actor never sees the exception."""
    await new_session(client)
    reg = registry_of(client)
    topic = reg.topic("s1")
    bad, good = topic.subscribe(16), topic.subscribe(16)
    bad.sink = _failing_sink
    before = reg.hooks.dropped_subscribers
    msg = await asyncio.wait_for(append(client, "s1", "hello"), TIMEOUT)
    frame = await asyncio.wait_for(good.get(), TIMEOUT)
    assert frame is not None and frame.type == "message.created"
    assert orjson.loads(frame.data)["message"]["id"] == msg["id"]
    assert bad.dropped and bad not in topic.subs and good in topic.subs
    assert reg.hooks.dropped_subscribers == before + 1
    assert await asyncio.wait_for(bad.get(), TIMEOUT) is None
    await append(client, "s1", "the actor is still healthy")
    topic.unsubscribe(good)


async def test_raising_subscriber_is_logged_once(client: Any, caplog: Any) -> None:
    """The failure is logged once, with its traceback, as the subscriber leaves."""
    await new_session(client)
    topic = registry_of(client).topic("s1")
    bad = topic.subscribe(16)
    bad.sink = _failing_sink
    with caplog.at_level("ERROR", logger="roost.actors"):
        await append(client, "s1", "one")
        await append(client, "s1", "two")
    failures = [r for r in caplog.records if "subscriber failed" in r.getMessage()]
    assert len(failures) == 1 and failures[0].exc_info is not None


def test_ws_bytes_header_fits_each_payload_length() -> None:
    """One text frame, final and unmasked, with the 7-bit, 16-bit or 64-bit length form."""
    from actors.pubsub import Frame
    from server.frames import ws_bytes

    for n, head in (
        (125, b"\x81\x7d"),
        (126, b"\x81\x7e\x00\x7e"),
        (65535, b"\x81\x7e\xff\xff"),
        (65536, b"\x81\x7f\x00\x00\x00\x00\x00\x01\x00\x00"),
    ):
        frame = Frame("message.created", b"x" * n)
        out = ws_bytes(frame)
        assert out == head + frame.data
        assert ws_bytes(frame) is out  # encoded once, cached on the frame


async def test_idle_events_stream_gets_keepalives(make_client: Any) -> None:
    """An SSE feed with nothing to say writes a keep-alive comment every heartbeat."""
    client = await make_client(sse_heartbeat=0.05)
    await new_session(client)
    r = await client.get("/api/sessions/s1/events")
    reader = SSEReader(r)
    assert (await reader.next()) is not None  # hello
    line = await asyncio.wait_for(r.content.readline(), TIMEOUT)
    assert line == b": keep-alive\n"
    r.close()


async def test_events_stream_ends_when_keepalive_finds_client_gone(make_client: Any) -> None:
    """A keep-alive that cannot be written ends the idle feed (its subscription goes)."""
    client = await make_client(sse_heartbeat=0.05)
    await new_session(client)
    topic = registry_of(client).topic("s1")
    r = await client.get("/api/sessions/s1/events")
    assert (await SSEReader(r).next()) is not None  # hello
    assert len(topic.subs) == 1
    r.close()
    await eventually(lambda: not topic.subs, "the feed's subscription to end")
