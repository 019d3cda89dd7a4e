"""A long chat against a local provider that enforces a small context (issue 21)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from server.openai import drop_oldest
from tests.conftest import new_session, registry_of
from tests.fake_provider import FakeProvider, fake_provider


@pytest.fixture
async def small() -> AsyncIterator[FakeProvider]:
    async for p in fake_provider(400):
        yield p


async def _chat(client: Any, content: str) -> dict[str, Any]:
    r = await client.post(
        "/api/sessions/s1/chat", json={"content": content}, headers={"Accept": "application/json"}
    )
    assert r.status == 201, await r.text()
    reply: dict[str, Any] = (await r.json())["assistant_message"]
    return reply


async def test_long_chat_keeps_working_within_a_small_context(
    make_client: Any, small: FakeProvider
) -> None:
    """30 exchanges against a 400-token model: every reply completes, the budget
    learns the provider's count, summaries cover the start, usage is stored."""
    client = await make_client(
        responder="openai",
        openai_base_url=small.url,
        openai_model="small",
        model_context='{"small": 400}',
        compact_at=0.5,
    )
    await new_session(client)
    refused_at: list[int] = []
    for i in range(30):
        before = small.refused
        reply = await _chat(client, f"turn {i}: please remember the number {i * 7} " * 3)
        actor = registry_of(client).actor_if_live("s1")
        assert actor is not None
        await actor.compactor.wait_idle()
        r = await client.get(f"/api/sessions/s1/messages/{reply['id']}")
        msg = await r.json()
        assert msg["status"] == "complete", msg
        assert msg["usage"]["source"] == "provider"
        assert msg["usage"]["cached_tokens"] is not None and msg["usage"]["reasoning_tokens"] == 1
        if small.refused > before:
            refused_at.append(i)
    # after the first replies the calibration holds the provider's count: no more 400s
    assert all(i < 5 for i in refused_at), refused_at
    assert msg["context"]["calibration"] > 1.3
    ctx = await (await client.get("/api/sessions/s1/context")).json()
    assert ctx["summary_ids"], ctx
    assert ctx["corrected_tokens"] <= ctx["budget"]
    ok = [q["prompt_tokens"] for q in small.requests if q["prompt_tokens"] <= 400]
    assert len(ok) >= 30
    text = await (await client.get("/metrics")).text()
    assert 'roost_tokens_total{kind="prompt",model="small"}' in text
    assert 'roost_tokens_total{kind="cached",model="small"}' in text


async def test_context_overflow_400_is_retried_with_the_oldest_half_dropped(
    make_client: Any, small: FakeProvider
) -> None:
    """Before any usage is known the estimate may be short of the provider's count:
    its 400 is retried with less history, and the reply completes."""
    client = await make_client(
        responder="openai",
        openai_base_url=small.url,
        openai_model="small",
        model_context='{"small": 400}',
        compact_at=0,
    )
    await new_session(client)
    for i in range(30):
        r = await client.post(
            "/api/sessions/s1/messages",
            json={"role": "user", "content": f"note {i} about lorem ipsum dolor sit amet"},
        )
        assert r.status == 201
    reply = await _chat(client, "and the question")
    msg = await (await client.get(f"/api/sessions/s1/messages/{reply['id']}")).json()
    assert msg["status"] == "complete" and small.refused == 1
    asked = [
        q for q in small.requests if q["body"]["messages"][-1]["content"] == "and the question"
    ]
    assert [q["prompt_tokens"] > 400 for q in asked] == [True, False]
    sent = asked[-1]["body"]["messages"]
    assert len(sent) < msg["context"]["message_count"]
    assert msg["usage"]["prompt_tokens"] == asked[-1]["prompt_tokens"] <= 400


def test_drop_oldest_keeps_system_and_never_starts_with_a_tool_result() -> None:
    """The overflow retry drops the oldest half, never leaving an orphan tool message."""
    msgs: list[dict[str, Any]] = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "u1"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "a"}]},
        {"role": "tool", "tool_call_id": "a", "content": "r"},
        {"role": "tool", "tool_call_id": "b", "content": "r"},
        {"role": "user", "content": "u2"},
    ]
    out = drop_oldest(msgs)
    assert out is not None and out[0]["role"] == "system" and out[1]["role"] != "tool"
    assert out[-1] == msgs[-1]
    assert (
        drop_oldest([{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]) is None
    )
