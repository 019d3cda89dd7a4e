"""A shard: one detached, named Ray actor hosting single-node Roost for its sessions.

Shard ``k`` (``roost-shard-<k>`` in the cluster's namespace) runs an ordinary
:class:`actors.registry.ActorRegistry` (session actors, group commit, output
gate, hibernation, replies: the same code as ``roost serve``) on its own
event loop, over the data dir ``<data-dir>/nodes/<ray node id>/shard-<k>/``
of the node it runs on. Ray's named-actor uniqueness gives single activation
cluster-wide: there is one live shard ``k``, so one live actor per session.

Every method takes and returns plain values (:mod:`actors.cluster.codec`):
plain calls answer ``("ok", value)`` or ``("err", error)``; streams (a
session's events, a reply's deltas, an export) are Ray streaming generators
whose first item is that answer and whose later items are batches of frames
(lists) or chunks.

The shard is also the **directory** of the users whose id hashes to it
(:func:`actors.cluster.placement.home_of`): the catalog of its registry lists
their sessions, wherever those live. A session's shard writes the row there
when it creates the session (before answering: read-your-writes), forgets it
when it deletes it, and pushes later changes (title, counts, ``updated_at``)
in the background within about 50 ms; every write is an idempotent upsert
or delete by id, made in order by one task.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import ray

from actors.actor import ActorConfig
from actors.cluster.codec import (
    encode_error,
    frame_to_plain,
    message_from_plain,
    page_to_plain,
)
from actors.cluster.placement import (
    META_NAME,
    SHARD_RESOURCE,
    SHARD_SLICE,
    ShardSpec,
    home_of,
    shard_dir,
    shard_name,
    shard_of,
)
from actors.cluster.spread import shard_strategy
from actors.cluster.startlog import preload, process_started, shard_logging, timeline
from actors.cluster.wire import Endpoint, WireServer
from actors.hooks import CountingHooks
from actors.pubsub import Subscription
from actors.registry import ActorRegistry, claim_data_dir
from actors.session import SessionHandle
from actors.tasks import retrieved
from storage.catalog import ListFilters
from storage.layout import DataDir, DataDirLock

log = logging.getLogger("roost.cluster")

T = TypeVar("T")
Answer = tuple[str, Any]

# methods of the session façade a shard answers through ``call``, by name
WRITES = frozenset(
    {
        "append",
        "update_message",
        "update_session",
        "chat",
        "add_attachment",
        "tool_result",
        "compact",
    }
)
DIRECTORY_PUSH_DELAY = 0.05


async def _overview(s: SessionHandle, limit: int) -> dict[str, Any]:
    session, page = await s.overview(limit=limit)
    return {"session": session, "page": page_to_plain(page)}


async def _page(s: SessionHandle, **kw: Any) -> dict[str, Any]:
    return page_to_plain(await s.page(**kw))


async def _append(s: SessionHandle, message: dict[str, Any]) -> list[Any]:
    msg, created = await s.append(message_from_plain(message))
    return [msg, created]


async def _chat(
    s: SessionHandle, message: dict[str, Any], model: str | None, on_busy: str | None = None
) -> list[Any]:
    user, reply, created, _ = await s.chat(
        message_from_plain(message), model=model, maxsize=None, on_busy=on_busy
    )
    return [user, reply, created]


async def _add_attachment(
    s: SessionHandle,
    filename: str | None,
    content_type: str | None,
    data: bytes,
    limit: int,
    session_limit: int = 0,
) -> dict[str, Any]:
    async def chunks() -> AsyncIterator[bytes]:
        yield data

    return await s.add_attachment(
        filename=filename,
        content_type=content_type,
        chunks=chunks(),
        limit=limit,
        session_limit=session_limit,
    )


async def _blob_size(s: SessionHandle, sha256: str) -> int:
    blob = await s.open_blob(sha256)
    try:
        return blob.size
    finally:
        blob.close()


async def _blob_read(s: SessionHandle, sha256: str, n: int, pos: int) -> bytes:
    blob = await s.open_blob(sha256)
    try:
        return await blob.read(n, pos)
    finally:
        blob.close()


async def _listed(call: Awaitable[tuple[Any, ...]]) -> list[Any]:
    return list(await call)


CALLS: dict[str, Callable[..., Awaitable[Any]]] = {
    "read_session": lambda s: s.read_session(),
    "overview": _overview,
    "page": _page,
    "get_message": lambda s, mid: s.get_message(mid),
    "find_by_client_id_prefix": lambda s, prefix: s.find_by_client_id_prefix(prefix),
    "siblings": lambda s, mid, limit: s.siblings(mid, limit=limit),
    "search": lambda s, q, limit, raw: s.search(q, limit=limit, raw=raw),
    "read_attachment": lambda s, aid: s.read_attachment(aid),
    "append": _append,
    "update_message": lambda s, mid, changes, if_match: s.update_message(
        mid, changes, if_match=if_match
    ),
    "delete_message": lambda s, mid: s.delete_message(mid),
    "update_session": lambda s, **kw: s.update_session(**kw),
    "cancel": lambda s, mid: s.cancel(mid),
    "chat": _chat,
    # the tool loop (issue 19)
    "waiting_reply": lambda s: s.waiting_reply(),
    "tool_result": lambda s, mid, tool_call_id, output, error: _listed(
        s.tool_result(mid, tool_call_id, output=output, error=error)
    ),
    "tool_approval": lambda s, mid, tool_call_id, approved, reason: _listed(
        s.tool_approval(mid, tool_call_id, approved=approved, reason=reason)
    ),
    "add_attachment": _add_attachment,
    "delete_attachment": lambda s, aid: s.delete_attachment(aid),
    "blob_size": _blob_size,
    "blob_read": _blob_read,
    "snapshot": lambda s, branch, max_bytes: s.snapshot(branch, max_bytes=max_bytes),
    # the model's context window (issue 21)
    "context": lambda s, leaf_id: s.context(leaf_id),
    "compact": lambda s, leaf_id: s.compact(leaf_id),
}


def answers(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Answer]]:
    """Turn a method's result into ``("ok", value)`` and its deliberate errors into
    ``("err", plain error)``; anything else is raised (Ray reports it)."""

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Answer:
        try:
            return ("ok", await fn(*args, **kwargs))
        except Exception as exc:
            plain = encode_error(exc)
            if plain is None:
                log.exception("shard call %s failed", fn.__name__)
                raise
            return ("err", plain)

    return wrapper


async def _batches(sub: Subscription) -> AsyncIterator[list[Any]]:
    """The subscription's frames as plain lists, everything queued in one batch."""
    while (frame := await sub.get()) is not None:
        batch = [frame_to_plain(frame)]
        while (more := sub.get_nowait()) is not None:
            batch.append(frame_to_plain(more))
        yield batch


