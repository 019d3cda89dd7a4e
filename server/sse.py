"""Server-sent events: the one encoder and the one pump (with its heartbeat).

Every SSE stream of the server goes through here: chat, regenerate and resume
(``server.routes_chat``), a session's event feed (``server.routes_realtime``)
and the AI SDK's UI Message Stream (``server.routes_aisdk``).

- :func:`encode` is the only place an SSE event is spelled out.
- :func:`open_sse` starts a response with the stream headers.
- :func:`pump` writes a stream's chunks as they come and, whenever nothing has
  been written for ``heartbeat`` seconds, a ``: keep-alive`` comment so that
  proxies keep the connection open. It is the only heartbeat loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable

from aiohttp import web

from actors.pubsub import Subscription
from server.keys import OPEN_STREAMS, state_of

KEEPALIVE = b": keep-alive\n\n"


def encode(event: str | None, data: bytes, id: int | str | None = None) -> bytes:
    """One SSE event: ``id: <id>`` (if given), ``event: <event>`` (if given), ``data: <data>``.

    ``data`` must not contain a newline (JSON from orjson never does). An event
    without a name is what the AI SDK reads (its client takes every event as
    ``message``).
    """
    head = f"id: {id}\n" if id is not None else ""
    if event is not None:
        head += f"event: {event}\n"
    return head.encode() + b"data: " + data + b"\n\n"


async def open_sse(
    request: web.Request, headers: dict[str, str] | None = None, status: int = 200
) -> web.StreamResponse:
    """Prepare a ``text/event-stream`` response (no caching, no proxy buffering)."""
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
    chunks: AsyncIterable[bytes],
    *,
    heartbeat: float,
    first: Iterable[bytes] = (),
    sub: Subscription | None = None,
    stop: Callable[[], None] | None = None,
) -> None:
    """Write ``first``, then each chunk of ``chunks``, with keep-alives when idle.

    Returns when ``chunks`` ends or the client goes away; never raises for the
    latter. ``sub``, the subscription ``chunks`` reads (if any), is registered
    for shutdown to end and closed on return. ``stop`` is called (as well as
    ``sub.close``) when a keep-alive finds the client gone, so that a source
    waiting for its next item ends instead of waiting on; it must make
    ``chunks`` end, and may be called after ``chunks`` has ended. Empty chunks
    are skipped.
    """
    if sub is not None:
        state_of(request)[OPEN_STREAMS].add(sub)
    loop = asyncio.get_running_loop()
    last_write = loop.time()

    def gone() -> None:
        if sub is not None:
            sub.close()
        if stop is not None:
            stop()

    async def beat() -> None:
        nonlocal last_write
        try:
            while True:
                await asyncio.sleep(last_write + heartbeat - loop.time())
                if loop.time() - last_write >= heartbeat:
                    last_write = loop.time()
                    await resp.write(KEEPALIVE)
        except ConnectionResetError:
            gone()

    beater = asyncio.create_task(beat())
    try:
        for chunk in first:
            await resp.write(chunk)
            last_write = loop.time()
        async with _closing(chunks) as items:
            async for chunk in items:
                if chunk:
                    await resp.write(chunk)
                    last_write = loop.time()
    except ConnectionResetError:
        return
    finally:
        beater.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beater
        if sub is not None:
            sub.close()
            state_of(request)[OPEN_STREAMS].discard(sub)


@contextlib.asynccontextmanager
async def _closing(chunks: AsyncIterable[bytes]) -> AsyncIterator[AsyncIterable[bytes]]:
    """``chunks``, closed on exit when it is an async generator (so its own
    ``finally`` blocks run now, not when it is garbage collected)."""
    try:
        yield chunks
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()
