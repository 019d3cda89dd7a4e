"""The Vercel AI SDK adapter, driven by the real ``ai`` package in node (SPEC section 8).

``tests/aisdk/drive.mjs`` runs ``DefaultChatTransport`` and ``readUIMessageStream``
from ``ai`` 5 (newest 5.x) against the live test server and re-checks every raw
answer with ai 5.0.0's strict chunk schema. Without node (or without
``npm ci`` in tests/aisdk) these tests skip, except in CI, where they fail.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from actors.responders import Delta, ReplyInfo, ResponderError
from server.routes_realtime import close_realtime
from tests.conftest import ROOT, TIMEOUT, deadline, new_session, registry_of

AISDK = ROOT / "tests" / "aisdk"
NODE = shutil.which("node")
WORDS = " ".join(f"word{i}" for i in range(40))


def _need_node() -> str:
    """The node binary, or skip (fail in CI) saying what is missing."""
    reason = None
    if NODE is None:
        reason = "node is not installed"
    elif (
        not (AISDK / "node_modules" / "ai").is_dir()
        or not (AISDK / "node_modules" / "ai-5.0.0").is_dir()
    ):
        reason = "the ai package is not installed: run `npm ci` in tests/aisdk"
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (required in CI)")
        pytest.skip(reason)
    assert NODE is not None
    return NODE


async def drive(client: Any, **req: Any) -> dict[str, Any]:
    """Run drive.mjs against ``client``'s server; its JSON result."""
    node = _need_node()
    req["base"] = str(client.make_url("")).rstrip("/")
    proc = await asyncio.create_subprocess_exec(
        node,
        str(AISDK / "drive.mjs"),
        orjson.dumps(req).decode(),
        cwd=AISDK,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT * 3)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    result: dict[str, Any] = orjson.loads(out)
    return result


def user_msg(uid: str, text: str) -> dict[str, Any]:
    return {"id": uid, "role": "user", "parts": [{"type": "text", "text": text}]}


def chat_body(sid: str, *messages: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"id": sid, "messages": list(messages), "trigger": "submit-message", **extra}


async def post_chat(client: Any, body: dict[str, Any]) -> list[dict[str, Any]]:
    """POST /api/ai/chat with ``body``; the chunks of the answer (``[DONE]`` as None)."""
    r = await client.post("/api/ai/chat", json=body)
    assert r.status == 200, await r.text()
    assert r.headers["x-vercel-ai-ui-message-stream"] == "v1"
    return parse_stream(await asyncio.wait_for(r.text(), TIMEOUT))


def parse_stream(text: str) -> list[dict[str, Any]]:
    out: list[Any] = []
    for block in text.split("\n\n"):
        if not block.strip() or block.startswith(":"):
            continue
        assert block.startswith("data: "), block
        payload = block[len("data: ") :]
        out.append(None if payload == "[DONE]" else orjson.loads(payload))
    return out


async def messages_of(client: Any, sid: str) -> list[dict[str, Any]]:
    r = await client.get(f"/api/sessions/{sid}/messages", params={"view": "all", "limit": "100"})
    assert r.status == 200, await r.text()
    items: list[dict[str, Any]] = (await r.json())["items"]
    return items


async def get_message(client: Any, sid: str, mid: str) -> dict[str, Any]:
    r = await client.get(f"/api/sessions/{sid}/messages/{mid}")
    assert r.status == 200, await r.text()
    data: dict[str, Any] = await r.json()
    return data


def assert_valid(record: dict[str, Any]) -> None:
    """One HTTP answer passed both schemas and ended with ``data: [DONE]``."""
    assert record["status"] == 200
    assert record["headers"]["x-vercel-ai-ui-message-stream"] == "v1"
    assert record["invalid"] == []
    assert record["legacyError"] is None
    assert all(e.startswith("data: ") for e in record["events"])
    assert record["events"][-1] == "data: [DONE]"
    assert len(record["chunks"]) == len(record["events"]) - 1


class ToolResponder:
    """Text, then a finished tool call, like a provider asking for a tool."""

    name = "tools"

    async def stream(
        self, history: Sequence[dict[str, Any]], *, model: str | None = None
    ) -> AsyncIterator[Delta | ReplyInfo]:
        yield ReplyInfo(model_id="tool-model", provider_id="test")
        yield Delta(text="Let me look. ")
        yield Delta(
            tool_call={
                "tool_call_id": "call_1",
                "tool_name": "get_weather",
                "args": {"city": "Oslo"},
            }
        )


