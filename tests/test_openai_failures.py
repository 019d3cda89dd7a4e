"""How the openai responder meets slow, silent, refusing and broken providers.

Each provider is a real aiohttp server on a real socket speaking the OpenAI
streaming format; Roost talks to it through its real HTTP client.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pydantic import ValidationError

from server.openai import parse_retry_after
from server.settings import Settings, settings_from
from tests.conftest import free_port, new_session

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def chunk(text: str) -> bytes:
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
    }
    return b"data: " + orjson.dumps(body) + b"\n\n"


async def start_stream(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    return resp


@pytest.fixture
async def provider() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    """Factory: ``await provider(handler)`` → the base URL of a provider answering with it."""
    servers: list[TestServer] = []

    async def start(handler: Handler) -> str:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", handler)
        server = TestServer(app)
        await server.start_server()
        servers.append(server)
        return f"http://127.0.0.1:{server.port}/v1"

    yield start
    for s in servers:
        await s.close()


async def reply(make_client: Any, url: str, **settings: Any) -> dict[str, Any]:
    """The finished assistant message of one chat turn against ``url``."""
    client = await make_client(
        responder="openai", openai_base_url=url, openai_model="m", **settings
    )
    await new_session(client)
    r = await client.post(
        "/api/sessions/s1/chat", json={"content": "hi"}, headers={"Accept": "application/json"}
    )
    assert r.status == 201, await r.text()
    message: dict[str, Any] = (await r.json())["assistant_message"]
    return message


async def test_openai_long_stream_without_long_pause_completes(
    make_client: Any, provider: Any
) -> None:
    """A reply streaming for longer than the idle timeout, never pausing that long, completes."""

    async def slow(request: web.Request) -> web.StreamResponse:
        resp = await start_stream(request)
        for i in range(12):
            await asyncio.sleep(0.1)  # the provider's pace, not a synchronisation
            await resp.write(chunk(f"w{i} "))
        await resp.write(b"data: [DONE]\n\n")
        return resp

    url = await provider(slow)
    final = await reply(make_client, url, openai_idle_timeout=0.5)
    assert final["status"] == "complete", final
    assert final["content"] == "".join(f"w{i} " for i in range(12))


async def test_openai_pause_longer_than_idle_timeout_is_provider_timeout(
    make_client: Any, provider: Any
) -> None:
    """A provider that goes silent mid-reply: provider_timeout, the text so far kept."""
    never = asyncio.Event()

    async def stalls(request: web.Request) -> web.StreamResponse:
        resp = await start_stream(request)
        await resp.write(chunk("partial"))
        await never.wait()
        return resp

    url = await provider(stalls)
    final = await reply(make_client, url, openai_idle_timeout=0.3)
    assert final["status"] == "error"
    assert final["error"]["code"] == "provider_timeout"
    assert final["content"] == "partial"
    never.set()


async def test_openai_whole_reply_cap_is_provider_timeout(make_client: Any, provider: Any) -> None:
    """A reply that never ends is cut at --openai-reply-timeout with provider_timeout."""

    async def endless(request: web.Request) -> web.StreamResponse:
        resp = await start_stream(request)
        while True:
            await resp.write(chunk("more "))
            await asyncio.sleep(0.05)  # the provider's pace

    url = await provider(endless)
    final = await reply(make_client, url, openai_reply_timeout=0.5)
    assert final["status"] == "error"
    assert final["error"]["code"] == "provider_timeout"
    assert "reply-timeout" in final["error"]["message"]


async def test_openai_connection_refused_is_provider_unreachable(
    make_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Nothing listening: provider_unreachable in a short sentence; the repr only in the log."""
    port = free_port()
    with caplog.at_level(logging.WARNING, logger="roost.openai"):
        final = await reply(make_client, f"http://127.0.0.1:{port}/v1")
    err = final["error"]
    assert err["code"] == "provider_unreachable"
    assert err["message"] == f"m: cannot reach the provider at 127.0.0.1:{port}"
    assert "ClientConnectorError" in caplog.text


