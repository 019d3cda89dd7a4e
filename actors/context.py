"""The model's context window for one actor (issue 21): budget, compaction, usage.

:class:`ContextPolicy` turns the settings (``--model-context``,
``--reply-reserve``, ``--compact-at``) into a token budget per reply:
``window * (1 - reserve)`` provider tokens, less the system prompt and the
tool definitions, divided by the **calibration** of the model: the ratio of
the provider's reported ``usage.prompt_tokens`` to Roost's estimate for the
newest reply near the leaf that the same model answered (1.0 until one did;
clamped to [0.5, 4]). So the estimate (``storage.tokens``) is corrected per
model from what the provider actually counted, and the correction lives in
the session file (no state to lose at a restart).

:class:`Compactor` runs compaction for its actor, one at a time: after a
complete reply whose branch's uncovered history passed ``compact_at`` of
the window, and on demand (``POST /compact``). It asks the responder for a
summary of the oldest uncovered range (the echo responder makes a
deterministic one, offline) and commits it as a ``summary`` node.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from actors.responders import Delta, ReplyOptions, Responder
from storage.context import (
    CompactionPlan,
    Selection,
    op_add_summary,
    plan_compaction,
    read_items,
    select_context,
)
from storage.file import SessionFile
from storage.reads import ReadSource
from storage.rows import loads
from storage.tokens import REPLY_PRIMING, estimate_json, estimate_message, estimate_text
from storage.turns import read_settings
from storage.txn import Txn

T = TypeVar("T")
log = logging.getLogger("roost.actors")

DEFAULT_WINDOW = 8192
SUMMARY_TIMEOUT = 120.0
#: the most summaries one compaction makes (the next reply's compaction goes on)
MAX_ROUNDS = 8
SUMMARY_WORDS = 12
SUMMARY_MAX_CHARS = 2000
SUMMARY_PROMPT = (
    "You compact a long chat so it fits a model's context window. Summarize the part of "
    "the conversation below in at most 200 words: keep names, numbers, decisions, open "
    "questions and anything the user asked to remember. Answer with the summary only."
)


@dataclass(frozen=True, slots=True)
class ContextPolicy:
    """Context sizes per model (``"*"``: any other model), the reply's reserve and the
    compaction threshold (0: no automatic compaction). Pure."""

    model_context: dict[str, int] = field(default_factory=lambda: {"*": DEFAULT_WINDOW})
    reply_reserve: float = 0.25
    compact_at: float = 0.6

    def window(self, model: str | None) -> int:
        """The context size of ``model`` in tokens."""
        if model is not None and model in self.model_context:
            return self.model_context[model]
        return self.model_context.get("*", DEFAULT_WINDOW)


def _calibration(f: ReadSource, leaf_id: str, model: str) -> float:
    """The ratio reported/estimated of the newest provider-counted reply among the
    last few messages of the branch that ``model`` answered (1.0 if none)."""
    rows = f.reader.execute(
        "WITH RECURSIVE c(seq, n) AS (SELECT seq, 0 FROM messages WHERE id = ?"
        " UNION ALL SELECT m.parent_seq, c.n + 1 FROM messages m JOIN c ON m.seq = c.seq"
        " WHERE m.parent_seq IS NOT NULL AND c.n < 8)"
        " SELECT m.usage, m.context FROM c JOIN messages m ON m.seq = c.seq"
        " WHERE m.role = 'assistant' AND m.usage IS NOT NULL AND m.context IS NOT NULL"
        " AND m.model_id = ? ORDER BY c.n",
        (leaf_id, model),
    ).fetchall()
    for usage_text, context_text in rows:
        usage, ctx = loads(usage_text) or {}, loads(context_text) or {}
        reported, estimated = usage.get("prompt_tokens"), ctx.get("tokens")
        if usage.get("source") == "provider" and reported and estimated:
            return float(min(4.0, max(0.5, reported / estimated)))
    return 1.0


@dataclass(slots=True)
class Context:
    """What a reply sends: the ``history`` documents (summaries as system messages),
    the selection they came from, and the ``record`` stored with the reply."""

    history: list[dict[str, Any]]
    selection: Selection
    record: dict[str, Any]
    settings: dict[str, Any]
    model: str


def _model_of(model: str | None, settings: dict[str, Any], responder: Responder) -> str:
    return str(model or settings.get("model") or getattr(responder, "model", None) or "echo")


def build_context(
    f: ReadSource,
    policy: ContextPolicy,
    leaf_id: str | None,
    *,
    model: str | None,
    responder: Responder,
    documents: bool = True,
) -> Context:
    """The context a reply below ``leaf_id`` answers (``documents``: with the message
    documents, else ids and counts only). Raises ``NotFound`` for an unknown leaf."""
    settings = read_settings(f)
    name = _model_of(model, settings, responder)
    window = policy.window(name)
    options = ReplyOptions.of(settings)
    fixed = REPLY_PRIMING
    if options is not None and options.system_prompt:
        fixed += estimate_message("system", options.system_prompt)
    if options is not None and options.tools:
        fixed += estimate_json(list(options.tools))
    ratio = 1.0 if leaf_id is None else _calibration(f, leaf_id, name)
    provider_budget = int(window * (1 - policy.reply_reserve))
    budget = max(0, int(provider_budget / ratio) - fixed)
    sel = select_context(f, leaf_id, budget)
    history = read_items(f, sel) if documents else []
    record = {
        **sel.record(),
        "model": name,
        "window": window,
        "reply_reserve": policy.reply_reserve,
        "budget": provider_budget,
        "message_budget": budget,
        "calibration": round(ratio, 4),
        "tokens": sel.tokens + fixed,
        "fixed_tokens": fixed,
    }
    return Context(history, sel, record, settings, name)


def needs_compaction(policy: ContextPolicy, ctx: Context) -> bool:
    """Whether the branch's uncovered history passed ``compact_at`` of the window (or
    the budget already left uncovered messages out)."""
    if policy.compact_at <= 0:
        return False
    ratio = ctx.record["calibration"]
    over = ctx.selection.uncovered_tokens * ratio > policy.compact_at * ctx.record["window"]
    return over or (ctx.selection.left_out and not ctx.selection.summary_ids)


def describe(ctx: Context, policy: ContextPolicy) -> dict[str, Any]:
    """The ``GET /context`` document of ``ctx``."""
    sel = ctx.selection
    return {
        "leaf_id": sel.leaf_id,
        **ctx.record,
        "compact_at": policy.compact_at,
        "corrected_tokens": round(ctx.record["tokens"] * ctx.record["calibration"]),
        "message_ids": sel.message_ids,
        "messages": [
            {"id": i.id, "role": i.role, "tokens": i.tokens}
            for i in sel.items
            if i.kind == "message"
        ],
        "summaries": [
            {"id": i.id, "from_id": i.from_id, "to_id": i.to_id, "tokens": i.tokens}
            for i in sel.items
            if i.kind == "summary"
        ],
        "needs_compaction": needs_compaction(policy, ctx),
    }


# ---------------------------------------------------------------------------- summaries


def echo_summary(plan: CompactionPlan) -> str:
    """The echo responder's summary of ``plan``: deterministic, offline. Pure."""
    said = []
    for m in plan.messages:
        if m["role"] in ("user", "assistant") and m["content"]:
            words = m["content"].split()
            said.append(f"{m['role']}: " + " ".join(words[:SUMMARY_WORDS]))
    text = f"{len(plan.messages)} messages ({plan.from_id}..{plan.to_id}). " + " | ".join(said)
    return text[:SUMMARY_MAX_CHARS]


