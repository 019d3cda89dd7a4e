"""Responders turn the history of the active branch into a stream of deltas.

A responder is any object with a ``name`` and a ``stream(history, model=...)``
async generator yielding :class:`ReplyInfo` (who answers: at most once, before
or between deltas), :class:`Delta` items (text, or a complete tool call) and,
at most once, the provider's :class:`Usage` (issue 21).
It raises :class:`ResponderError` when the reply fails. The built-in
:class:`EchoResponder` needs no network; the OpenAI-compatible one lives in
``server`` (it needs an HTTP client).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from actors.model_parts import Attachments


@dataclass(slots=True)
class Delta:
    """A piece of the reply: ``text`` to append, or one finished ``tool_call`` part."""

    text: str = ""
    tool_call: dict[str, Any] | None = None


@dataclass(slots=True)
class ReplyInfo:
    """Which model and provider answered; ``fallback_notice`` when a fallback did;
    ``metadata`` merged into the reply's metadata (issue 25: ``attachments``, what
    was sent to the model and what was not)."""

    model_id: str | None = None
    provider_id: str | None = None
    fallback_notice: str | None = None
    metadata: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Usage:
    """The token counts a provider reported for one reply (None: not reported)."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None
    total_tokens: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cached_tokens": self.cached_tokens,
            "reasoning_tokens": self.reasoning_tokens,
            "total_tokens": self.total_tokens,
        }


@dataclass(frozen=True, slots=True)
class ReplyOptions:
    """What a session's settings ask of its replies (issue 19): a system prompt, a
    temperature, the tools the model may call (``{name, description, parameters}``)
    and the names of those whose calls wait for an approval."""

    system_prompt: str | None = None
    temperature: float | None = None
    tools: tuple[dict[str, Any], ...] = ()
    approval: frozenset[str] = frozenset()

    @classmethod
    def of(cls, settings: dict[str, Any]) -> ReplyOptions | None:
        """The options of a session's ``settings`` (None when they ask for nothing)."""
        tools = tuple(
            {k: t[k] for k in ("name", "description", "parameters") if k in t}
            for t in settings.get("tools") or []
        )
        out = cls(
            system_prompt=settings.get("system_prompt"),
            temperature=settings.get("temperature"),
            tools=tools,
            approval=frozenset(
                t["name"] for t in settings.get("tools") or [] if t.get("needs_approval")
            ),
        )
        return None if out == cls() else out


class ResponderError(Exception):
    """The reply failed; ``code`` and ``message`` go to the client as they are."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Responder(Protocol):
    """``stream`` is called with ``options`` only when the session has settings
    (issue 19), so a responder that knows none still works for the others."""

    name: str

    def stream(
        self, history: Sequence[dict[str, Any]], *, model: str | None = None
    ) -> AsyncIterator[Delta | ReplyInfo | Usage]: ...


def _echo_line(item: dict[str, Any], message_id: str) -> str:
    """One line of the echo about an attachment of the last user message."""
    if item.get("message_id") != message_id:
        return ""
    if "reason" in item:
        return f"\n[{item['name']}: not sent: {item['reason']}]"
    if item["as"] == "text":
        cut = f" of {item['of_chars']}" if item.get("cut") else ""
        return f"\n[{item['name']}: text, {item['chars']}{cut} characters]"
    return f"\n[{item['name']}: {item['as']}, {item.get('bytes')} bytes]"


_WORDS = re.compile(r"\s*\S+|\s+$")


def split_words(text: str) -> list[str]:
    """Split ``text`` into word chunks whose concatenation is exactly ``text``."""
    return _WORDS.findall(text)


class EchoResponder:
    """Repeats the last user message, word by word, at ``words_per_second``.

    Deterministic and offline: the embedded default. A pace of 0 streams
    without pauses. It reports what a model would have received (issue 25):
    the history's attachments are converted as for a real model
    (``attachments``, :mod:`actors.model_parts`), the report goes in the
    reply's metadata (``attachments``: ``sent`` and ``not_sent``), and each
    attachment of the last user message adds a line to the echo, like
    ``[notes.txt: text, 120 characters]``.
    """

    name = "echo"

    def __init__(
        self, words_per_second: float = 20.0, attachments: Attachments | None = None
    ) -> None:
        self.delay = 1.0 / words_per_second if words_per_second > 0 else 0.0
        self.attachments = attachments or Attachments()

    async def stream(
        self,
        history: Sequence[dict[str, Any]],
        *,
        model: str | None = None,
        options: ReplyOptions | None = None,
    ) -> AsyncIterator[Delta | ReplyInfo | Usage]:
        converter = self.attachments.converter(model or "echo")
        if any(m.get("attachments") for m in history):
            await asyncio.to_thread(lambda: [converter.content(m) for m in history])
        report = converter.report
        yield ReplyInfo(
            model_id=model or "echo",
            provider_id="roost",
            metadata=None if report is None else {"attachments": report},
        )
        last = next((m for m in reversed(history) if m["role"] == "user"), None)
        text = last["content"] if last is not None else ""
        if last is not None and report is not None:
            text += "".join(_echo_line(a, last["id"]) for a in report["sent"])
            text += "".join(_echo_line(a, last["id"]) for a in report["not_sent"])
        for i, word in enumerate(split_words(text)):
            if self.delay and i:
                await asyncio.sleep(self.delay)
            yield Delta(text=word)
