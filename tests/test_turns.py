"""One turn at a time (issue 19): on_busy reject, queue, interrupt, rollback, against a
real server (the app on a real socket; a real process for the crash)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
import pytest

from tests.conftest import TIMEOUT, new_session

LONG = " ".join(f"w{i}" for i in range(40))  # 40 words: 2 s at 20 words/s


async def until(pred: Any, what: str, timeout: float = TIMEOUT) -> None:
    """Wait until the coroutine function ``pred`` answers truthy (polled every 20 ms)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not await pred():
        if loop.time() > end:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


async def _active(client: Any, sid: str = "s1") -> list[dict[str, Any]]:
    r = await client.get(f"/api/sessions/{sid}/messages?limit=200")
    assert r.status == 200
    items: list[dict[str, Any]] = (await r.json())["items"]
    return items


async def _all(client: Any, sid: str = "s1") -> list[dict[str, Any]]:
    r = await client.get(f"/api/sessions/{sid}/messages?limit=200&view=all")
    assert r.status == 200
    items: list[dict[str, Any]] = (await r.json())["items"]
    return items


async def _start_reply(client: Any, content: str = LONG, sid: str = "s1") -> dict[str, Any]:
    """Start a chat (SSE) and return its ack once the reply streams; the reply goes on."""
    r = await client.post(f"/api/sessions/{sid}/chat", json={"content": content})
    assert r.status == 200, await r.text()
    ack: dict[str, Any] = {}
    async for line in r.content:
        if line.startswith(b"data:") and not ack:
            ack = orjson.loads(line[5:])
            break
    r.close()
    return ack


async def _chat_json(client: Any, content: str, **body: Any) -> tuple[int, Any, Any]:
    r = await client.post(
        "/api/sessions/s1/chat",
        json={"content": content, **body},
        headers={"Accept": "application/json"},
    )
    return r.status, await r.json(), r.headers


async def test_reject_racing_chats_start_exactly_one_reply(make_client: Any) -> None:
    """Two chats racing under reject (20 tries): one reply starts, the other is 409
    session_busy with running_message_id and Retry-After, and stores nothing."""
    client = await make_client(echo_words_per_second=0, on_busy="reject")
    for i in range(20):
        sid = f"race{i}"
        await new_session(client, sid)

        async def post(text: str, sid: str = sid) -> tuple[int, Any, str | None]:
            r = await client.post(
                f"/api/sessions/{sid}/chat",
                json={"content": LONG + text},
                headers={"Accept": "application/json"},
            )
            return r.status, await r.json(), r.headers.get("Retry-After")

        (s1, b1, ra1), (s2, b2, ra2) = await asyncio.gather(post(" a"), post(" b"))
        assert sorted([s1, s2]) == [201, 409], (s1, s2, b1, b2)
        ok, busy, retry = (b1, b2, ra2) if s1 == 201 else (b2, b1, ra1)
        assert busy["error"]["code"] == "session_busy"
        assert busy["error"]["details"]["running_message_id"] == ok["assistant_message"]["id"]
        assert retry == "1"
        items = await _all(client, sid)
        assert [m["role"] for m in items] == ["user", "assistant"]


async def test_reject_while_idle_starts_the_reply(make_client: Any) -> None:
    """reject only refuses while busy: an idle session answers as usual."""
    client = await make_client(echo_words_per_second=0)
    await new_session(client)
    status, body, _ = await _chat_json(client, "hello", on_busy="reject")
    assert status == 201 and body["assistant_message"]["status"] == "complete"


async def test_queue_replies_run_one_after_another_in_order(make_client: Any) -> None:
    """queue: later chats are stored `queued` at once and answered in order, each
    answering the history as it stands when it starts."""
    client = await make_client(echo_words_per_second=40)
    await new_session(client)
    await _start_reply(client, "first " + LONG)
    st2, b2, _ = await _chat_json(client, "second")
    st3, b3, _ = await _chat_json(client, "third")
    assert (st2, st3) == (202, 202)
    assert b2["queued"] is True and b2["assistant_message"] is None
    assert b2["user_message"]["status"] == "queued"
    assert b3["user_message"]["status"] == "queued"

    async def all_done() -> bool:
        items = await _active(client)
        return len(items) == 6 and all(m["status"] == "complete" for m in items)

    await until(all_done, "the three turns answered")
    items = await _active(client)
    assert [(m["role"], m["content"].split()[0]) for m in items] == [
        ("user", "first"),
        ("assistant", "first"),
        ("user", "second"),
        ("assistant", "second"),
        ("user", "third"),
        ("assistant", "third"),
    ]
    replies = [m for m in items if m["role"] == "assistant"]
    assert replies[0]["updated_at"] <= replies[1]["created_at"]  # one after another
    assert replies[1]["updated_at"] <= replies[2]["created_at"]


