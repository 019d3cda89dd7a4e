"""A lean HTTP/1.1 keep-alive client for the bench's append workloads.

``aiohttp``'s client costs about as much CPU per request as a small server
handler (~80 µs here). The bench's client processes share the machine's cores
with the server under test, so a heavy client steals the CPU it is trying to
measure. ``RawConnection`` sends a pre-encoded request and parses just enough of
the answer (status line, ``Content-Length`` or chunked framing) to check the
status and hand back the body: a few µs per request, the same for every server.

It speaks only what the bench needs: one request in flight per connection,
HTTP/1.1 keep-alive, bodies framed by ``Content-Length`` or
``Transfer-Encoding: chunked``. A server that closes the connection fails the
request in flight with ``ConnectionError``; the next request reconnects.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

__all__ = ["REQUEST_TIMEOUT_S", "RawConnection", "encode_post"]

REQUEST_TIMEOUT_S = 30.0


def encode_post(
    host_port: str, path: str, body: bytes, content_type: str = "application/json"
) -> bytes:
    """The bytes of ``POST path`` with ``body``, ready to write on a keep-alive connection."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host_port}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("ascii") + body


class _Proto(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        w = self.waiter
        if w is not None and not w.done():
            w.set_exception(ConnectionError(f"server closed the connection: {exc or 'EOF'}"))

    def data_received(self, data: bytes) -> None:
        self.buf += data
        w = self.waiter
        if w is None or w.done():
            return
        try:
            parsed = _parse(self.buf)
        except ValueError as e:
            w.set_exception(ConnectionError(f"bad HTTP response: {e}"))
            return
        if parsed is not None:
            status, body, used = parsed
            del self.buf[:used]
            w.set_result((status, body))


def _parse(buf: bytearray) -> tuple[int, bytes, int] | None:
    """``(status, body, bytes used)`` once a whole response is in ``buf``, else ``None``."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    if not buf.startswith(b"HTTP/1."):
        raise ValueError(f"expected a status line, got {bytes(buf[:40])!r}")
    status = int(buf[9:12])
    head = bytes(buf[:end]).lower()
    start = end + 4
    i = head.find(b"\r\ncontent-length:")
    if i >= 0:
        j = head.find(b"\r\n", i + 2)
        length = int(head[i + 17 : j if j >= 0 else len(head)])
        if len(buf) < start + length:
            return None
        return status, bytes(buf[start : start + length]), start + length
    if b"\r\ntransfer-encoding: chunked" in head:
        body = bytearray()
        pos = start
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                return None
            size = int(bytes(buf[pos:eol]).split(b";")[0], 16)
            if size == 0:
                if len(buf) < eol + 4:
                    return None
                return status, bytes(body), eol + 4
            if len(buf) < eol + 2 + size + 2:
                return None
            body += buf[eol + 2 : eol + 2 + size]
            pos = eol + 2 + size + 2
    if status in (204, 304) or 100 <= status < 200:
        return status, b"", start
    raise ValueError("response has neither Content-Length nor chunked framing")


class RawConnection:
    """One keep-alive connection to ``base_url``; ``request`` sends pre-encoded bytes."""

    def __init__(self, base_url: str) -> None:
        u = urlsplit(base_url)
        if u.scheme != "http" or u.hostname is None or u.port is None:
            raise ValueError(f"expected http://host:port, got {base_url!r}")
        self.host = u.hostname
        self.port = u.port
        self.host_port = f"{u.hostname}:{u.port}"
        self._proto: _Proto | None = None

    async def _connect(self) -> _Proto:
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_connection(_Proto, self.host, self.port)
        self._proto = proto
        return proto

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        """Send ``raw`` (a whole request) and return ``(status, body)`` of the answer.

        Raises ``TimeoutError`` after ``REQUEST_TIMEOUT_S`` and ``ConnectionError`` if the
        server closes the connection or answers with something that is not HTTP/1.x.
        """
        proto = self._proto
        if proto is None or proto.closed:
            proto = await self._connect()
        fut: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
        proto.waiter = fut
        assert proto.transport is not None
        proto.transport.write(raw)
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                return await fut
        finally:
            proto.waiter = None
            if not fut.done() or fut.cancelled() or fut.exception() is not None:
                self.close()

    def close(self) -> None:
        if self._proto is not None and self._proto.transport is not None:
            self._proto.transport.close()
        self._proto = None
