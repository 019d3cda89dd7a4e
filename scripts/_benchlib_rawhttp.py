"""Lean HTTP/1.1 and WebSocket clients for the bench's load workloads.

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
import base64
import os
import time
from collections.abc import Callable
from urllib.parse import urlsplit

__all__ = [
    "REQUEST_TIMEOUT_S",
    "HandshakeError",
    "RawConnection",
    "RawWebSocket",
    "encode_get",
    "encode_post",
]

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


def encode_get(host_port: str, path: str) -> bytes:
    """The bytes of ``GET path``, ready to write on a keep-alive connection."""
    return f"GET {path} HTTP/1.1\r\nHost: {host_port}\r\n\r\n".encode("ascii")


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


# ---------------------------------------------------------------- WebSocket (RFC 6455)


class HandshakeError(Exception):
    """The server did not switch protocols; ``status`` is what it answered."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"expected 101, got {status}: {body[:200]!r}")
        self.status = status


class _WsProto(asyncio.Protocol):
    """Client side of one WebSocket: the upgrade, then frames parsed as bytes arrive.

    Text frames go to ``on_text(payload, arrival)`` straight from
    ``data_received`` (no task switch per frame), stamped with
    ``time.monotonic()`` at arrival. Pings are answered; a close frame or a lost
    connection sets ``closed``.
    """

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.upgraded: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.on_text: Callable[[bytes, float], None] | None = None
        self.early: list[tuple[bytes, float]] = []  # text frames before on_text was set
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._fragments: bytearray | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.upgraded.done():
            self.upgraded.set_exception(ConnectionError(f"connection lost: {exc or 'EOF'}"))
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        self.buf += data
        if not self.upgraded.done():
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end])
            status = int(head[9:12]) if head.startswith(b"HTTP/1.") else 0
            if status != 101:
                self.upgraded.set_exception(HandshakeError(status, bytes(self.buf[end + 4 :])))
                return
            del self.buf[: end + 4]
            self.upgraded.set_result(None)
        self._frames(now)

    def _frames(self, now: float) -> None:
        buf = self.buf
        pos = 0
        while len(buf) - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            n = b1 & 0x7F
            head = 2
            if n == 126:
                if len(buf) - pos < 4:
                    break
                n = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                head = 4
            elif n == 127:
                if len(buf) - pos < 10:
                    break
                n = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                head = 10
            if b1 & 0x80:  # a server must not mask; skip the key if it did
                head += 4
            if len(buf) - pos < head + n:
                break
            payload = bytes(buf[pos + head : pos + head + n])
            pos += head + n
            self._frame(b0 & 0x80 != 0, b0 & 0x0F, payload, now)
        del buf[:pos]

    def _frame(self, fin: bool, opcode: int, payload: bytes, now: float) -> None:
        if opcode == 0x0:  # continuation
            if self._fragments is None:
                return
            self._fragments += payload
            if fin:
                data, self._fragments = bytes(self._fragments), None
                self._deliver(data, now)
        elif opcode == 0x1:
            if fin:
                self._deliver(payload, now)
            else:
                self._fragments = bytearray(payload)
        elif opcode == 0x9:
            self.send(0xA, payload)  # pong
        elif opcode == 0x8:
            if not self.closed.done():
                self.closed.set_result(None)
            self.send(0x8, payload[:2])
            if self.transport is not None:
                self.transport.close()

    def _deliver(self, data: bytes, now: float) -> None:
        if self.on_text is None:
            self.early.append((data, now))
        else:
            self.on_text(data, now)

    def send(self, opcode: int, payload: bytes) -> None:
        """Send one frame (client frames are masked, RFC 6455 section 5.3)."""
        if self.transport is None or self.transport.is_closing():
            return
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            head = bytes((0x80 | opcode, 0x80 | n))
        elif n < 65536:
            head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
        else:
            head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.transport.write(head + mask + masked)


class RawWebSocket:
    """A WebSocket client that hands each text frame to a callback as it arrives."""

    def __init__(self, proto: _WsProto) -> None:
        self._proto = proto

    @classmethod
    async def connect(cls, base_url: str, path: str) -> RawWebSocket:
        """Connect and upgrade; raises ``HandshakeError`` if the answer is not 101."""
        u = urlsplit(base_url)
        if u.hostname is None or u.port is None:
            raise ValueError(f"expected http://host:port, got {base_url!r}")
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode("ascii")
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_connection(lambda: _WsProto(request), u.hostname, u.port)
        try:
            await proto.upgraded
        except BaseException:
            if proto.transport is not None:
                proto.transport.close()
            raise
        return cls(proto)

    def on_text(self, callback: Callable[[bytes, float], None]) -> None:
        """Call ``callback(payload, arrival monotonic time)`` for every text frame,
        starting with those that arrived before it was set (with their own times)."""
        early, self._proto.early = self._proto.early, []
        self._proto.on_text = callback
        for data, when in early:
            callback(data, when)

    @property
    def closed(self) -> asyncio.Future[None]:
        return self._proto.closed

    def close(self) -> None:
        """Send a close frame (1000) and drop the connection."""
        self._proto.send(0x8, (1000).to_bytes(2, "big"))
        if self._proto.transport is not None:
            self._proto.transport.close()