async def test_queue_sse_waits_for_its_turn(make_client: Any) -> None:
    """A queued chat over SSE: `ack` with queued, then (its turn) an ack, deltas, done."""
    client = await make_client(echo_words_per_second=40)
    await new_session(client)
    await _start_reply(client, "first " + LONG)
    r = await client.post("/api/sessions/s1/chat", json={"content": "second one"})
    body = (await r.read()).decode()
    events = [b for b in body.split("\n\n") if b.strip()]
    names = [e.split("\n")[0].removeprefix("event: ") for e in events]
    assert names[0] == "ack" and '"queued":true' in events[0]
    assert names[1] == "ack" and '"queued":false' in events[1]
    assert names[-2:] == ["message", "done"]
    assert '"second one"' not in events[-2] or '"status":"complete"' in events[-2]


async def test_queued_message_can_be_deleted(make_client: Any) -> None:
    """A queued message deleted before its turn never gets a reply."""
    client = await make_client(echo_words_per_second=40)
    await new_session(client)
    await _start_reply(client, "first " + LONG)
    _, b2, _ = await _chat_json(client, "second")
    qid = b2["user_message"]["id"]
    r = await client.delete(f"/api/sessions/s1/messages/{qid}")
    assert r.status == 204

    async def first_done() -> bool:
        items = await _active(client)
        return len(items) == 2 and items[1]["status"] == "complete"

    await until(first_done, "the first reply done")
    await asyncio.sleep(0.2)  # a wrongly started turn would show up now
    assert len(await _active(client)) == 2
    assert [m["content"] for m in await _all(client)] == ["first " + LONG, "first " + LONG]


async def test_interrupt_keeps_running_reply_as_interrupted(make_client: Any) -> None:
    """interrupt: the running reply ends `interrupted` with its text; the new turn
    starts at once below it."""
    client = await make_client(echo_words_per_second=20)
    await new_session(client)
    ack = await _start_reply(client)
    a1 = ack["assistant_message_id"]

    async def streaming() -> bool:
        r = await client.get(f"/api/sessions/s1/messages/{a1}")
        return bool((await r.json())["content"])

    await until(streaming, "some text of the first reply")
    status, body, _ = await _chat_json(client, "now this", on_busy="interrupt")
    assert status == 201 and body["assistant_message"]["content"] == "now this"
    r = await client.get(f"/api/sessions/s1/messages/{a1}")
    first = await r.json()
    assert first["status"] == "interrupted"
    assert first["content"] and LONG.startswith(first["content"]) and first["content"] != LONG
    items = await _active(client)
    assert [(m["role"], m["status"]) for m in items] == [
        ("user", "complete"),
        ("assistant", "interrupted"),
        ("user", "complete"),
        ("assistant", "complete"),
    ]
    assert items[1]["id"] == a1


async def test_rollback_tombstones_running_reply(make_client: Any) -> None:
    """rollback: the running reply becomes a tombstone; the new turn starts at once
    below the user message it answered."""
    client = await make_client(echo_words_per_second=20)
    await new_session(client)
    ack = await _start_reply(client)
    u1, a1 = ack["user_message_id"], ack["assistant_message_id"]
    status, _, _ = await _chat_json(client, "instead", on_busy="rollback")
    assert status == 201
    r = await client.get(f"/api/sessions/s1/messages/{a1}")
    assert r.status == 404  # a tombstone
    items = await _active(client)
    assert [(m["role"], m["content"]) for m in items] == [
        ("user", LONG),
        ("user", "instead"),
        ("assistant", "instead"),
    ]
    assert items[1]["parent_id"] == u1
    await asyncio.sleep(0.2)  # the stopped reply's last commit must not bring it back
    r = await client.get(f"/api/sessions/s1/messages/{a1}")
    assert r.status == 404


async def test_session_settings_on_busy_is_the_default(make_client: Any) -> None:
    """A session's settings.on_busy applies when the chat names none."""
    client = await make_client(echo_words_per_second=20)
    await new_session(client)
    r = await client.patch("/api/sessions/s1", json={"settings": {"on_busy": "reject"}})
    assert r.status == 200 and (await r.json())["settings"] == {"on_busy": "reject"}
    await _start_reply(client)
    status, body, _ = await _chat_json(client, "no")
    assert status == 409 and body["error"]["code"] == "session_busy"


