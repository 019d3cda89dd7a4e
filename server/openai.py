"""The ``openai`` responder: any OpenAI-compatible ``/chat/completions`` stream.

Models are tried in order (the requested one, then the fallbacks) until one
answers; a fallback is taken only if the failing model produced nothing yet,
and the reply then records a ``fallback_notice``. Tool calls streamed by the
provider are assembled and yielded as ``tool-call`` parts.

Time limits: ``connect_timeout`` to open the connection, ``idle_timeout``
between two reads (response headers, then each chunk), ``reply_timeout`` on
the whole reply (every model and retry together). A 429 or 5xx answer of the
last model to try is retried ``retries`` times with exponential backoff (or
the provider's ``Retry-After``); an earlier model gives way to the next one
at once.

Usage (issue 21): the request asks for ``stream_options.include_usage`` and the
provider's counts are yielded as :class:`Usage` at the end. A 400 that says the
context is too long (the estimate was short of the provider's count) is
retried, at most :data:`OVERFLOW_RETRIES` times, with the oldest half of the
history left out (:func:`drop_oldest`: never a tool call without its results).

Failures reach the client as a :class:`ResponderError` with a stable code
(:data:`CODES`) and a short sentence; the raw detail goes to the log only.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import re
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from actors.model_parts import Attachments, Converter, ModelCaps
from actors.responders import Delta, ReplyInfo, ReplyOptions, ResponderError, Usage
from server.settings import Settings, check_base_url
from server.tool_history import provider_messages, request_extras

log = logging.getLogger("roost.openai")

#: every error code this responder reports
CODES = (
    "provider_unreachable",  # connection refused, DNS failure, TLS failure, bad URL
    "provider_auth",  # 401/403: the API key is missing or refused
    "provider_rate_limited",  # 429 after the retries
    "provider_bad_response",  # not an OpenAI event stream (bad JSON, lines too long)
    "provider_timeout",  # connect, idle or whole-reply limit reached
    "provider_error",  # any other HTTP status, an error event, a stream cut short
)
#: the longest ``Retry-After`` that is waited for; a longer one fails at once
MAX_RETRY_WAIT = 20.0
#: the first backoff between retries (doubled each time)
BACKOFF_BASE = 0.5
#: retries of a context-overflow 400 with the oldest half of the history dropped
OVERFLOW_RETRIES = 2
_OVERFLOW = re.compile(r"context|too long|too many tokens|maximum.{0,40}tokens", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class ProviderFailure:
    """One failed call: ``code``/``message`` for the client, ``detail`` for the log."""

    code: str
    message: str
    detail: str
    retry_after: float | None = None


class _ModelFailed(Exception):
    """A model failed before producing any output: the next one may be tried."""

    def __init__(self, failure: ProviderFailure) -> None:
        super().__init__(failure.message)
        self.failure = failure


def to_openai_messages(
    history: Sequence[dict[str, Any]],
    system_prompt: str | None = None,
    converter: Converter | None = None,
) -> list[dict[str, Any]]:
    """The chat history in the provider's shape, tool calls with their results and
    never an orphan (``server.tool_history``); attachments as content parts when a
    ``converter`` is given (blocking: it reads the files)."""
    return provider_messages(
        history, system_prompt, None if converter is None else converter.content
    )


def is_overflow(failure: ProviderFailure) -> bool:
    """Whether ``failure`` is a 400 saying the request is over the model's context."""
    return failure.detail.startswith("HTTP 400") and bool(_OVERFLOW.search(failure.detail))