async def make_summary(responder: Responder, plan: CompactionPlan, model: str) -> str:
    """A summary of ``plan``'s messages: the responder's, or for the echo responder
    :func:`echo_summary`. Raises what the responder raises, ``TimeoutError`` after
    :data:`SUMMARY_TIMEOUT` seconds."""
    if responder.name == "echo":
        return echo_summary(plan)
    lines = []
    if plan.previous is not None:
        lines.append(f"(Summary of what came before: {plan.previous['content']})")
    for m in plan.messages:
        lines.append(f"{m['role']}: {m['content'][:4000]}")
    history = [
        {"role": "system", "content": SUMMARY_PROMPT, "parts": None},
        {"role": "user", "content": "\n\n".join(lines), "parts": None},
    ]

    async def ask() -> str:
        out: list[str] = []
        async for item in responder.stream(history, model=model):
            if isinstance(item, Delta) and item.text:
                out.append(item.text)
        return "".join(out).strip()

    return await asyncio.wait_for(ask(), SUMMARY_TIMEOUT)


class CompactHost(Protocol):
    """What compaction needs of its actor."""

    def submit(self, op: Callable[[Txn], T]) -> Awaitable[T]: ...

    def read(self, fn: Callable[[SessionFile], T]) -> Awaitable[T]: ...


