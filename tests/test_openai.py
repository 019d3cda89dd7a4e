"""The openai responder against a real local OpenAI-compatible server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.conftest import new_session
from tests.sse import SSEReader


def _chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "good-model",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + orjson.dumps(body) + b"\n\n"


@pytest.fixture
async def provider() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """A provider where `bad-model` answers 500, `good-model` streams text and a tool call,
    and `cut-model` breaks off mid-stream."""
    seen: list[dict[str, Any]] = []

    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        seen.append({"body": body, "auth": request.headers.get("Authorization")})
        model = body["model"]
        if model == "bad-model":
            return web.json_response({"error": {"message": "overloaded"}}, status=500)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(_chunk({"role": "assistant", "content": ""}))
        for piece in ["Let me ", "check the ", "weather."]:
            await resp.write(_chunk({"content": piece}))
        if model == "cut-model":
            assert request.transport is not None
            request.transport.close()
            return resp
        await resp.write(
            _chunk(
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": ""},
                        }
                    ]
                }
            )
        )
        for piece in ['{"city": ', '"Paris"}']:
            await resp.write(
                _chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
            )
        await resp.write(_chunk({}, finish="tool_calls"))
        await resp.write(b"data: [DONE]\n\n")
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    server = TestServer(app)
    await server.start_server()
    yield f"http://127.0.0.1:{server.port}/v1", seen
    await server.close()


async def _chat_json(client: Any, content: str) -> dict[str, Any]:
    r = await client.post(
        "/api/sessions/s1/chat", json={"content": content}, headers={"Accept": "application/json"}
    )
    assert r.status == 201, await r.text()
    data: dict[str, Any] = await r.json()
    return data


async def _fallback_chat(
    make_client: Any, provider: Any
) -> tuple[str, dict[str, Any], list[dict[str, Any]]]:
    """A chat where bad-model fails and good-model answers: (the deltas' text, the final
    message, the requests the provider saw)."""
    url, seen = provider
    client = await make_client(
        responder="openai",
        openai_base_url=url,
        openai_api_key="sk-test",
        openai_model="bad-model",
        openai_fallback_models="good-model",
    )
    await new_session(client)
    r = await client.post("/api/sessions/s1/chat", json={"content": "weather in Paris?"})
    events = await SSEReader(r).all()
    text = "".join(e.json()["text"] for e in events if e.event == "delta")
    final = next(e for e in events if e.event == "message").json()
    return text, final, seen


async def test_openai_fallback_streams_text_with_fallback_notice(
    make_client: Any, provider: Any
) -> None:
    """The first model fails, the fallback answers: its text, its ids, a fallback notice."""
    text, final, _ = await _fallback_chat(make_client, provider)
    assert text == final["content"] == "Let me check the weather."
    assert final["status"] == "complete"
    assert final["model_id"] == "good-model" and final["provider_id"] == "127.0.0.1"
    assert "bad-model" in final["fallback_notice"] and "good-model" in final["fallback_notice"]


async def test_openai_fallback_reply_keeps_tool_call_part(make_client: Any, provider: Any) -> None:
    """The fallback's streamed tool call is kept as a tool-call part after the text."""
    _, final, _ = await _fallback_chat(make_client, provider)
    assert final["parts"] == [
        {"type": "text", "text": "Let me check the weather."},
        {
            "type": "tool-call",
            "tool_call_id": "call_1",
            "tool_name": "get_weather",
            "args": {"city": "Paris"},
        },
    ]


async def test_openai_fallback_asks_each_model_in_turn(make_client: Any, provider: Any) -> None:
    """The provider is asked for bad-model then good-model, streamed, with the key and
    the session's history."""
    _, _, seen = await _fallback_chat(make_client, provider)
    # the chat's title request (after the first reply, issue 23) may come in too
    seen = [s for s in seen if not s["body"]["messages"][0]["content"].startswith("Write a title")]
    assert [s["body"]["model"] for s in seen] == ["bad-model", "good-model"]
    assert seen[-1]["auth"] == "Bearer sk-test"
    assert seen[-1]["body"]["stream"] is True
    assert seen[-1]["body"]["messages"] == [{"role": "user", "content": "weather in Paris?"}]


async def test_openai_sends_active_history(make_client: Any, provider: Any) -> None:
    """The provider gets the reply's ancestors, oldest first."""
    url, seen = provider
    client = await make_client(responder="openai", openai_base_url=url, openai_model="good-model")
    await new_session(client)
    await _chat_json(client, "first")
    await _chat_json(client, "second")
    # the first reply's tool call had no result (the session declares no tools): it is
    # sent with an error result, never as an orphan (issue 19)
    assert seen[-1]["body"]["messages"] == [
        {"role": "user", "content": "first"},
        {
            "role": "assistant",
            "content": "Let me check the weather.",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {
            "role": "tool",
            "tool_call_id": "call_1",
            "content": "Error: no result was given for this call",
        },
        {"role": "user", "content": "second"},
    ]


async def test_openai_every_model_failing_is_an_error(make_client: Any, provider: Any) -> None:
    """When every model fails the reply ends with status error and an error event."""
    url, _ = provider
    client = await make_client(responder="openai", openai_base_url=url, openai_model="bad-model")
    await new_session(client)
    r = await client.post("/api/sessions/s1/chat", json={"content": "hello"})
    events = await SSEReader(r).all()
    names = [e.event for e in events]
    assert names[-3:] == ["error", "message", "done"]
    err = events[-3].json()
    assert err["code"] == "provider_error" and "HTTP 500" in err["message"]
    final = events[-2].json()
    assert final["status"] == "error" and final["error"]["code"] == "provider_error"


async def test_openai_stream_cut_midway_keeps_text_as_error(
    make_client: Any, provider: Any
) -> None:
    """A provider that breaks off mid-reply: status error, the text so far kept."""
    url, _ = provider
    client = await make_client(
        responder="openai",
        openai_base_url=url,
        openai_model="cut-model",
        openai_fallback_models="good-model",
    )
    await new_session(client)
    body = await _chat_json(client, "hello")
    final = body["assistant_message"]
    assert final["status"] == "error"
    assert "Let me check the weather.".startswith(final["content"]) and final["content"]
