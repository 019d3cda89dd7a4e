"""The durable tool loop (issue 19) against a local OpenAI-compatible provider: a real
HTTP server in the test that records the exact request bodies and, like the real
providers, answers 400 to a request with an orphan tool call or result."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.conftest import TIMEOUT, new_session

WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
PROMPT = "You are a weather bot."


def orphan(messages: list[dict[str, Any]]) -> str | None:
    """Why ``messages`` has an orphan (what OpenAI refuses with 400), or None."""
    open_ids: list[str] = []
    for m in messages:
        if m["role"] == "tool":
            if m.get("tool_call_id") not in open_ids:
                return f"tool message {m.get('tool_call_id')!r} answers no open call"
            open_ids.remove(m["tool_call_id"])
            continue
        if open_ids:
            return f"calls {open_ids} have no tool message before a {m['role']} message"
        if m["role"] == "assistant":
            open_ids = [c["id"] for c in m.get("tool_calls") or []]
    if open_ids:
        return f"calls {open_ids} have no tool message"
    return None


def _chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    body = {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + orjson.dumps(body) + b"\n\n"


class Provider:
    """The local provider: a user message asks for get_weather (call_1; two calls,
    call_1 and call_2, when it says "both"); after tool messages it answers text."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.refused: list[str] = []
        self.url = ""

    def chats(self) -> list[dict[str, Any]]:
        """The requests of replies (the title request after a first reply left out)."""
        return [
            b
            for b in self.seen
            if not str(b["messages"][-1].get("content") or "").startswith("Write a title")
        ]

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.seen.append(body)
        why = orphan(body["messages"])
        if why is not None:
            self.refused.append(why)
            return web.json_response({"error": {"message": why}}, status=400)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        last = body["messages"][-1]
        if last["role"] == "user" and "weather" in last["content"] and body.get("tools"):
            await resp.write(_chunk({"role": "assistant", "content": "Checking. "}))
            n = 2 if "both" in last["content"] else 1
            for i in range(n):
                call = {
                    "index": i,
                    "id": f"call_{i + 1}",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": f'{{"city": "C{i + 1}"}}'},
                }
                await resp.write(_chunk({"tool_calls": [call]}))
            await resp.write(_chunk({}, finish="tool_calls"))
        elif last["role"] == "tool":
            await resp.write(_chunk({"content": "It is sunny."}))
            await resp.write(_chunk({}, finish="stop"))
        else:
            await resp.write(_chunk({"content": "Title"}))
            await resp.write(_chunk({}, finish="stop"))
        await resp.write(b"data: [DONE]\n\n")
        return resp


@pytest.fixture
async def provider() -> AsyncIterator[Provider]:
    p = Provider()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", p.completions)
    server = TestServer(app)
    await server.start_server()
    p.url = f"http://127.0.0.1:{server.port}/v1"
    yield p
    await server.close()
    assert p.refused == []  # no request Roost sent had an orphan


