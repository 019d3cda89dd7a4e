"""The session actor: the one owner of a session's SQLite file.

Input gate: every mutation enters the actor's mailbox and one task applies
them in arrival order. Group commit: the mutations that queue up while a
commit is in flight are applied together, in one transaction, by the next
commit (at most ``max_batch`` at a time), so a busy session pays one fsync
per batch rather than one per message.

Where a batch runs: on the event loop, with no thread hand-off, unless it holds
a :class:`~storage.session_db.BulkOp` (search indexing: many rows), which runs
on the write pool. On a durable file (``synchronous`` FULL/EXTRA) an
event-loop batch commits without flushing the disk and the actor then
``fdatasync``s the WAL through the :class:`~storage.fsync.Syncer` (Linux AIO:
no thread at all); a pool batch flushes inside its COMMIT (SQLite FULL).

Output gate: callers are resolved and events published only after the commit
is on disk. A failed commit or flush breaks the actor: the batch and everything
queued behind it fail with a clear error, the file is closed, and the registry
starts a fresh actor from disk on the next request.

Reads never enter the mailbox: they run on the actor's reader connection
against committed state (WAL), so they never wait behind writes. They do wait
for the disk flush of a commit that is already visible in the file
(:meth:`SessionActor.reader`), so no read shows what a crash could still take
back. Checkpoints run on the write pool between batches (every
``CHECKPOINT_EVERY`` commits), never inside a commit on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from actors.errors import ActorBroken, ActorStopped, Busy
from actors.pubsub import Frame, Topic
from storage.errors import StorageError, StorageFull, Unavailable
from storage.fsync import Syncer
from storage.ids import now_iso
from storage.layout import DataDir
from storage.session_db import BulkOp, Event, SessionFile, Txn, op_index_search

if TYPE_CHECKING:
    from actors.streams import Generation

T = TypeVar("T")
log = logging.getLogger("roost.actors")

# a session's WAL is checkpointed (two flushes, on the write pool) after this many
# commits or this many ops, whichever comes first: that bounds the WAL file (a
# one-message commit adds ~8 pages; under group commit, a few pages per message)
CHECKPOINT_EVERY = 200
CHECKPOINT_OPS = 2000


@dataclass(slots=True)
class ActorConfig:
    """Tunables of actors and the registry; the server fills it from settings."""

    synchronous: str = "FULL"
    idle_timeout: float = 30.0
    max_live: int = 1000
    max_batch: int = 256
    max_queue: int = 10_000
    event_retention: int = 10_000
    subscriber_queue: int = 1024
    flush_interval: float = 0.05
    index_delay: float = 0.25
    shutdown_grace: float = 2.0


class State(enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    CLOSING = "closing"
    CLOSED = "closed"


class Envelope:
    """A queued mutation and the future of the caller waiting for it."""

    __slots__ = ("future", "op")

    def __init__(self, op: Callable[[Txn], Any], future: asyncio.Future[Any]) -> None:
        self.op = op
        self.future = future


class SessionActor:
    """Owns one session's file while it is live. Made and closed by the registry.

    ``submit`` is safe to call concurrently; ``close`` is idempotent and waits
    for queued work to be committed first.
    """

    def __init__(
        self,
        sid: str,
        *,
        datadir: DataDir,
        config: ActorConfig,
        write_pool: Executor,
        syncer: Syncer,
        topic: Topic,
        on_commit: Callable[[SessionActor, dict[str, Any]], None],
        on_closed: Callable[[SessionActor], None],
        on_idle: Callable[[SessionActor], None] | None = None,
    ) -> None:
        self.sid = sid
        self.datadir = datadir
        self.config = config
        self.topic = topic
        self.state = State.STARTING
        self.owner = ""
        self.leases = 0
        self.last_used = time.monotonic()
        self.commits = 0
        self.committed_ops = 0
        self._index_due = True  # new activation: messages may await indexing
        self._index_timer: asyncio.TimerHandle | None = None
        # the first catch-up of the search index waits for an idle spell too
        self._last_write = asyncio.get_running_loop().time()
        self.generations: dict[str, Generation] = {}
        self.graceful = True
        self.stream_lag_observer: Callable[[float], None] | None = None
        self.commit_observer: Callable[[float, int], None] | None = None
        self._write_pool = write_pool
        self._syncer = syncer
        self._unsynced: asyncio.Future[None] | None = None
        self._since_checkpoint = 0
        self._ops_since_checkpoint = 0
        self._on_commit = on_commit
        self._on_closed = on_closed
        self._on_idle = on_idle or (lambda actor: None)
        self._file: SessionFile | None = None
        self._mailbox: deque[Envelope] = deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._closed = asyncio.Event()
        self._close_task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Open the file and recover replies a crash left unfinished.

        Raises ``NotFound`` for a missing session, ``Unavailable`` for a file
        that cannot be used; the actor is then closed.
        """
        loop = asyncio.get_running_loop()
        try:
            self._file = await loop.run_in_executor(self._write_pool, self._open)
            self.owner = self._file.owner
            events = await loop.run_in_executor(
                self._write_pool, self._file.recover_unfinished, now_iso()
            )
        except BaseException as exc:
            await self._finish_close()
            if not self._ready.done():
                self._ready.set_exception(exc)
                self._ready.exception()  # retrieved: waiters re-raise it
            raise
        self.state = State.RUNNING
        self._task = asyncio.create_task(self._run(), name=f"actor:{self.sid}")
        self._publish(events)
        self._on_commit(self, self.file.read_session())
        self._ready.set_result(None)

    def _open(self) -> SessionFile:
        return SessionFile(
            self.datadir,
            self.sid,
            synchronous=self.config.synchronous,
            event_retention=self.config.event_retention,
        )

    async def wait_ready(self) -> None:
        await asyncio.shield(self._ready)

    async def wait_closed(self) -> None:
        await self._closed.wait()

    @property
    def file(self) -> SessionFile:
        """The open file, for reads of committed state. Raises if not running."""
        if self._file is None or self.state is not State.RUNNING:
            raise ActorStopped(f"session {self.sid!r} is not active; retry")
        return self._file

    async def reader(self) -> SessionFile:
        """The open file for reads, once every commit visible in it is on disk.

        Use the result at once (no ``await`` in between): only then is what it
        reads guaranteed durable. Raises like :attr:`file`.
        """
        while self._unsynced is not None:
            await asyncio.shield(self._unsynced)
        return self.file

    @property
    def busy(self) -> bool:
        """Whether the actor holds work that hibernation must not cut short."""
        return bool(self.leases or self._mailbox or self.generations)

    async def close(self) -> None:
        """Stop taking work, commit what is queued, close the file. Idempotent."""
        if self._close_task is None:
            self._close_task = asyncio.create_task(self._close(), name=f"close:{self.sid}")
        await asyncio.shield(self._close_task)

    async def _close(self) -> None:
        if self.state is State.STARTING:
            try:
                await self.wait_ready()
            except BaseException:
                return
        if self.state is State.CLOSED:
            return
        if self.generations:
            # replies get their grace period while the actor still commits
            from actors.streams import stop_all

            await stop_all(self, grace=self.config.shutdown_grace if self.graceful else 0.0)
        self.state = State.CLOSING
        self._wakeup.set()
        if self._task is not None:
            await self._task
        await self._finish_close()

    async def _finish_close(self) -> None:
        if self._file is not None:
            f, self._file = self._file, None
            await asyncio.get_running_loop().run_in_executor(self._write_pool, f.close)
        self.state = State.CLOSED
        self._closed.set()
        self._on_closed(self)

    # ------------------------------------------------------------------ the write path

    async def submit(self, op: Callable[[Txn], T]) -> T:
        """Apply ``op`` in the session's next transaction and return its result.

        Returns only after the transaction committed. Raises what ``op``
        raised (nothing of it is kept), :class:`ActorBroken` if the commit
        failed, :class:`ActorStopped` if the actor is closing. If the caller
        is cancelled, the op still runs: work given to the actor finishes.
        """
        return await self.submit_nowait(op)

    def submit_nowait(self, op: Callable[[Txn], T]) -> asyncio.Future[T]:
        """Queue ``op`` and return the future of its result (see :meth:`submit`)."""
        if self.state is not State.RUNNING:
            raise ActorStopped(f"session {self.sid!r} is shutting down; retry")
        if len(self._mailbox) >= self.config.max_queue:
            raise Busy(f"session {self.sid!r} has too much queued work; retry shortly")
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._mailbox.append(Envelope(op, fut))
        self._wakeup.set()
        return fut

    async def catch_up_search_index(self) -> None:
        """Index every committed message for search (before a search reads it)."""
        while await self.submit(op_index_search(2000)):
            pass
        self._index_due = False

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._mailbox:
                if self.state is not State.RUNNING:
                    if self._index_timer is not None:
                        self._index_timer.cancel()
                    return
                self._wakeup.clear()
                if self._index_due and self._index_timer is None:
                    self._index_timer = loop.call_at(
                        self._last_write + self.config.index_delay, self._index_when_idle
                    )
                await self._wakeup.wait()
            n = min(len(self._mailbox), self.config.max_batch)
            batch = [self._mailbox.popleft() for _ in range(n)]
            f = self._file
            assert f is not None
            ops = [e.op for e in batch]
            started = time.perf_counter()
            try:
                if any(isinstance(op, BulkOp) for op in ops):
                    results, events, sess = await loop.run_in_executor(
                        self._write_pool, f.run_batch, ops, now_iso()
                    )
                else:
                    results, events, sess = f.run_batch(ops, now_iso(), sync=False)
                    if f.durable:
                        await self._flush(f)
            except BaseException as exc:
                self._break(exc, batch)
                return
            if self.commit_observer is not None:
                self.commit_observer(time.perf_counter() - started, n)
            if events:
                self._index_due = True
            self._last_write = loop.time()
            self.commits += 1
            self.committed_ops += n
            self.last_used = time.monotonic()
            self._publish(events)
            for env, res in zip(batch, results, strict=True):
                if env.future.done():
                    continue
                if isinstance(res, BaseException):
                    env.future.set_exception(res)
                else:
                    env.future.set_result(res)
            if sess is not None:
                self._on_commit(self, sess)
            self._since_checkpoint += 1
            self._ops_since_checkpoint += n
            if (
                self._since_checkpoint >= CHECKPOINT_EVERY
                or self._ops_since_checkpoint >= CHECKPOINT_OPS
            ):
                self._since_checkpoint = self._ops_since_checkpoint = 0
                # on failure the data is still safe in the WAL; the next checkpoint retries
                with contextlib.suppress(StorageError):
                    await loop.run_in_executor(self._write_pool, f.checkpoint)

    async def _flush(self, f: SessionFile) -> None:
        """``fdatasync`` the WAL after an event-loop commit; reads wait meanwhile."""
        try:
            fd = f.wal_fd()
        except FileNotFoundError:
            return  # no WAL: nothing was ever written through this file
        gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._unsynced = gate
        try:
            await self._syncer.fdatasync(fd)
        except OSError as exc:
            cls = StorageFull if exc.errno in (errno.ENOSPC, errno.EDQUOT) else Unavailable
            raise cls(f"flushing session {self.sid!r} to disk failed: {exc.strerror}") from exc
        finally:
            self._unsynced = None
            gate.set_result(None)

    def _index_when_idle(self) -> None:
        """Timer: once no write came for ``index_delay`` s, catch the search index up
        (off the hot path). One timer per actor, re-armed rather than made per commit."""
        self._index_timer = None
        if not self._index_due or self.state is not State.RUNNING:
            return
        loop = asyncio.get_running_loop()
        due = self._last_write + self.config.index_delay
        if self._mailbox or due > loop.time():
            self._index_timer = loop.call_at(
                max(due, loop.time() + self.config.index_delay / 4), self._index_when_idle
            )
            return
        self._mailbox.append(Envelope(op_index_search(500), self._index_done()))
        self._wakeup.set()

    def _index_done(self) -> asyncio.Future[bool]:
        """The future of a background indexing op: it clears the flag when done."""
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

        def done(f: asyncio.Future[bool]) -> None:
            if not f.cancelled() and f.exception() is None and not f.result():
                self._index_due = False

        fut.add_done_callback(done)
        return fut

    def _break(self, exc: BaseException, batch: list[Envelope]) -> None:
        """A commit failed: fail the batch and the queue, then close."""
        log.error("session %s broke: a commit failed (%r); it restarts from disk", self.sid, exc)
        if isinstance(exc, StorageError):
            first: BaseException = exc
        else:
            first = ActorBroken(f"saving to session {self.sid!r} failed: {exc!r}")
            first.__cause__ = exc
        rest = ActorBroken(
            f"session {self.sid!r} stopped after a failed commit; nothing queued was saved; retry"
        )
        for env in batch:
            if not env.future.done():
                env.future.set_exception(first)
        while self._mailbox:
            env = self._mailbox.popleft()
            if not env.future.done():
                env.future.set_exception(rest)
        self.state = State.CLOSING
        if self._close_task is None:
            self._close_task = asyncio.create_task(self._after_break())

    async def _after_break(self) -> None:
        if self.generations:
            from actors.streams import stop_all

            await stop_all(self, grace=0.0)
        await self._finish_close()

    # ------------------------------------------------------------------ fan-out

    def _publish(self, events: list[Event]) -> None:
        for ev in events:
            self.topic.publish(Frame.of(ev))

    def observe_stream_lag(self, seconds: float) -> None:
        """Record how long streamed text waited between generation and commit."""
        if self.stream_lag_observer is not None:
            self.stream_lag_observer(seconds)

    def on_generation_end(self) -> None:
        self.last_used = time.monotonic()
        self._on_idle(self)
