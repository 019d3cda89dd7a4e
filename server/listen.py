"""Listening: the descriptor budget, a capped TCP site, and the serve loop.

A process has ``RLIMIT_NOFILE`` descriptors for everything: each live session
actor holds about :data:`FDS_PER_ACTOR` (writer and reader connections, their
WAL and WAL index), each client connection one, and the catalog, thread pools,
AIO context and logs a few more. :func:`fd_budget` splits the limit once at
start so neither side can starve the other: connections beyond their share
are answered 503 and closed at once (never held, never an accept failure
logged per attempt), actors beyond theirs wait for the least recently used
idle one to close.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

log = logging.getLogger("roost.server")

FDS_PER_ACTOR = 6
FDS_RESERVED = 64  # catalog, thread pools, AIO, logs, the listening socket, DNS ...
# asyncio accepts up to ``backlog`` connections in one go before closed ones free
# their descriptors: the budget keeps that many spare.
ACCEPT_BATCH = 128
ACCEPT_LOG_INTERVAL = 60.0
# At shutdown, requests in flight get the replies' grace and this much more (for the
# final commits of the replies stopped at the grace) before they are cancelled.
SHUTDOWN_MARGIN = 0.5

_BUSY_BODY = (
    b'{"error":{"code":"unavailable","message":"the server has as many connections as it '
    b'can hold; retry shortly","details":null}}'
)
BUSY_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Retry-After: 1\r\nConnection: close\r\nX-Content-Type-Options: nosniff\r\n"
    b"Content-Length: " + str(len(_BUSY_BODY)).encode() + b"\r\n\r\n" + _BUSY_BODY
)


@dataclass(frozen=True, slots=True)
class FdBudget:
    """How a descriptor limit is shared out."""

    limit: int
    actors: int
    connections: int


def fd_budget(limit: int, max_live_actors: int) -> FdBudget:
    """Split ``limit`` descriptors: a quarter of what is left after the reserves goes to
    client connections, the rest to live actors (never more than ``max_live_actors``).

    Pure. Always at least 16 connections and 1 actor, so a tiny limit still serves.
    """
    usable = max(limit - FDS_RESERVED - ACCEPT_BATCH, 32)
    connections = max(16, usable // 4)
    actors = max(1, min(max_live_actors, (usable - connections) // FDS_PER_ACTOR))
    return FdBudget(limit=limit, actors=actors, connections=connections)


class _Refused(asyncio.Protocol):
    """A connection over the cap: answer 503 and close (the buffer is flushed first)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(BUSY_RESPONSE)
        transport.close()


def _idle(handler: Any) -> bool:
    """Whether a connection waits for its next request (none running, none queued)."""
    return not getattr(handler, "_request_in_progress", True) and not getattr(
        handler, "_messages", True
    )


class ConnectionCap:
    """Protocol factory: aiohttp's request handlers for up to ``cap`` open connections.

    At the cap, a new connection closes the oldest idle one (it would have been
    closed at its keep-alive timeout anyway; its client reconnects), so idle
    sockets cannot lock others out; when none is idle, the new one is answered
    503 and closed (:class:`_Refused`). Connections running a request, a
    WebSocket or an SSE stream are never closed here.
    """

    def __init__(self, server: web.Server, cap: int) -> None:
        self.server = server
        self.cap = cap
        self.refused = 0
        self.evicted = 0
        # handlers made whose connection_made has not run yet: asyncio calls the
        # factory for a whole batch of accepted sockets before any of them is made
        self._pending = 0

    def _made(self) -> None:
        self._pending -= 1

    def __call__(self) -> asyncio.BaseProtocol:
        conns = self.server.connections
        if len(conns) + self._pending >= self.cap:
            victim = next((h for h in conns if _idle(h) and h.transport is not None), None)
            if victim is None:
                self.refused += 1
                return _Refused()
            victim.force_close()
            self.evicted += 1
        self._pending += 1
        # runs just before the transport's own call_soon(connection_made)
        asyncio.get_running_loop().call_soon(self._made)
        return self.server()


class CappedSockSite(web.BaseSite):
    """A site on a socket bound beforehand, whose connections are capped (see
    :class:`ConnectionCap`; the cap counts the runner's connections on every site)."""

    def __init__(self, runner: web.AppRunner, sock: socket.socket, *, cap: int) -> None:
        super().__init__(runner, backlog=ACCEPT_BATCH)
        self._sock = sock
        self.cap = cap

    @property
    def name(self) -> str:
        host, port = self._sock.getsockname()[:2]
        return f"http://{host}:{port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            ConnectionCap(server, self.cap), sock=self._sock, backlog=self._backlog
        )


class AcceptErrorFilter:
    """Loop exception handler: an accept that fails for lack of descriptors or memory
    is logged once per :data:`ACCEPT_LOG_INTERVAL` s in one line, not with a traceback
    each time; everything else goes to the default handler."""

    def __init__(self) -> None:
        self.suppressed = 0
        self._logged_at = -ACCEPT_LOG_INTERVAL

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, OSError) and "accept" in str(context.get("message", "")):
            now = time.monotonic()
            if now - self._logged_at >= ACCEPT_LOG_INTERVAL:
                log.warning(
                    "accepting a connection failed: %s (%d more since the last report)",
                    exc,
                    self.suppressed,
                )
                self._logged_at = now
                self.suppressed = 0
            else:
                self.suppressed += 1
            return
        loop.default_exception_handler(context)


async def serve(
    app: web.Application,
    socks: list[socket.socket],
    *,
    connections: int,
    keepalive_timeout: float,
    max_line_size: int,
    shutdown_timeout: float = 10.0,
) -> None:
    """Serve ``app`` until SIGINT or SIGTERM, then shut down gracefully.

    ``socks`` are bound and listening already (so a port in use fails before
    anything starts). At most ``connections`` client connections are open at once; an idle one
    (also a fresh one that sends nothing) is closed after ``keepalive_timeout``.

    Shutdown: the sockets stop accepting, idle connections close, ``on_shutdown``
    runs, then handlers still in flight get ``shutdown_timeout`` seconds to finish
    (the server passes its replies' grace plus :data:`SHUTDOWN_MARGIN`) and are
    cancelled after that; then the app's contexts clean up.
    """
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(AcceptErrorFilter())
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=None,
        keepalive_timeout=keepalive_timeout,
        max_line_size=max_line_size,
        shutdown_timeout=shutdown_timeout,
    )
    await runner.setup()
    try:
        for sock in socks:
            await CappedSockSite(runner, sock, cap=connections).start()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()
