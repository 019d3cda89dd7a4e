"""The registry: finds, activates, caps and hibernates session actors.

Single activation: the first request for a cold session inserts its actor
into the table before awaiting anything, so requests that race find that
actor and wait for it to be ready; there is never a second one.

Hibernation: an actor with no lease, no queued work, no running reply and no
subscribers closes its file after ``idle_timeout``; the next request activates
it again. The number of live actors is capped at ``max_live``: to make room,
the least recently used actor without work is closed (its subscribers stay
connected, since topics outlive activations); if every live actor is busy, an
activation waits for one to become free.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sqlite3
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from actors.across import AcrossSessions
from actors.actor import ActorConfig, SessionActor, State
from actors.errors import ActorStopped
from actors.hooks import Hooks
from actors.process import trim_heap
from actors.pubsub import Frame, Subscription, Topic
from actors.responders import EchoResponder, Responder
from actors.session import SessionHandle as SessionHandle  # the façade type
from actors.session import SessionLease
from actors.shares import ShareLinks
from actors.syncer import Syncer
from actors.titles import make_title
from actors.userlog import UserLogs, listed
from actors.usersearch import UserSearch
from storage.catalog import Catalog
from storage.catalog import ListFilters as ListFilters  # the list filters type (server)
from storage.errors import (
    Conflict,
    NotFound,
    StorageError,
    Unavailable,
)
from storage.export import ImportPlan, parse_export, populate_import
from storage.file import SessionFile
from storage.ids import now_iso, uuid7, validate_session_id
from storage.layout import DataDir, DiskReserve, open_data_dir, unpark_all
from storage.layout import DataDirLock as DataDirLock  # the claim_data_dir lock type
from storage.lifecycle import create_session_file, remove_session_files
from storage.txn import Event, feed_delta

if TYPE_CHECKING:
    from actors.replica import Replica

log = logging.getLogger("roost.actors")

# What the listeners of a reply stopped by shutdown are told before its final message.
SHUTTING_DOWN: dict[str, Any] = {
    "code": "shutting_down",
    "message": "the server is shutting down: the reply stopped here, its text so far kept "
    "(status interrupted); continue on another server or after the restart",
}


def claim_data_dir(root: str) -> DataDirLock:
    """Check data dir ``root`` for one process's registry and lock it (one server per
    data dir); the caller holds the returned lock for the process's life.

    Raises ``DataDirError`` (a storage error) with a message for the operator when
    ``root`` cannot be used, and ``DataDirInUse`` when another server holds it.
    """
    return open_data_dir(root)


class ActorRegistry(AcrossSessions, ShareLinks):
    """All live actors of one data dir. ``start`` once, ``close`` idempotently."""

    def __init__(
        self,
        datadir: DataDir,
        config: ActorConfig,
        *,
        write_threads: int = 16,
        read_threads: int = 4,
        fsync: str = "auto",
        disk_reserve: int = 0,
    ) -> None:
        if fsync not in ("auto", "threads"):
            raise ValueError(f"fsync must be 'auto' or 'threads', got {fsync!r}")
        self.datadir = datadir
        # free space kept in reserve: below it, new writes are refused (507)
        self.disk = DiskReserve(datadir.root, disk_reserve)
        self.fsync_mode = fsync
        self._syncer: Syncer | None = None
        self.config = config
        self.hooks: Hooks = Hooks()
        self.write_pool = ThreadPoolExecutor(write_threads, thread_name_prefix="roost-write")
        self.read_pool = ThreadPoolExecutor(read_threads, thread_name_prefix="roost-read")
        self.responder: Responder = EchoResponder()
        self._actors: OrderedDict[str, SessionActor] = OrderedDict()
        self._topics: dict[str, Topic] = {}
        self._deleting: set[str] = set()
        self._catalog: Catalog | None = None
        self._catalog_lock = asyncio.Lock()
        self._catalog_pending: dict[str, tuple[str, dict[str, Any]]] = {}
        self._catalog_wakeup = asyncio.Event()
        self._room = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self._stop_deadline: float | None = None  # loop time: set by stop_replies
        # issue 23: the users' list feeds, cross-session search, what each list shows
        self.user_logs = UserLogs()
        self.user_search = UserSearch(self, delay=config.index_delay)
        self._listed: OrderedDict[str, tuple[Any, ...]] = OrderedDict()
        self.expired_total = 0
        self.make_title = make_title
        self.replica: Replica | None = None  # --replica (actors.replica), set before start

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.replica is not None:  # the catalog is made current before it opens
            self.replica.known = lambda sid: self._owner_in_catalog(sid) is not None
            await self.replica.start(self.datadir)
        self._catalog = await loop.run_in_executor(self.write_pool, Catalog, self.datadir)
        if self.replica is not None:
            await self.replica.register_catalog(self.recent_hosted, self.datadir)
        self._syncer = Syncer(use_aio=self.fsync_mode == "auto", probe_dir=str(self.datadir.root))
        self._tasks = [
            asyncio.create_task(self._sweep(), name="registry:sweep"),
            asyncio.create_task(self._catalog_flusher(), name="registry:catalog"),
        ]
        if self.config.sweep_interval > 0:
            self._tasks.append(asyncio.create_task(self._expiry_sweep(), name="registry:expiry"))
        self.user_search.start()

    async def stop_replies(self, grace: float | None = None) -> None:
        """Shutdown, first step: give running replies ``grace`` seconds (default
        ``config.shutdown_grace``) to finish, then stop them as ``interrupted``
        with their text kept; their listeners get a :data:`SHUTTING_DOWN`
        ``error`` frame, then the final ``message`` once its commit is flushed,
        and the session feeds the ``message.updated`` event.

        Returns once no reply runs, replies started meanwhile included (they get
        what is left of the grace). Actors stay open: requests still in flight
        are served. Every call shares the first call's deadline, so a later one
        (``close`` makes one) waits no longer. Never raises.
        """
        loop = asyncio.get_running_loop()
        if self._stop_deadline is None:
            wait = self.config.shutdown_grace if grace is None else grace
            self._stop_deadline = loop.time() + max(0.0, wait)
        deadline = self._stop_deadline
        seen: set[str] = set()
        while True:
            busy = [
                a for a in list(self._actors.values()) if not seen.issuperset(a.replies.running)
            ]
            if not busy:
                return
            for a in busy:
                seen.update(a.replies.running)
            left = max(0.0, deadline - loop.time())
            await asyncio.gather(
                *(a.replies.stop_all(grace=left, notice=SHUTTING_DOWN) for a in busy),
                return_exceptions=True,
            )

    async def close(self) -> None:
        """Stop the replies (see :meth:`stop_replies`), close every actor
        (committing queued work), flush the catalog. Idempotent."""
        if self._closed:
            return
        self._closed = True  # no new activations from here on
        await self.stop_replies()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        await self.user_search.close()
        await asyncio.gather(*(a.close() for a in list(self._actors.values())))
        unpark_all()  # broken sessions' kept WAL indexes (storage.layout.park)
        for topic in self._topics.values():
            topic.close_all()
        for owner_log in list(self.user_logs._logs.values()):
            owner_log.topic.close_all()
        await self.flush_catalog()
        self.write_pool.shutdown(wait=True)  # a cancelled flusher's upsert may still run
        self.read_pool.shutdown(wait=True)
        if self.replica is not None:
            await self.replica.close()
        if self._catalog is not None:
            self._catalog.close()
        if self._syncer is not None:
            self._syncer.close()

    @property
    def live(self) -> int:
        return len(self._actors)

    async def cluster_info(self) -> dict[str, Any] | None:
        """None: single node has no cluster to report (see ``actors.places``)."""
        return None

    def shard_calls(self) -> None:
        """None: single node makes no shard calls (see ``actors.places``)."""

    def subscriber_count(self) -> int:
        """Subscribers of all sessions' event feeds (WebSocket and SSE)."""
        return sum(len(t.subs) for t in self._topics.values())

    def running_replies(self) -> int:
        return sum(len(a.replies) for a in self._actors.values())

    def actor_if_live(self, sid: str) -> SessionActor | None:
        a = self._actors.get(sid)
        return a if a is not None and a.state is State.RUNNING else None

    @property
    def syncer(self) -> Syncer:
        """How durable commits reach the disk (``kind``: "aio" or "threads")."""
        if self._syncer is None:
            raise RuntimeError("the registry is not started")
        return self._syncer

    # ------------------------------------------------------------------ leases

    def session(self, sid: str, user: str = "") -> SessionLease:
        """The one door to session ``sid`` for ``user``: ``async with`` it for a
        :class:`SessionHandle`.

        The session's actor stays live (not hibernated) while the block runs.
        Entering raises like :meth:`lease`.
        """
        return SessionLease(self, sid, user)

    async def resume_reply(
        self, sid: str, user: str, *, maxsize: int
    ) -> tuple[dict[str, Any], Subscription] | None:
        """Subscribe to the reply to resume in ``sid`` from its start: the active
        leaf's if it runs, else the newest running. Returns ``(message as it
        started, subscription)``, or None when none runs, also for a session
        that is not live or not ``user``'s. Never activates an actor (a running
        reply keeps its actor live)."""
        actor = self.actor_if_live(sid)
        if actor is None or actor.owner != user or not actor.replies:
            return None
        leaf: str | None = await actor.read(lambda f: f.read_session()["active_leaf_id"])
        reply = actor.replies.current(leaf)
        if reply is None or reply.final is not None:
            return None
        return reply.message, reply.subscribe(maxsize)

    @contextlib.asynccontextmanager
    async def lease(self, sid: str, user: str = "") -> AsyncIterator[SessionActor]:
        """The running actor of ``sid``, kept live (not hibernated) while held.

        For ``actors/`` itself and for tests; the server goes through
        :meth:`session`.

        Raises ``InvalidInput`` for a bad id and ``NotFound`` for a session
        that does not exist or belongs to another user, ``Unavailable`` for
        the owner's session whose file cannot be opened (another user gets
        ``NotFound`` for that too: a damaged file reveals nothing).
        """
        actor = await self._enter(sid, user)
        try:
            yield actor
        finally:
            self._leave(actor)

    async def _enter(self, sid: str, user: str) -> SessionActor:
        """Acquire ``sid``'s actor for ``user`` (one lease); see :meth:`lease`."""
        try:
            actor = await self._acquire(sid)
        except Unavailable:
            if self._owner_in_catalog(sid) != user:
                raise NotFound(f"session {sid!r} not found", details={"session_id": sid}) from None
            raise
        if actor.owner != user:
            self._leave(actor)
            raise NotFound(f"session {sid!r} not found", details={"session_id": sid})
        return actor

    def _leave(self, actor: SessionActor) -> None:
        """Give back one lease taken by :meth:`_enter`."""
        actor.leases -= 1
        actor.last_used = time.monotonic()
        if actor.leases == 0:
            self._room.set()

    def _owner_in_catalog(self, sid: str) -> str | None:
        try:
            return self.catalog.owner_of(sid)
        except (StorageError, RuntimeError):
            return None

    async def _acquire(self, sid: str) -> SessionActor:
        if sid not in self._actors:  # a live actor's id was checked when it was made
            validate_session_id(sid)
        while True:
            if self._closed:
                raise ActorStopped("the server is shutting down")
            if sid in self._deleting:
                raise NotFound(f"session {sid!r} not found", details={"session_id": sid})
            actor = self._actors.get(sid)
            if actor is None:
                await self._make_room()
                if sid in self._actors or sid in self._deleting:
                    continue
                actor = self._new_actor(sid)
                self._actors[sid] = actor
                live = len(self._actors)
                actor.leases += 1
                try:
                    await actor.start()
                except BaseException:
                    actor.leases -= 1
                    raise
                self.hooks.on_activation(sid, live)
                return actor
            if actor.state in (State.CLOSING, State.CLOSED):
                await actor.wait_closed()
                continue
            actor.leases += 1
            if actor.state is State.STARTING:
                try:
                    await actor.wait_ready()
                except BaseException:
                    actor.leases -= 1
                    raise
            self._actors.move_to_end(sid)
            return actor

    def _new_actor(self, sid: str) -> SessionActor:
        actor = SessionActor(
            sid,
            datadir=self.datadir,
            config=self.config,
            write_pool=self.write_pool,
            syncer=self.syncer,
            topic=self.topic(sid),
            on_commit=self._on_commit,
            on_closed=self._on_closed,
            on_idle=lambda actor: self._room.set(),
            hooks=self.hooks,
            on_reply_done=self._after_reply,
            replica=self.replica,
        )
        actor.turns.responder_of = lambda: self.responder  # replies it starts itself
        return actor

    async def _make_room(self) -> None:
        """Return when one more actor fits under the cap (no await after that)."""
        while len(self._actors) >= self.config.max_live:
            victim = next(
                (a for a in self._actors.values() if a.state is State.RUNNING and not a.busy),
                None,
            )
            if victim is not None:
                self.hooks.on_eviction(victim.sid)
                await victim.close()
                continue
            self._room.clear()
            await self._room.wait()

    def _on_closed(self, actor: SessionActor) -> None:
        if self._actors.get(actor.sid) is actor:
            del self._actors[actor.sid]
            self._room.set()
        topic = self._topics.get(actor.sid)
        if topic is not None and not topic.subs:
            del self._topics[actor.sid]

    async def _sweep(self) -> None:
        """Hibernate actors idle for longer than ``idle_timeout``."""
        period = max(0.01, min(self.config.idle_timeout / 2, 1.0))
        while True:
            await asyncio.sleep(period)
            cutoff = time.monotonic() - self.config.idle_timeout
            idle = [
                a
                for a in self._actors.values()
                if a.state is State.RUNNING
                and not a.busy
                and a.last_used <= cutoff
                and not a.topic.subs
            ]
            for a in idle:
                self.hooks.on_hibernation(a.sid)
                await a.close()
            if idle:
                trim_heap()

    # ------------------------------------------------------------------ feeds

    async def feed_open(self, sid: str, user: str) -> tuple[Topic, Subscription, int, list[Frame]]:
        """Subscribe to ``sid``'s events for ``user`` (a queue of ``subscriber_queue``
        frames), then note the current event seq: ``(topic, subscription, seq,
        catch-up deltas of the replies running now)``. Nothing committed after the
        seq can be missed. Raises like :meth:`lease`."""
        async with self.lease(sid, user) as actor:
            topic = actor.topic
            sub = topic.subscribe(self.config.subscriber_queue)
            try:
                current: int = await actor.read(lambda f: f.event_seq())
            except BaseException:
                topic.unsubscribe(sub)
                raise
            catchup = [
                Frame("message.delta", feed_delta(gen.message_id, 0, gen.committed))
                for gen in actor.replies.running.values()
                if gen.committed
            ]
        return topic, sub, current, catchup

    async def feed_events(self, sid: str, user: str, since: int, limit: int) -> list[Frame] | None:
        """Up to ``limit`` durable events of ``sid`` after seq ``since`` as frames, in
        seq order; None when ``since`` is older than what is kept (resync)."""
        async with self.lease(sid, user) as actor:
            events = await actor.read(
                functools.partial(SessionFile.events_since, since=since, limit=limit)
            )
        return None if events is None else [Frame.of(ev) for ev in events]

    # ------------------------------------------------------------------ topics

    def topic(self, sid: str) -> Topic:
        """The subscriber set of ``sid`` (made on first use)."""
        t = self._topics.get(sid)
        if t is None:
            t = self._topics[sid] = Topic(
                sid, on_drop=lambda: self.hooks.on_subscriber_dropped(sid)
            )
        return t

    def topics_alive(self) -> set[str] | dict[str, Topic]:
        """Sessions whose topic still exists (a deleted session's is gone)."""
        return self._topics

    def release_topic(self, sid: str) -> None:
        """Forget ``sid``'s topic if nothing uses it any more."""
        t = self._topics.get(sid)
        if t is not None and not t.subs and sid not in self._actors:
            del self._topics[sid]

    # ------------------------------------------------------------------ sessions

    async def create_session(
        self,
        sid: str | None,
        *,
        owner: str = "",
        title: str | None = None,
        metadata: dict[str, Any] | None = None,
        populate: Callable[[sqlite3.Connection, str, str], None] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Create a session (durably, catalog included) and return it.

        ``populate(conn, sid, now)`` fills the new file before it is published
        (see ``create_session_file``); it runs on the write pool. ``extra`` sets
        organisation and retention columns (``storage.lifecycle.CREATE_COLUMNS``).
        The owner's list feed gets ``session.created``. Raises ``Conflict`` if
        ``sid`` exists, ``InvalidInput`` if it is not a legal id.
        """
        sid = validate_session_id(sid) if sid is not None else uuid7()
        if sid in self._deleting or sid in self._actors:
            raise Conflict(f"session {sid!r} already exists", details={"id": sid})
        loop = asyncio.get_running_loop()
        doc = await loop.run_in_executor(
            self.write_pool,
            lambda: create_session_file(
                self.datadir,
                sid,
                owner=owner,
                title=title,
                metadata=metadata or {},
                now=now_iso(),
                synchronous=self.config.synchronous,
                populate=populate,
                extra=extra,
            ),
        )
        try:
            async with self._catalog_lock:
                await loop.run_in_executor(self.write_pool, self.catalog.insert_durable, owner, doc)
            if self.replica is not None:  # the file and its row, both in the replica
                await self.replica.created(sid, self.datadir)
        except BaseException:
            # not acknowledged: take the new file away again so a retry can succeed
            if self.replica is not None:
                await loop.run_in_executor(self.write_pool, self.catalog.delete, sid)
            await loop.run_in_executor(self.write_pool, remove_session_files, self.datadir, sid)
            raise
        self._remember_listed(sid, doc)
        self.user_logs.get(owner).publish("session.created", {"session": doc})
        self.user_search.note(sid, owner)  # an import's messages are searchable too
        return doc

    async def delete_session(self, sid: str, user: str = "") -> None:
        """Delete a session and its files; its subscribers get ``session.deleted``.

        Raises ``NotFound`` if it does not exist (or is another user's).
        """
        async with self.lease(sid, user) as actor:
            self._deleting.add(sid)
            last_seq = await actor.read(lambda f: f.event_seq())
        owner = actor.owner
        try:
            actor.graceful = False
            await actor.close()  # its replies' last commits take seqs too
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self.write_pool, remove_session_files, self.datadir, sid)
            self._catalog_pending.pop(sid, None)
            async with self._catalog_lock:
                await loop.run_in_executor(self.write_pool, self.catalog.delete, sid)
            if self.replica is not None:  # the row's removal is in the replica
                await self.replica.forget(sid, self.datadir)
            topic = self._topics.pop(sid, None)
            if topic is not None:
                # after every event the closing actor committed (and published)
                final_seq = max(last_seq, topic.last_seq) + 1
                frame = f'{{"type":"session.deleted","seq":{final_seq},"session_id":"{sid}"}}'
                topic.publish(Frame("session.deleted", frame.encode(), final_seq))
                topic.close_all()
            self._listed.pop(sid, None)
            self.hooks.on_session_deleted(sid, owner)
            self.user_logs.get(owner).publish("session.deleted", {"session_id": sid})
            await self.user_search.drop(owner, sid)
        finally:
            self._deleting.discard(sid)

    async def import_session(
        self,
        sid: str | None,
        raw: bytearray,
        *,
        owner: str = "",
        max_title_chars: int,
        max_content_chars: int,
    ) -> dict[str, Any]:
        """Create a session from a JSON export (``roost.session.v1``) in ``raw``.

        ``raw`` is checked on the write pool without a copy (see ``parse_export``:
        memory is bounded by ``raw`` plus one message), its messages are decoded
        again one at a time as they are written, and it is emptied at the end
        (unless a failed write's frames still hold a view of it: then it is left as
        it is; either way the caller's buffer is garbage then). Raises ``MalformedJson``
        for a body that is not JSON, ``InvalidInput`` (with details) for an
        export that is not valid, ``ContentTooLarge`` for a message over
        ``max_content_chars``, and what :meth:`create_session` raises.
        """
        loop = asyncio.get_running_loop()
        try:
            plan = await loop.run_in_executor(
                self.write_pool,
                lambda: parse_export(
                    raw, max_title_chars=max_title_chars, max_content_chars=max_content_chars
                ),
            )
            return await self._create_from(sid, plan, owner)
        finally:
            # still exported while a failed or cancelled write's frames hold a view of it:
            # then it is garbage as soon as they go
            with contextlib.suppress(BufferError):
                raw.clear()

    async def _create_from(self, sid: str | None, plan: ImportPlan, owner: str) -> dict[str, Any]:
        """Create a session holding a parsed export (import, a share's copy)."""
        return await self.create_session(
            sid,
            owner=owner,
            title=plan.session.title,
            metadata=plan.session.metadata,
            populate=lambda conn, new_sid, now: populate_import(conn, new_sid, plan, now),
        )

    def check_disk(self) -> None:
        """Raise ``StorageFull`` while the data dir's disk is under its reserve (cheap)."""
        self.disk.check()

    async def trim_heap(self) -> None:
        """Give freed memory back to the OS (after a big import), off the event loop."""
        await asyncio.get_running_loop().run_in_executor(self.write_pool, trim_heap)

    async def list_sessions(
        self,
        *,
        owner: str = "",
        limit: int = 25,
        cursor: str | None = None,
        filters: ListFilters | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Sessions of ``owner``: pinned first, then most recently updated first
        (archived and temporary ones hidden unless ``filters`` ask for them)."""
        await self.flush_catalog()
        return self.catalog.list(owner=owner, limit=limit, cursor=cursor, filters=filters)

    # ------------------------------------------------------------------ directory

    async def mirror_sessions(self, items: list[tuple[str, dict[str, Any]]]) -> None:
        """Record ``(owner, session)`` rows of sessions that may live elsewhere in
        this registry's catalog, so :meth:`list_sessions` lists them (cluster
        mode: the owner's directory). Insert or replace: idempotent."""
        if not items:
            return
        async with self._catalog_lock:
            await asyncio.get_running_loop().run_in_executor(
                self.write_pool, self.catalog.upsert_many, items
            )
        if self.replica is not None:
            await self.replica.sync_catalog()

    async def unmirror_session(self, sid: str) -> None:
        """Forget a mirrored session's row (see :meth:`mirror_sessions`). Idempotent."""
        async with self._catalog_lock:
            await asyncio.get_running_loop().run_in_executor(
                self.write_pool, self.catalog.delete, sid
            )
        if self.replica is not None:
            await self.replica.sync_catalog()

    # ------------------------------------------------------------------ catalog mirror

    @property
    def catalog(self) -> Catalog:
        if self._catalog is None:
            raise RuntimeError("registry not started")
        return self._catalog

    def _on_commit(self, actor: SessionActor, session: dict[str, Any], events: list[Event]) -> None:
        if actor.sid in self._deleting:
            return
        self._catalog_pending[actor.sid] = (actor.owner, session)
        self._catalog_wakeup.set()
        self.hooks.on_session_changed(actor.sid, actor.owner, session)
        self.user_search.feed(actor.sid, actor.owner, events)
        if self._remember_listed(actor.sid, session):
            self.user_logs.get(actor.owner).publish("session.updated", {"session": session})

    def _remember_listed(self, sid: str, session: dict[str, Any]) -> bool:
        """Note what the list shows of ``sid``; whether that changed (news for the feed)."""
        now = listed(session)
        before = self._listed.pop(sid, None)
        self._listed[sid] = now
        if len(self._listed) > 50_000:
            self._listed.popitem(last=False)
        return before != now

    async def flush_catalog(self) -> bool:
        """Write the pending catalog updates now; return whether that worked.

        The catalog is a mirror: when it cannot be written (a full disk), the
        updates stay pending for the next try and nothing is raised; each
        session's own file still holds the truth.

        Read-your-writes: when nothing is pending but another flush is under
        way (the background flusher has taken the updates and is writing them),
        this waits for it, so a list read after this returns sees every commit
        that finished before the call.
        """
        if self._catalog is None:
            return True
        if not self._catalog_pending and not self._catalog_lock.locked():
            return True
        async with self._catalog_lock:
            pending, self._catalog_pending = self._catalog_pending, {}
            if not pending:
                return True
            try:
                await asyncio.get_running_loop().run_in_executor(
                    self.write_pool, self.catalog.upsert_many, list(pending.values())
                )
            except StorageError as exc:
                for sid, item in pending.items():  # newer updates win
                    self._catalog_pending.setdefault(sid, item)
                log.warning("catalog update postponed: %s", exc.message)
                return False
            return True

    async def _catalog_flusher(self) -> None:
        while True:
            await self._catalog_wakeup.wait()
            self._catalog_wakeup.clear()
            await asyncio.sleep(0.05)
            if not await self.flush_catalog():
                await asyncio.sleep(1.0)
                self._catalog_wakeup.set()
