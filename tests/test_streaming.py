"""Streaming replies: chat over SSE, cancel, resume, regenerate, branches, crashes."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from tests.conftest import TIMEOUT, deadline, eventually, new_session, registry_of
from tests.sse import SSEReader

TEXT = "the quick brown fox jumps over the lazy dog and keeps on running far away"


async def _chat(client: Any, sid: str, content: str, **body: Any) -> Any:
    r = await client.post(f"/api/sessions/{sid}/chat", json={"content": content, **body})
    assert r.status in (200, 201), await r.text()
    return r


async def _get(client: Any, sid: str, mid: str) -> dict[str, Any]:
    r = await client.get(f"/api/sessions/{sid}/messages/{mid}")
    assert r.status == 200
    data: dict[str, Any] = await r.json()
    return data


async def _wait_status(client: Any, sid: str, mid: str, statuses: set[str]) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + TIMEOUT
    while True:
        m = await _get(client, sid, mid)
        if m["status"] in statuses:
            return m
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"status stayed {m['status']}")
        await asyncio.sleep(0.02)


async def _echo_chat(make_client: Any) -> tuple[Any, Any, str, str, list[Any]]:
    """One chat "TEXT" at 200 words/s read to its end: (client, response, user id,
    assistant id, every SSE event)."""
    client = await make_client(echo_words_per_second=200)
    await new_session(client)
    r = await _chat(client, "s1", TEXT)
    uid, aid = r.headers["X-User-Message-Id"], r.headers["X-Assistant-Message-Id"]
    events = await SSEReader(r).all()
    return client, r, uid, aid, events


async def test_chat_stream_is_ack_deltas_message_done(make_client: Any) -> None:
    """The chat answers an event stream: ack, then only deltas, then message and done."""
    _, r, _, _, events = await _echo_chat(make_client)
    assert r.headers["Content-Type"].startswith("text/event-stream")
    names = [e.event for e in events]
    assert names[0] == "ack" and names[-2:] == ["message", "done"]
    assert set(names[1:-2]) == {"delta"}


async def test_chat_ack_names_both_messages(make_client: Any) -> None:
    """The ack carries the header ids and a pending reply whose parent is the user message."""
    _, _, uid, aid, events = await _echo_chat(make_client)
    ack = events[0].json()
    assert ack["user_message_id"] == uid and ack["assistant_message_id"] == aid
    assert ack["assistant_message"]["status"] == "pending"
    assert ack["assistant_message"]["parent_id"] == uid


async def test_chat_deltas_add_up_to_the_final_text(make_client: Any) -> None:
    """Deltas are contiguous (offset, id = end offset) and add up to the final message."""
    _, _, _, aid, events = await _echo_chat(make_client)
    text, offset = "", 0
    for ev in events[1:-2]:
        d = ev.json()
        assert d["message_id"] == aid and d["offset"] == offset
        text += d["text"]
        offset += len(d["text"])
        assert ev.id == str(offset)
    final = events[-2].json()
    assert text == TEXT == final["content"]
    assert final["status"] == "complete" and final["model_id"] == "echo"


async def test_chat_stores_both_messages_complete(make_client: Any) -> None:
    """After the stream, the stored reply and user message are complete with their text."""
    client, _, uid, aid, _ = await _echo_chat(make_client)
    stored = await _get(client, "s1", aid)
    assert stored["content"] == TEXT and stored["status"] == "complete"
    user = await _get(client, "s1", uid)
    assert user["status"] == "complete" and user["content"] == TEXT


async def test_chat_reply_becomes_the_active_leaf(make_client: Any) -> None:
    """After the chat the session counts two messages and the reply is its active leaf."""
    client, _, _, aid, _ = await _echo_chat(make_client)
    session = (await (await client.get("/api/sessions/s1")).json())["session"]
    assert session["active_leaf_id"] == aid and session["message_count"] == 2


async def test_chat_accept_json_answers_once_complete(make_client: Any) -> None:
    """With Accept: application/json the chat answers once, with the finished reply."""
    client = await make_client(echo_words_per_second=0)
    await new_session(client)
    r = await client.post(
        "/api/sessions/s1/chat",
        json={"content": "hi there"},
        headers={"Accept": "application/json"},
    )
    assert r.status == 201
    body = await r.json()
    assert body["assistant_message"]["status"] == "complete"
    assert body["assistant_message"]["content"] == "hi there"
    assert body["user_message"]["id"] == r.headers["X-User-Message-Id"]


async def test_chat_same_client_id_does_not_duplicate(make_client: Any) -> None:
    """A retried chat with the same client_id gets the same pair, no new messages."""
    client = await make_client(echo_words_per_second=0)
    await new_session(client)
    body = {"content": "once only", "client_id": "cid-1"}
    hdr = {"Accept": "application/json"}
    r1 = await client.post("/api/sessions/s1/chat", json=body, headers=hdr)
    r2 = await client.post("/api/sessions/s1/chat", json=body, headers=hdr)
    assert (r1.status, r2.status) == (201, 200)
    b1, b2 = await r1.json(), await r2.json()
    assert b1["user_message"]["id"] == b2["user_message"]["id"]
    assert b1["assistant_message"]["id"] == b2["assistant_message"]["id"]
    every = await (await client.get("/api/sessions/s1/messages?view=all")).json()
    assert len(every["items"]) == 2
    r3 = await client.post("/api/sessions/s1/chat", json={**body, "content": "other"})
    assert r3.status == 409


async def test_closing_the_stream_does_not_stop_the_reply(make_client: Any) -> None:
    """Disconnect right after ack: the reply still completes with the full text."""
    client = await make_client(echo_words_per_second=100)
    await new_session(client)
    r = await _chat(client, "s1", TEXT)
    aid = r.headers["X-Assistant-Message-Id"]
    await SSEReader(r).until("ack")
    r.close()
    final = await _wait_status(client, "s1", aid, {"complete"})
    assert final["content"] == TEXT


async def _cancelled_mid_reply(make_client: Any) -> tuple[Any, str, dict[str, Any], SSEReader]:
    """A reply (20 words/s) cancelled after its first delta: (client, its id, the
    cancel answer, the chat stream's reader)."""
    client = await make_client(echo_words_per_second=20)
    await new_session(client)
    r = await _chat(client, "s1", TEXT)
    aid = r.headers["X-Assistant-Message-Id"]
    reader = SSEReader(r)
    await reader.until("delta")
    c = await client.post(f"/api/sessions/s1/messages/{aid}/cancel")
    assert c.status == 200
    final: dict[str, Any] = await c.json()
    return client, aid, final, reader


async def test_cancel_stops_reply_and_keeps_text(make_client: Any) -> None:
    """cancel: status cancelled, the text so far kept, the stream ends with message/done."""
    client, aid, final, reader = await _cancelled_mid_reply(make_client)
    assert final["status"] == "cancelled"
    assert final["content"] and TEXT.startswith(final["content"]) and final["content"] != TEXT
    rest = await reader.all()
    assert [e.event for e in rest][-2:] == ["message", "done"]
    assert rest[-2].json()["status"] == "cancelled"
    stored = await _get(client, "s1", aid)
    assert stored["status"] == "cancelled" and stored["content"] == final["content"]


async def test_cancel_stopped_reply_text_no_longer_grows(make_client: Any) -> None:
    """Once the cancelled reply's task ended and a later commit went through, its text
    is still what the cancel answered."""
    client, aid, final, reader = await _cancelled_mid_reply(make_client)
    await reader.all()
    actor = registry_of(client).actor_if_live("s1")
    await eventually(lambda: actor.replies.get(aid) is None, "the cancelled reply's task to end")
    await client.post("/api/sessions/s1/messages", json={"role": "user", "content": "later"})
    assert (await _get(client, "s1", aid))["content"] == final["content"]


async def test_cancel_again_answers_ended_reply_as_it_is(make_client: Any) -> None:
    """Cancelling a reply already cancelled answers 200 with it, still cancelled."""
    client, aid, _, reader = await _cancelled_mid_reply(make_client)
    await reader.all()
    again = await client.post(f"/api/sessions/s1/messages/{aid}/cancel")
    assert again.status == 200 and (await again.json())["status"] == "cancelled"


async def test_resume_with_last_event_id_gives_exact_remainder(make_client: Any) -> None:
    """Resume from the middle: exactly the rest of the text, once, then message and done."""
    client = await make_client(echo_words_per_second=40)
    await new_session(client)
    r = await _chat(client, "s1", TEXT)
    aid = r.headers["X-Assistant-Message-Id"]
    reader = SSEReader(r)
    first = [e for e in await reader.until("delta") if e.event == "delta"]
    seen = first[-1].json()["text"]
    last_id = first[-1].id
    r.close()
    assert last_id == str(len(seen))
    r2 = await client.get(
        f"/api/sessions/s1/messages/{aid}/stream", headers={"Last-Event-ID": last_id}
    )
    assert r2.status == 200
    events = await SSEReader(r2).all()
    deltas = [e.json() for e in events if e.event == "delta"]
    assert deltas[0]["offset"] == len(seen)
    rest = "".join(d["text"] for d in deltas)
    assert seen + rest == TEXT
    assert [e.event for e in events][-2:] == ["message", "done"]
    # resuming a finished reply from the start gives the whole text
    r3 = await client.get(f"/api/sessions/s1/messages/{aid}/stream")
    events = await SSEReader(r3).all()
    assert "".join(e.json()["text"] for e in events if e.event == "delta") == TEXT
    r4 = await client.get(
        f"/api/sessions/s1/messages/{aid}/stream", headers={"Last-Event-ID": "9999"}
    )
    assert r4.status == 400


async def test_resume_with_a_bad_offset_returns_400_even_beside_a_blank_header(
    client: Any,
) -> None:
    """``?offset=`` must be an integer whenever it is given, also when a blank
    ``Last-Event-ID`` header (which would otherwise win) comes with it."""
    await new_session(client)
    r = await client.post("/api/sessions/s1/messages", json={"role": "user", "content": "hi"})
    mid = (await r.json())["id"]
    url = f"/api/sessions/s1/messages/{mid}/stream"
    r = await client.get(url, params={"offset": "x1"}, headers={"Last-Event-ID": " "})
    assert r.status == 400
    assert (await r.json())["error"]["code"] == "invalid_input"
    r = await client.get(url, params={"offset": "1"}, headers={"Last-Event-ID": ""})
    assert r.status == 200
    deltas = [e.json() for e in await SSEReader(r).all() if e.event == "delta"]
    assert deltas[0]["offset"] == 1 and deltas[0]["text"] == "i"


async def test_streamed_text_is_committed_before_it_is_sent(make_client: Any) -> None:
    """Every delta a client sees is already in the file (status streaming meanwhile)."""
    client = await make_client(echo_words_per_second=30)
    await new_session(client)
    r = await _chat(client, "s1", TEXT)
    aid = r.headers["X-Assistant-Message-Id"]
    reader = SSEReader(r)
    await reader.until("ack")
    checked = 0
    async with deadline("the end of the deltas"):
        while (ev := await reader.next()) is not None and ev.event == "delta":
            end = int(ev.id or 0)
            actor = registry_of(client).actor_if_live("s1")
            row = await actor.read(
                lambda f: f.reader.execute(
                    "SELECT content, status FROM messages WHERE id = ?", (aid,)
                ).fetchone()
            )
            assert len(row[0]) >= end, "a delta left before its text was committed"
            assert row[1] in ("streaming", "complete")
            checked += 1
    assert checked >= 3


HDR = {"Accept": "application/json"}


async def _regenerated_twice(client: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Chat "q1", then regenerate its reply twice: (the user message, the two new replies)."""
    await new_session(client)
    first = await (
        await client.post("/api/sessions/s1/chat", json={"content": "q1"}, headers=HDR)
    ).json()
    u1, a1 = first["user_message"], first["assistant_message"]
    regen = []
    for _ in range(2):
        r = await client.post(f"/api/sessions/s1/messages/{a1['id']}/regenerate", headers=HDR)
        assert r.status == 201
        regen.append((await r.json())["assistant_message"])
    return u1, regen


async def _edited(client: Any) -> dict[str, Any]:
    """Edit-and-resend the first message: parent_id explicitly null makes a new root."""
    edit: dict[str, Any] = await (
        await client.post(
            "/api/sessions/s1/chat", json={"content": "q1 edited", "parent_id": None}, headers=HDR
        )
    ).json()
    return edit


async def test_regenerate_twice_makes_sibling_replies(make_client: Any) -> None:
    """Two regenerations are complete siblings under the user message; the last is active."""
    client = await make_client(echo_words_per_second=0)
    u1, regen = await _regenerated_twice(client)
    assert all(m["parent_id"] == u1["id"] and m["status"] == "complete" for m in regen)
    active = (await (await client.get("/api/sessions/s1/messages")).json())["items"]
    assert [m["id"] for m in active] == [u1["id"], regen[1]["id"]]
    assert active[1]["siblings"] == {"index": 2, "count": 3}


async def test_edit_with_null_parent_makes_new_root_branch(make_client: Any) -> None:
    """Chat with parent_id null after regenerations starts a new root; it is active."""
    client = await make_client(echo_words_per_second=0)
    await _regenerated_twice(client)
    edit = await _edited(client)
    assert edit["user_message"]["parent_id"] is None
    active = (await (await client.get("/api/sessions/s1/messages")).json())["items"]
    assert [m["content"] for m in active] == ["q1 edited", "q1 edited"]
    assert active[0]["siblings"] == {"index": 1, "count": 2}
    assert active[1]["siblings"] == {"index": 0, "count": 1}


async def test_regenerate_and_edit_keep_every_message_once(make_client: Any) -> None:
    """After two regenerations and an edit, view=all holds 6 distinct complete messages."""
    client = await make_client(echo_words_per_second=0)
    await _regenerated_twice(client)
    await _edited(client)
    every = (await (await client.get("/api/sessions/s1/messages?view=all")).json())["items"]
    ids = [m["id"] for m in every]
    assert len(ids) == len(set(ids)) == 6
    assert all(m["status"] == "complete" for m in every)


async def test_switch_back_to_first_root_shows_its_latest_reply(make_client: Any) -> None:
    """PATCH active_leaf_id to the first root shows its latest regenerated reply."""
    client = await make_client(echo_words_per_second=0)
    u1, regen = await _regenerated_twice(client)
    await _edited(client)
    await client.patch("/api/sessions/s1", json={"active_leaf_id": u1["id"]})
    active = (await (await client.get("/api/sessions/s1/messages")).json())["items"]
    assert [m["id"] for m in active] == [u1["id"], regen[1]["id"]]


async def test_edit_and_resend_branches_from_parent(make_client: Any) -> None:
    """Chat with parent_id of an earlier message's parent makes a sibling user message."""
    client = await make_client(echo_words_per_second=0)
    await new_session(client)
    hdr = {"Accept": "application/json"}
    t1 = await (
        await client.post("/api/sessions/s1/chat", json={"content": "one"}, headers=hdr)
    ).json()
    t2 = await (
        await client.post("/api/sessions/s1/chat", json={"content": "two"}, headers=hdr)
    ).json()
    edited = await (
        await client.post(
            "/api/sessions/s1/chat",
            json={"content": "two, edited", "parent_id": t1["assistant_message"]["id"]},
            headers=hdr,
        )
    ).json()
    assert edited["user_message"]["parent_id"] == t1["assistant_message"]["id"]
    active = (await (await client.get("/api/sessions/s1/messages")).json())["items"]
    assert [m["content"] for m in active] == ["one", "one", "two, edited", "two, edited"]
    assert active[2]["siblings"] == {"index": 1, "count": 2}
    r = await client.patch("/api/sessions/s1", json={"active_leaf_id": t2["user_message"]["id"]})
    assert r.status == 200
    active = (await (await client.get("/api/sessions/s1/messages")).json())["items"]
    assert [m["content"] for m in active] == ["one", "one", "two", "two"]


async def test_delete_streaming_message_cancels_it(make_client: Any) -> None:
    """Deleting a reply while it streams stops it and leaves a tombstone."""
    client = await make_client(echo_words_per_second=10)
    await new_session(client)
    r = await _chat(client, "s1", TEXT)
    aid = r.headers["X-Assistant-Message-Id"]
    await SSEReader(r).until("delta")
    assert (await client.delete(f"/api/sessions/s1/messages/{aid}")).status == 204
    assert (await client.get(f"/api/sessions/s1/messages/{aid}")).status == 404
    assert registry_of(client).actor_if_live("s1").replies.running == {}


@pytest.mark.parametrize(
    "bad",
    [
        {},
        {"content": ""},
        {"content": "x", "extra": 1},
        {"content": 5},
        {"content": "x", "parent_id": "nope"},
    ],
)
async def test_bad_chat_is_400_and_changes_nothing(client: Any, bad: dict[str, Any]) -> None:
    await new_session(client)
    r = await client.post("/api/sessions/s1/chat", json=bad)
    assert r.status == 400
    every = await (await client.get("/api/sessions/s1/messages?view=all")).json()
    assert every["items"] == []


async def test_chat_unknown_session_is_404(client: Any) -> None:
    r = await client.post("/api/sessions/nope/chat", json={"content": "x"})
    assert r.status == 404


async def _read_some_deltas(url: str, sid: str, n: int) -> tuple[str, str]:
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{url}/api/sessions/{sid}/chat", json={"content": TEXT}) as r:
            aid = r.headers["X-Assistant-Message-Id"]
            reader = SSEReader(r)
            seen = ""
            async with deadline(f"{n} deltas"):
                while True:
                    ev = await reader.next()
                    assert ev is not None
                    if ev.event == "delta":
                        seen += ev.json()["text"]
                        n -= 1
                        if n == 0:
                            return aid, seen


async def test_kill9_mid_reply_marks_it_interrupted(server_process: Any) -> None:
    """A server killed mid-reply comes back with the reply interrupted, text kept."""
    srv = server_process(env={"ROOST_ECHO_WORDS_PER_SECOND": "10"})
    await srv.wait_ready()
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{srv.url}/api/sessions", json={"id": "k"}) as r:
            assert r.status == 201
    aid, seen = await _read_some_deltas(srv.url, "k", 3)
    srv.kill9()
    srv2 = server_process()
    await srv2.wait_ready()
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{srv2.url}/api/sessions/k/messages/{aid}") as r:
            msg = await r.json()
    assert msg["status"] == "interrupted"
    assert msg["content"].startswith(seen) and TEXT.startswith(msg["content"])


async def test_sigterm_mid_reply_interrupts_after_grace(server_process: Any) -> None:
    """SIGTERM: a running reply gets the grace period, then is interrupted with text kept."""
    srv = server_process(env={"ROOST_ECHO_WORDS_PER_SECOND": "10", "ROOST_SHUTDOWN_GRACE": "0.2"})
    await srv.wait_ready()
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{srv.url}/api/sessions", json={"id": "t"}) as r:
            assert r.status == 201
    aid, seen = await _read_some_deltas(srv.url, "t", 2)
    code = await srv.sigterm(TIMEOUT)
    assert code == 0, srv.log.read_text()
    srv2 = server_process()
    await srv2.wait_ready()
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{srv2.url}/api/sessions/t/messages/{aid}") as r:
            msg = await r.json()
    assert msg["status"] == "interrupted"
    assert msg["content"].startswith(seen) and TEXT.startswith(msg["content"])
