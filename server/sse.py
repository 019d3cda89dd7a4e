"""Server-sent events: writing frames with heartbeats until the source ends."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from aiohttp import web

from actors.pubsub import Frame, Subscription

OPEN_STREAMS: web.AppKey[set[Subscription]] = web.AppKey("open_streams")


def sse_frame(event: str, data: bytes, id_: int | str | None = None) -> bytes:
    head = f"id: {id_}\n" if id_ is not None else ""
    return f"{head}event: {event}\n".encode() + b"data: " + data + b"\n\n"


async def open_sse(
    request: web.Request, headers: dict[str, str] | None = None, status: int = 200
) -> web.StreamResponse:
    resp = web.StreamResponse(
        status=status,
        headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-cache, no-transform",
            "X-Accel-Buffering": "no",
            **(headers or {}),
        },
    )
    await resp.prepare(request)
    return resp


async def pump(
    request: web.Request,
    resp: web.StreamResponse,
    sub: Subscription | None,
    *,
    heartbeat: float,
    first: Iterable[bytes] = (),
) -> None:
    """Write ``first``, then ``sub``'s frames, with comment heartbeats when idle.

    Returns when the subscription ends (closed or dropped) or the client goes
    away (never raises for that). The subscription is registered so shutdown
    can end it cleanly.
    """
    if sub is not None:
        request.app[OPEN_STREAMS].add(sub)
    try:
        for chunk in first:
            await resp.write(chunk)
        while sub is not None:
            try:
                frame: Frame | None = await asyncio.wait_for(sub.get(), heartbeat)
            except TimeoutError:
                await resp.write(b": keep-alive\n\n")
                continue
            if frame is None:
                return
            await resp.write(frame.sse())
    except ConnectionResetError:
        return
    finally:
        if sub is not None:
            sub.close()
            request.app[OPEN_STREAMS].discard(sub)
