"""Keeping each user's cross-session search index up to date, off the write path.

A commit hands its events to :meth:`UserSearch.feed` once they are on disk
(after the output gate, so nothing unflushed is indexed): they are kept in
memory, up to ``FED_BYTES`` for all sessions together. A background task,
``delay`` seconds later, applies what each user's sessions were fed to the
user's index (:class:`storage.usersearch.UserIndex`) in one transaction on the
write pool (:meth:`UserIndex.apply_fed`), so a round costs one job and one
commit per user, not a few per session. A session whose events cannot be
applied that way (fed past the budget, never indexed, a gap) is marked dirty
(:meth:`UserSearch.note`, also used by writes that are not commits, such as an
import) and caught up from its committed events, read through its actor, or
from its file when no actor has it open. A search first catches its user's
sessions up (:meth:`UserSearch.search`), so it sees every change acknowledged
before it, edits and deletes included.

A session the index has never seen (an import, a session older than the
index) or whose events were pruned past the index's mark is rebuilt from its
messages. A session no actor has open is read from its file directly
(all its commits are flushed), so indexing never activates an actor. Work
on one user's index is serialized by a lock per user; open
index files are kept in a small LRU.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Executor, Future
from contextlib import AbstractAsyncContextManager
from functools import partial
from typing import Any, Protocol, TypeVar

from actors.actor import SessionActor
from storage.errors import NotFound, StorageError
from storage.layout import DataDir
from storage.txn import Event
from storage.usersearch import (
    UserIndex,
    catch_up_file,
    changes_from_events,
    index_events,
    prepare_fed,
    session_docs,
    user_index_path,
)

log = logging.getLogger("roost.actors")
T = TypeVar("T")

EVENTS_BATCH = 500
DOCS_BATCH = 2000
OPEN_INDEXES = 64
# event frames kept in memory for indexing, all sessions together; past it a
# session is indexed from its committed events instead (read back from disk)
FED_BYTES = 4 << 20
# how long closing waits for what is still to be indexed
CLOSE_WAIT = 5.0
# events decoded for indexing between two yields to the event loop
PREPARE_SLICE = 256


def _size(events: list[Event]) -> int:
    return sum(len(ev.frame) for ev in events)


def _events_since(f: Any, *, since: int) -> Any:
    return index_events(f, since, EVENTS_BATCH)


class SearchHost(Protocol):
    """What the indexer needs of the registry (one-way: no import of it)."""

    @property
    def datadir(self) -> DataDir: ...

    @property
    def write_pool(self) -> Executor: ...

    def lease(self, sid: str, user: str = "") -> AbstractAsyncContextManager[SessionActor]: ...

    def actor_if_live(self, sid: str) -> SessionActor | None: ...


class UserSearch:
    """The per-user search indexes of one registry. ``start`` once; ``close`` is idempotent."""

    def __init__(self, host: SearchHost, *, delay: float = 0.25) -> None:
        self.host = host
        self.delay = delay
        self._dirty: dict[str, set[str]] = {}
        # owner -> session -> its committed events not indexed yet, in seq order
        self._fed: dict[str, dict[str, list[Event]]] = {}
        self._fed_bytes = 0
        self._locks: dict[str, asyncio.Lock] = {}
        self._open: OrderedDict[str, UserIndex] = OrderedDict()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._jobs: set[Future[Any]] = set()  # on the write pool now
        self._closed = False
        # cluster mode has no search across sessions yet (it answers 501): a shard
        # turns the indexer off rather than index for nobody
        self.enabled = True

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="registry:user-search")

    async def close(self) -> None:
        """Index what is still pending (for at most ``CLOSE_WAIT`` seconds: a
        restart would not know of it until its session is written again), then
        stop and close the open index files. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._jobs_done()  # a cancelled step's job: the index is its until it ends
        try:
            async with asyncio.timeout(CLOSE_WAIT):
                for owner in self._pending_owners():
                    await self.catch_up(owner)
        except (TimeoutError, Exception) as exc:
            log.warning("search index left behind at shutdown: %r", exc)
        # closing a file under a running job crashed the process
        await self._jobs_done()
        for idx in self._open.values():
            idx.close()
        self._open.clear()

    async def _jobs_done(self) -> None:
        """Wait for the jobs on the write pool (a cancelled step's job runs on)."""
        while self._jobs:
            await asyncio.wait([asyncio.wrap_future(job) for job in list(self._jobs)])

    # ---------------------------------------------------------------- feeding

    def note(self, sid: str, owner: str) -> None:
        """Session ``sid`` of ``owner`` committed a change (cheap; on every commit)."""
        if not self.enabled:
            return
        sids = self._dirty.get(owner)
        if sids is None:
            sids = self._dirty[owner] = set()
        if sid not in sids:
            sids.add(sid)
            self._wakeup.set()

    def feed(self, sid: str, owner: str, events: list[Event]) -> None:
        """Session ``sid`` of ``owner`` committed ``events`` (on disk now, in order).

        Cheap: on every commit. The durable ones are kept for the next round;
        past :data:`FED_BYTES` (or while the session is dirty anyway) the session
        is noted instead, and its events are read back from disk then.
        """
        if not self.enabled:
            return
        durable = [ev for ev in events if ev.seq is not None]
        if not durable:
            return
        size = _size(durable)
        if sid in self._dirty.get(owner, ()) or self._fed_bytes + size > FED_BYTES:
            self._drop_fed(owner, sid)
            self.note(sid, owner)
            return
        self._fed.setdefault(owner, {}).setdefault(sid, []).extend(durable)
        self._fed_bytes += size
        self._wakeup.set()

    def _drop_fed(self, owner: str, sid: str) -> None:
        kept = self._fed.get(owner, {}).pop(sid, None)
        if kept is not None:
            self._fed_bytes -= _size(kept)

    def _take_fed(self, owner: str) -> dict[str, list[Event]]:
        fed = self._fed.pop(owner, {})
        self._fed_bytes -= sum(_size(events) for events in fed.values())
        return fed

    def _pending_owners(self) -> list[str]:
        """Users with something fed or dirty."""
        return list({**self._fed, **self._dirty})

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            await asyncio.sleep(self.delay)
            self._wakeup.clear()
            for owner in self._pending_owners():
                try:
                    await self.catch_up(owner)
                except Exception:  # logged; the sessions stay dirty for the next round
                    log.exception("indexing the sessions of user %r for search failed", owner)
                    await asyncio.sleep(1.0)
                    self._wakeup.set()

    def _lock(self, owner: str) -> asyncio.Lock:
        lock = self._locks.get(owner)
        if lock is None:
            lock = self._locks[owner] = asyncio.Lock()
        return lock

    async def _pool(self, fn: Callable[[], T]) -> T:
        job = self.host.write_pool.submit(fn)
        self._jobs.add(job)
        job.add_done_callback(self._jobs.discard)
        return await asyncio.wrap_future(job)

    async def _index_of(self, owner: str) -> UserIndex:
        idx = self._open.get(owner)
        if idx is not None:
            self._open.move_to_end(owner)
            return idx
        path = user_index_path(self.host.datadir, owner)
        idx = await self._pool(lambda: UserIndex(path))
        self._open[owner] = idx
        while len(self._open) > OPEN_INDEXES:
            victim = next(
                (o for o in self._open if o != owner and not self._lock(o).locked()), None
            )
            if victim is None:
                break
            old = self._open.pop(victim)
            await self._pool(old.close)
        return idx

    async def catch_up(self, owner: str) -> None:
        """Index every change committed so far to ``owner``'s sessions.

        What the sessions were fed goes in first, in one job; the sessions it
        could not cover and the dirty ones are then caught up one by one. A
        session that failed to index stays dirty (for the next round) and its
        error is raised after the others are done.
        """
        async with self._lock(owner):
            fed = self._take_fed(owner)
            sids = self._dirty.pop(owner, set())
            if not fed and not sids:
                return
            failed: Exception | None = None
            todo = sorted(sids)
            try:
                if fed:
                    try:
                        await self._apply_fed(owner, fed, sids)
                    except Exception as exc:  # every fed session is caught up from disk
                        log.warning("indexing user %r's new commits failed: %r", owner, exc)
                        sids.update(fed)
                    fed = {}
                    todo = sorted(sids)
                while todo:
                    sid = todo[0]
                    try:
                        await self._index(owner, sid)
                    except NotFound:
                        idx = await self._index_of(owner)
                        await self._pool(partial(idx.drop_session, sid))
                    except Exception as exc:
                        self._dirty.setdefault(owner, set()).add(sid)
                        failed = exc
                    todo.pop(0)
            except BaseException:  # cancelled: what was not done is caught up next time
                self._dirty.setdefault(owner, set()).update(todo, fed)
                raise
            if failed is not None:
                raise failed

    async def _apply_fed(self, owner: str, fed: dict[str, list[Event]], left: set[str]) -> None:
        """Apply ``fed`` to ``owner``'s index in one job; add to ``left`` the sessions
        it does not cover. Decoding and tokenizing run here, on the event loop (a
        few microseconds an event, yielding now and then): Python work on a pool
        thread would contend for the GIL with the loop, which costs the loop more
        than the work itself. The pool job runs SQLite only."""
        prepared = []
        done = 0
        for sid, events in fed.items():
            if sid in left:
                continue  # caught up from disk anyway
            one = prepare_fed(sid, events)
            if one is None:
                left.add(sid)
            else:
                prepared.append(one)
            done += len(events)
            if done >= PREPARE_SLICE:
                done = 0
                await asyncio.sleep(0)
        if prepared:
            idx = await self._index_of(owner)
            left.update(await self._pool(partial(idx.apply_fed, prepared)))

    async def _index(self, owner: str, sid: str) -> None:
        idx = await self._index_of(owner)
        live = self.host.actor_if_live(sid)
        if live is None or live.owner != owner:
            # no actor has it open (so everything committed is on disk): read the file
            # directly rather than activate it (and evict another) for indexing
            path = self.host.datadir.session_db(sid)
            await self._pool(partial(catch_up_file, idx, path, sid, batch=EVENTS_BATCH))
            return
        mark = await self._pool(lambda: idx.watermark(sid))
        # closing: the registry leases nothing more, and evicts nothing either
        held = contextlib.nullcontext(live) if self._closed else self.host.lease(sid, owner)
        async with held as actor:
            if mark is not None and await actor.read(lambda f: f.event_seq()) <= mark:
                return  # indexed up to its last event (an activation changes nothing)
            while True:
                if mark is None:
                    await self._rebuild(idx, actor, sid)
                    return
                since = mark
                events, more = await actor.read(partial(_events_since, since=since))
                if events is None:  # pruned past the mark: rebuild from the messages
                    mark = None
                    continue
                if not events:
                    return
                changes = changes_from_events(events)
                upto = events[-1].seq or since
                await self._pool(partial(idx.apply, sid, changes, upto))
                mark = upto
                if not more:
                    return

    async def _rebuild(self, idx: UserIndex, actor: SessionActor, sid: str) -> None:
        # the mark first: changes committed while the batches are read are replayed later
        upto = await actor.read(lambda f: f.event_seq())
        after, first = 0, True
        while True:
            docs, more = await actor.read(partial(session_docs, after_seq=after, limit=DOCS_BATCH))
            await self._pool(partial(idx.rebuild_session, sid, docs, upto, first=first))
            first = False
            if not more:
                return
            after = docs[-1].seq

    async def drop(self, owner: str, sid: str) -> None:
        """Forget deleted session ``sid`` of ``owner``. Idempotent; never raises storage errors."""
        async with self._lock(owner):
            sids = self._dirty.get(owner)
            if sids is not None:
                sids.discard(sid)
            self._drop_fed(owner, sid)
            try:
                idx = await self._index_of(owner)
                await self._pool(lambda: idx.drop_session(sid))
            except StorageError as exc:
                log.warning("could not drop session %s from the search index: %s", sid, exc)

    # ---------------------------------------------------------------- searching

    async def search(
        self, owner: str, q: str, *, limit: int, offset: int, raw: bool
    ) -> list[dict[str, Any]]:
        """``owner``'s messages matching ``q`` across sessions, best first, from
        ``offset`` (see :meth:`UserIndex.search`); changes acknowledged before
        the call are indexed first. Raises ``InvalidQuery``."""
        try:
            await self.catch_up(owner)
        except StorageError as exc:  # search what is indexed; the rest follows
            log.warning("search of user %r runs on a partial index: %s", owner, exc)
        async with self._lock(owner):
            idx = await self._index_of(owner)
            return await self._pool(lambda: idx.search(q, limit=limit, offset=offset, raw=raw))
