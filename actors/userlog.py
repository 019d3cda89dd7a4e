"""A user's live list feed: session created / updated / deleted, with ``since`` replay.

Each user with activity has a :class:`UserLog`: a bounded ring of the last
``retention`` list events and a :class:`~actors.pubsub.Topic` of live
subscribers. Events are published after the change they report is durable
(a create is after the catalog's fsync, an update after its session's commit
and flush, a delete after the files are gone), so the output gate holds.

Seqs are per user and grow by one. The log lives in memory: the first seq of
a process is the time it started in milliseconds, so a ``since`` from an
earlier process is below every seq this one kept and gets ``resync`` (refetch
the list) instead of a wrong replay; so does one older than the ring.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import orjson

from actors.pubsub import Frame, Subscription, Topic

# the list fields whose change is news for a sidebar (stream flushes change none)
LISTED_FIELDS = (
    "title",
    "updated_at",
    "message_count",
    "last_message_at",
    "pinned",
    "archived",
    "folder",
    "tags",
    "temporary",
    "expires_at",
    "active_leaf_id",
)


def listed(doc: dict[str, Any]) -> tuple[Any, ...]:
    """What of Session ``doc`` a list shows (tags as a tuple): equal means no news."""
    return tuple(tuple(v) if isinstance(v, list) else v for v in map(doc.get, LISTED_FIELDS))


class UserLog:
    """One user's list events (see the module docstring). Synchronous; never awaits."""

    def __init__(self, owner: str, *, retention: int, base: int) -> None:
        self.owner = owner
        self.retention = retention
        self.base = base  # the seq before this log's first event
        self.seq = base
        self.ring: deque[Frame] = deque(maxlen=retention)
        self.topic = Topic(f"user:{owner}")

    def publish(self, type_: str, payload: dict[str, Any]) -> Frame:
        """Log and fan out ``{"type", "seq", **payload}``; never waits for a subscriber."""
        self.seq += 1
        frame = Frame(type_, orjson.dumps({"type": type_, "seq": self.seq, **payload}), self.seq)
        self.ring.append(frame)
        self.topic.publish(frame)
        return frame

    def since(self, seq: int) -> list[Frame] | None:
        """The logged events after ``seq``, or None when they are not all here any
        more (or ``seq`` is not one of this log's: from another process, or ahead)."""
        if seq == self.seq:
            return []
        first = self.ring[0].seq if self.ring else self.seq + 1
        assert first is not None
        if seq > self.seq or seq < first - 1:
            return None
        return [f for f in self.ring if f.seq is not None and f.seq > seq]


class UserLogs:
    """The logs of every user of one registry, made on first use."""

    def __init__(self, *, retention: int = 512) -> None:
        self.retention = retention
        self.base = int(time.time() * 1000)
        self._logs: dict[str, UserLog] = {}

    def get(self, owner: str) -> UserLog:
        log = self._logs.get(owner)
        if log is None:
            log = self._logs[owner] = UserLog(owner, retention=self.retention, base=self.base)
        return log

    def subscribers(self) -> int:
        return sum(len(log.topic.subs) for log in self._logs.values())


class UserFeed:
    """One subscriber of a user's list feed: ``hello``, the replay after ``since``
    (or ``resync``), then live events. Open at construction (no await, so no
    gap); iterate :meth:`frames` once; :meth:`close` is idempotent."""

    def __init__(self, log: UserLog, since: int | None, maxsize: int) -> None:
        self.log = log
        self.sub: Subscription = log.topic.subscribe(maxsize)
        self.current = log.seq
        self.replay = None if since is None else log.since(since)
        self.resync = since is not None and self.replay is None
        self.last_seq = self.current
        self.dropped = False

    async def frames(self) -> AsyncIterator[Frame]:
        yield Frame(
            "hello", orjson.dumps({"type": "hello", "seq": self.current, "user_feed": True})
        )
        if self.resync:
            yield Frame("resync", orjson.dumps({"type": "resync", "seq": self.current}))
        for frame in self.replay or ():
            yield frame
        while True:
            live = await self.sub.get()
            if live is None:
                self.dropped = self.sub.dropped
                return
            if live.seq is not None:
                if live.seq <= self.last_seq:
                    continue
                self.last_seq = live.seq
            yield live

    def close(self) -> None:
        self.log.topic.unsubscribe(self.sub)