async def until(pred: Any, what: str, timeout: float = TIMEOUT) -> Any:
    """Wait until the coroutine function ``pred`` answers truthy; return that."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not (out := await pred()):
        if loop.time() > end:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)
    return out


async def _setup(make_client: Any, provider: Provider, tool: dict[str, Any], **kw: Any) -> Any:
    client = await make_client(
        responder="openai", openai_base_url=provider.url, openai_model="m", **kw
    )
    await new_session(client)
    r = await client.patch(
        "/api/sessions/s1",
        json={"settings": {"system_prompt": PROMPT, "temperature": 0.5, "tools": [tool]}},
    )
    assert r.status == 200, await r.text()
    return client


async def _chat(client: Any, content: str) -> dict[str, Any]:
    r = await client.post(
        "/api/sessions/s1/chat", json={"content": content}, headers={"Accept": "application/json"}
    )
    assert r.status == 201, await r.text()
    msg: dict[str, Any] = (await r.json())["assistant_message"]
    return msg


async def _message(client: Any, mid: str) -> dict[str, Any]:
    r = await client.get(f"/api/sessions/s1/messages/{mid}")
    assert r.status == 200
    msg: dict[str, Any] = await r.json()
    return msg


async def _result(client: Any, mid: str, **body: Any) -> tuple[int, dict[str, Any]]:
    r = await client.post(f"/api/sessions/s1/messages/{mid}/tool-results", json=body)
    return r.status, await r.json()


async def _done(client: Any, mid: str) -> dict[str, Any]:
    async def ended() -> dict[str, Any] | None:
        msg = await _message(client, mid)
        return msg if msg["status"] not in ("pending", "streaming") else None

    out: dict[str, Any] = await until(ended, f"reply {mid} ended")
    return out


async def _messages(client: Any) -> list[dict[str, Any]]:
    r = await client.get("/api/sessions/s1/messages?limit=200&view=all")
    items: list[dict[str, Any]] = (await r.json())["items"]
    return items


async def test_tool_round_trip_sends_calls_then_results(make_client: Any, provider: Any) -> None:
    """The reply that called a tool waits (`awaiting_tool`); its result continues the
    turn; the provider got the system prompt and tools, then the assistant turn with
    tool_calls followed by its tool message, exactly."""
    client = await _setup(make_client, provider, WEATHER)
    a1 = await _chat(client, "weather in Paris?")
    assert a1["status"] == "awaiting_tool"
    assert a1["parts"][-1] == {
        "type": "tool-call",
        "tool_call_id": "call_1",
        "tool_name": "get_weather",
        "args": {"city": "C1"},
    }
    status, body = await _result(client, a1["id"], tool_call_id="call_1", output={"temp": 21})
    assert status == 201, body
    assert body["tool_message"]["role"] == "tool"
    cont = body["continuation"]
    assert cont["status"] == "pending" and cont["parent_id"] == body["tool_message"]["id"]
    final = await _done(client, cont["id"])
    assert final["status"] == "complete" and final["content"] == "It is sunny."
    assert (await _message(client, a1["id"]))["status"] == "complete"
    first, second = provider.chats()
    assert first == {
        "model": "m",
        "messages": [
            {"role": "system", "content": PROMPT},
            {"role": "user", "content": "weather in Paris?"},
        ],
        "stream": True,
        "stream_options": {"include_usage": True},  # issue 21: usage is asked for
        "tools": [{"type": "function", "function": WEATHER}],
        "temperature": 0.5,
    }
    assert second["messages"] == [
        {"role": "system", "content": PROMPT},
        {"role": "user", "content": "weather in Paris?"},
        {
            "role": "assistant",
            "content": "Checking. ",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"C1"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp":21}'},
    ]


async def test_provider_refuses_an_orphan(provider: Any) -> None:
    """The test provider answers 400 to an orphan, as real providers do (so the
    assertion that Roost never sends one can fail)."""
    async with aiohttp.ClientSession() as http:
        for messages in (
            [
                {"role": "user", "content": "x"},
                {"role": "tool", "tool_call_id": "call_9", "content": "1"},
            ],
            [
                {"role": "user", "content": "x"},
                {"role": "assistant", "content": None, "tool_calls": [{"id": "c"}]},
                {"role": "user", "content": "y"},
            ],
        ):
            async with http.post(
                f"{provider.url}/chat/completions", json={"model": "m", "messages": messages}
            ) as r:
                assert r.status == 400
    assert len(provider.refused) == 2
    provider.refused.clear()


async def test_two_calls_continue_after_the_last_result(make_client: Any, provider: Any) -> None:
    """With two calls the turn waits for both; then one tool message per call id."""
    client = await _setup(make_client, provider, WEATHER)
    a1 = await _chat(client, "weather in both cities?")
    status, body = await _result(client, a1["id"], tool_call_id="call_2", output="rain")
    assert status == 201 and body["continuation"] is None
    assert (await _message(client, a1["id"]))["status"] == "awaiting_tool"
    status, body = await _result(client, a1["id"], tool_call_id="call_1", error="no network")
    assert status == 201 and body["continuation"] is not None
    await _done(client, body["continuation"]["id"])
    tail = provider.chats()[-1]["messages"][-3:]
    assert [m["role"] for m in tail] == ["assistant", "tool", "tool"]
    assert [c["id"] for c in tail[0]["tool_calls"]] == ["call_1", "call_2"]
    assert tail[1] == {"role": "tool", "tool_call_id": "call_1", "content": "Error: no network"}
    assert tail[2] == {"role": "tool", "tool_call_id": "call_2", "content": "rain"}


async def test_tool_result_sent_twice_is_stored_once(make_client: Any, provider: Any) -> None:
    """A repeated result answers 200 with the stored message and starts nothing."""
    client = await _setup(make_client, provider, WEATHER)
    a1 = await _chat(client, "weather in both places")
    s1, b1 = await _result(client, a1["id"], tool_call_id="call_1", output=1)
    s2, b2 = await _result(client, a1["id"], tool_call_id="call_1", output=2)
    assert (s1, s2) == (201, 200)
    assert b2["tool_message"]["id"] == b1["tool_message"]["id"] and b2["continuation"] is None
    tools = [m for m in await _messages(client) if m["role"] == "tool"]
    assert len(tools) == 1 and tools[0]["content"] == "1"


async def test_result_for_unknown_call_is_404_and_changes_nothing(
    make_client: Any, provider: Any
) -> None:
    """A result naming a call the reply did not make: 404, nothing stored."""
    client = await _setup(make_client, provider, WEATHER)
    a1 = await _chat(client, "weather?")
    before = await _messages(client)
    status, body = await _result(client, a1["id"], tool_call_id="call_77", output=1)
    assert status == 404 and body["error"]["details"]["tool_call_id"] == "call_77"
    assert await _messages(client) == before


@pytest.mark.parametrize(
    "body",
    [{"tool_call_id": "call_1"}, {"tool_call_id": "call_1", "output": 1, "error": "x"}, {}],
)
async def test_bad_tool_result_is_400(make_client: Any, provider: Any, body: Any) -> None:
    """Exactly one of output or error, and a call id."""
    client = await _setup(make_client, provider, WEATHER)
    a1 = await _chat(client, "weather?")
    status, _ = await _result(client, a1["id"], **body)
    assert status == 400


async def test_approval_granted_then_result_continues(make_client: Any, provider: Any) -> None:
    """A tool needing approval: `awaiting_approval`; a result before the approval is
    409; approved, it waits for its result (`awaiting_tool`), which continues the turn."""
    client = await _setup(make_client, provider, {**WEATHER, "needs_approval": True})
    a1 = await _chat(client, "weather?")
    assert a1["status"] == "awaiting_approval"
    assert a1["parts"][-1]["needs_approval"] is True
    status, _ = await _result(client, a1["id"], tool_call_id="call_1", output=1)
    assert status == 409
    r = await client.post(
        f"/api/sessions/s1/messages/{a1['id']}/tool-approvals",
        json={"tool_call_id": "call_1", "approved": True},
    )
    assert r.status == 200
    body = await r.json()
    assert body["assistant_message"]["status"] == "awaiting_tool"
    assert body["continuation"] is None and body["tool_message"] is None
    status, res = await _result(client, a1["id"], tool_call_id="call_1", output="sun")
    assert status == 201
    final = await _done(client, res["continuation"]["id"])
    assert final["content"] == "It is sunny."
    assert provider.chats()[-1]["messages"][-1] == {
        "role": "tool",
        "tool_call_id": "call_1",
        "content": "sun",
    }


async def test_approval_denied_stores_error_result_and_continues(
    make_client: Any, provider: Any
) -> None:
    """A denial stores an error result at once, so the history stays valid, and the
    turn continues."""
    client = await _setup(make_client, provider, {**WEATHER, "needs_approval": True})
    a1 = await _chat(client, "weather?")
    r = await client.post(
        f"/api/sessions/s1/messages/{a1['id']}/tool-approvals",
        json={"tool_call_id": "call_1", "approved": False, "reason": "not now"},
    )
    assert r.status == 200
    body = await r.json()
    assert body["tool_message"]["tool_result"]["is_error"] is True
    assert body["assistant_message"]["parts"][-1]["approved"] is False
    await _done(client, body["continuation"]["id"])
    assert provider.chats()[-1]["messages"][-1] == {
        "role": "tool",
        "tool_call_id": "call_1",
        "content": "Error: the user denied this call: not now",
    }
    r = await client.post(
        f"/api/sessions/s1/messages/{a1['id']}/tool-approvals",
        json={"tool_call_id": "call_1", "approved": True},
    )
    assert r.status == 409


async def test_cancel_while_awaiting_writes_error_results(make_client: Any, provider: Any) -> None:
    """Cancel while a call waits: `cancelled`, an error result for the open call, and
    the next turn's request has no orphan."""
    client = await _setup(make_client, provider, WEATHER)
    a1 = await _chat(client, "weather?")
    r = await client.post(f"/api/sessions/s1/messages/{a1['id']}/cancel")
    assert r.status == 200 and (await r.json())["status"] == "cancelled"
    tools = [m for m in await _messages(client) if m["role"] == "tool"]
    assert len(tools) == 1 and tools[0]["tool_result"]["is_error"] is True
    status, _ = await _result(client, a1["id"], tool_call_id="call_1", output=1)
    assert status == 200  # the call has its (error) result already
    a2 = await _chat(client, "thanks")
    assert a2["status"] == "complete"
    assert provider.chats()[-1]["messages"][-3:] == [
        provider.chats()[-1]["messages"][-3],
        {"role": "tool", "tool_call_id": "call_1", "content": "Error: the reply was cancelled"},
        {"role": "user", "content": "thanks"},
    ]


