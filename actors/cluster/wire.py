"""The direct data path between fronts and shards (``--shard-transport direct``).

Ray keeps what it is for: placing shards, naming and restarting them, telling a
front where a shard is. The façade calls themselves (``Shard.call``) go over a
plain TCP stream: each shard opens an asyncio server on its node's IP (port 0)
on first :meth:`actors.cluster.shard.Shard.endpoint` call and reports
``(host, port, token, incarnation)`` through that Ray call; a front connects
once per shard and pipelines its calls on the connection, each with a request
id, answered in any order.

Framing: a 4-byte big-endian length, then a pickle of plain builtins (the same
values that cross Ray, :mod:`actors.cluster.codec`). The first frame a front
sends is the shard's token (a random secret learned from Ray): a peer that
does not know it is dropped before anything is unpickled from it. Requests are
``(rid, args)`` with ``args`` as for ``Shard.call``; answers are ``(rid,
answer)`` with the ``("ok"|"err", value)`` answer ``Shard.call`` gives.

Failure: the address is always learned from the live Ray actor, never guessed.
On a lost connection every request in flight on it fails with ``Unavailable``
(the front's 503, as a failed Ray call does), and it is never resent: a request
is applied at most once, as with ``max_task_retries=0`` on the Ray path. The
next call asks Ray again (the shard may have restarted with a new endpoint).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import pickle
import secrets
import struct
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from actors.places import ShardCallStats
from actors.tasks import retrieved
from storage.errors import Unavailable

log = logging.getLogger("roost.cluster.wire")

_LEN = struct.Struct(">I")
MAX_FRAME = 256 * 1024 * 1024  # a frame longer than this is a broken peer

Answer = Any  # ("ok", value) | ("err", plain error)
Endpoint = tuple[str, int, str, str]  # host, port, token, incarnation


def _frame(obj: Any) -> bytes:
    body = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return _LEN.pack(len(body)) + body


async def _read(reader: asyncio.StreamReader) -> Any:
    """The next frame's object; ``IncompleteReadError`` at the end of the stream."""
    (n,) = _LEN.unpack(await reader.readexactly(4))
    if n > MAX_FRAME:
        raise ConnectionError(f"frame of {n} bytes")
    return pickle.loads(await reader.readexactly(n))


class _Out:
    """A stream's outgoing frames, written once per loop turn: the calls (or the
    answers of one group commit) of one turn make one write and one wake-up of
    the peer, not one each. A lone frame waits for nothing but the turn's end."""

    __slots__ = ("_frames", "_writer")

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._frames: list[bytes] = []

    def put(self, frame: bytes) -> None:
        if not self._frames:
            asyncio.get_running_loop().call_soon(self._flush)
        self._frames.append(frame)

    def _flush(self) -> None:
        frames, self._frames = self._frames, []
        if frames and not self._writer.is_closing():
            self._writer.write(frames[0] if len(frames) == 1 else b"".join(frames))


# ---------------------------------------------------------------------- shard side


class WireServer:
    """A shard's stream server: runs ``handler(*args)`` for each request, concurrently.

    ``handler`` is ``Shard.call`` (it answers ``("ok"|"err", value)``); an
    unexpected exception of it is that request's ``Unavailable`` answer.
    """

    def __init__(self, handler: Callable[..., Awaitable[Answer]]) -> None:
        self._handler = handler
        self.token = secrets.token_hex(16)
        self.incarnation = uuid.uuid4().hex  # new with every process of the shard
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.endpoint: tuple[str, int] | None = None

    async def start(self, host: str) -> tuple[str, int]:
        """Listen on ``host`` (port 0: any free one); the address it listens on."""
        if self.endpoint is None:
            self._server = await asyncio.start_server(self._serve, host, 0)
            sock = self._server.sockets[0]
            addr = sock.getsockname()
            self.endpoint = (str(addr[0]), int(addr[1]))
            log.info("direct shard path on %s:%d", *self.endpoint)
        return self.endpoint

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
            self.endpoint = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            (n,) = _LEN.unpack(await reader.readexactly(4))
            if n > 256:
                return
            token = (await reader.readexactly(n)).decode("utf-8", "replace")
            if not hmac.compare_digest(token, self.token):
                log.warning("direct path: a peer with a wrong token, dropped")
                return
            out = _Out(writer)
            while True:
                rid, args = await _read(reader)
                task = asyncio.ensure_future(self._one(out, rid, args))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _one(self, out: _Out, rid: int, args: Any) -> None:
        try:
            answer = await self._handler(*args)
        except Exception as exc:  # `answers` re-raised it: log done there
            answer = ("err", {"cls": "Unavailable", "message": f"the shard failed: {exc!r}"})
        out.put(_frame((rid, answer)))


# ---------------------------------------------------------------------- front side