class FailingResponder:
    """Some text, then a provider error."""

    name = "failing"

    async def stream(
        self, history: Sequence[dict[str, Any]], *, model: str | None = None
    ) -> AsyncIterator[Delta | ReplyInfo]:
        yield ReplyInfo(model_id="m", provider_id="test")
        yield Delta(text="partial")
        raise ResponderError("provider_error", "the provider fell over")


# ------------------------------------------------------------------ through the real SDK


async def test_aisdk_chat_chunks_validate(make_client: Any) -> None:
    """Every chunk passes ai's schema (newest 5.x and strict 5.0.0), in protocol order."""
    client = await make_client(echo_words_per_second=0)
    res = await drive(client, op="send", chatId="c1", messages=[user_msg("u1", "hello there")])
    assert res["errors"] == []
    (record,) = res["http"]
    assert_valid(record)
    types = [c["type"] for c in record["chunks"]]
    assert types[0] == "start" and types[1] == "text-start"
    assert types[-2:] == ["text-end", "finish"]
    assert set(types[2:-2]) == {"text-delta"}
    assert record["chunks"][0]["messageId"] == record["headers"]["x-assistant-message-id"]


async def test_aisdk_chat_assembles_stored_text(make_client: Any) -> None:
    """readUIMessageStream builds the text Roost stored, under Roost's message id."""
    client = await make_client(echo_words_per_second=200)
    res = await drive(client, op="send", chatId="c1", messages=[user_msg("u1", WORDS)])
    mid = res["http"][0]["headers"]["x-assistant-message-id"]
    stored = await get_message(client, "c1", mid)
    assert stored["status"] == "complete"
    assert res["message"]["id"] == mid
    assert res["text"] == stored["content"] == WORDS
    assert res["http"][0]["legacyText"] == WORDS
    meta = res["message"]["metadata"]
    assert meta["status"] == "complete" and meta["model"] == "echo"
    assert meta["parentId"] == stored["parent_id"] and meta["sessionId"] == "c1"


async def test_aisdk_chat_stores_only_the_new_user_message(make_client: Any) -> None:
    """The client's history is not stored: only its last (user) message and the reply."""
    client = await make_client(echo_words_per_second=0)
    history = [
        user_msg("u0", "made up earlier"),
        {"id": "a0", "role": "assistant", "parts": [{"type": "text", "text": "never said"}]},
        user_msg("u1", "the new one"),
    ]
    await drive(client, op="send", chatId="c1", messages=history)
    items = await messages_of(client, "c1")
    assert [(m["role"], m["content"]) for m in items] == [
        ("user", "the new one"),
        ("assistant", "the new one"),
    ]
    assert items[0]["client_id"].startswith("ai:u1:")


async def test_aisdk_resume_mid_reply_ends_with_full_text(make_client: Any) -> None:
    """Dropped after the first delta, reconnectToStream gets the whole reply from its start."""
    client = await make_client(echo_words_per_second=20)
    res = await drive(client, op="resume", chatId="c1", messages=[user_msg("u1", WORDS)])
    assert [c["type"] for c in res["before"]][-1] == "text-delta"
    assert "finish" not in [c["type"] for c in res["before"]]
    assert res["reconnectNull"] is False
    post, get = res["http"]
    assert (post["method"], get["method"]) == ("POST", "GET")
    assert get["url"].endswith("/api/ai/chat/c1/stream")
    assert_valid(get)
    mid = post["headers"]["x-assistant-message-id"]
    assert get["chunks"][0] == {
        "type": "start",
        "messageId": mid,
        "messageMetadata": get["chunks"][0]["messageMetadata"],
    }
    stored = await get_message(client, "c1", mid)
    assert res["text"] == stored["content"] == WORDS
    assert res["message"]["id"] == mid


async def test_aisdk_resend_does_not_duplicate_user_message(make_client: Any) -> None:
    """The same request again replays the stored reply; nothing new is stored."""
    client = await make_client(echo_words_per_second=0)
    first = await drive(client, op="send", chatId="c1", messages=[user_msg("u1", "hi you")])
    again = await drive(client, op="send", chatId="c1", messages=[user_msg("u1", "hi you")])
    assert_valid(again["http"][0])
    assert again["message"]["id"] == first["message"]["id"]
    assert again["text"] == first["text"] == "hi you"
    items = await messages_of(client, "c1")
    assert [m["role"] for m in items] == ["user", "assistant"]


