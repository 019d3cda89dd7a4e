"""Fan-out of a session's events to its subscribers.

A :class:`Topic` belongs to one session and outlives any one activation of
its actor (like Durable Objects' hibernatable WebSockets), so subscribers stay
connected while the actor hibernates. Publishing never awaits: each
:class:`Subscription` has a bounded queue, and one that is full is dropped
(``dropped`` set, its reader woken) so a slow or dead peer never delays the
actor or anyone else. A dropped subscriber resumes by ``seq``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable

from storage.txn import Event

log = logging.getLogger("roost.actors")


class Frame:
    """One outgoing item: a durable event (``seq`` set) or an ephemeral one.

    ``type``, ``data`` (the JSON bytes) and ``seq`` are the frame. ``sse_bytes``
    and ``ws_bytes`` are cache slots for the frame's encodings on the wire,
    filled by the server's wire layer (``server/frames.py``) the first time a
    subscriber needs them, so a frame is encoded once for all its subscribers.
    The actors never read or write them.
    """

    __slots__ = ("data", "seq", "sse_bytes", "type", "ws_bytes")

    def __init__(self, type_: str, data: bytes, seq: int | None = None) -> None:
        self.type = type_
        self.data = data
        self.seq = seq
        self.sse_bytes: bytes | None = None
        self.ws_bytes: bytes | None = None

    @classmethod
    def of(cls, event: Event) -> Frame:
        """The frame of a committed event (durable or ephemeral)."""
        return cls(event.type, event.frame, event.seq)


class Subscription:
    """A subscriber's bounded queue. Only its owner calls :meth:`get`.

    ``sink``, if set, is offered each frame first while nothing is queued: it
    returns True if it delivered the frame itself (written straight to an idle
    socket, no task switch), False to have it queued as usual. Queued frames
    keep their order because the sink is skipped while any are waiting.
    """

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self.dropped = False
        self.closed = False
        self.sink: Callable[[Frame], bool] | None = None
        self._queue: deque[Frame] = deque()
        self._wakeup = asyncio.Event()

    def push(self, frame: Frame) -> None:
        """Queue ``frame``; never blocks. A full queue drops the subscriber."""
        if self.closed or self.dropped:
            return
        if self.sink is not None and not self._queue and self.sink(frame):
            return
        if len(self._queue) >= self.maxsize:
            self.dropped = True
            self._queue.clear()
        else:
            self._queue.append(frame)
        self._wakeup.set()

    def drop(self) -> None:
        """Drop the subscriber as if it had fallen behind: queued frames are
        discarded and its reader's :meth:`get` returns None. Idempotent."""
        self.dropped = True
        self._queue.clear()
        self._wakeup.set()

    def close(self) -> None:
        """End the subscription; a pending :meth:`get` returns None. Idempotent."""
        self.closed = True
        self._wakeup.set()

    async def get(self) -> Frame | None:
        """The next frame, or None once dropped or closed."""
        while True:
            if self.dropped or (self.closed and not self._queue):
                return None
            if self._queue:
                return self._queue.popleft()
            self._wakeup.clear()
            await self._wakeup.wait()

    def get_nowait(self) -> Frame | None:
        if self._queue and not self.dropped:
            return self._queue.popleft()
        return None


class Topic:
    """The subscribers of one session.

    ``last_seq`` is the highest event seq published through it (0 before any):
    a frame the topic sends after the session's last event (``session.deleted``)
    takes a seq above it, so no feed mistakes it for one it already sent.
    """

    def __init__(self, sid: str, on_drop: Callable[[], None] | None = None) -> None:
        self.sid = sid
        self.subs: set[Subscription] = set()
        self.last_seq = 0
        self._on_drop = on_drop

    def subscribe(self, maxsize: int) -> Subscription:
        sub = Subscription(maxsize)
        self.subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self.subs.discard(sub)
        sub.close()

    def publish(self, frame: Frame) -> None:
        """Hand ``frame`` to every subscriber without waiting for any. Never raises.

        A subscriber whose queue is full, or whose ``push`` (its sink) raises,
        is dropped and counted (``on_drop``); a raising one is logged once, with
        its traceback, as it leaves. The others get the frame all the same, and
        the publisher (the actor, after a commit) never sees the exception.
        """
        if frame.seq is not None and frame.seq > self.last_seq:
            self.last_seq = frame.seq
        dropped = []
        for sub in tuple(self.subs):  # a sink may unsubscribe someone meanwhile
            try:
                sub.push(frame)
            except Exception:
                log.exception(
                    "session %s: a subscriber failed on a %s frame; dropped", self.sid, frame.type
                )
                sub.drop()
            if sub.dropped:
                dropped.append(sub)
        for sub in dropped:
            log.warning("session %s: dropped a subscriber %d frames behind", self.sid, sub.maxsize)
            self.subs.discard(sub)
            if self._on_drop is not None:
                self._on_drop()

    def close_all(self) -> None:
        for sub in list(self.subs):
            sub.close()
        self.subs.clear()
