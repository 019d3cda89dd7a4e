"""The history in an OpenAI-compatible provider's shape, tool calls included (issue 19).

An assistant turn that called tools is sent with its ``tool_calls`` (its
content may be empty: then null) and is followed by exactly one ``tool``
message per call id, in call order: the stored result, or, for a call that
has none, an error result. A ``tool`` message whose call is not in the
assistant turn before it is left out. So the provider never sees an orphan
(a call without a result, or a result without its call), which
OpenAI-compatible providers refuse with 400. Pure functions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import orjson

from actors.responders import ReplyOptions

NO_RESULT = "Error: no result was given for this call"


def _call_id(m: dict[str, Any]) -> str | None:
    for key in ("tool_result", "tool_call"):
        value = m.get(key)
        if isinstance(value, dict) and isinstance(value.get("tool_call_id"), str):
            return str(value["tool_call_id"])
    return None


def _arguments(args: Any) -> str:
    return (
        args if isinstance(args, str) else orjson.dumps(args if args is not None else {}).decode()
    )


def provider_messages(
    history: Sequence[dict[str, Any]],
    system_prompt: str | None = None,
    content: Callable[[dict[str, Any]], str | list[dict[str, Any]]] | None = None,
) -> list[dict[str, Any]]:
    """``history`` (oldest first) as ``messages`` (see the module docstring).

    ``content`` makes a user or system message's content (attachments as content
    parts: ``actors.model_parts.Converter.content``); by default its text.
    """
    out: list[dict[str, Any]] = []
    if system_prompt:
        out.append({"role": "system", "content": system_prompt})
    msgs = list(history)
    i = 0
    while i < len(msgs):
        m = msgs[i]
        role = m["role"]
        i += 1
        if role == "tool":
            continue  # not after its call: it would be an orphan
        if role != "assistant":
            out.append({"role": role, "content": m["content"] if content is None else content(m)})
            continue
        calls = [
            p
            for p in m.get("parts") or []
            if isinstance(p, dict) and p.get("type") == "tool-call" and p.get("tool_call_id")
        ]
        if not calls:
            if m["content"]:
                out.append({"role": "assistant", "content": m["content"]})
            continue
        results: dict[str, dict[str, Any]] = {}
        while i < len(msgs) and msgs[i]["role"] == "tool":
            cid = _call_id(msgs[i])
            if cid is not None:
                results.setdefault(cid, msgs[i])
            i += 1
        out.append(
            {
                "role": "assistant",
                "content": m["content"] or None,
                "tool_calls": [
                    {
                        "id": c["tool_call_id"],
                        "type": "function",
                        "function": {
                            "name": c["tool_name"],
                            "arguments": _arguments(c.get("args")),
                        },
                    }
                    for c in calls
                ],
            }
        )
        for c in calls:
            r = results.get(c["tool_call_id"])
            out.append(
                {
                    "role": "tool",
                    "tool_call_id": c["tool_call_id"],
                    "content": r["content"] if r is not None else NO_RESULT,
                }
            )
    return out


def request_extras(options: ReplyOptions | None) -> dict[str, Any]:
    """The request body's keys a session's settings add: ``tools``, ``temperature``."""
    if options is None:
        return {}
    out: dict[str, Any] = {}
    if options.tools:
        out["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": t["name"],
                    **({"description": t["description"]} if t.get("description") else {}),
                    "parameters": t.get("parameters") or {"type": "object", "properties": {}},
                },
            }
            for t in options.tools
        ]
    if options.temperature is not None:
        out["temperature"] = options.temperature
    return out