async def test_aisdk_regenerate_streams_a_new_sibling(make_client: Any) -> None:
    """regenerate-message with the assistant's id streams a new sibling under the same user."""
    client = await make_client(echo_words_per_second=0)
    first = await drive(client, op="send", chatId="c1", messages=[user_msg("u1", "again")])
    old = first["message"]["id"]
    res = await drive(
        client,
        op="send",
        chatId="c1",
        messages=[user_msg("u1", "again")],
        trigger="regenerate-message",
        messageId=old,
    )
    assert_valid(res["http"][0])
    new = res["message"]["id"]
    assert new != old
    stored_old, stored_new = (
        await get_message(client, "c1", old),
        await get_message(client, "c1", new),
    )
    assert stored_new["parent_id"] == stored_old["parent_id"]
    assert res["text"] == stored_new["content"] == "again"


async def test_aisdk_tool_call_becomes_tool_part(make_client: Any) -> None:
    """A provider's tool call arrives as tool-input-available and a typed tool part."""
    client = await make_client()
    registry_of(client).responder = ToolResponder()
    res = await drive(client, op="send", chatId="c1", messages=[user_msg("u1", "weather?")])
    assert_valid(res["http"][0])
    tool = [c for c in res["http"][0]["chunks"] if c["type"].startswith("tool-")]
    assert tool == [
        {
            "type": "tool-input-available",
            "toolCallId": "call_1",
            "toolName": "get_weather",
            "input": {"city": "Oslo"},
        }
    ]
    parts = res["message"]["parts"]
    assert parts[0]["type"] == "text" and parts[0]["text"] == "Let me look. "
    assert parts[1]["type"] == "tool-get_weather"
    assert parts[1]["state"] == "input-available" and parts[1]["input"] == {"city": "Oslo"}


async def test_aisdk_failed_reply_sends_error_chunk(make_client: Any) -> None:
    """A failed reply: the text so far, an error chunk, then finish with status error."""
    client = await make_client()
    registry_of(client).responder = FailingResponder()
    res = await drive(client, op="send", chatId="c1", messages=[user_msg("u1", "go")])
    (record,) = res["http"]
    assert_valid(record)
    types = [c["type"] for c in record["chunks"]]
    assert types[-3:] == ["text-end", "error", "finish"]
    assert record["chunks"][-2]["errorText"] == "the provider fell over"
    assert record["chunks"][-1]["messageMetadata"]["status"] == "error"
    assert any("the provider fell over" in e for e in res["errors"])


async def test_aisdk_use_chat_failed_reply_has_metadata_status_error(make_client: Any) -> None:
    """useChat's Chat, on a reply whose provider answers 500: the SDK stops at the
    ``error`` chunk, yet the assistant message's ``metadata.status`` is ``error``
    (not ``pending``), with the model fields, because ``message-metadata`` came first."""
    app = web.Application()

    async def refuse(request: web.Request) -> web.Response:
        return web.json_response({"error": {"message": "upstream broke"}}, status=500)

    app.router.add_post("/v1/chat/completions", refuse)
    provider = TestServer(app)
    await provider.start_server()
    try:
        client = await make_client(
            responder="openai",
            openai_base_url=f"http://127.0.0.1:{provider.port}/v1",
            openai_model="m",
            openai_retries=0,
        )
        res = await drive(client, op="chat", chatId="c1", text="go")
    finally:
        await provider.close()
    assert res["status"] == "error" and res["chatError"], res
    message = res["message"]
    assert message["role"] == "assistant", res["messages"]
    assert message["metadata"]["status"] == "error", message
    assert "model" in message["metadata"]  # null: the provider failed before naming one
    (record,) = res["http"]
    assert_valid(record)
    types = [c["type"] for c in record["chunks"]]
    assert types.index("message-metadata") < types.index("error") < types.index("finish")
    meta = record["chunks"][types.index("message-metadata")]["messageMetadata"]
    assert meta == record["chunks"][-1]["messageMetadata"]