class WireConn:
    """One front's connection to one shard incarnation; requests matched by id."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, incarnation: str
    ) -> None:
        self.incarnation = incarnation
        self._reader = reader
        self._writer = writer
        self._out = _Out(writer)
        self._next = 0
        self._waiting: dict[int, asyncio.Future[Answer]] = {}
        self.lost: str | None = None
        self.retired = False  # no new calls: closed once the last answer is in
        self._pump = asyncio.ensure_future(self._answers())

    @classmethod
    async def open(cls, host: str, port: int, token: str, incarnation: str) -> WireConn:
        reader, writer = await asyncio.open_connection(host, port)
        raw = token.encode()
        writer.write(_LEN.pack(len(raw)) + raw)
        return cls(reader, writer, incarnation)

    def send(self, args: tuple[Any, ...]) -> asyncio.Future[Answer]:
        """Send one ``Shard.call``; its future is the answer, or ``ConnectionError``
        when the connection is lost first (the request may or may not have run)."""
        fut: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        if self.lost is not None:
            fut.set_exception(ConnectionError(self.lost))
            return fut
        rid = self._next = self._next + 1
        self._waiting[rid] = fut
        fut.add_done_callback(lambda _f: self._waiting.pop(rid, None))
        self._out.put(_frame((rid, args)))
        return fut

    async def _answers(self) -> None:
        why = "connection closed"
        try:
            while True:
                rid, answer = await _read(self._reader)
                fut = self._waiting.pop(rid, None)
                if fut is not None and not fut.done():
                    fut.set_result(answer)
                if self.retired and not self._waiting:
                    why = "retired"
                    break
        except asyncio.CancelledError:
            why = "front closing"
        except (asyncio.IncompleteReadError, ConnectionError, OSError) as exc:
            why = f"connection lost ({type(exc).__name__})"
        except Exception as exc:  # a broken frame: the stream is unusable
            why = f"bad frame ({exc!r})"
        self._lose(why)

    def _lose(self, why: str) -> None:
        if self.lost is None:
            self.lost = why
        self._writer.close()
        waiting, self._waiting = self._waiting, {}
        for fut in waiting.values():
            if not fut.done():
                fut.set_exception(ConnectionError(why))

    def retire(self) -> None:
        """Take no new calls (a call timed out: the link may be dead); the calls
        still waiting keep their chance, and the connection closes after them."""
        self.retired = True
        if not any(not f.done() for f in self._waiting.values()):
            self.close()

    def close(self) -> None:
        self._pump.cancel()
        self._lose("front closing")


class WireClient:
    """A front's direct connections, one per shard, (re)opened from Ray's answer.

    ``endpoint(k)`` is the Ray call ``Shard.endpoint`` of shard ``k`` (awaitable);
    ``unavailable(k, why)`` makes the front's ``Unavailable`` (and forgets its
    Ray handle). Connections opened are counted in ``stats.direct_connects``.
    """

    def __init__(
        self,
        endpoint: Callable[[int], Awaitable[Endpoint]],
        unavailable: Callable[[int, str], Unavailable],
        timeout: float,
        stats: ShardCallStats,
    ) -> None:
        self._endpoint = endpoint
        self._unavailable = unavailable
        self.timeout = timeout
        self._conns: dict[int, WireConn] = {}
        self._opening: dict[int, asyncio.Task[WireConn]] = {}
        self.stats = stats

    async def _conn(self, k: int) -> WireConn:
        conn = self._conns.get(k)
        if conn is not None and conn.lost is None:
            return conn
        task = self._opening.get(k)
        if task is None or task.done():
            task = self._opening[k] = asyncio.ensure_future(self._open(k))
            task.add_done_callback(retrieved)  # a caller may have timed out
        return await asyncio.shield(task)

    async def _open(self, k: int) -> WireConn:
        try:
            host, port, token, incarnation = await self._endpoint(k)
            conn = await WireConn.open(host, port, token, incarnation)
        finally:
            self._opening.pop(k, None)
        old = self._conns.get(k)
        if old is not None:
            old.close()
        self._conns[k] = conn
        self.stats.direct_connects += 1
        return conn

    async def call(self, k: int, args: tuple[Any, ...]) -> Answer:
        """``Shard.call(*args)`` of shard ``k`` over its connection; ``Unavailable``
        when it cannot be reached or answered within the timeout (never resent)."""
        stats = self.stats
        stats.direct_calls += 1
        started = time.perf_counter()
        conn: WireConn | None = None
        try:
            async with asyncio.timeout(self.timeout):
                try:
                    conn = await self._conn(k)
                except Unavailable:
                    raise
                except (OSError, ConnectionError) as exc:
                    raise self._unavailable(k, f"connect: {type(exc).__name__}") from None
                try:
                    return await conn.send(args)
                except ConnectionError as exc:
                    raise self._unavailable(k, str(exc)) from None
        except TimeoutError:
            if conn is not None:  # the next call opens a new one, from Ray's answer
                if self._conns.get(k) is conn:
                    del self._conns[k]
                conn.retire()
            raise self._unavailable(k, f"no answer within {self.timeout:g} s") from None
        finally:
            stats.count(1, time.perf_counter() - started)

    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()
        for task in self._opening.values():
            task.cancel()
        self._opening.clear()
