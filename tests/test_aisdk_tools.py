"""The tool loop through ``useChat``'s transport (issue 19): ``tests/aisdk/tools.mjs``
runs a Chat (what ``useChat`` runs) of the real ``ai`` package, newest 5.x, 6.x and
7.x, against the live server answering from a local OpenAI-compatible provider."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.conftest import TIMEOUT, new_session
from tests.test_aisdk import AISDK, _need_node
from tests.test_tools import PROMPT, WEATHER, Provider

PACKAGES = ["ai", "ai-6", "ai-7"]


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
    assert p.refused == []


async def _tools_run(client: Any, **req: Any) -> dict[str, Any]:
    node = _need_node()
    if not (AISDK / "node_modules" / req["pkg"]).is_dir():
        pytest.skip(f"{req['pkg']} is not installed: run `npm ci` in tests/aisdk")
    req["base"] = str(client.make_url("")).rstrip("/")
    proc = await asyncio.create_subprocess_exec(
        node,
        str(AISDK / "tools.mjs"),
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


async def _client(make_client: Any, provider: Provider, tool: dict[str, Any]) -> Any:
    client = await make_client(responder="openai", openai_base_url=provider.url, openai_model="m")
    await new_session(client, "c1")
    r = await client.patch(
        "/api/sessions/c1", json={"settings": {"system_prompt": PROMPT, "tools": [tool]}}
    )
    assert r.status == 200
    return client


def _text(message: dict[str, Any]) -> str:
    return "".join(p["text"] for p in message["parts"] if p["type"] == "text")


@pytest.mark.parametrize("pkg", PACKAGES)
async def test_aisdk_tool_round_trip_with_add_tool_result(
    make_client: Any, provider: Provider, pkg: str
) -> None:
    """useChat: the call arrives as a tool part, onToolCall adds its output, the chat
    sends it on its own and the continuation streams; Roost stored each step."""
    client = await _client(make_client, provider, WEATHER)
    res = await _tools_run(client, pkg=pkg, chatId="c1", text="weather?", approve=None)
    assert res["errors"] == [] and res["chatError"] is None, orjson.dumps(res).decode()
    assert res["toolCalls"] == ["call_1"]
    assert len(res["requests"]) == 2
    second = res["requests"][1]["body"]
    assert second["messages"][-1]["role"] == "assistant"
    last = res["messages"][-1]
    tool_part = next(p for p in last["parts"] if p.get("toolCallId") == "call_1")
    assert tool_part["type"] == "tool-get_weather" and tool_part["state"] == "output-available"
    assert _text(last).endswith("It is sunny.")
    r = await client.get("/api/sessions/c1/messages?view=all")
    items = (await r.json())["items"]
    assert [(m["role"], m["status"]) for m in items] == [
        ("user", "complete"),
        ("assistant", "complete"),
        ("tool", "complete"),
        ("assistant", "complete"),
    ]
    assert items[2]["tool_result"]["output"] == {"temp": 21}
    types = [c["type"] for c in res["chunks"][0]]
    assert "tool-input-available" in types and "tool-approval-request" not in types
    assert res["chunks"][0][-1]["messageMetadata"]["status"] == "awaiting_tool"


@pytest.mark.parametrize("pkg", ["ai-6", "ai-7"])
@pytest.mark.parametrize("approve", [True, False])
async def test_aisdk_tool_approval(
    make_client: Any, provider: Provider, pkg: str, approve: bool
) -> None:
    """ai 6 and 7: a call needing approval arrives with tool-approval-request;
    addToolApprovalResponse approves (the tool then runs and its output continues the
    turn) or denies (an error result is stored and the turn continues)."""
    client = await _client(make_client, provider, {**WEATHER, "needs_approval": True})
    res = await _tools_run(client, pkg=pkg, chatId="c1", text="weather?", approve=approve)
    assert res["errors"] == [] and res["chatError"] is None, orjson.dumps(res).decode()
    assert res["approvalRequested"] is True
    assert "tool-approval-request" in [c["type"] for c in res["chunks"][0]]
    assert _text(res["messages"][-1]).endswith("It is sunny.")
    r = await client.get("/api/sessions/c1/messages?view=all")
    items = (await r.json())["items"]
    tool = next(m for m in items if m["role"] == "tool")
    if approve:
        assert res["toolCalls"] == ["call_1"]
        assert tool["tool_result"] == {
            "tool_call_id": "call_1",
            "is_error": False,
            "output": {"temp": 21},
        }
    else:
        assert res["toolCalls"] == []
        assert tool["tool_result"]["is_error"] is True
        assert "denied" in tool["tool_result"]["error"]
    assert items[-1]["role"] == "assistant" and items[-1]["status"] == "complete"