async def test_ws_chat_frame_takes_on_busy(make_client: Any) -> None:
    """The WebSocket chat frame takes on_busy like POST /chat (reject: an error frame)."""
    client = await make_client(echo_words_per_second=20)
    await new_session(client)
    await _start_reply(client)
    ws = await client.ws_connect("/api/sessions/s1/ws", protocols=["roost.v1"])
    await ws.send_json({"type": "chat", "ref": 1, "content": "hi", "on_busy": "reject"})
    while True:
        frame = await ws.receive_json()
        if frame.get("ref") == 1:
            break
    assert frame["type"] == "error" and frame["code"] == "session_busy"
    await ws.send_json({"type": "chat", "ref": 2, "content": "later"})
    while True:
        frame = await ws.receive_json()
        if frame.get("ref") == 2:
            break
    assert frame["type"] == "chat.ack" and frame["assistant_message"] is None
    assert frame["user_message"]["status"] == "queued"
    await ws.close()


@pytest.mark.parametrize(
    "settings",
    [
        {"on_busy": "sometimes"},
        {"temperature": 3},
        {"tools": [{"name": "a b"}]},
        {"tools": [{"name": "x"}, {"name": "x"}]},
        {"unknown": 1},
    ],
)
async def test_bad_settings_are_400_and_change_nothing(client: Any, settings: Any) -> None:
    """Settings are validated; a bad one changes nothing."""
    await new_session(client)
    r = await client.patch("/api/sessions/s1", json={"settings": settings})
    assert r.status == 400, await r.text()
    r = await client.get("/api/sessions/s1")
    assert (await r.json())["session"]["settings"] == {}


async def test_queued_turn_survives_kill9_and_runs_after_restart(server_process: Any) -> None:
    """A crash while queued leaves the message `queued`; when the session is next used
    after the restart, the running reply is `interrupted` and the queued turn runs."""
    srv = server_process(env={"ROOST_ECHO_WORDS_PER_SECOND": "5"})
    await srv.wait_ready()
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{srv.url}/api/sessions", json={"id": "q"}) as r:
            assert r.status == 201
        chat = await http.post(f"{srv.url}/api/sessions/q/chat", json={"content": LONG})
        assert chat.status == 200
        await chat.content.readline()
        chat.close()
        async with http.post(
            f"{srv.url}/api/sessions/q/chat",
            json={"content": "queued one"},
            headers={"Accept": "application/json"},
        ) as r:
            assert r.status == 202
            qid = (await r.json())["user_message"]["id"]
    srv.kill9()
    srv2 = server_process(env={"ROOST_ECHO_WORDS_PER_SECOND": "0"})
    await srv2.wait_ready()
    async with aiohttp.ClientSession() as http:

        async def answered() -> bool:
            async with http.get(f"{srv2.url}/api/sessions/q/messages?limit=10") as r:
                items = (await r.json())["items"]
            return len(items) == 4 and items[3]["status"] == "complete"

        await until(answered, "the queued turn answered after the restart")
        async with http.get(f"{srv2.url}/api/sessions/q/messages?limit=10") as r:
            items = (await r.json())["items"]
    assert [(m["role"], m["status"]) for m in items] == [
        ("user", "complete"),
        ("assistant", "interrupted"),
        ("user", "complete"),
        ("assistant", "complete"),
    ]
    assert items[2]["id"] == qid and items[3]["content"] == "queued one"


async def test_queued_message_can_be_cancelled(make_client: Any) -> None:
    """Cancel on a queued message: `cancelled`, and its turn never starts."""
    client = await make_client(echo_words_per_second=40)
    await new_session(client)
    await _start_reply(client, "first " + LONG)
    _, b2, _ = await _chat_json(client, "second")
    qid = b2["user_message"]["id"]
    r = await client.post(f"/api/sessions/s1/messages/{qid}/cancel")
    assert r.status == 200 and (await r.json())["status"] == "cancelled"

    async def first_done() -> bool:
        items = await _active(client)
        return len(items) == 2 and items[1]["status"] == "complete"

    await until(first_done, "the first reply done")
    status, body, _ = await _chat_json(client, "third")
    assert status == 201 and body["assistant_message"]["content"] == "third"
    assert [m["content"].split()[0] for m in await _active(client)] == [
        "first",
        "first",
        "third",
        "third",
    ]
