"""One turn at a time, and the durable tool loop (issue 19), for one actor.

:class:`Turns` sits beside :class:`actors.replies.Replies` and decides which
reply may start. Every decision is one op of :mod:`storage.turns` run by the
actor's mailbox (decision and commit in one step), so racing chats are ordered
and never both start. After the commit it does what the file now says:

- a chat's pending reply starts (``Replies.start``); replies the chat ended
  (``interrupt``, ``rollback``) are stopped, and their final commit keeps the
  status the chat gave them (see ``storage.ops.op_stream``);
- when a reply ends (or a waiting one is cancelled), the oldest queued turn
  starts if nothing else is busy (:func:`storage.turns.op_start_queued`);
- a reply that ends waiting for tools (``awaiting_tool``/``awaiting_approval``)
  keeps its actor live (``waiting``) and gets ``tool_timeout`` seconds; then its
  open calls get error results and the turn continues;
- when the last result (or a denial) arrives, the continuation starts.

On activation (after a crash, a restart or hibernation) nothing waits for a
tool any more (``op_recover_turns`` ran with the recovery) and the oldest
queued turn starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from actors.replies import Replies, Reply
from actors.responders import EchoResponder, Responder
from storage.ops import MessageDraft
from storage.turns import (
    WAITING,
    ToolOutcome,
    TurnOutcome,
    op_close_calls,
    op_start_queued,
    op_tool_approval,
    op_tool_result,
    op_turn,
)

log = logging.getLogger("roost.actors")


class TurnHost(Protocol):
    """What turns need of their actor (its mailbox)."""

    def submit_nowait(self, op: Callable[[Any], Any]) -> asyncio.Future[Any]: ...


@dataclass(slots=True)
class TurnStart:
    """A chat's answer: the user message, the reply (None while queued), whether the
    user message is new, and the running reply if one was started or attached to."""

    user: dict[str, Any]
    reply: dict[str, Any] | None
    created: bool
    running: Reply | None
    queued: bool = False


class Turns:
    """The turn policy and tool loop of one actor (see the module docstring).

    ``responder_of`` gives the responder for replies the actor starts on its
    own (a queued turn, a continuation); the registry sets it.
    """

    def __init__(
        self,
        host: TurnHost,
        replies: Replies,
        *,
        on_busy: str = "queue",
        tool_timeout: float = 600.0,
    ) -> None:
        self.host = host
        self.replies = replies
        self.on_busy = on_busy
        self.tool_timeout = tool_timeout
        self.responder_of: Callable[[], Responder] = EchoResponder
        self.waiting: dict[str, asyncio.TimerHandle] = {}
        self._started: dict[str, list[asyncio.Future[TurnStart | None]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # whether a queued message may exist: only chats of this actor queue (and the
        # activation finds those of before), so a reply's end costs no op otherwise
        self.maybe_queued = False
        replies.on_end = self._reply_ended

    # ------------------------------------------------------------------ chats

    async def chat(
        self, draft: MessageDraft, responder: Responder, *, model: str | None, on_busy: str | None
    ) -> TurnStart:
        """Commit a chat under the turn policy and start what it allows (one op).

        Raises ``SessionBusy`` (``reject``) and what the chat op raises.
        """
        out: TurnOutcome = await self.host.submit_nowait(
            op_turn(draft, model_id=model, on_busy=on_busy, default_on_busy=self.on_busy)
        )
        for mid in out.stopped:
            self._unwait(mid)
            running = self.replies.get(mid)
            if running is not None:
                running.stop("interrupted")
        if out.queued:
            self.maybe_queued = True
        if out.queued or out.reply is None:
            return TurnStart(out.user, out.reply, out.created, None, queued=out.queued)
        running = self.replies.get(out.reply["id"])
        if running is None and out.reply["status"] == "pending":
            running = self.replies.start(out.reply, responder, model=model)
        return TurnStart(out.user, out.reply, out.created, running)

    def when_started(self, user_mid: str) -> asyncio.Future[TurnStart | None]:
        """A future of queued message ``user_mid``'s start (None if it was deleted
        or the actor stopped first)."""
        fut: asyncio.Future[TurnStart | None] = asyncio.get_running_loop().create_future()
        self._started.setdefault(user_mid, []).append(fut)
        return fut

    def forget(self, mid: str) -> None:
        """Message ``mid`` was deleted: whoever waits for its start gets None."""
        for fut in self._started.pop(mid, []):
            if not fut.done():
                fut.set_result(None)
        self._unwait(mid)

    # ------------------------------------------------------------------ the tool loop

    async def tool_result(
        self, mid: str, tool_call_id: str, *, output: Any = None, error: str | None = None
    ) -> ToolOutcome:
        """Store a tool's result; the continuation starts when it was the last one."""
        out: ToolOutcome = await self.host.submit_nowait(
            op_tool_result(mid, tool_call_id, output=output, error=error)
        )
        self._after_tools(mid, out)
        return out

    async def tool_approval(
        self, mid: str, tool_call_id: str, *, approved: bool, reason: str | None
    ) -> ToolOutcome:
        """Approve or deny a call; a denial stores an error result."""
        out: ToolOutcome = await self.host.submit_nowait(
            op_tool_approval(mid, tool_call_id, approved=approved, reason=reason)
        )
        self._after_tools(mid, out)
        return out

    async def cancel_waiting(self, mid: str) -> dict[str, Any] | None:
        """Cancel reply ``mid`` if it waits for tools (error results for its open
        calls), or queued message ``mid``: status ``cancelled``; None if it waits
        for nothing."""
        out: ToolOutcome | None = await self.host.submit_nowait(
            op_close_calls(mid, "the reply was cancelled", status="cancelled")
        )
        if out is None:
            return None
        self.forget(mid)
        self.kick()
        return out.assistant

    def _after_tools(self, mid: str, out: ToolOutcome) -> None:
        if out.assistant["status"] not in WAITING:
            self._unwait(mid)
        if out.reply is not None:
            self._start(out.reply)

    def _start(self, message: dict[str, Any]) -> Reply | None:
        if self.replies.get(message["id"]) is not None:
            return None
        return self.replies.start(message, self.responder_of(), model=message.get("model_id"))

    # ------------------------------------------------------------------ ends and the queue

    def _reply_ended(self, reply: Reply) -> None:
        final = reply.final or {}
        if final.get("status") in WAITING and reply.failure is None:
            self._wait(reply.message_id)
        else:
            self.kick()

    def _wait(self, mid: str) -> None:
        if mid in self.waiting or self.tool_timeout <= 0:
            return
        loop = asyncio.get_running_loop()
        self.waiting[mid] = loop.call_later(self.tool_timeout, self._spawn, self._timed_out, mid)

    def _unwait(self, mid: str) -> None:
        timer = self.waiting.pop(mid, None)
        if timer is not None:
            timer.cancel()

    def _spawn(self, fn: Callable[..., Any], *args: Any) -> None:
        task = asyncio.get_running_loop().create_task(fn(*args))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _timed_out(self, mid: str) -> None:
        self.waiting.pop(mid, None)
        why = f"no result came within --tool-timeout ({self.tool_timeout:g} s)"
        try:
            out: ToolOutcome | None = await self.host.submit_nowait(
                op_close_calls(mid, why, status=None)
            )
        except Exception as exc:  # the actor stopped: the next activation recovers it
            log.info("the tool timeout of %s was not recorded: %r", mid, exc)
            return
        if out is not None and out.reply is not None:
            self._start(out.reply)

    def kick(self, *, queued: bool = False) -> None:
        """Start the oldest queued turn if nothing is busy (asynchronously; idempotent).
        ``queued``: a queued message is known to exist (activation)."""
        self.maybe_queued = self.maybe_queued or queued
        if self.maybe_queued:
            self._spawn(self._start_queued)

    async def _start_queued(self) -> None:
        try:
            started = await self.host.submit_nowait(op_start_queued())
        except Exception as exc:  # the actor stopped: the queue waits for its next activation
            log.debug("queued turn not started: %r", exc)
            return
        if isinstance(started, bool):
            self.maybe_queued = started
            return
        self.maybe_queued = True  # there may be more behind it
        user, reply = started
        running = self._start(reply)
        turn = TurnStart(user, reply, True, running)
        for fut in self._started.pop(user["id"], []):
            if not fut.done():
                fut.set_result(turn)

    def stop(self) -> None:
        """The actor closes: timers go (the file keeps the state), waiters get None."""
        for timer in self.waiting.values():
            timer.cancel()
        self.waiting.clear()
        for futs in self._started.values():
            for fut in futs:
                if not fut.done():
                    fut.set_result(None)
        self._started.clear()
        for task in list(self._tasks):
            with contextlib.suppress(Exception):
                task.cancel()