async def test_tool_timeout_writes_error_result_and_continues(
    make_client: Any, provider: Any
) -> None:
    """--tool-timeout: an unanswered call gets an error result and the turn goes on."""
    client = await _setup(make_client, provider, WEATHER, tool_timeout=0.3)
    a1 = await _chat(client, "weather?")

    async def continued() -> list[dict[str, Any]] | None:
        items = await _messages(client)
        return items if len(items) == 4 and items[-1]["status"] == "complete" else None

    items = await until(continued, "the continuation after the timeout")
    assert [m["role"] for m in items] == ["user", "assistant", "tool", "assistant"]
    tool = next(m for m in items if m["role"] == "tool")
    assert "tool-timeout" in tool["content"]
    assert (await _message(client, a1["id"]))["status"] == "complete"


async def test_chat_while_awaiting_tool_is_queued(make_client: Any, provider: Any) -> None:
    """A reply waiting for a tool keeps the session busy: a chat is queued, and runs
    after the tool loop's reply ends."""
    client = await _setup(make_client, provider, WEATHER)
    a1 = await _chat(client, "weather?")
    r = await client.post(
        "/api/sessions/s1/chat", json={"content": "and?"}, headers={"Accept": "application/json"}
    )
    assert r.status == 202
    _, body = await _result(client, a1["id"], tool_call_id="call_1", output="ok")
    await _done(client, body["continuation"]["id"])

    async def answered() -> bool:
        items = await _messages(client)
        return (
            items[-1]["role"] == "assistant"
            and items[-1]["status"] == "complete"
            and any(m["content"] == "and?" and m["status"] == "complete" for m in items)
        )

    await until(answered, "the queued turn answered")


