"""A local OpenAI-compatible ``/v1/chat/completions`` server with a small context.

It counts a request's tokens its own way (:func:`count_tokens`: every word or
symbol costs ``ceil(len / 3)`` tokens, plus 4 per message and 3 for the reply:
about 1.8 times Roost's estimate on English words, like a real tokenizer
Roost does not know), answers **400** ``context_length_exceeded`` when a
request is over ``context`` tokens, and otherwise streams a short reply and a
final ``usage`` chunk with its counts. Everything it saw is in ``requests``.
"""

from __future__ import annotations

import math
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from aiohttp.test_utils import TestServer

_PIECES = re.compile(r"\w+|[^\w\s]")


def count_tokens(messages: list[dict[str, Any]]) -> int:
    """The fake tokenizer's count of a request's ``messages``."""
    total = 3
    for m in messages:
        text = m.get("content") or ""
        for call in m.get("tool_calls") or []:
            text += " " + call["function"]["name"] + " " + call["function"]["arguments"]
        total += 4 + sum(math.ceil(len(p) / 3) for p in _PIECES.findall(text))
    return total


@dataclass
class FakeProvider:
    """The server's state: its context size, what it saw, how often it refused."""

    context: int
    requests: list[dict[str, Any]] = field(default_factory=list)
    refused: int = 0
    url: str = ""

    def _chunk(self, delta: dict[str, Any] | None, usage: dict[str, Any] | None = None) -> bytes:
        body: dict[str, Any] = {"id": "c1", "object": "chat.completion.chunk", "model": "small"}
        body["choices"] = [] if delta is None else [{"index": 0, "delta": delta}]
        if usage is not None:
            body["usage"] = usage
        return b"data: " + orjson.dumps(body) + b"\n\n"

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        prompt = count_tokens(body["messages"])
        self.requests.append({"body": body, "prompt_tokens": prompt})
        if prompt > self.context:
            self.refused += 1
            message = (
                f"This model's maximum context length is {self.context} tokens. However, "
                f"your messages resulted in {prompt} tokens."
            )
            return web.json_response(
                {"error": {"message": message, "code": "context_length_exceeded"}}, status=400
            )
        last = body["messages"][-1].get("content") or ""
        words = last.split()
        if body["messages"][0].get("content", "").startswith("You compact a long chat"):
            text = "Summary: " + " ".join(words[:20])
        else:
            text = "Noted: " + " ".join(words[:6])
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(self._chunk({"role": "assistant", "content": ""}))
        for piece in text.split(" "):
            await resp.write(self._chunk({"content": piece + " "}))
        completion = count_tokens([{"content": text}]) - 7
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": prompt // 2},
            "completion_tokens_details": {"reasoning_tokens": 1},
        }
        if body.get("stream_options", {}).get("include_usage"):
            await resp.write(self._chunk(None, usage))
        await resp.write(b"data: [DONE]\n\n")
        return resp


async def fake_provider(context: int) -> AsyncIterator[FakeProvider]:
    """Run a :class:`FakeProvider` on a free loopback port while the generator lives."""
    state = FakeProvider(context)
    app = web.Application()
    app.router.add_post("/v1/chat/completions", state.completions)
    server = TestServer(app)
    await server.start_server()
    state.url = f"http://127.0.0.1:{server.port}/v1"
    try:
        yield state
    finally:
        await server.close()