class ShardHooks(CountingHooks):
    """The shard registry's hooks: counts, and session changes for the directory."""

    def __init__(self, shard: Shard) -> None:
        super().__init__()
        self._shard = shard

    def on_session_changed(self, sid: str, owner: str, session: dict[str, Any]) -> None:
        self._shard.session_changed(sid, owner, session)

    def on_session_deleted(self, sid: str, owner: str) -> None:
        self._shard.session_deleted(sid, owner)


class Shard:
    """The body of shard ``k`` (see the module docstring). Made by Ray."""

    def __init__(self, k: int, spec: ShardSpec) -> None:
        self.k = k
        self.spec = spec
        shard_logging(str(spec.extra.get("log_level", "info")))
        if "replica" in spec.extra:  # its imports (boto3) while Ray reports the actor alive
            preload("actors.replica")
        timeline.info(
            "shard %d: process started %.3f, __init__ %.3f (unix s)",
            k,
            process_started(),
            time.time(),
        )
        self.node_id: str = ray.get_runtime_context().get_node_id()
        self.root = shard_dir(spec.data_dir, self.node_id, k)
        self._registry: ActorRegistry | None = None
        self._lock: DataDirLock | None = None
        self._starting: asyncio.Task[ActorRegistry] | None = None
        # sid -> (owner, its document now, or None: deleted) for the directory push
        self._pending: dict[str, tuple[str, dict[str, Any] | None]] = {}
        self._push_lock: asyncio.Lock | None = None
        self._push_wakeup: asyncio.Event | None = None
        self._pusher: asyncio.Task[None] | None = None
        self._peers: dict[int, Any] = {}
        self._wire = WireServer(self.call)  # the direct path (actors.cluster.wire)
        # Ray runs an async actor's __init__ on its event loop: the registry starts
        # now (after a restart: the catalog's restore and the prefetch begin before
        # any front has found the new process); elsewhere, on first use
        with contextlib.suppress(RuntimeError):
            self._starting = asyncio.get_running_loop().create_task(self._start())
            self._starting.add_done_callback(retrieved)

    # ------------------------------------------------------------------ lifecycle

    async def _reg(self) -> ActorRegistry:
        """The registry, started on first use (every caller waits for the one start)."""
        if self._registry is not None:
            return self._registry
        if self._starting is None or (self._starting.done() and self._starting.exception()):
            self._starting = asyncio.ensure_future(self._start())
        return await asyncio.shield(self._starting)

    async def _start(self) -> ActorRegistry:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        self._lock = await loop.run_in_executor(None, claim_data_dir, str(self.root))
        datadir = DataDir(self.root)
        await loop.run_in_executor(None, datadir.ensure)
        spec = self.spec
        registry = ActorRegistry(
            datadir,
            ActorConfig(**spec.config),
            write_threads=spec.write_threads,
            fsync=spec.fsync,
            disk_reserve=spec.disk_reserve,
        )
        registry.hooks = ShardHooks(self)
        registry.user_search.enabled = False  # no /api/search in cluster mode yet
        shards, k = spec.shards, self.k
        registry.hosted = lambda sid: shard_of(sid, shards) == k  # the sweep skips the rest
        replica = spec.extra.get("replica")
        if replica is not None:  # --replica: this shard's own Litestream (actors.replica)
            from actors.litestream import L0_RETENTION
            from actors.replica import Replica
            from actors.replica_store import Target

            registry.replica = Replica(
                Target.parse(*replica[:2]),
                name=f"shard-{k}",
                l0_retention=float(replica[3]) if len(replica) > 3 else L0_RETENTION,
            )
            registry.replica.park_after = float(replica[2])
        await registry.start()
        timeline.info("shard %d: registry started in %.3f s", k, time.perf_counter() - started)
        if spec.responder is not None:
            registry.responder = spec.responder(datadir)  # it reads this shard's blobs
        self._push_lock = asyncio.Lock()
        self._push_wakeup = asyncio.Event()
        self._pusher = asyncio.create_task(self._push_loop(), name="shard:directory")
        log.info("shard %d serving from %s", self.k, self.root)
        timeline.info("shard %d: serving after %.3f s", k, time.perf_counter() - started)
        self._registry = registry
        return registry

    # ------------------------------------------------------------------ the façade

    @answers
    async def call(self, sid: str, user: str, method: str, kw: dict[str, Any]) -> Any:
        """Run façade method ``method`` of session ``sid`` for ``user`` with ``kw``."""
        reg = await self._reg()
        if method in WRITES:
            reg.check_disk()
        fn = CALLS[method]
        async with reg.session(sid, user) as s:
            return await fn(s, **kw)

    async def endpoint(self) -> Endpoint:
        """Where this shard's direct path listens, ``(host, port, token,
        incarnation)``: a stream server on this node's IP, opened on first ask."""
        if self._starting is None:  # a front's first ask: the registry starts meanwhile
            self._starting = asyncio.ensure_future(self._start())
            self._starting.add_done_callback(retrieved)
        ip: str = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
        host, port = await self._wire.start(ip)
        return (host, port, self._wire.token, self._wire.incarnation)

    async def calls(self, batch: list[tuple[str, str, str, dict[str, Any]]]) -> list[Answer]:
        """Several calls of :meth:`call` in one Ray call (a front's batch): they run
        concurrently, as separate calls would, and are answered in order. An
        unexpected error of one is that call's ``Unavailable``, never the batch's."""
        done = await asyncio.gather(*(self.call(*c) for c in batch), return_exceptions=True)
        out: list[Answer] = []
        for one in done:
            if isinstance(one, BaseException):
                if not isinstance(one, Exception):
                    raise one
                one = ("err", {"cls": "Unavailable", "message": f"the shard failed: {one!r}"})
            out.append(one)
        return out

    async def reply_stream(
        self, sid: str, user: str, op: str, kw: dict[str, Any]
    ) -> AsyncIterator[Any]:
        """A reply as a stream: the answer of ``op`` (``chat``, ``regenerate``,
        ``stream``, ``resume``), then batches of its frames until it ends."""
        sub: Subscription | None = None
        try:
            reg = await self._reg()
            maxsize = reg.config.subscriber_queue
            first: Any
            if op == "resume":
                found = await reg.resume_reply(sid, user, maxsize=maxsize)
                first = None if found is None else found[0]
                sub = None if found is None else found[1]
            else:
                if op != "stream":
                    reg.check_disk()
                async with reg.session(sid, user) as s:
                    if op == "chat":
                        u, reply, created, chat_stream = await s.chat(
                            message_from_plain(kw["message"]),
                            model=kw["model"],
                            maxsize=maxsize,
                            on_busy=kw.get("on_busy"),
                        )
                        first = [u, reply, created, None]
                        if chat_stream is not None:
                            first[3] = chat_stream.final
                            sub = chat_stream.subscription
                    elif op == "regenerate":
                        reply, stream = await s.regenerate(
                            kw["mid"], model=kw["model"], maxsize=maxsize
                        )
                        first = [reply, stream.final]
                        sub = stream.subscription
                    else:
                        stream = await s.stream(kw["mid"], since=kw["since"], maxsize=maxsize)
                        first = stream.final
                        sub = stream.subscription
        except Exception as exc:
            plain = encode_error(exc)
            if plain is None:
                raise
            yield ("err", plain)
            return
        try:
            yield ("ok", first)
            if sub is not None:
                async for batch in _batches(sub):
                    yield batch
        finally:
            if sub is not None:
                sub.close()

    async def subscribe(self, sid: str, user: str) -> AsyncIterator[Any]:
        """Session ``sid``'s live events for one front: ``("ok", None)`` once
        subscribed, batches of frames, then ``("end", why)``: ``dropped`` (the
        front fell behind), ``deleted`` or ``closed``."""
        try:
            reg = await self._reg()
            topic, sub, _, _ = await reg.feed_open(sid, user)
        except Exception as exc:
            plain = encode_error(exc)
            if plain is None:
                raise
            yield ("err", plain)
            return
        try:
            yield ("ok", None)
            async for batch in _batches(sub):
                yield batch
            if sub.dropped:
                why = "dropped"
            elif sid not in reg.topics_alive():
                why = "deleted"
            else:
                why = "closed"
            yield ("end", why)
        finally:
            topic.unsubscribe(sub)
            reg.release_topic(sid)

    @answers
    async def feed_state(self, sid: str, user: str) -> list[Any]:
        """``[current event seq, catch-up deltas]`` of ``sid`` (see ``Feed.open``)."""
        reg = await self._reg()
        topic, sub, current, catchup = await reg.feed_open(sid, user)
        topic.unsubscribe(sub)
        reg.release_topic(sid)
        return [current, [frame_to_plain(f) for f in catchup]]

    @answers
    async def feed_events(self, sid: str, user: str, since: int, limit: int) -> list[Any] | None:
        reg = await self._reg()
        frames = await reg.feed_events(sid, user, since, limit)
        return None if frames is None else [frame_to_plain(f) for f in frames]

    async def export(self, sid: str, user: str, fmt: str) -> AsyncIterator[Any]:
        """``("ok", None)``, then the export's chunks (bytes)."""
        try:
            reg = await self._reg()
            async with reg.session(sid, user) as s:
                stream = await s.export(
                    "markdown" if fmt == "markdown" else "bundle" if fmt == "bundle" else "json"
                )
        except Exception as exc:
            plain = encode_error(exc)
            if plain is None:
                raise
            yield ("err", plain)
            return
        try:
            yield ("ok", None)
            async for chunk in stream:
                yield chunk
        finally:
            stream.close()

    # ------------------------------------------------------------------ sessions

    @answers
    async def create_session(
        self,
        sid: str,
        owner: str,
        title: str | None,
        metadata: dict[str, Any] | None,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        reg = await self._reg()
        reg.check_disk()
        doc = await reg.create_session(
            sid, owner=owner, title=title, metadata=metadata, extra=extra
        )
        await self._directory_put(owner, doc)
        return doc

    @answers
    async def import_session(
        self, sid: str, raw: bytes, owner: str, max_title_chars: int, max_content_chars: int
    ) -> dict[str, Any]:
        reg = await self._reg()
        reg.check_disk()
        doc = await reg.import_session(
            sid,
            bytearray(raw),
            owner=owner,
            max_title_chars=max_title_chars,
            max_content_chars=max_content_chars,
        )
        await self._directory_put(owner, doc)
        return doc

    @answers
    async def delete_session(self, sid: str, user: str) -> None:
        reg = await self._reg()
        await reg.delete_session(sid, user)
        home = home_of(user, self.spec.shards)
        assert self._push_lock is not None
        async with self._push_lock:  # after any push of it in flight: no resurrection
            self._pending.pop(sid, None)
            if home != self.k:
                await self._peer_call(home, "dir_delete", sid)

    @answers
    async def list_sessions(
        self, owner: str, limit: int, cursor: str | None, filters: ListFilters | None = None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """``owner``'s sessions from this shard's directory (this is their home)."""
        reg = await self._reg()
        return await reg.list_sessions(owner=owner, limit=limit, cursor=cursor, filters=filters)

    @answers
    async def folders(self, owner: str) -> list[dict[str, Any]]:
        """``owner``'s folders with counts, from this shard's directory."""
        reg = await self._reg()
        return await reg.folders(owner)

    # ------------------------------------------------------------------ directory

    @answers
    async def dir_put(self, items: list[tuple[str, dict[str, Any]]]) -> None:
        """Record ``(owner, session)`` rows of sessions hosted on other shards."""
        reg = await self._reg()
        await reg.mirror_sessions([(o, d) for o, d in items])

    @answers
    async def dir_delete(self, sid: str) -> None:
        reg = await self._reg()
        await reg.unmirror_session(sid)

    def session_changed(self, sid: str, owner: str, session: dict[str, Any]) -> None:
        """A committed change of a session hosted here: push it to its owner's home."""
        if home_of(owner, self.spec.shards) == self.k:
            return  # the registry's own catalog is that directory
        self._pending[sid] = (owner, session)
        if self._push_wakeup is not None:
            self._push_wakeup.set()

    def session_deleted(self, sid: str, owner: str) -> None:
        """A session hosted here was deleted (a request or the expiry sweep): forget it
        in its owner's directory (``delete_session`` also does it before answering)."""
        if home_of(owner, self.spec.shards) == self.k:
            return  # the registry's own catalog already forgot it
        self._pending[sid] = (owner, None)
        if self._push_wakeup is not None:
            self._push_wakeup.set()

    async def _directory_put(self, owner: str, doc: dict[str, Any]) -> None:
        """Write a new session's row in its owner's directory before answering; if the
        home shard cannot be reached, the background push retries it."""
        home = home_of(owner, self.spec.shards)
        if home == self.k:
            return
        try:
            await self._peer_call(home, "dir_put", [(owner, doc)])
        except Exception as exc:
            log.warning("shard %d: directory %d unreachable (%s); retrying", self.k, home, exc)
            self.session_changed(doc["id"], owner, doc)

    async def _push_loop(self) -> None:
        assert self._push_wakeup is not None and self._push_lock is not None
        while True:
            await self._push_wakeup.wait()
            self._push_wakeup.clear()
            await asyncio.sleep(DIRECTORY_PUSH_DELAY)
            async with self._push_lock:
                pending, self._pending = self._pending, {}
                by_home: dict[int, list[tuple[str, dict[str, Any]]]] = {}
                gone: list[tuple[int, str, str]] = []
                for sid, (owner, doc) in pending.items():
                    home = home_of(owner, self.spec.shards)
                    if doc is None:
                        gone.append((home, sid, owner))
                    else:
                        by_home.setdefault(home, []).append((owner, doc))
                failed = False
                for home, items in by_home.items():
                    try:
                        await self._peer_call(home, "dir_put", items)
                    except Exception as exc:
                        log.warning("shard %d: directory push to %d failed: %s", self.k, home, exc)
                        failed = True
                        for owner, doc in items:  # newer changes win
                            self._pending.setdefault(doc["id"], (owner, doc))
                for home, sid, owner in gone:
                    try:
                        await self._peer_call(home, "dir_delete", sid)
                    except Exception as exc:
                        log.warning(
                            "shard %d: directory delete on %d failed: %s", self.k, home, exc
                        )
                        failed = True
                        self._pending.setdefault(sid, (owner, None))
            if failed:
                await asyncio.sleep(1.0)
                self._push_wakeup.set()

    async def _peer_call(self, k: int, method: str, *args: Any) -> Any:
        peer = self._peers.get(k)
        if peer is None:
            peer = self._peers[k] = shard_handle(k, self.spec)
        status, value = await asyncio.wait_for(getattr(peer, method).remote(*args), 30.0)
        if status != "ok":
            raise RuntimeError(f"shard {k} answered {value!r}")
        return value

    # ------------------------------------------------------------------ health

    async def info(self) -> dict[str, Any]:
        """Where this shard runs and what it holds (``/healthz`` on a front)."""
        reg = self._registry
        return {
            "shard": self.k,
            "node_id": self.node_id,
            "pid": os.getpid(),
            "live_actors": 0 if reg is None else reg.live,
            "subscribers": 0 if reg is None else reg.subscriber_count(),
            "running_replies": 0 if reg is None else reg.running_replies(),
            # --replica: this shard's counters (actors.replica.ReplicaStats) and child
            "replica": None
            if reg is None or reg.replica is None
            else {**dataclasses.asdict(reg.replica.stats), "pid": reg.replica.litestream_pid},
        }

    async def shutdown(self) -> None:
        """Close the registry (commits flushed, files consistent); the next call
        starts it again. For tests and operators; Ray never calls it."""
        reg, self._registry, self._starting = self._registry, None, None
        if self._pusher is not None:
            self._pusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pusher
        if reg is not None:
            await reg.close()
        if self._lock is not None:
            self._lock.release()
            self._lock = None


class Meta:
    """``roost-meta``: the cluster's identity, fixed by the first front (its shard count)."""

    def __init__(self, shards: int) -> None:
        self._shards = shards

    async def shards(self) -> int:
        return self._shards


ShardActor = ray.remote(Shard)
MetaActor = ray.remote(Meta)


def shard_handle(k: int, spec: ShardSpec) -> Any:
    """The handle of shard ``k``, creating it where ``roost_shard`` is offered
    (spread over those nodes, sticky on restarts: :mod:`actors.cluster.spread`).

    Detached (it outlives the front that made it), restarted by Ray whenever its
    process dies (``max_restarts=-1``); calls in flight when it dies fail (the
    front answers 503) rather than run twice (``max_task_retries=0``).
    """
    return ShardActor.options(
        name=shard_name(k),
        namespace=spec.namespace,
        get_if_exists=True,
        lifetime="detached",
        max_restarts=-1,
        max_task_retries=0,
        num_cpus=0,
        resources={SHARD_RESOURCE: SHARD_SLICE},
        max_concurrency=10_000,
        scheduling_strategy=shard_strategy(k),
    ).remote(k, spec)


def meta_handle(namespace: str, shards: int) -> Any:
    """The cluster's ``roost-meta`` actor, made (with ``shards``) if it is not there."""
    return MetaActor.options(
        name=META_NAME,
        namespace=namespace,
        get_if_exists=True,
        lifetime="detached",
        max_restarts=-1,
        num_cpus=0,
    ).remote(shards)
