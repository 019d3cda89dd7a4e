"""A front's side of cluster mode: :class:`ClusterRegistry`, the remote façade.

``roost serve --cluster ADDRESS`` connects to Ray as a driver
(:func:`connect`) and puts a :class:`ClusterRegistry` where single node puts
its :class:`actors.registry.ActorRegistry`; the routes cannot tell them apart
(:class:`actors.places.Places`). ``registry.session(sid, user)`` gives a
:class:`RemoteSessionHandle`, whose methods send the work to the session's
shard (:mod:`actors.cluster.shard`) and answer what the in-process handle
would, errors included.

Real time: a front holds at most one subscription per session to its shard
(a Ray streaming call, :class:`_SessionPump`) and fans its frames out to its
own WebSocket/SSE feeds through an ordinary :class:`actors.pubsub.Topic`, with
the same bounded queues and drops. When that subscription ends (the shard
restarted, or this front fell behind the shard's queue) every local feed of
the session is dropped, so its client resumes with ``since`` (it never
silently misses an event).

Every call to a shard is bounded by ``request_timeout``: a shard that cannot
be reached answers ``Unavailable`` (503 with ``Retry-After``), never a hang.

The session façade's calls to one shard made in the same turn of the event
loop go as one Ray call (:mod:`actors.cluster.batch`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterable
from typing import Any, Literal

import ray
from ray.exceptions import RayError

from actors.cluster.batch import Batcher
from actors.cluster.codec import (
    decode_error,
    frame_from_plain,
    message_to_plain,
    page_from_plain,
)
from actors.cluster.context_calls import RemoteContext
from actors.cluster.join import ClusterError as ClusterError  # where cli finds it
from actors.cluster.join import connect as connect  # where cli and app find it
from actors.cluster.placement import ShardSpec, home_of, shard_of
from actors.cluster.shard import shard_handle
from actors.cluster.streams import (
    RemoteBlob,
    RemoteExportStream,
    RemoteReplyStream,
    RemoteSubscription,
    cancel_gen,
)
from actors.cluster.wire import Endpoint, WireClient
from actors.errors import Unsupported
from actors.hooks import Hooks
from actors.places import ShardCallStats
from actors.pubsub import Frame, Subscription, Topic
from actors.session import Blob, ExportStream, NewMessage, ReplyStream, SessionHandle
from actors.userlog import UserLog, UserLogs
from storage.catalog import ListFilters
from storage.errors import TooLarge, Unavailable
from storage.ids import uuid7, validate_session_id
from storage.reads import Page

log = logging.getLogger("roost.cluster")

NO_SHARES = "share links are not available in cluster mode yet (they need a cluster-wide store)"
NO_ACROSS = (
    "search across sessions and the list feed are not available in cluster mode yet"
    " (they need the per-user index on the user's directory shard)"
)


# ---------------------------------------------------------------------------- the handle


class RemoteSessionHandle(RemoteContext, SessionHandle):
    """:class:`actors.session.SessionHandle`'s methods, answered by the session's shard."""

    __slots__ = ("_front", "_k", "_sid", "_used", "_user")

    def __init__(self, front: ClusterRegistry, sid: str, user: str) -> None:
        self._front = front
        self._sid = sid
        self._user = user
        self._k = front.shard_of(sid)
        self._used = False

    @property
    def sid(self) -> str:
        return self._sid

    @property
    def owner(self) -> str:
        return self._user

    async def _call(self, method: str, **kw: Any) -> Any:
        self._used = True
        return await self._front.call(self._k, "call", self._sid, self._user, method, kw)

    async def _stream(self, op: str, **kw: Any) -> tuple[Any, Any]:
        self._used = True
        gen = self._front.stream(self._k, "reply_stream", self._sid, self._user, op, kw)
        return await self._front.first(self._k, gen), gen

    # reads
    async def read_session(self) -> dict[str, Any]:
        doc: dict[str, Any] = await self._call("read_session")
        return doc

    async def overview(self, *, limit: int) -> tuple[dict[str, Any], Page]:
        out = await self._call("overview", limit=limit)
        return out["session"], page_from_plain(out["page"])

    async def page(
        self, *, view: str, limit: int, before: str | None = None, after: str | None = None
    ) -> Page:
        out = await self._call("page", view=view, limit=limit, before=before, after=after)
        return page_from_plain(out)

    async def get_message(self, mid: str) -> dict[str, Any]:
        msg: dict[str, Any] = await self._call("get_message", mid=mid)
        return msg

    async def find_by_client_id_prefix(self, prefix: str) -> dict[str, Any] | None:
        msg: dict[str, Any] | None = await self._call("find_by_client_id_prefix", prefix=prefix)
        return msg

    async def siblings(self, mid: str, *, limit: int) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = await self._call("siblings", mid=mid, limit=limit)
        return items

    async def search(self, q: str, *, limit: int, raw: bool = False) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = await self._call("search", q=q, limit=limit, raw=raw)
        return items

    async def read_attachment(self, aid: str) -> dict[str, Any]:
        doc: dict[str, Any] = await self._call("read_attachment", aid=aid)
        return doc

    # writes
    async def append(self, message: NewMessage) -> tuple[dict[str, Any], bool]:
        msg, created = await self._call("append", message=message_to_plain(message))
        return msg, created

    async def update_message(
        self, mid: str, changes: dict[str, Any], *, if_match: int | None = None
    ) -> dict[str, Any]:
        msg: dict[str, Any] = await self._call(
            "update_message", mid=mid, changes=changes, if_match=if_match
        )
        return msg

    async def delete_message(self, mid: str) -> None:
        await self._call("delete_message", mid=mid)

    async def update_session(
        self,
        *,
        title: str | None = None,
        set_title: bool = False,
        metadata: dict[str, Any] | None = None,
        active_leaf_id: str | None = None,
        organisation: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        doc: dict[str, Any] = await self._call(
            "update_session",
            title=title,
            set_title=set_title,
            metadata=metadata,
            active_leaf_id=active_leaf_id,
            organisation=organisation,
        )
        return doc

    # replies
    async def chat(
        self,
        message: NewMessage,
        *,
        model: str | None,
        maxsize: int | None,
        on_busy: str | None = None,
    ) -> tuple[dict[str, Any], dict[str, Any] | None, bool, ReplyStream | None]:
        plain = message_to_plain(message)
        if maxsize is None:
            user, reply, created = await self._call(
                "chat", message=plain, model=model, on_busy=on_busy
            )
            return user, reply, created, None if reply is None else ReplyStream(reply["id"])
        (user, reply, created, final), gen = await self._stream(
            "chat", message=plain, model=model, on_busy=on_busy
        )
        if reply is None:  # queued (issue 19): its reply comes as session events
            cancel_gen(gen)
            return user, None, created, None
        return user, reply, created, _reply_stream(reply["id"], final, gen, maxsize)

    async def started(
        self, user_mid: str, *, maxsize: int
    ) -> tuple[dict[str, Any], ReplyStream] | None:
        """Cluster mode does not wait for a queued turn here: its reply comes as
        session events (the feed) when it starts."""
        return None

    async def waiting_reply(self) -> dict[str, Any] | None:
        msg: dict[str, Any] | None = await self._call("waiting_reply")
        return msg

    async def tool_result(
        self, mid: str, tool_call_id: str, *, output: Any = None, error: str | None = None
    ) -> tuple[dict[str, Any], bool, dict[str, Any] | None]:
        tool_msg, created, cont = await self._call(
            "tool_result", mid=mid, tool_call_id=tool_call_id, output=output, error=error
        )
        return tool_msg, created, cont

    async def tool_approval(
        self, mid: str, tool_call_id: str, *, approved: bool, reason: str | None
    ) -> tuple[dict[str, Any], dict[str, Any] | None, dict[str, Any] | None]:
        assistant, tool_msg, cont = await self._call(
            "tool_approval", mid=mid, tool_call_id=tool_call_id, approved=approved, reason=reason
        )
        return assistant, tool_msg, cont

    async def regenerate(
        self, mid: str, *, model: str | None, maxsize: int
    ) -> tuple[dict[str, Any], ReplyStream]:
        (reply, final), gen = await self._stream("regenerate", mid=mid, model=model)
        return reply, _reply_stream(reply["id"], final, gen, maxsize)

    async def cancel(self, mid: str) -> dict[str, Any]:
        msg: dict[str, Any] = await self._call("cancel", mid=mid)
        return msg

    async def stream(self, mid: str, *, since: int, maxsize: int) -> ReplyStream:
        final, gen = await self._stream("stream", mid=mid, since=since)
        return _reply_stream(mid, final, gen, maxsize)

    # files
    async def add_attachment(
        self,
        *,
        filename: str | None,
        content_type: str | None,
        chunks: AsyncIterable[bytes],
        limit: int,
        session_limit: int = 0,
    ) -> dict[str, Any]:
        """As single node, but the bytes (at most ``limit``) cross to the shard in one call."""
        buf = bytearray()
        async for chunk in chunks:
            buf += chunk
            if len(buf) > limit:
                raise TooLarge(limit)
        doc: dict[str, Any] = await self._call(
            "add_attachment",
            filename=filename,
            content_type=content_type,
            data=bytes(buf),
            limit=limit,
            session_limit=session_limit,
        )
        return doc

    async def delete_attachment(self, aid: str) -> dict[str, Any]:
        return dict(await self._call("delete_attachment", aid=aid))

    async def open_blob(self, sha256: str) -> Blob:
        size: int = await self._call("blob_size", sha256=sha256)

        async def read(n: int, pos: int) -> bytes:
            data: bytes = await self._call("blob_read", sha256=sha256, n=n, pos=pos)
            return data

        return RemoteBlob(read, size)

    async def snapshot(self, branch: Literal["active", "all"], *, max_bytes: int) -> bytes | None:
        data: bytes | None = await self._call("snapshot", branch=branch, max_bytes=max_bytes)
        return data

    async def export(self, fmt: Literal["json", "markdown", "bundle"]) -> ExportStream:
        self._used = True
        gen = self._front.stream(self._k, "export", self._sid, self._user, fmt)
        await self._front.first(self._k, gen)
        return RemoteExportStream(gen)


def _reply_stream(mid: str, final: dict[str, Any] | None, gen: Any, maxsize: int) -> ReplyStream:
    if final is not None:
        cancel_gen(gen)
        return ReplyStream(mid, final=final)
    return RemoteReplyStream(mid, subscription=RemoteSubscription(maxsize, gen))


class RemoteLease:
    """``async with front.session(sid, user) as s``: a :class:`RemoteSessionHandle`.

    Entering checks the id only; the shard checks the session on the first
    call. A block that calls nothing asks the shard at its end, so that
    ``async with registry.session(sid, user): pass`` still raises ``NotFound``.
    """

    __slots__ = ("_front", "_handle", "_sid", "_user")

    def __init__(self, front: ClusterRegistry, sid: str, user: str) -> None:
        self._front = front
        self._sid = sid
        self._user = user
        self._handle: RemoteSessionHandle | None = None

    async def __aenter__(self) -> SessionHandle:
        validate_session_id(self._sid)
        self._handle = RemoteSessionHandle(self._front, self._sid, self._user)
        return self._handle

    async def __aexit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None and self._handle is not None and not self._handle._used:
            await self._handle.read_session()


# ---------------------------------------------------------------------------- feeds


class _SessionPump:
    """This front's one subscription to a session's events on its shard."""

    def __init__(self, front: ClusterRegistry, sid: str, user: str) -> None:
        self.front = front
        self.sid = sid
        self.topic = Topic(sid, on_drop=lambda: front.hooks.on_subscriber_dropped(sid))
        self.opening = 0  # feeds between "pump ready" and their own subscription
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.gen = front.stream(front.shard_of(sid), "subscribe", sid, user)
        self.task = asyncio.create_task(self._run(), name=f"cluster:feed:{sid}")

    async def _run(self) -> None:
        why = "closed"
        try:
            first = await self.gen.__anext__()
            status, value = await first
            if status != "ok":
                self.ready.set_exception(decode_error(value))
                return
            self.ready.set_result(None)
            async for ref in self.gen:
                item = await ref
                if isinstance(item, list):
                    for t in item:
                        self.topic.publish(frame_from_plain(t))
                elif item[0] == "end":
                    why = item[1]
                    break
        except (RayError, StopAsyncIteration) as exc:
            if not self.ready.done():
                self.ready.set_exception(Unavailable(f"the session's shard is unavailable: {exc}"))
            else:
                log.warning("session %s: the subscription to its shard broke: %s", self.sid, exc)
        finally:
            if not self.ready.done():
                self.ready.set_exception(Unavailable("the session's feed was stopped"))
            self.front._pump_ended(self, why)

    def stop(self) -> None:
        self.task.cancel()
        cancel_gen(self.gen)


# ---------------------------------------------------------------------------- the registry


class ClusterRegistry:
    """The remote façade (see the module docstring). ``start`` once, ``close`` idempotently."""

    def __init__(
        self,
        spec: ShardSpec,
        *,
        request_timeout: float,
        subscriber_queue: int,
        transport: Literal["direct", "ray"] = "direct",
    ) -> None:
        self.spec = spec
        self.shards = spec.shards
        self.timeout = request_timeout
        self.subscriber_queue = subscriber_queue
        self.hooks: Hooks = Hooks()
        self.user_logs = UserLogs()  # no list feed in cluster mode yet (NO_ACROSS)
        self.expired_total = 0  # each shard sweeps its own sessions (its /metrics)
        self._handles: dict[int, Any] = {}
        self._pumps: dict[str, _SessionPump] = {}
        self._closed = False
        self.stats = ShardCallStats()
        self._batches = Batcher(self)
        # façade calls over a TCP stream per shard (its address from Ray), or all on Ray
        self._wire = (
            WireClient(self._endpoint, self._unavailable, request_timeout, self.stats)
            if transport == "direct"
            else None
        )

    # ------------------------------------------------------------------ calls

    def shard_of(self, sid: str) -> int:
        return shard_of(sid, self.shards)

    def _handle(self, k: int) -> Any:
        h = self._handles.get(k)
        if h is None:
            h = self._handles[k] = shard_handle(k, self.spec)
        return h

    def _unavailable(self, k: int, why: str) -> Unavailable:
        self._handles.pop(k, None)  # look it up afresh next time
        return Unavailable(
            f"shard {k} is unavailable ({why}); retry shortly",
            details={"shard": k},
        )

    async def _endpoint(self, k: int) -> Endpoint:
        """Where shard ``k``'s direct path listens, asked of the live Ray actor."""
        self.stats.ray_calls += 1
        try:
            return tuple(await asyncio.wait_for(self._handle(k).endpoint.remote(), self.timeout))
        except RayError as exc:
            raise self._unavailable(k, type(exc).__name__) from None

    async def call(self, k: int, method: str, *args: Any) -> Any:
        """``method`` of shard ``k``, its error raised here (façade calls go over the
        direct path, :mod:`actors.cluster.wire`, or are batched per loop turn on
        Ray, :mod:`actors.cluster.batch`)."""
        if self._closed:
            raise Unavailable("the front is shutting down")
        if method == "call" and self._wire is not None:
            status, value = await self._wire.call(k, args)
        else:
            status, value = await self._batches.submit(k, method, args)
        if status != "ok":
            raise decode_error(value)
        return value

    def stream(self, k: int, method: str, *args: Any) -> Any:
        """A streaming call of shard ``k``: an ``ObjectRefGenerator``."""
        if self._closed:
            raise Unavailable("the front is shutting down")
        return getattr(self._handle(k), method).options(num_returns="streaming").remote(*args)

    async def first(self, k: int, gen: Any) -> Any:
        """The answer a stream starts with (its error raised here)."""
        try:
            ref = await asyncio.wait_for(gen.__anext__(), self.timeout)
            status, value = await asyncio.wait_for(ref, self.timeout)
        except TimeoutError:
            cancel_gen(gen)
            raise self._unavailable(k, f"no answer within {self.timeout:g} s") from None
        except (RayError, StopAsyncIteration) as exc:
            raise self._unavailable(k, type(exc).__name__) from None
        if status != "ok":
            raise decode_error(value)
        return value

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Nothing to open: shards are made on first use."""

    async def stop_replies(self, grace: float | None = None) -> None:
        """Replies run in the shards and outlive this front: nothing to stop."""

    async def close(self) -> None:
        """End every feed's subscription (their feeds end as at shutdown). Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._wire is not None:
            self._wire.close()
        for pump in list(self._pumps.values()):
            pump.stop()
            pump.topic.close_all()
        self._pumps.clear()

    @property
    def live(self) -> int:
        """Sessions this front follows (one subscription each)."""
        return len(self._pumps)

    def subscriber_count(self) -> int:
        return sum(len(p.topic.subs) for p in self._pumps.values())

    def running_replies(self) -> int:
        return 0  # they run in the shards

    def shard_calls(self) -> ShardCallStats:
        """What this front's shard calls cost so far (see :class:`ShardCallStats`)."""
        return self.stats

    async def cluster_info(self) -> dict[str, Any]:
        """Shards placed, the nodes they run on, and the Ray nodes alive."""

        def look() -> dict[str, Any]:
            names = ray.util.list_named_actors(all_namespaces=True)
            placed = [
                n
                for n in names
                if n["namespace"] == self.spec.namespace and n["name"].startswith("roost-shard-")
            ]
            nodes = [n for n in ray.nodes() if n.get("Alive")]  # type: ignore[no-untyped-call]
            return {
                "namespace": self.spec.namespace,
                "shards": self.shards,
                "shards_placed": len(placed),
                "nodes_alive": len(nodes),
            }

        return await asyncio.get_running_loop().run_in_executor(None, look)

    # ------------------------------------------------------------------ sessions

    def session(self, sid: str, user: str = "") -> RemoteLease:
        return RemoteLease(self, sid, user)

    async def create_session(
        self,
        sid: str | None,
        *,
        owner: str = "",
        title: str | None = None,
        metadata: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        sid = validate_session_id(sid) if sid is not None else uuid7()
        doc: dict[str, Any] = await self.call(
            self.shard_of(sid), "create_session", sid, owner, title, metadata, extra
        )
        return doc

    async def list_sessions(
        self,
        *,
        owner: str = "",
        limit: int = 25,
        cursor: str | None = None,
        filters: ListFilters | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        items, nxt = await self.call(
            home_of(owner, self.shards), "list_sessions", owner, limit, cursor, filters
        )
        return items, nxt

    # ------------------------------------------------------------------ across sessions

    async def folders(self, owner: str) -> list[dict[str, Any]]:
        """``owner``'s folders with counts, from their directory shard."""
        items: list[dict[str, Any]] = await self.call(home_of(owner, self.shards), "folders", owner)
        return items

    async def search_sessions(
        self, owner: str, q: str, *, limit: int, cursor: str | None, raw: bool
    ) -> tuple[list[dict[str, Any]], str | None]:
        raise Unsupported(NO_ACROSS)

    def user_log(self, owner: str) -> UserLog:
        raise Unsupported(NO_ACROSS)

    async def delete_session(self, sid: str, user: str = "") -> None:
        validate_session_id(sid)
        await self.call(self.shard_of(sid), "delete_session", sid, user)

    async def import_session(
        self,
        sid: str | None,
        raw: bytearray,
        *,
        owner: str = "",
        max_title_chars: int,
        max_content_chars: int,
    ) -> dict[str, Any]:
        sid = validate_session_id(sid) if sid is not None else uuid7()
        try:
            doc: dict[str, Any] = await self.call(
                self.shard_of(sid),
                "import_session",
                sid,
                bytes(raw),
                owner,
                max_title_chars,
                max_content_chars,
            )
        finally:
            with contextlib.suppress(BufferError):
                raw.clear()
        return doc

    async def resume_reply(
        self, sid: str, user: str, *, maxsize: int
    ) -> tuple[dict[str, Any], Subscription] | None:
        k = self.shard_of(sid)
        gen = self.stream(k, "reply_stream", sid, user, "resume", {})
        message = await self.first(k, gen)
        if message is None:
            cancel_gen(gen)
            return None
        return message, RemoteSubscription(maxsize, gen)

    def check_disk(self) -> None:
        """Each shard checks its own disk on every write."""

    async def trim_heap(self) -> None:
        """Nothing big is held here."""

    # ------------------------------------------------------------------ feeds

    async def feed_open(self, sid: str, user: str) -> tuple[Topic, Subscription, int, list[Frame]]:
        validate_session_id(sid)
        pump = self._pumps.get(sid)
        if pump is None:
            if self._closed:
                raise Unavailable("the front is shutting down")
            pump = self._pumps[sid] = _SessionPump(self, sid, user)
        pump.opening += 1
        try:
            await asyncio.wait_for(asyncio.shield(pump.ready), self.timeout)
            sub = pump.topic.subscribe(self.subscriber_queue)
            try:
                current, catchup = await self.call(self.shard_of(sid), "feed_state", sid, user)
            except BaseException:
                pump.topic.unsubscribe(sub)
                raise
        except TimeoutError:
            raise self._unavailable(self.shard_of(sid), "no answer") from None
        finally:
            pump.opening -= 1
            self.release_topic(sid)
        return pump.topic, sub, current, [frame_from_plain(t) for t in catchup]

    async def feed_events(self, sid: str, user: str, since: int, limit: int) -> list[Frame] | None:
        out = await self.call(self.shard_of(sid), "feed_events", sid, user, since, limit)
        return None if out is None else [frame_from_plain(t) for t in out]

    def topics_alive(self) -> dict[str, Topic]:
        return {sid: p.topic for sid, p in self._pumps.items()}

    def release_topic(self, sid: str) -> None:
        """End the session's subscription once no feed of this front uses it."""
        pump = self._pumps.get(sid)
        if pump is not None and not pump.topic.subs and pump.opening == 0:
            del self._pumps[sid]
            pump.stop()

    def _pump_ended(self, pump: _SessionPump, why: str) -> None:
        """The shard ended a session's subscription: its local feeds end too, as
        ``deleted``, or dropped (they resume with ``since``), or closed."""
        if self._pumps.get(pump.sid) is pump:
            del self._pumps[pump.sid]
        if why == "deleted" or self._closed:
            pump.topic.close_all()
            return
        for sub in list(pump.topic.subs):
            sub.drop()
        pump.topic.subs.clear()

    # ------------------------------------------------------------------ shares

    async def create_share(
        self,
        share_id: str,
        *,
        owner: str,
        sid: str,
        branch: str,
        expires_in: float | None,
        snapshot: bytes,
    ) -> dict[str, Any]:
        raise Unsupported(NO_SHARES)

    def get_share(self, share_id: str) -> tuple[dict[str, Any], bytes] | None:
        raise Unsupported(NO_SHARES)

    def list_shares(self, owner: str, session_id: str | None = None) -> list[dict[str, Any]]:
        raise Unsupported(NO_SHARES)

    async def delete_share(self, share_id: str, owner: str) -> None:
        raise Unsupported(NO_SHARES)

    async def copy_share(self, share_id: str, owner: str) -> dict[str, Any]:
        raise Unsupported(NO_SHARES)