async def test_crash_while_awaiting_writes_error_results(
    server_process: Any, provider: Any
) -> None:
    """kill -9 while a call waits: after the restart the reply is `interrupted` and the
    open call has an error result, so the session has no orphan."""
    env = {
        "ROOST_RESPONDER": "openai",
        "ROOST_OPENAI_BASE_URL": provider.url,
        "ROOST_OPENAI_MODEL": "m",
        "ROOST_OPENAI_API_KEY": "sk-test",
    }
    srv = server_process(env=env)
    await srv.wait_ready()
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{srv.url}/api/sessions", json={"id": "s1"}) as r:
            assert r.status == 201
        async with http.patch(
            f"{srv.url}/api/sessions/s1", json={"settings": {"tools": [WEATHER]}}
        ) as r:
            assert r.status == 200
        async with http.post(
            f"{srv.url}/api/sessions/s1/chat",
            json={"content": "weather?"},
            headers={"Accept": "application/json"},
        ) as r:
            a1 = (await r.json())["assistant_message"]
    assert a1["status"] == "awaiting_tool"
    srv.kill9()
    srv2 = server_process(env=env)
    await srv2.wait_ready()
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{srv2.url}/api/sessions/s1/messages?view=all") as r:
            items = (await r.json())["items"]
    assert [(m["role"], m["status"]) for m in items] == [
        ("user", "complete"),
        ("assistant", "interrupted"),
        ("tool", "complete"),
    ]
    assert items[2]["tool_result"] == {
        "tool_call_id": "call_1",
        "is_error": True,
        "error": "the server restarted while this call waited",
    }