async def test_aisdk_shutdown_mid_reply_sends_metadata_then_error(make_client: Any) -> None:
    """A reply stopped by shutdown ends its UI stream with ``message-metadata``
    (interrupted), ``text-end``, ``error`` (shutting down), ``finish``, ``[DONE]``."""
    client = await make_client(echo_words_per_second=20, shutdown_grace=0)
    r = await client.post("/api/ai/chat", json=chat_body("c1", user_msg("u1", WORDS)))
    assert r.status == 200, await r.text()
    async with deadline("the first text-delta"):
        while b"text-delta" not in await r.content.readline():
            pass
    await close_realtime(client.server.app)  # on_shutdown
    rest = await asyncio.wait_for(r.text(), TIMEOUT)
    chunks = parse_stream(rest.lstrip("\n"))  # the blank line that ended the delta read
    assert chunks[-1] is None
    types = [c["type"] for c in chunks[:-1]]
    assert types[-4:] == ["message-metadata", "text-end", "error", "finish"], types
    assert chunks[-5]["messageMetadata"]["status"] == "interrupted"
    assert "shutting down" in chunks[-3]["errorText"]
    assert chunks[-2]["messageMetadata"]["status"] == "interrupted"


# ------------------------------------------------------------------ protocol details


async def test_aisdk_resend_while_running_attaches_to_reply(make_client: Any) -> None:
    """The same request while its reply runs streams that reply from its start."""
    client = await make_client(echo_words_per_second=50)
    body = chat_body("c1", user_msg("u1", WORDS))
    r1 = await client.post("/api/ai/chat", json=body)
    assert r1.status == 200
    await asyncio.wait_for(r1.content.readuntil(b'"text-delta"'), TIMEOUT)
    chunks = await post_chat(client, body)
    assert chunks[0]["messageId"] == r1.headers["X-Assistant-Message-Id"]
    text = "".join(c["delta"] for c in chunks if c and c["type"] == "text-delta")
    assert text == WORDS
    r1.close()
    assert [m["role"] for m in await messages_of(client, "c1")] == ["user", "assistant"]


async def test_aisdk_edit_becomes_sibling(make_client: Any) -> None:
    """New text under the same UI id with messageId is a sibling of the stored version."""
    client = await make_client(echo_words_per_second=0)
    await post_chat(client, chat_body("c1", user_msg("u1", "first")))
    await post_chat(client, chat_body("c1", user_msg("u2", "second")))
    items = await messages_of(client, "c1")
    u2 = items[2]
    chunks = await post_chat(client, chat_body("c1", user_msg("u2", "edited"), messageId="u2"))
    reply = await get_message(client, "c1", chunks[0]["messageId"])
    edited = await get_message(client, "c1", reply["parent_id"])
    assert edited["content"] == "edited" and edited["id"] != u2["id"]
    assert edited["parent_id"] == u2["parent_id"]


async def test_aisdk_edit_of_loaded_message_becomes_sibling(make_client: Any) -> None:
    """History loaded from Roost uses Roost ids as UI ids; editing one makes a sibling."""
    client = await make_client(echo_words_per_second=0)
    await post_chat(client, chat_body("c1", user_msg("u1", "first")))
    await post_chat(client, chat_body("c1", user_msg("u2", "second")))
    u2 = (await messages_of(client, "c1"))[2]
    loaded = user_msg(u2["id"], "edited")
    chunks = await post_chat(client, chat_body("c1", loaded, messageId=u2["id"]))
    reply = await get_message(client, "c1", chunks[0]["messageId"])
    edited = await get_message(client, "c1", reply["parent_id"])
    assert edited["content"] == "edited" and edited["parent_id"] == u2["parent_id"]


async def test_aisdk_creates_session_on_first_use(client: Any) -> None:
    """The chat id names a session that the first submit-message creates."""
    assert (await client.get("/api/sessions/fresh-chat")).status == 404
    await post_chat(client, chat_body("fresh-chat", user_msg("u1", "hi")))
    r = await client.get("/api/sessions/fresh-chat")
    assert r.status == 200
    assert (await r.json())["session"]["message_count"] == 2


async def test_aisdk_resume_without_running_reply_is_204(client: Any) -> None:
    """No running reply (unknown chat, or the reply ended): 204 No Content."""
    assert (await client.get("/api/ai/chat/nobody/stream")).status == 204
    await post_chat(client, chat_body("c1", user_msg("u1", "short")))
    assert (await client.get("/api/ai/chat/c1/stream")).status == 204


async def test_aisdk_resume_bad_chat_id_is_400(client: Any) -> None:
    """A chat id that is not a session id is refused."""
    r = await client.get("/api/ai/chat/..%2Fetc/stream")
    assert r.status in (400, 404)
    assert (await client.get("/api/ai/chat/-bad/stream")).status == 400


async def test_aisdk_regenerate_unknown_chat_is_404(client: Any) -> None:
    """regenerate-message on a chat that does not exist creates nothing."""
    body = {"id": "c9", "messages": [user_msg("u1", "x")], "trigger": "regenerate-message"}
    r = await client.post("/api/ai/chat", json=body)
    assert r.status == 404
    assert (await client.get("/api/sessions/c9")).status == 404


