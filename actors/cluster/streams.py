"""Streams of cluster mode on a front: what a shard's streaming calls become.

Each wraps a Ray ``ObjectRefGenerator`` of the shard (see
:mod:`actors.cluster.shard`) in the type the routes already use in single
node: a reply's :class:`RemoteSubscription` (a bounded
:class:`actors.pubsub.Subscription` fed by a pump task), a
:class:`RemoteReplyStream`, an export's :class:`RemoteExportStream`, an
attachment's :class:`RemoteBlob`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import ray
from ray.exceptions import RayError

from actors.cluster.codec import frame_from_plain
from actors.pubsub import Subscription
from actors.session import Blob, ExportStream, ReplyStream
from storage.errors import Unavailable

log = logging.getLogger("roost.cluster")


class RemoteSubscription(Subscription):
    """A subscription fed by a shard's streaming call (a reply's frames).

    The pump task pushes each batch into this bounded queue (a full one drops
    it, as in single node); :meth:`close` also ends the remote stream.
    """

    def __init__(self, maxsize: int, gen: Any) -> None:
        super().__init__(maxsize)
        self._gen = gen
        self._task = asyncio.create_task(self._pump(), name="cluster:reply-stream")

    async def _pump(self) -> None:
        try:
            async for ref in self._gen:
                item = await ref
                if isinstance(item, list):
                    for t in item:
                        self.push(frame_from_plain(t))
                if self.closed or self.dropped:
                    break
        except RayError as exc:
            log.warning("a reply stream from its shard broke: %s", exc)
        finally:
            Subscription.close(self)
            cancel_gen(self._gen)

    def close(self) -> None:
        super().close()
        if not self._task.done() and self._task is not asyncio.current_task():
            self._task.cancel()

    def drop(self) -> None:
        super().drop()
        self.close()


class RemoteReplyStream(ReplyStream):
    """A running reply of a shard: its frames come through ``subscription``."""

    __slots__ = ()

    async def wait_final(self) -> dict[str, Any]:
        """Read the frames to the final ``message`` and return it."""
        sub = self.subscription
        if self.final is None and sub is not None:
            while (frame := await sub.get()) is not None:
                if frame.type == "message":
                    self.final = orjson.loads(frame.data)
            sub.close()
        if self.final is None:
            raise Unavailable("the reply's stream from its shard ended before its end")
        return self.final


class RemoteBlob(Blob):
    """An attachment's bytes on a shard, read in chunks (one call each)."""

    def __init__(self, read: Callable[[int, int], Awaitable[bytes]], size: int) -> None:
        self._read = read
        self.size = size

    async def read(self, n: int, pos: int) -> bytes:
        return await self._read(n, pos)

    def close(self) -> None:
        """Idempotent (nothing is held open)."""


class RemoteExportStream(ExportStream):
    """An export streamed from its shard, chunk by chunk."""

    def __init__(self, gen: Any) -> None:
        self._ray_gen = gen
        self._closed = False

    async def prefetch(self) -> None:
        return None

    async def __anext__(self) -> bytes:
        try:
            ref = await self._ray_gen.__anext__()
            chunk: bytes = await ref
        except RayError as exc:
            raise Unavailable(f"the export's shard went away: {exc}") from exc
        return chunk

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            cancel_gen(self._ray_gen)


def cancel_gen(gen: Any) -> None:
    """Stop a shard's streaming call (idempotent; never raises)."""
    with contextlib.suppress(Exception):
        ray.cancel(gen)
