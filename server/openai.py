"""The ``openai`` responder: any OpenAI-compatible ``/chat/completions`` stream.

Models are tried in order (the requested one, then the fallbacks) until one
answers; a fallback is taken only if the failing model produced nothing yet,
and the reply then records a ``fallback_notice``. Tool calls streamed by the
provider are assembled and yielded as ``tool-call`` parts.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from actors.responders import Delta, ReplyInfo, ResponderError


class _ModelFailed(Exception):
    """A model failed before producing any output: the next one may be tried."""


def to_openai_messages(history: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The chat history in the provider's shape (finished text only)."""
    out: list[dict[str, Any]] = []
    for m in history:
        if m["role"] == "tool":
            call = m.get("tool_result") or m.get("tool_call") or {}
            call_id = call.get("tool_call_id") if isinstance(call, dict) else None
            if call_id:
                out.append({"role": "tool", "tool_call_id": call_id, "content": m["content"]})
            continue
        if m["role"] == "assistant" and not m["content"]:
            continue
        out.append({"role": m["role"], "content": m["content"]})
    return out


class OpenAIResponder:
    """Streams from ``{base_url}/chat/completions`` with ``stream: true``."""

    name = "openai"

    def __init__(
        self,
        http: aiohttp.ClientSession,
        *,
        base_url: str,
        api_key: str | None,
        model: str,
        fallbacks: Sequence[str] = (),
        timeout: float = 60.0,
    ) -> None:
        self.http = http
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.model = model
        self.fallbacks = [f for f in fallbacks if f]
        self.timeout = timeout
        self.provider_id = urlsplit(self.base_url).hostname or "openai"

    async def stream(
        self, history: Sequence[dict[str, Any]], *, model: str | None = None
    ) -> AsyncIterator[Delta | ReplyInfo]:
        models = list(dict.fromkeys([model or self.model, *self.fallbacks]))
        messages = to_openai_messages(history)
        failures: list[str] = []
        for m in models:
            notice = None
            if failures:
                notice = f"{models[0]} failed ({failures[0]}); answered by {m}"
            try:
                async for item in self._one(m, messages, notice):
                    yield item
                return
            except _ModelFailed as exc:
                failures.append(str(exc))
        raise ResponderError(
            "provider_error",
            "every model failed: "
            + "; ".join(f"{m}: {why}" for m, why in zip(models, failures, strict=False)),
        )

    async def _one(
        self, model: str, messages: list[dict[str, Any]], notice: str | None
    ) -> AsyncIterator[Delta | ReplyInfo]:
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        body = orjson.dumps({"model": model, "messages": messages, "stream": True})
        produced = False
        calls: dict[int, dict[str, Any]] = {}
        try:
            async with self.http.post(
                f"{self.base_url}/chat/completions",
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.timeout, sock_read=self.timeout),
            ) as resp:
                if resp.status != 200:
                    text = (await resp.text())[:300]
                    raise _ModelFailed(f"HTTP {resp.status}: {text}")
                yield ReplyInfo(
                    model_id=model, provider_id=self.provider_id, fallback_notice=notice
                )
                async for raw in resp.content:
                    line = raw.strip()
                    if not line.startswith(b"data:"):
                        continue
                    payload = line[5:].strip()
                    if payload == b"[DONE]":
                        break
                    chunk = orjson.loads(payload)
                    if "error" in chunk:
                        raise ResponderError("provider_error", str(chunk["error"])[:300])
                    for choice in chunk.get("choices") or []:
                        delta = choice.get("delta") or {}
                        if delta.get("content"):
                            produced = True
                            yield Delta(text=delta["content"])
                        for tc in delta.get("tool_calls") or []:
                            slot = calls.setdefault(
                                tc.get("index", 0), {"id": None, "name": "", "arguments": ""}
                            )
                            slot["id"] = tc.get("id") or slot["id"]
                            fn = tc.get("function") or {}
                            slot["name"] += fn.get("name") or ""
                            slot["arguments"] += fn.get("arguments") or ""
        except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError) as exc:
            if produced:
                raise ResponderError("provider_error", f"the stream broke: {exc!r}") from exc
            raise _ModelFailed(repr(exc)) from exc
        for index in sorted(calls):
            slot = calls[index]
            try:
                args: Any = orjson.loads(slot["arguments"]) if slot["arguments"] else {}
            except orjson.JSONDecodeError:
                args = slot["arguments"]
            yield Delta(
                tool_call={
                    "tool_call_id": slot["id"] or f"call_{index}",
                    "tool_name": slot["name"],
                    "args": args,
                }
            )
