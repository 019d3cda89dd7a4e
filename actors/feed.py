"""A subscriber's view of a session's events, for WebSocket and SSE alike.

On open the feed subscribes first and then notes the current event ``seq``,
so nothing committed afterwards can be missed; it then replays the durable
events after the client's ``since`` up to that seq from the file, and goes
on with live frames, skipping any seq it already sent: no gap and no
duplicate at the hand-over. Replies running at open time get a catch-up
``message.delta`` with their committed text, so live deltas continue it.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

import orjson

from actors.pubsub import Frame, Subscription, Topic

if TYPE_CHECKING:
    from actors.places import Places


class End(enum.Enum):
    OPEN = "open"
    DROPPED = "dropped"  # fell behind: resume with since=last_seq
    CLOSED = "closed"  # server shutting down
    DELETED = "deleted"  # the session was deleted


class Feed:
    """Frames for one subscriber. Use ``open()`` once, iterate ``frames()``, ``close()``."""

    def __init__(self, registry: Places, sid: str, user: str, since: int | None) -> None:
        self.registry = registry
        self.sid = sid
        self.user = user
        self.since = since
        self.last_seq = 0
        self.end = End.OPEN
        # set by a transport that can take a live frame synchronously: returns True if
        # it wrote the frame, False if it cannot now (then the frame is queued)
        self.direct: Callable[[Frame], bool] | None = None
        self._sub: Subscription | None = None
        self._topic: Topic | None = None
        self._current = 0
        self._catchup: list[Frame] = []

    async def open(self) -> None:
        """Subscribe and take the snapshot. Raises ``NotFound`` like any route."""
        self._topic, self._sub, self._current, self._catchup = await self.registry.feed_open(
            self.sid, self.user
        )
        self.last_seq = self._current

    @property
    def current(self) -> int:
        return self._current

    def hello(self) -> Frame:
        data = orjson.dumps({"type": "hello", "seq": self._current, "session_id": self.sid})
        return Frame("hello", data)

    async def frames(self) -> AsyncIterator[Frame]:
        """hello, the replay, catch-up deltas, then live frames until the end."""
        assert self._sub is not None
        yield self.hello()
        if self.since is not None and self.since != self._current:
            pos = self.since
            while pos < self._current:
                events = await self.registry.feed_events(self.sid, self.user, pos, 500)
                if events is None:
                    yield Frame("resync", orjson.dumps({"type": "resync", "seq": self._current}))
                    break
                if not events:
                    break
                for ev in events:
                    assert ev.seq is not None  # logged events always have one
                    if ev.seq > self._current:
                        break
                    yield ev
                pos = events[-1].seq or pos
        for frame in self._catchup:
            yield frame
        self._catchup = []
        if self.direct is not None:
            # live from here on: idle sockets get frames written by the publisher
            self._sub.sink = self._write_live
        while True:
            live = await self._sub.get()
            if live is None:
                if self._sub.dropped:
                    self.end = End.DROPPED
                elif self.sid not in self.registry.topics_alive():
                    self.end = End.DELETED
                else:
                    self.end = End.CLOSED
                return
            if live.seq is not None:
                if live.seq <= self.last_seq:
                    continue
                self.last_seq = live.seq
            yield live

    def _write_live(self, frame: Frame) -> bool:
        """The subscription's sink: the same seq rule as the loop in :meth:`frames`."""
        if frame.seq is not None and frame.seq <= self.last_seq:
            return True  # already sent by the replay
        assert self.direct is not None
        if not self.direct(frame):
            return False
        if frame.seq is not None:
            self.last_seq = frame.seq
        return True

    def close(self) -> None:
        """Unsubscribe. Idempotent."""
        if self._sub is not None and self._topic is not None:
            self._topic.unsubscribe(self._sub)
            self.registry.release_topic(self.sid)
            self._sub = None

    def stop(self) -> None:
        """End ``frames()`` from outside (shutdown)."""
        if self._sub is not None:
            self._sub.close()