def drop_oldest(messages: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """``messages`` (provider shape) without the oldest half of what follows the
    leading system messages, cut where no ``tool`` message loses its call; None
    when there is nothing left to drop (one message or less). Pure."""
    head = 0
    while head < len(messages) and messages[head]["role"] == "system":
        head += 1
    rest = messages[head:]
    if len(rest) <= 1:
        return None
    cut = len(rest) // 2
    while cut < len(rest) - 1 and rest[cut]["role"] == "tool":
        cut += 1
    return messages[:head] + rest[cut:]


def _usage(raw: Any) -> Usage | None:
    """The :class:`Usage` of a chunk's ``usage`` object (None if it is not one)."""
    if not isinstance(raw, dict):
        return None

    def num(value: Any) -> int | None:
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    prompt = raw.get("prompt_tokens_details")
    completion = raw.get("completion_tokens_details")
    return Usage(
        prompt_tokens=num(raw.get("prompt_tokens")),
        completion_tokens=num(raw.get("completion_tokens")),
        cached_tokens=num(prompt.get("cached_tokens")) if isinstance(prompt, dict) else None,
        reasoning_tokens=(
            num(completion.get("reasoning_tokens")) if isinstance(completion, dict) else None
        ),
        total_tokens=num(raw.get("total_tokens")),
    )


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _provider_says(body: bytes) -> str:
    """The provider's own short explanation from an error body (``error.message``)."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = body.decode("utf-8", "replace").strip()
    else:
        err = doc.get("error") if isinstance(doc, dict) else None
        msg = err.get("message") if isinstance(err, dict) else err
        text = str(msg) if msg else ""
    text = " ".join(text.split())
    return text[:200]


def status_failure(status: int, body: bytes, retry_after: float | None) -> ProviderFailure:
    """The failure for an HTTP answer other than 200."""
    says = _provider_says(body)
    tail = f": {says}" if says else ""
    detail = f"HTTP {status}: {body[:500]!r}"
    if status in (401, 403):
        return ProviderFailure(
            "provider_auth",
            f"the provider refused the API key (HTTP {status}{tail}); "
            "check --openai-api-key or OPENAI_API_KEY",
            detail,
        )
    if status == 429:
        hint = f"; it asks to retry in {retry_after:.0f} s" if retry_after is not None else ""
        return ProviderFailure(
            "provider_rate_limited",
            f"the provider is rate limiting requests (HTTP 429){hint}",
            detail,
            retry_after,
        )
    return ProviderFailure("provider_error", f"the provider answered HTTP {status}{tail}", detail)


def exception_failure(exc: BaseException, where: str, *, started: bool) -> ProviderFailure:
    """The failure for an exception of the HTTP client; ``where`` names the provider."""
    detail = repr(exc)
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return ProviderFailure("provider_timeout", f"connecting to {where} timed out", detail)
    if isinstance(exc, aiohttp.ServerTimeoutError):
        return ProviderFailure(
            "provider_timeout", f"the provider at {where} stopped sending (idle timeout)", detail
        )
    if isinstance(exc, TimeoutError):
        return ProviderFailure(
            "provider_timeout", "the reply took longer than --openai-reply-timeout", detail
        )
    if isinstance(exc, (orjson.JSONDecodeError, ValueError)):
        return ProviderFailure(
            "provider_bad_response",
            f"the provider at {where} sent something that is not an OpenAI event stream",
            detail,
        )
    if started:
        return ProviderFailure("provider_error", f"the stream from {where} broke off", detail)
    if isinstance(exc, aiohttp.InvalidURL):
        return ProviderFailure(
            "provider_unreachable", f"the provider URL {where} is not usable", detail
        )
    return ProviderFailure("provider_unreachable", f"cannot reach the provider at {where}", detail)


class OpenAIResponder:
    """Streams from ``{base_url}/chat/completions`` with ``stream: true``.

    Raises ValueError at construction if ``base_url`` is not http(s) with a host.
    """

    name = "openai"

    def __init__(
        self,
        http: aiohttp.ClientSession,
        *,
        base_url: str,
        api_key: str | None,
        model: str,
        fallbacks: Sequence[str] = (),
        connect_timeout: float = 10.0,
        idle_timeout: float = 60.0,
        reply_timeout: float = 600.0,
        retries: int = 2,
        attachments: Attachments | None = None,
    ) -> None:
        self.http = http
        self.attachments = attachments or Attachments()
        self.base_url = check_base_url(base_url)
        self.api_key = api_key
        self.model = model
        self.fallbacks = [f for f in fallbacks if f]
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.reply_timeout = reply_timeout
        self.retries = retries
        parts = urlsplit(self.base_url)
        self.provider_id = parts.hostname or "openai"
        self.where = parts.netloc

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        http: aiohttp.ClientSession,
        attachments: Attachments | None = None,
    ) -> OpenAIResponder:
        """The responder ``settings`` describe (``--openai-*``); ``attachments`` says
        where their bytes are and what each model takes."""
        return cls(
            http,
            base_url=settings.openai_base_url,
            api_key=settings.openai_api_key,
            model=settings.openai_model,
            fallbacks=[m.strip() for m in settings.openai_fallback_models.split(",")],
            connect_timeout=settings.openai_connect_timeout,
            idle_timeout=settings.openai_idle_timeout,
            reply_timeout=settings.openai_reply_timeout,
            retries=settings.openai_retries,
            attachments=attachments,
        )

    async def stream(
        self,
        history: Sequence[dict[str, Any]],
        *,
        model: str | None = None,
        options: ReplyOptions | None = None,
    ) -> AsyncIterator[Delta | ReplyInfo | Usage]:
        """The reply as deltas; raises :class:`ResponderError` (a code of :data:`CODES`).

        ``options`` (a session's settings) add the system prompt, the tools and
        the temperature to the request. Attachments go as content parts that
        each model can take (its capabilities); the reply's metadata names
        what was sent and what was not (``attachments``).
        """
        deadline = asyncio.get_running_loop().time() + self.reply_timeout
        models = list(dict.fromkeys([model or self.model, *self.fallbacks]))
        system_prompt = options.system_prompt if options else None
        has_files = any(m.get("attachments") for m in history)
        built: dict[ModelCaps, tuple[list[dict[str, Any]], dict[str, Any] | None]] = {}
        extras = request_extras(options)
        failures: list[ProviderFailure] = []
        for i, m in enumerate(models):
            notice = None
            if failures:
                notice = f"{models[0]} failed ({failures[0].message}); answered by {m}"
            caps = self.attachments.caps(m)
            if caps not in built:  # one conversion per set of capabilities
                converter = self.attachments.converter(m) if has_files else None
                if converter is None:
                    msgs = to_openai_messages(history, system_prompt)
                else:  # reads the files (and parses PDFs): off the event loop
                    msgs = await asyncio.to_thread(
                        to_openai_messages, history, system_prompt, converter
                    )
                built[caps] = (msgs, None if converter is None else converter.report)
            messages, report = built[caps]
            meta = None if report is None else {"attachments": report}
            sent, overflows = messages, 0
            try:
                while True:
                    retries = self.retries if i + 1 == len(models) else 0
                    try:
                        async for item in self._one(
                            m, sent, notice, deadline, retries, extras, meta
                        ):
                            yield item
                        return
                    except _ModelFailed as exc:
                        smaller = drop_oldest(sent) if is_overflow(exc.failure) else None
                        if smaller is None or overflows >= OVERFLOW_RETRIES:
                            raise
                        overflows += 1
                        log.warning(
                            "model %s: the context was too long; retrying with %d of %d messages",
                            m,
                            len(smaller),
                            len(sent),
                        )
                        sent = smaller
            except _ModelFailed as exc:
                failures.append(exc.failure)
                if i + 1 < len(models):
                    log.warning("model %s failed; falling back to %s", m, models[i + 1])
        codes = {f.code for f in failures}
        code = codes.pop() if len(codes) == 1 else failures[0].code
        if len(models) == 1:
            message = f"{models[0]}: {failures[0].message}"
        else:
            message = "every model failed: " + "; ".join(
                f"{m}: {f.message}" for m, f in zip(models, failures, strict=False)
            )
        raise ResponderError(code, message)

    async def _one(
        self,
        model: str,
        messages: list[dict[str, Any]],
        notice: str | None,
        deadline: float,
        retries: int,
        extras: dict[str, Any],
        metadata: dict[str, Any] | None = None,
    ) -> AsyncIterator[Delta | ReplyInfo | Usage]:
        produced = False
        usage: Usage | None = None
        calls: dict[int, dict[str, Any]] = {}
        resp = await self._connect(model, messages, deadline, retries, extras)
        try:
            yield ReplyInfo(
                model_id=model,
                provider_id=self.provider_id,
                fallback_notice=notice,
                metadata=metadata,
            )
            while True:
                try:
                    async with asyncio.timeout_at(deadline):
                        raw = await resp.content.readline()
                    if not raw:
                        break
                    line = raw.strip()
                    if not line.startswith(b"data:"):
                        continue
                    payload = line[5:].strip()
                    if payload == b"[DONE]":
                        break
                    chunk = orjson.loads(payload)
                    if not isinstance(chunk, dict):
                        raise ValueError(f"a chunk that is not an object: {payload[:100]!r}")
                except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                    failure = exception_failure(exc, self.where, started=True)
                    self._log_failure(model, failure)
                    if produced:
                        raise ResponderError(failure.code, failure.message) from exc
                    raise _ModelFailed(failure) from exc
                if "error" in chunk:
                    says = _provider_says(orjson.dumps({"error": chunk["error"]}))
                    failure = ProviderFailure(
                        "provider_error", f"the provider reported: {says}", repr(chunk)[:500]
                    )
                    self._log_failure(model, failure)
                    raise ResponderError(failure.code, failure.message)
                if chunk.get("usage"):
                    usage = _usage(chunk["usage"]) or usage
                for choice in chunk.get("choices") or []:
                    delta = choice.get("delta") or {}
                    if delta.get("content"):
                        produced = True
                        yield Delta(text=delta["content"])
                    for tc in delta.get("tool_calls") or []:
                        produced = True
                        slot = calls.setdefault(
                            tc.get("index", 0), {"id": None, "name": "", "arguments": ""}
                        )
                        slot["id"] = tc.get("id") or slot["id"]
                        fn = tc.get("function") or {}
                        slot["name"] += fn.get("name") or ""
                        slot["arguments"] += fn.get("arguments") or ""
        finally:
            resp.release()
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
        if usage is not None:
            yield usage

    async def _connect(
        self,
        model: str,
        messages: list[dict[str, Any]],
        deadline: float,
        retries: int,
        extras: dict[str, Any] | None = None,
    ) -> aiohttp.ClientResponse:
        """A 200 response with its body unread, after up to ``retries`` retries.

        Raises :class:`_ModelFailed` when the model cannot answer.
        """
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        body = orjson.dumps(
            {
                "model": model,
                "messages": messages,
                "stream": True,
                "stream_options": {"include_usage": True},
                **(extras or {}),
            }
        )
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self.connect_timeout, sock_read=self.idle_timeout
        )
        loop = asyncio.get_running_loop()
        attempt = 0
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    resp = await self.http.post(
                        f"{self.base_url}/chat/completions",
                        data=body,
                        headers=headers,
                        timeout=timeout,
                    )
                    if resp.status == 200:
                        return resp
                    try:
                        text = await resp.content.read(4096)
                    finally:
                        resp.release()
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                failure = exception_failure(exc, self.where, started=False)
                self._log_failure(model, failure)
                raise _ModelFailed(failure) from exc
            retry_after = parse_retry_after(resp.headers.get("Retry-After"))
            failure = status_failure(resp.status, text, retry_after)
            self._log_failure(model, failure)
            retryable = resp.status == 429 or resp.status >= 500
            wait = retry_after if retry_after is not None else BACKOFF_BASE * 2**attempt
            if (
                not retryable
                or attempt >= retries
                or wait > MAX_RETRY_WAIT
                or loop.time() + wait >= deadline
            ):
                raise _ModelFailed(failure)
            attempt += 1
            log.info("retrying model %s in %.1f s (attempt %d)", model, wait, attempt + 1)
            await asyncio.sleep(wait)

    def _log_failure(self, model: str, failure: ProviderFailure) -> None:
        log.warning(
            "provider %s model %s failed: %s (%s)", self.where, model, failure.code, failure.detail
        )