async def test_aisdk_regenerate_unknown_message_is_404(client: Any) -> None:
    """A messageId that names nothing in the chat answers 404."""
    await new_session(client, "c1")
    body = {
        "id": "c1",
        "messages": [user_msg("u1", "x")],
        "trigger": "regenerate-message",
        "messageId": "nope",
    }
    r = await client.post("/api/ai/chat", json=body)
    assert r.status == 404
    assert (await r.json())["error"]["code"] == "not_found"


BAD_BODIES = {
    "bad_session_id": chat_body("-nope", user_msg("u1", "x")),
    "last_not_user": chat_body(
        "c1", {"id": "a1", "role": "assistant", "parts": [{"type": "text", "text": "x"}]}
    ),
    "no_messages": chat_body("c1"),
    "empty_text": chat_body("c1", user_msg("u1", "   ")),
    "file_part": chat_body(
        "c1",
        {
            "id": "u1",
            "role": "user",
            "parts": [{"type": "file", "mediaType": "image/png", "url": "data:,"}],
        },
    ),
    "unknown_trigger": {**chat_body("c1", user_msg("u1", "x")), "trigger": "resume-stream"},
    "parts_not_a_list": chat_body("c1", {"id": "u1", "role": "user", "parts": "x"}),
    "text_not_string": chat_body(
        "c1", {"id": "u1", "role": "user", "parts": [{"type": "text", "text": 5}]}
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_BODIES))
async def test_aisdk_bad_body_is_400_and_creates_nothing(client: Any, case: str) -> None:
    """Malformed requests get a JSON 400 and no session appears."""
    r = await client.post("/api/ai/chat", json=BAD_BODIES[case])
    assert r.status == 400, await r.text()
    assert "error" in await r.json()
    listing = await (await client.get("/api/sessions")).json()
    assert listing["items"] == []


async def test_aisdk_unknown_top_level_keys_are_ignored(client: Any) -> None:
    """Extra ``body`` keys of a template (here ``selectedChatModel``, ``data``) are ignored."""
    body = chat_body("c1", user_msg("u1", "hi"), selectedChatModel="x", data={"k": [1]})
    r = await client.post("/api/ai/chat", json=body)
    assert r.status == 200, await r.text()
    assert (await r.read()).endswith(b"data: [DONE]\n\n")
    assert [m["content"] for m in await messages_of(client, "c1")] == ["hi", "hi"]


# ------------------------------------------------------------------ with tokens (two users)

TOKENS = {"tok-a": "alice", "tok-b": "bob"}
A = {"Authorization": "Bearer tok-a"}
B = {"Authorization": "Bearer tok-b"}


async def tokens_client(make_client: Any, tmp_path: Path, **settings: Any) -> Any:
    """A server with two users: alice (tok-a) and bob (tok-b)."""
    path = tmp_path / "tokens.json"
    path.write_bytes(orjson.dumps(TOKENS))
    return await make_client(tokens_file=str(path), **settings)


async def chat_as(client: Any, headers: dict[str, str], body: dict[str, Any]) -> Any:
    r = await client.post("/api/ai/chat", json=body, headers=headers)
    await r.read()
    return r


