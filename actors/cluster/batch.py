"""A front's batching of the session façade's calls to a shard.

The façade calls to one shard that are made in the same turn of the event loop
go to it as one Ray call (``Shard.calls``), where they run concurrently, as they
would have one by one, and each is answered on its own. A lone call is sent as
it is (``Shard.call``), so a quiet front adds no wait; under load, the Ray call
path (submission, gRPC, the shard's task threads) is paid once per batch rather
than once per request. The price: a call's answer leaves the shard with its
batch's slowest (for appends to different sessions, each waits for its own
flush, and the shard's flushes of one moment complete together).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Protocol

from ray.exceptions import RayError

from actors.places import ShardCallStats
from storage.errors import Unavailable

Queued = list[tuple[tuple[Any, ...], "asyncio.Future[Any]"]]


class ShardCaller(Protocol):
    """What the batcher needs of its front (:class:`actors.cluster.front.ClusterRegistry`)."""

    timeout: float
    stats: ShardCallStats

    def _handle(self, k: int) -> Any: ...

    def _unavailable(self, k: int, why: str) -> Unavailable: ...


class Batcher:
    """One front's queues of façade calls, a batch per shard per loop turn."""

    def __init__(self, front: ShardCaller) -> None:
        self._front = front
        self._queued: dict[int, Queued] = {}
        self._sending: set[asyncio.Task[None]] = set()

    def submit(self, k: int, method: str, args: tuple[Any, ...]) -> asyncio.Future[Any]:
        """Send ``Shard.<method>(*args)`` to shard ``k``; a façade call (``call``) is
        queued for this turn's batch. The future is its ``(status, value)``
        answer, or ``Unavailable`` when the shard cannot be reached in time."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        if method != "call":
            self._start(k, [(args, fut)], lambda h: getattr(h, method).remote(*args))
            return fut
        queued = self._queued.get(k)
        if queued is None:
            queued = self._queued[k] = []
            loop.call_soon(self._send, k)
        queued.append((args, fut))
        return fut

    def _send(self, k: int) -> None:
        queued = [(a, f) for a, f in self._queued.pop(k, []) if not f.done()]
        if len(queued) == 1:
            self._start(k, queued, lambda h: h.call.remote(*queued[0][0]))
        elif queued:  # (none: every caller is gone, nothing to send)
            self._start(k, queued, lambda h: h.calls.remote([a for a, _ in queued]))

    def _start(self, k: int, queued: Queued, make: Callable[[Any], Any]) -> None:
        front = self._front
        try:
            ref = make(front._handle(k))
        except RayError as exc:
            _fail(queued, front._unavailable(k, type(exc).__name__))
            return
        front.stats.ray_calls += 1
        task = asyncio.ensure_future(self._answer(k, ref, queued))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _answer(self, k: int, ref: Any, queued: Queued) -> None:
        """Give each queued caller its own answer from the batch's one Ray call."""
        front = self._front
        started = time.perf_counter()
        try:
            answer = await asyncio.wait_for(ref, front.timeout)
        except TimeoutError:
            _fail(queued, front._unavailable(k, f"no answer within {front.timeout:g} s"))
            return
        except RayError as exc:
            _fail(queued, front._unavailable(k, type(exc).__name__))
            return
        finally:
            front.stats.count(len(queued), time.perf_counter() - started)
        answers = [answer] if len(queued) == 1 else answer
        for (_, f), one in zip(queued, answers, strict=True):
            if not f.done():
                f.set_result(one)


def _fail(queued: Queued, err: Exception) -> None:
    for _, f in queued:
        if not f.done():
            f.set_exception(err)