async def test_openai_401_is_provider_auth(make_client: Any, provider: Any) -> None:
    """A refused key: provider_auth, naming where the key comes from; no retry."""
    calls = 0

    async def refuses(request: web.Request) -> web.StreamResponse:
        nonlocal calls
        calls += 1
        return web.json_response({"error": {"message": "Incorrect API key"}}, status=401)

    url = await provider(refuses)
    final = await reply(make_client, url, openai_api_key="sk-wrong")
    assert final["error"]["code"] == "provider_auth"
    assert "Incorrect API key" in final["error"]["message"]
    assert "OPENAI_API_KEY" in final["error"]["message"]
    assert calls == 1


async def test_openai_429_then_success_completes(make_client: Any, provider: Any) -> None:
    """A 429 with Retry-After is retried after that wait, and the retry answers."""
    calls = 0

    async def busy_once(request: web.Request) -> web.StreamResponse:
        nonlocal calls
        calls += 1
        if calls == 1:
            return web.json_response(
                {"error": {"message": "slow down"}}, status=429, headers={"Retry-After": "0"}
            )
        resp = await start_stream(request)
        await resp.write(chunk("hello"))
        await resp.write(b"data: [DONE]\n\n")
        return resp

    url = await provider(busy_once)
    final = await reply(make_client, url)
    assert final["status"] == "complete" and final["content"] == "hello"
    assert calls == 2


async def test_openai_429_with_long_retry_after_is_provider_rate_limited(
    make_client: Any, provider: Any
) -> None:
    """A Retry-After too long to wait for fails at once with the provider's hint."""
    calls = 0

    async def busy(request: web.Request) -> web.StreamResponse:
        nonlocal calls
        calls += 1
        return web.json_response({}, status=429, headers={"Retry-After": "120"})

    url = await provider(busy)
    final = await reply(make_client, url)
    assert final["error"]["code"] == "provider_rate_limited"
    assert "retry in 120 s" in final["error"]["message"]
    assert calls == 1


async def test_openai_5xx_is_retried_then_answers(make_client: Any, provider: Any) -> None:
    """A 503 before the first byte is retried with backoff."""
    calls = 0

    async def flaky(request: web.Request) -> web.StreamResponse:
        nonlocal calls
        calls += 1
        if calls == 1:
            return web.Response(status=503, text="upstream down")
        resp = await start_stream(request)
        await resp.write(chunk("back"))
        await resp.write(b"data: [DONE]\n\n")
        return resp

    url = await provider(flaky)
    final = await reply(make_client, url)
    assert final["status"] == "complete" and final["content"] == "back"
    assert calls == 2


async def test_openai_bad_json_is_provider_bad_response(make_client: Any, provider: Any) -> None:
    """An event stream whose data is not JSON: provider_bad_response, no JSONDecodeError."""

    async def garbage(request: web.Request) -> web.StreamResponse:
        resp = await start_stream(request)
        await resp.write(b"data: {not json\n\n")
        return resp

    url = await provider(garbage)
    final = await reply(make_client, url)
    assert final["error"]["code"] == "provider_bad_response"
    assert "JSONDecodeError" not in final["error"]["message"]


@pytest.mark.parametrize("url", ["127.0.0.1:9911/v1", "ftp://host/v1", "http:///v1", "http://h:x"])
def test_settings_bad_openai_base_url_is_refused(url: str) -> None:
    """--openai-base-url needs http(s) and a host."""
    with pytest.raises(ValidationError, match="openai_base_url"):
        Settings(openai_base_url=url)


def test_settings_openai_api_key_from_openai_api_key_variable() -> None:
    """OPENAI_API_KEY is read when neither the flag nor ROOST_OPENAI_API_KEY is given."""
    assert settings_from({}, {"OPENAI_API_KEY": "sk-env"}).openai_api_key == "sk-env"
    both = {"OPENAI_API_KEY": "sk-env", "ROOST_OPENAI_API_KEY": "sk-roost"}
    assert settings_from({}, both).openai_api_key == "sk-roost"
    assert settings_from({"openai_api_key": "sk-flag"}, both).openai_api_key == "sk-flag"


def test_settings_openai_timeout_is_the_idle_timeout() -> None:
    """The old --openai-timeout sets the idle timeout, not a cap on the whole reply."""
    s = Settings(openai_timeout=5)
    assert s.openai_idle_timeout == 5 and s.openai_reply_timeout == 600


def test_parse_retry_after_forms() -> None:
    """Retry-After as seconds or as an HTTP date; garbage is no hint."""
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == 10.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
