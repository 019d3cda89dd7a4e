"""The session actor: the one owner of a session's SQLite file.

Input gate: every mutation enters the actor's mailbox and one task applies
them in arrival order. Group commit: the mutations that queue up while a
commit is in flight are applied together, in one transaction, by the next
commit (at most ``max_batch`` at a time), so a busy session pays one fsync
per batch rather than one per message.

Where a batch runs: on the event loop, with no thread hand-off, unless it holds
a :class:`~storage.txn.BulkOp` (search indexing: many rows), which runs
on the write pool. On a durable file (``synchronous`` FULL/EXTRA) an
event-loop batch commits without flushing the disk and the actor then
``fdatasync``s the WAL through the :class:`~actors.syncer.Syncer` (Linux AIO:
no thread at all); a pool batch flushes inside its COMMIT (SQLite FULL).

Output gate: callers are resolved and events published only after the commit
is on disk. A failed commit or flush breaks the actor: the batch and everything
queued behind it fail with a clear error, the file is closed, and the registry
starts a fresh actor from disk on the next request.

Reads never enter the mailbox: :meth:`SessionActor.read` runs ``fn(file)`` on
the actor's reader connection against committed state (WAL), so reads never
wait behind writes. They do wait at the :class:`~actors.gate.OutputGate` for
the flush of a commit already visible in the file, and then run with no await
in between, so no read shows what a crash could still take back.

Around the core: :class:`~actors.replies.Replies` runs the assistant replies
(through the narrow ``ReplyHost`` interface this class offers), and
:class:`~actors.maintenance.Maintenance` decides when to index for search and
when to checkpoint (on the write pool, between batches, never inside a commit).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from actors import maintenance
from actors.context import Compactor, ContextPolicy
from actors.errors import ActorBroken, ActorStopped, Busy
from actors.gate import OutputGate
from actors.hooks import Hooks
from actors.maintenance import Maintenance
from actors.pubsub import Frame, Topic
from actors.replies import Replies
from actors.syncer import Syncer
from actors.turns import Turns
from storage.errors import StorageError, StorageFull, Unavailable
from storage.file import SessionFile
from storage.ids import now_iso
from storage.layout import DataDir
from storage.ops import op_recover_unfinished
from storage.turns import op_recover_turns
from storage.txn import BulkOp, Event, Txn

if TYPE_CHECKING:
    from actors.replica import Replica

T = TypeVar("T")
log = logging.getLogger("roost.actors")

# what the registry does after a reply completed (actor, final message, history)
ReplyDone = Callable[["SessionActor", dict[str, Any], list[dict[str, Any]]], Awaitable[None]]
Results = tuple[list[Any], list[Event], dict[str, Any] | None]


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
    # retention (issue 23): seconds of inactivity before a session (0: never) or a
    # temporary session is deleted, and how often the sweep looks
    session_ttl: float = 0.0
    temporary_ttl: float = 3600.0
    sweep_interval: float = 60.0
    # turns (issue 19): what a chat does while a reply runs; how long a tool call waits
    on_busy: str = "queue"
    tool_timeout: float = 600.0
    # the model's context window (issue 21): sizes per model ("*": any other), the
    # reply's reserve (a fraction of the window), compaction threshold (0: never)
    model_context: dict[str, int] = field(default_factory=lambda: {"*": 8192})
    reply_reserve: float = 0.25
    compact_at: float = 0.6

    def context_policy(self) -> ContextPolicy:
        return ContextPolicy(dict(self.model_context), self.reply_reserve, self.compact_at)


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

    ``submit`` and ``read`` are safe to call concurrently; ``close`` is
    idempotent and waits for queued work to be committed first.
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
        on_commit: Callable[[SessionActor, dict[str, Any], list[Event]], None],
        on_closed: Callable[[SessionActor], None],
        on_idle: Callable[[SessionActor], None] | None = None,
        hooks: Hooks | None = None,
        on_reply_done: ReplyDone | None = None,
        replica: Replica | None = None,
    ) -> None:
        self.sid = sid
        self.datadir = datadir
        self.config = config
        self.topic = topic
        self.hooks = hooks or Hooks()
        self.state = State.STARTING
        self.owner = ""
        self.leases = 0
        self.last_used = time.monotonic()
        self.commits = 0
        self.committed_ops = 0
        self.graceful = True
        self.compactor = Compactor(self, config.context_policy())
        self.replies = Replies(
            self,
            flush_interval=config.flush_interval,
            policy=self.compactor.policy,
            compactor=self.compactor,
        )
        self.turns = Turns(
            self, self.replies, on_busy=config.on_busy, tool_timeout=config.tool_timeout
        )
        self.maintenance = Maintenance(
            index_delay=config.index_delay,
            enqueue=self._enqueue,
            queued=lambda: bool(self._mailbox),
        )
        self._gate = OutputGate()
        self._write_pool = write_pool
        self._syncer = syncer
        self._on_commit = on_commit
        self._on_closed = on_closed
        self._on_idle = on_idle or (lambda actor: None)
        self._on_reply_done = on_reply_done
        self._replica = replica  # --replica: the output gate also waits for it
        self._file: SessionFile | None = None
        self._broke_full = False  # a commit failed on a full disk (see submit_nowait)
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
            if self._replica is not None:  # the local copy made current, then watched
                await self._replica.activate(self.sid, self.datadir)
            f, events, queued = await loop.run_in_executor(self._write_pool, self._open_and_recover)
            self._file = f
            self.owner = f.owner
            if events and self._replica is not None:  # recovery's commit, before its events
                await self._replica.sync(f.path)
        except BaseException as exc:
            await self._finish_close()
            if not self._ready.done():
                self._ready.set_exception(exc)
                self._ready.exception()  # retrieved: waiters re-raise it
            raise
        self.state = State.RUNNING
        self._task = asyncio.create_task(self._run(), name=f"actor:{self.sid}")
        self._publish(events)
        self._on_commit(self, f.read_session(), events)
        self._ready.set_result(None)
        if queued:  # a turn queued before a crash or restart starts now
            self.turns.kick(queued=True)

    def _open_and_recover(self) -> tuple[SessionFile, list[Event], bool]:
        """Open the file and, when a turn was left running, waiting or queued, run
        :func:`op_recover_unfinished` and :func:`op_recover_turns` (on the write
        pool: one hop per activation). Returns the file, the recovery's events
        and whether a queued turn should start; the file is closed again if
        recovery fails."""
        f = self._open()
        try:
            if not f.has_unfinished():  # the usual case: no write transaction at all
                return f, [], False
            results, events, _ = f.run_batch(
                [op_recover_unfinished(), op_recover_turns()], now_iso()
            )
            for res in results:
                if isinstance(res, Exception):
                    raise res
            return f, events, results[1] is True
        except BaseException:
            f.close()
            raise

    def _open(self) -> SessionFile:
        """Open the file (on the write pool); a WAL a crash left over
        ``WAL_OPEN_LIMIT_BYTES`` is checkpointed and truncated before serving."""
        f = SessionFile(
            self.datadir,
            self.sid,
            synchronous=self.config.synchronous,
            event_retention=self.config.event_retention,
        )
        if f.wal_size() > maintenance.WAL_OPEN_LIMIT_BYTES:
            # on failure the data is safe in the WAL; the size check retries later
            with contextlib.suppress(StorageError):
                f.checkpoint(truncate=True)
        return f

    async def wait_ready(self) -> None:
        await asyncio.shield(self._ready)

    async def wait_closed(self) -> None:
        await self._closed.wait()

    @property
    def busy(self) -> bool:
        """Whether the actor holds work that hibernation must not cut short."""
        return bool(self.leases or self._mailbox or self.replies or self.turns.waiting)

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
        # replies get their grace period while the actor still commits
        await self.replies.stop_all(grace=self.config.shutdown_grace if self.graceful else 0.0)
        self.state = State.CLOSING
        self._wakeup.set()
        if self._task is not None:
            await self._task
        await self._finish_close()

    async def _finish_close(self, *, keep_index: bool = False) -> None:
        self.maintenance.stop()
        self.compactor.stop()
        self.turns.stop()
        if self._file is not None:
            f, self._file = self._file, None
            await asyncio.get_running_loop().run_in_executor(
                self._write_pool, partial(f.close, keep_index=keep_index)
            )
        if self._replica is not None:
            await self._replica.deactivate(self.sid, self.datadir)
        self.state = State.CLOSED
        self._closed.set()
        self._on_closed(self)

    # ------------------------------------------------------------------ reads

    @property
    def path(self) -> Path:
        """The session file's path, for a reader with its own connection (an export).

        Such a reader may see commits still being flushed: wait at the gate
        (``await read(...)``) after taking its snapshot, before sending any of it.
        """
        if self._file is None:
            raise ActorStopped(f"session {self.sid!r} is not active; retry")
        return self._file.path

    async def read(self, fn: Callable[[SessionFile], T]) -> T:
        """Run ``fn(file)`` on committed state and return what it returns.

        Waits at the output gate first: every commit the file shows is then
        on disk, and ``fn`` runs right after, synchronously (no await in
        between), so what it reads cannot be taken back by a crash. ``fn``
        must not keep the file. Raises :class:`ActorStopped` if the actor is
        not running (closing, closed, or broken by a failed flush), else what
        ``fn`` raises.
        """
        if self._gate.held:
            await self._gate.wait()
        f = self._file
        if f is None or self.state is not State.RUNNING:
            raise ActorStopped(f"session {self.sid!r} is not active; retry")
        return fn(f)

    # ------------------------------------------------------------------ the write path

    async def submit(self, op: Callable[[Txn], T]) -> T:
        """Apply ``op`` in the session's next transaction and return its result.

        Returns only after the transaction committed. Raises what ``op``
        raised (nothing of it is kept), :class:`ActorBroken` if the commit
        failed, :class:`ActorStopped` if the actor is closing (:class:`StorageFull`
        if it is closing because a commit met a full disk). If the caller
        is cancelled, the op still runs: work given to the actor finishes.
        """
        return await self.submit_nowait(op)

    def submit_nowait(self, op: Callable[[Txn], T]) -> asyncio.Future[T]:
        """Queue ``op`` and return the future of its result (see :meth:`submit`)."""
        if self.state is not State.RUNNING:
            if self._broke_full:
                # a write leased before another op's commit failed on a full disk: the
                # truth is the disk, not a restart (507, not 503 "retry")
                raise StorageFull(f"the disk is full: session {self.sid!r} saved nothing")
            raise ActorStopped(f"session {self.sid!r} is shutting down; retry")
        if len(self._mailbox) >= self.config.max_queue:
            raise Busy(f"session {self.sid!r} has too much queued work; retry shortly")
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._mailbox.append(Envelope(op, fut))
        self._wakeup.set()
        return fut

    def _enqueue(self, op: Callable[[Txn], Any], fut: asyncio.Future[Any]) -> None:
        """Maintenance work: queued past the cap (it is small and self-limiting)."""
        if self.state is State.RUNNING:
            self._mailbox.append(Envelope(op, fut))
            self._wakeup.set()

    async def catch_up_search_index(self) -> None:
        """Index every committed message for search (before a search reads it)."""
        await self.maintenance.catch_up(self.submit)

    async def _run(self) -> None:
        """The actor's one task, per batch: mailbox → commit → flush → publish → resolve."""
        while True:
            while not self._mailbox:
                if self.state is not State.RUNNING:
                    self.maintenance.stop()
                    return
                self._wakeup.clear()
                self.maintenance.idle()
                await self._wakeup.wait()
            n = min(len(self._mailbox), self.config.max_batch)
            batch = [self._mailbox.popleft() for _ in range(n)]
            started = time.perf_counter()
            try:
                results, events, session = await self._commit(batch)  # flushed on return
            except BaseException as exc:
                self._break(exc, batch)
                return
            self.hooks.on_commit(time.perf_counter() - started, n)
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
            if session is not None:
                self._on_commit(self, session, events)
            if self.maintenance.committed(n, bool(events)):
                await self._checkpoint()
            elif self.maintenance.size_check_due():
                f = self._file
                if f is not None and f.wal_size() > maintenance.WAL_LIMIT_BYTES:
                    await self._checkpoint(truncate=True)

    async def _commit(self, batch: list[Envelope]) -> Results:
        """Run ``batch`` in one transaction; return once it is on disk.

        A batch holding a :class:`BulkOp` runs on the write pool (flushed in
        its COMMIT); any other runs on the event loop, then its WAL is flushed.
        """
        f = self._file
        assert f is not None
        ops = [e.op for e in batch]
        if any(isinstance(op, BulkOp) for op in ops):
            loop = asyncio.get_running_loop()
            res = await loop.run_in_executor(self._write_pool, f.run_batch, ops, now_iso())
            await self._flush(f, durable=False)  # flushed in its COMMIT: the replica is left
            return res
        out = f.run_batch(ops, now_iso(), sync=False)
        await self._flush(f, durable=f.durable)
        return out

    async def _flush(self, f: SessionFile, *, durable: bool) -> None:
        """Hold the output gate while a commit is made safe: the WAL's ``fdatasync``
        (``durable``: an event-loop commit of a durable file) and, with
        ``--replica``, the replica's sync-and-wait of the batch (``Replica.sync``).
        Returns at once when there is neither."""
        fd = -1
        if durable:
            # no WAL: nothing was ever written through this file
            with contextlib.suppress(FileNotFoundError):
                fd = f.wal_fd()
        if fd < 0 and self._replica is None:
            return
        token = self._gate.hold()
        try:
            if fd >= 0:
                await self._syncer.fdatasync(fd)
            if self._replica is not None:
                await self._replica.sync(f.path)
        except BaseException as exc:
            self._gate.release(token, exc)
            if not isinstance(exc, OSError):
                raise
            cls = StorageFull if exc.errno in (errno.ENOSPC, errno.EDQUOT) else Unavailable
            raise cls(f"flushing session {self.sid!r} to disk failed: {exc.strerror}") from exc
        self._gate.release(token)

    async def _checkpoint(self, *, truncate: bool = False) -> None:
        f = self._file
        if f is None:
            return
        # on failure the data is still safe in the WAL; the next checkpoint retries
        with contextlib.suppress(StorageError):
            await asyncio.get_running_loop().run_in_executor(
                self._write_pool, partial(f.checkpoint, truncate=truncate)
            )

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
        self._broke_full = isinstance(exc, StorageFull)
        for env in batch:
            if not env.future.done():
                env.future.set_exception(first)
        while self._mailbox:
            env = self._mailbox.popleft()
            if not env.future.done():
                env.future.set_exception(rest)
        self.state = State.CLOSING
        self.maintenance.stop()
        if self._close_task is None:
            self._close_task = asyncio.create_task(self._after_break())

    async def _after_break(self) -> None:
        await self.replies.stop_all(grace=0.0)
        # the next activation reopens at once: keep the WAL index for it (on a full
        # disk a new one could not be allocated, and reads would answer 507)
        await self._finish_close(keep_index=True)

    # ------------------------------------------------------------------ fan-out and ReplyHost

    def _publish(self, events: list[Event]) -> None:
        for ev in events:
            self.topic.publish(Frame.of(ev))

    def on_stream_lag(self, seconds: float) -> None:
        """ReplyHost: streamed text waited ``seconds`` between generation and commit."""
        self.hooks.on_stream_lag(seconds)

    async def after_reply(self, final: dict[str, Any], history: list[dict[str, Any]]) -> None:
        """ReplyHost: a reply completed (the registry titles a new chat). Never raises."""
        if self._on_reply_done is not None:
            try:
                await self._on_reply_done(self, final, history)
            except Exception as exc:
                log.warning("after the reply %s: %r", final.get("id"), exc)

    def on_usage(self, model: str, usage: dict[str, Any]) -> None:
        """ReplyHost: a reply's usage was committed."""
        self.hooks.on_usage(model, usage)

    def on_reply_end(self) -> None:
        """ReplyHost: a reply ended; the actor may now be idle."""
        self.last_used = time.monotonic()
        self._on_idle(self)
