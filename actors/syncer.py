"""Asynchronous ``fdatasync`` for the event loop: Linux native AIO, else a thread pool.

Durable commits end with an ``fdatasync`` of the session's WAL file, and the
output gate stays shut until it returns. Running that call in a thread pool
costs two thread wake-ups and a GIL hand-off per commit; under load the GIL
hand-offs, not the disk, bound the server (perf showed about a third of the
event-loop thread in futex wake-ups). Linux can do the call itself:
``io_submit`` with ``IOCB_CMD_FDSYNC`` (kernel 4.18+) queues the sync on a
kernel worker and returns at once; completion is signalled on an ``eventfd``
that the event loop watches, so no Python thread is involved at all.

:class:`Syncer` uses AIO where it works (checked with a real sync at start)
and falls back to a small thread pool elsewhere; the caller cannot tell the
difference except in speed. ``fdatasync`` returns an ``asyncio`` future that
resolves once the data is on stable storage, or fails with ``OSError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import os
import platform
import select
import sys
import tempfile
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

__all__ = ["Syncer"]

# syscall numbers: (io_setup, io_destroy, io_getevents, io_submit)
_SYSCALLS = {"x86_64": (206, 207, 208, 209), "aarch64": (0, 1, 4, 2)}
_IOCB_CMD_FDSYNC = 3
_IOCB_FLAG_RESFD = 1
_MAX_IN_FLIGHT = 1024


class _Iocb(ctypes.Structure):
    # struct iocb (linux/aio_abi.h), little-endian layout
    _fields_ = [
        ("aio_data", ctypes.c_uint64),
        ("aio_key", ctypes.c_uint32),
        ("aio_rw_flags", ctypes.c_int32),
        ("aio_lio_opcode", ctypes.c_uint16),
        ("aio_reqprio", ctypes.c_int16),
        ("aio_fildes", ctypes.c_uint32),
        ("aio_buf", ctypes.c_uint64),
        ("aio_nbytes", ctypes.c_uint64),
        ("aio_offset", ctypes.c_int64),
        ("aio_reserved2", ctypes.c_uint64),
        ("aio_flags", ctypes.c_uint32),
        ("aio_resfd", ctypes.c_uint32),
    ]


class _IoEvent(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_uint64),
        ("obj", ctypes.c_uint64),
        ("res", ctypes.c_int64),
        ("res2", ctypes.c_int64),
    ]


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Batch:
    """``(key, fd)`` pairs and the ``iocb`` array that asks for their syncs (kept
    alive until ``io_submit`` returns)."""

    __slots__ = ("iocbs", "items", "ptrs")

    def __init__(self, items: list[tuple[int, int]], iocbs: object, ptrs: object) -> None:
        self.items = items
        self.iocbs = iocbs
        self.ptrs = ptrs


class _Aio:
    """One AIO context whose completions are counted on an eventfd."""

    def __init__(self) -> None:
        nums = _SYSCALLS.get(platform.machine())
        if not sys.platform.startswith("linux") or nums is None or sys.byteorder != "little":
            raise OSError(errno.ENOSYS, "Linux AIO is not available here")
        self._setup, self._destroy, self._getevents, self._submit = nums
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._syscall = self._libc.syscall
        self._syscall.restype = ctypes.c_long
        self.ctx = ctypes.c_ulong(0)
        if self._syscall(self._setup, _MAX_IN_FLIGHT, ctypes.byref(self.ctx)) != 0:
            e = ctypes.get_errno()
            raise OSError(e, f"io_setup: {os.strerror(e)}")
        self.efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._events = (_IoEvent * 256)()
        self._zero = _Timespec(0, 0)

    def prepare(self, items: list[tuple[int, int]]) -> _Batch:
        """Build the ``iocb`` array for ``fdatasync`` of each ``(key, fd)``."""
        n = len(items)
        iocbs = (_Iocb * n)()
        ptrs = (ctypes.POINTER(_Iocb) * n)()
        for i, (key, fd) in enumerate(items):
            cb = iocbs[i]
            cb.aio_data = key
            cb.aio_lio_opcode = _IOCB_CMD_FDSYNC
            cb.aio_fildes = fd
            cb.aio_flags = _IOCB_FLAG_RESFD
            cb.aio_resfd = self.efd
            ptrs[i] = ctypes.pointer(cb)
        return _Batch(items, iocbs, ptrs)

    def submit_prepared(self, batch: _Batch) -> int:
        """``io_submit`` a prepared batch; return how many the kernel took.

        Safe to call from another thread: ``ctypes`` releases the GIL for the call.
        """
        got = self._syscall(self._submit, self.ctx, ctypes.c_long(len(batch.items)), batch.ptrs)
        if got < 0:
            e = ctypes.get_errno()
            raise OSError(e, f"io_submit: {os.strerror(e)}")
        return int(got)

    def submit(self, items: list[tuple[int, int]]) -> int:
        """Queue ``fdatasync`` for each ``(key, fd)``; return how many the kernel took."""
        return self.submit_prepared(self.prepare(items))

    def reap(self) -> list[tuple[int, int]]:
        """Completed ``(key, result)`` pairs, without waiting; result is 0 or -errno."""
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(self.efd)
        done: list[tuple[int, int]] = []
        while True:
            got = self._syscall(
                self._getevents,
                self.ctx,
                ctypes.c_long(0),
                ctypes.c_long(len(self._events)),
                self._events,
                ctypes.byref(self._zero),
            )
            if got < 0:
                e = ctypes.get_errno()
                if e == errno.EINTR:
                    continue
                raise OSError(e, f"io_getevents: {os.strerror(e)}")
            for i in range(got):
                ev = self._events[i]
                done.append((int(ev.data), int(ev.res)))
            if got < len(self._events):
                return done

    def close(self) -> None:
        self._syscall(self._destroy, self.ctx)
        os.close(self.efd)


class Syncer:
    """``fdatasync`` files without blocking the event loop (see the module doc).

    Create and use it on the event loop thread; ``close()`` fails what is
    still in flight with ``OSError``. ``kind`` says which mechanism is in use:
    ``"aio"`` or ``"threads"``.
    """

    def __init__(
        self,
        *,
        threads: int = 4,
        use_aio: bool = True,
        probe_dir: str | None = None,
        submit_thread: bool = True,
    ) -> None:
        """``probe_dir``: a folder on the file system that will be synced (the data
        dir), where AIO is tried once before it is trusted.

        ``submit_thread``: make the ``io_submit`` calls on one helper thread
        rather than on the event loop. The kernel starts each sync on a worker
        bound to the submitting CPU, which runs at once and preempts the caller
        (about 20 µs per sync); from a helper thread that cost lands on whichever
        CPU the helper runs on, not on the event loop. Syncs asked for while a
        submit is in progress go together in the next one, so the hand-off is
        paid once per batch, not per sync. A lone sync on an idle server is
        submitted inline: there the hand-off would only add latency.
        """
        self._loop = asyncio.get_running_loop()
        self._threads = threads
        self._aio: _Aio | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._waiting: dict[int, asyncio.Future[None]] = {}
        self._backlog: deque[tuple[int, int]] = deque()
        self._pending: list[tuple[int, int]] = []
        self._flush_scheduled = False
        self._next_key = 1
        self._in_flight = 0
        self._fds: dict[int, int] = {}
        self._submitter: ThreadPoolExecutor | None = None
        self._submitting: Future[tuple[_Batch, int | OSError]] | None = None
        if use_aio:
            try:
                self._aio = _Aio()
                self._probe(probe_dir)
            except OSError:
                if self._aio is not None:
                    self._aio.close()
                self._aio = None
        if self._aio is not None:
            self._loop.add_reader(self._aio.efd, self._on_ready)
            if submit_thread:
                self._submitter = ThreadPoolExecutor(1, thread_name_prefix="roost-aio-submit")
        else:
            self._pool = ThreadPoolExecutor(threads, thread_name_prefix="roost-fsync")

    def _use_threads(self) -> None:
        """Give up on AIO for good (the kernel refused an fsync it took at the probe)."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="roost-fsync")

    @property
    def kind(self) -> str:
        return "aio" if self._aio is not None and self._pool is None else "threads"

    def _probe(self, where: str | None) -> None:
        """Sync a scratch file through AIO and wait for it: proves the kernel path works.

        The scratch file is empty (an unnamed temporary file where the OS has them):
        the probe needs no free space, so a server started on a full disk still
        flushes through AIO. ENOSPC met anyway (a file system that must allocate
        to create a file) says nothing against AIO: it is kept, and a file system
        that cannot sync through AIO is still caught at the first real sync (EINVAL
        moves that sync and all later ones to threads; any other error, ENOSPC
        included, fails only that sync).
        """
        try:
            with tempfile.TemporaryFile(dir=where) as tmp:
                self._probe_fd(tmp.fileno())
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                return
            raise

    def _probe_fd(self, fd: int) -> None:
        """One AIO ``fdatasync`` of ``fd``, waited for; raises ``OSError`` unless it worked."""
        assert self._aio is not None
        if self._aio.submit([(0, fd)]) != 1:
            raise OSError(errno.EAGAIN, "io_submit took nothing")
        with select.epoll() as ep:
            ep.register(self._aio.efd, select.EPOLLIN)
            if not ep.poll(5.0):
                raise OSError(errno.ETIMEDOUT, "AIO fdatasync did not complete")
        done = self._aio.reap()
        if done in ([(0, -errno.ENOSPC)], [(0, -errno.EDQUOT)]):
            raise OSError(-done[0][1], "AIO fdatasync probe: no space (AIO itself works)")
        if done != [(0, 0)]:
            raise OSError(errno.EIO, f"AIO fdatasync probe answered {done!r}")

    def fdatasync(self, fd: int) -> asyncio.Future[None]:
        """A future that resolves once ``fd``'s data is on stable storage."""
        fut: asyncio.Future[None] = self._loop.create_future()
        if self._pool is not None:
            self._on_thread(fd, fut)
            return fut
        key = self._next_key
        self._next_key += 1
        self._waiting[key] = fut
        self._fds[key] = fd
        self._pending.append((key, fd))
        if not self._flush_scheduled:
            # one io_submit for everything asked during this loop iteration
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        return fut

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._aio is None:
            return  # closed meanwhile; close() failed what was pending
        items, self._pending = self._pending, []
        self._backlog.extend(items)
        self._submit_backlog()

    def _submit_backlog(self) -> None:
        """Hand the backlog to the kernel, as much as the context has room for.

        With a submitter thread one batch is with it at a time; the next goes
        when it returns, so everything asked meanwhile makes one batch.
        """
        aio = self._aio
        assert aio is not None
        while self._backlog and self._submitting is None:
            room = _MAX_IN_FLIGHT - self._in_flight
            if room <= 0:
                return  # a completion makes room and calls this again
            items = [self._backlog.popleft() for _ in range(min(room, len(self._backlog), 256))]
            batch = aio.prepare(items)
            # an idle server syncs one file at a time: a hand-off would only add latency
            inline = self._submitter is None or (len(items) == 1 and self._in_flight == 0)
            self._in_flight += len(items)  # reserved; given back for what was not taken
            if inline:
                try:
                    took: int | OSError = aio.submit_prepared(batch)
                except OSError as exc:
                    took = exc
                self._submitted(batch, took)
                continue
            assert self._submitter is not None
            job = self._submitter.submit(_submit_in_thread, aio, batch)
            self._submitting = job
            job.add_done_callback(
                lambda j: self._loop.call_soon_threadsafe(self._submitter_returned, j)
            )

    def _submitter_returned(self, job: Future[tuple[_Batch, int | OSError]]) -> None:
        if job is not self._submitting:
            return  # close() handled it
        self._submitting = None
        self._submitted(*job.result())
        self._submit_backlog()

    def _submitted(self, batch: _Batch, took: int | OSError) -> None:
        """Account for one ``io_submit``: put back what the kernel did not take."""
        items = batch.items
        if isinstance(took, OSError):
            self._in_flight -= len(items)
            if took.errno == errno.EAGAIN:
                self._backlog.extendleft(reversed(items))
                if self._in_flight == 0:  # no completion will come to retry it
                    self._loop.call_later(0.001, self._submit_backlog)
                return
            # io_submit fails only for the first iocb it could not take: that sync
            # gets the error, the rest go again
            self._resolve(items[0][0], -(took.errno or errno.EIO))
            self._backlog.extendleft(reversed(items[1:]))
            return
        self._in_flight -= len(items) - took
        self._backlog.extendleft(reversed(items[took:]))

    def _on_ready(self) -> None:
        aio = self._aio
        assert aio is not None
        for key, res in aio.reap():
            self._in_flight -= 1
            self._resolve(key, res)
        if self._backlog:
            self._submit_backlog()

    def _resolve(self, key: int, res: int, *, may_retry: bool = True) -> None:
        """Settle sync ``key`` with the kernel's result (0 or -errno). A file system
        that cannot sync through AIO moves it, and all later syncs, to threads."""
        fd = self._fds.pop(key, -1)
        fut = self._waiting.pop(key, None)
        if fut is None or fut.done():
            return
        if res in (-errno.EINVAL, -errno.EOPNOTSUPP) and may_retry and fd >= 0:
            self._use_threads()
            self._on_thread(fd, fut)
            return
        if res < 0:
            fut.set_exception(OSError(-res, f"fdatasync: {os.strerror(-res)}"))
        else:
            fut.set_result(None)

    def _on_thread(self, fd: int, fut: asyncio.Future[None]) -> None:
        """``fdatasync(fd)`` on the thread pool; its outcome settles ``fut``."""
        assert self._pool is not None
        inner = self._loop.run_in_executor(self._pool, os.fdatasync, fd)
        inner.add_done_callback(lambda f: _copy(f, fut))

    def close(self) -> None:
        """Stop; anything still in flight fails with ``OSError``. Idempotent."""
        if self._aio is not None:
            self._loop.remove_reader(self._aio.efd)
            if self._submitter is not None:
                self._submitter.shutdown(wait=True)
                self._submitter = None
                job, self._submitting = self._submitting, None
                if job is not None:
                    self._submitted(*job.result())
            # wait for the kernel to finish what it took, so no fd is synced after close
            for key, res in self._drain():
                self._resolve(key, res, may_retry=False)
            self._aio.close()
            self._aio = None
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(OSError(errno.ECANCELED, "fdatasync abandoned: shutting down"))
        self._waiting.clear()
        self._fds.clear()
        self._backlog.clear()
        self._pending.clear()

    def _drain(self) -> list[tuple[int, int]]:
        assert self._aio is not None
        in_flight = self._in_flight
        done: list[tuple[int, int]] = []
        with select.epoll() as ep:
            ep.register(self._aio.efd, select.EPOLLIN)
            while len(done) < in_flight and ep.poll(5.0):
                done.extend(self._aio.reap())
        return done


def _submit_in_thread(aio: _Aio, batch: _Batch) -> tuple[_Batch, int | OSError]:
    try:
        return batch, aio.submit_prepared(batch)
    except OSError as exc:
        return batch, exc


def _copy(src: asyncio.Future[None], dst: asyncio.Future[None]) -> None:
    if dst.done():
        return
    if src.cancelled():
        dst.cancel()
        return
    exc = src.exception()
    if exc is not None:
        dst.set_exception(exc)
    else:
        dst.set_result(None)
