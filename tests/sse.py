"""A small SSE reader for tests: parses events off an aiohttp response as they arrive."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from tests.conftest import TIMEOUT, deadline

STREAM_BOUND = 6  # a whole stream may take this many per-event timeouts


@dataclass
class Event:
    event: str
    data: str
    id: str | None

    def json(self) -> Any:
        return orjson.loads(self.data)


class SSEReader:
    """Reads events one at a time; comments (heartbeats) are counted, not returned."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp
        self.comments = 0

    async def next(self, timeout: float = TIMEOUT) -> Event | None:
        """The next event, or None at the end of the stream."""
        return await asyncio.wait_for(self._next(), timeout)

    async def _next(self) -> Event | None:
        event, data, id_ = "message", [], None
        while True:
            raw = await self.resp.content.readline()
            if not raw:
                return None
            line = raw.decode().rstrip("\n")
            if not line:
                if data:
                    return Event(event, "\n".join(data), id_)
                continue
            if line.startswith(":"):
                self.comments += 1
                continue
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "event":
                event = value
            elif field == "data":
                data.append(value)
            elif field == "id":
                id_ = value

    async def all(self, timeout: float = TIMEOUT) -> list[Event]:
        """Every event to the end of the stream: ``timeout`` s at most per event,
        STREAM_BOUND times that in all."""
        out = []
        async with deadline("the end of the stream", timeout * STREAM_BOUND):
            while (ev := await self.next(timeout)) is not None:
                out.append(ev)
        return out

    async def until(self, name: str, timeout: float = TIMEOUT) -> list[Event]:
        """Events up to and including the first named ``name`` (bounded like :meth:`all`)."""
        out = []
        async with deadline(f"an event {name!r}", timeout * STREAM_BOUND):
            while True:
                ev = await self.next(timeout)
                if ev is None:
                    raise AssertionError(f"stream ended before {name!r}: {out}")
                out.append(ev)
                if ev.event == name:
                    return out