async def state_of(client: Any, sid: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Alice's view of session ``sid``: the session and every message."""
    r = await client.get(f"/api/sessions/{sid}", headers=A)
    assert r.status == 200, await r.text()
    session = (await r.json())["session"]
    r = await client.get(f"/api/sessions/{sid}/messages?view=all&limit=100", headers=A)
    return session, (await r.json())["items"]


async def test_aisdk_first_use_creates_chat_owned_by_caller(
    make_client: Any, tmp_path: Path
) -> None:
    """A chat made by alice's first submit-message is hers: bob neither sees nor lists it."""
    client = await tokens_client(make_client, tmp_path, echo_words_per_second=0)
    r = await chat_as(client, A, chat_body("c1", user_msg("u1", "hi")))
    assert r.status == 200
    assert (await client.get("/api/sessions/c1", headers=A)).status == 200
    assert (await client.get("/api/sessions/c1", headers=B)).status == 404
    listing = await (await client.get("/api/sessions", headers=B)).json()
    assert listing["items"] == []


async def test_aisdk_submit_to_other_users_chat_is_404_and_changes_nothing(
    make_client: Any, tmp_path: Path
) -> None:
    """Bob's submit-message to alice's chat id is 404 and leaves her chat as it was."""
    client = await tokens_client(make_client, tmp_path, echo_words_per_second=0)
    await chat_as(client, A, chat_body("c1", user_msg("u1", "secret")))
    before = await state_of(client, "c1")
    r = await chat_as(client, B, chat_body("c1", user_msg("u9", "mine now")))
    assert r.status == 404
    error = (await r.json())["error"]
    assert error["code"] == "not_found"
    assert error["message"] == "session 'c1' not found"
    assert await state_of(client, "c1") == before
    assert (await (await client.get("/api/sessions", headers=B)).json())["items"] == []


async def test_aisdk_regenerate_in_other_users_chat_is_404_like_a_missing_one(
    make_client: Any, tmp_path: Path
) -> None:
    """Bob's regenerate-message in alice's chat answers what a missing chat answers."""
    client = await tokens_client(make_client, tmp_path, echo_words_per_second=0)
    await chat_as(client, A, chat_body("c1", user_msg("u1", "secret")))
    before = await state_of(client, "c1")

    async def regenerate(sid: str) -> tuple[int, Any]:
        body = {"id": sid, "messages": [user_msg("u1", "x")], "trigger": "regenerate-message"}
        r = await chat_as(client, B, body)
        return r.status, (await r.json())["error"]

    theirs = await regenerate("c1")
    missing = await regenerate("zz")
    assert theirs[0] == missing[0] == 404
    assert theirs[1]["message"].replace("c1", "zz") == missing[1]["message"]
    assert await state_of(client, "c1") == before


async def test_aisdk_resume_of_other_users_running_reply_is_204(
    make_client: Any, tmp_path: Path
) -> None:
    """While alice's reply runs, bob's GET .../stream is 204 (as for no reply); hers is 200."""
    client = await tokens_client(make_client, tmp_path, echo_words_per_second=20)
    r = await client.post("/api/ai/chat", json=chat_body("c1", user_msg("u1", WORDS)), headers=A)
    try:
        assert r.status == 200
        async with deadline("a text-delta line"):
            while b"text-delta" not in await asyncio.wait_for(r.content.readline(), TIMEOUT):
                pass  # the reply is running now
        theirs = await client.get("/api/ai/chat/c1/stream", headers=B)
        assert theirs.status == 204
        assert await theirs.read() == b""
        mine = await client.get("/api/ai/chat/c1/stream", headers=A)
        try:
            assert mine.status == 200
            first = await asyncio.wait_for(mine.content.readline(), TIMEOUT)
            assert orjson.loads(first.removeprefix(b"data: "))["type"] == "start"
        finally:
            mine.close()
    finally:
        r.close()


async def test_aisdk_without_token_is_401_and_creates_nothing(
    make_client: Any, tmp_path: Path
) -> None:
    """No token: POST and GET stream are 401; no chat appears."""
    client = await tokens_client(make_client, tmp_path)
    r = await client.post("/api/ai/chat", json=chat_body("c1", user_msg("u1", "hi")))
    assert r.status == 401
    assert (await client.get("/api/ai/chat/c1/stream")).status == 401
    assert (await client.get("/api/sessions/c1", headers=A)).status == 404


async def test_aisdk_chat_takes_from_the_session_rate_limit(
    make_client: Any, tmp_path: Path
) -> None:
    """The body's chat id counts against that session's bucket; other chats are spared."""
    client = await tokens_client(
        make_client,
        tmp_path,
        echo_words_per_second=0,
        rate_session_per_sec=0.01,
        rate_session_burst=2,
    )
    codes = [
        (await chat_as(client, A, chat_body("c1", user_msg(f"u{i}", f"m{i}")))).status
        for i in range(3)
    ]
    assert codes == [200, 200, 429]
    assert (await chat_as(client, A, chat_body("c2", user_msg("u1", "hi")))).status == 200


async def test_aisdk_sdk_sends_token_and_resumes_own_reply(
    make_client: Any, tmp_path: Path
) -> None:
    """The real SDK with alice's bearer header: send, drop, reconnect: the whole reply."""
    client = await tokens_client(make_client, tmp_path, echo_words_per_second=20)
    res = await drive(client, op="resume", chatId="c1", messages=[user_msg("u1", WORDS)], headers=A)
    assert res["reconnectNull"] is False
    assert res["text"] == WORDS
    assert [h["status"] for h in res["http"]] == [200, 200]
    _, items = await state_of(client, "c1")
    assert [m["role"] for m in items] == ["user", "assistant"]