class Compactor:
    """Compaction for one actor, one at a time (see the module docstring)."""

    def __init__(self, host: CompactHost, policy: ContextPolicy) -> None:
        self.host = host
        self.policy = policy
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.compactions = 0

    async def compact(
        self, leaf_id: str, responder: Responder, *, model: str | None = None
    ) -> list[dict[str, Any]]:
        """Summarize the uncovered history of the branch ending at ``leaf_id``, oldest
        range first, keeping the newest ``compact_at / 2`` of the window raw: at most
        :data:`MAX_ROUNDS` summaries of at most 80% of the message budget each (the
        summarizer sees the summary before its range). Returns the summaries made
        (``created`` False for one the branch had already), oldest first; empty when
        there is nothing to compact. Raises ``NotFound`` for an unknown leaf and what
        the responder raises (summaries made before stay)."""
        made: list[dict[str, Any]] = []
        async with self._lock:
            for _ in range(MAX_ROUNDS):
                summary = await self._one_round(leaf_id, responder, model)
                if summary is None:
                    break
                made.append(summary)
                if not summary["created"]:
                    break
        return made

    async def _one_round(
        self, leaf_id: str, responder: Responder, model: str | None
    ) -> dict[str, Any] | None:
        def plan(f: SessionFile) -> tuple[CompactionPlan | None, str]:
            ctx = build_context(
                f, self.policy, leaf_id, model=model, responder=responder, documents=False
            )
            ratio = ctx.record["calibration"]
            keep = int(self.policy.window(ctx.model) * max(self.policy.compact_at, 0.2) / 2)
            return (
                plan_compaction(
                    f,
                    leaf_id,
                    keep_tokens=int(keep / ratio),
                    max_tokens=max(64, int(ctx.record["message_budget"] * 0.6)),
                ),
                ctx.model,
            )

        found, name = await self.host.read(plan)
        if found is None:
            return None
        started = time.monotonic()
        text = await make_summary(responder, found, name)
        if not text:
            return None
        summary, created = await self.host.submit(
            op_add_summary(found.from_id, found.to_id, text, model_id=name)
        )
        self.compactions += created
        log.info(
            "compacted %d messages (%d tokens) in %.2f s",
            len(found.messages),
            found.tokens,
            time.monotonic() - started,
        )
        return {**summary, "created": created}

    def after_reply(self, ctx: Context, final: dict[str, Any], responder: Responder) -> None:
        """A reply ended complete: compact its branch in the background if it passed
        the threshold (counting the reply itself). Never raises."""
        tokens = estimate_text(final.get("content") or "")
        sel = ctx.selection
        if self.policy.compact_at <= 0:
            return
        over = (sel.uncovered_tokens + tokens) * ctx.record["calibration"]
        if over <= self.policy.compact_at * ctx.record["window"] and not (
            sel.left_out and not sel.summary_ids
        ):
            return
        task = asyncio.get_running_loop().create_task(
            self._background(final["id"], responder, ctx.model), name=f"compact:{final['id']}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _background(self, leaf_id: str, responder: Responder, model: str) -> None:
        try:
            await self.compact(leaf_id, responder, model=model)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the next reply tries again
            log.warning("compaction below %s failed: %r", leaf_id, exc)

    async def wait_idle(self) -> None:
        """Return once no background compaction runs (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def stop(self) -> None:
        """Cancel background compactions (the actor closes). Idempotent."""
        for task in list(self._tasks):
            task.cancel()


def usage_of(
    reported: dict[str, Any] | None, ctx_tokens: int, text: str, ttft: float | None, model: str
) -> dict[str, Any]:
    """The ``usage`` a reply stores: the provider's counts (``source`` provider), or
    Roost's estimates when it reported none (``source`` estimate); ``ttft_ms`` is the
    time from the request to the first text or tool call. Pure."""
    out: dict[str, Any]
    if reported:
        out = {
            "prompt_tokens": reported.get("prompt_tokens"),
            "completion_tokens": reported.get("completion_tokens"),
            "cached_tokens": reported.get("cached_tokens"),
            "reasoning_tokens": reported.get("reasoning_tokens"),
            "total_tokens": reported.get("total_tokens"),
            "source": "provider",
        }
    else:
        completion = estimate_text(text)
        out = {
            "prompt_tokens": ctx_tokens,
            "completion_tokens": completion,
            "cached_tokens": None,
            "reasoning_tokens": None,
            "total_tokens": ctx_tokens + completion,
            "source": "estimate",
        }
    out["model"] = model
    out["estimated_prompt_tokens"] = ctx_tokens
    out["ttft_ms"] = None if ttft is None else round(ttft * 1000, 1)
    return out
