"""The one door through a session's actor: :class:`SessionHandle`.

The server asks for a handle (``async with registry.session(sid, user) as s``)
and calls plain async methods with plain values; storage drafts, ops and the
file stay behind this door. Writes go through the actor's mailbox (group
commit, output gate); reads through :meth:`SessionActor.read` (after the
gate). A later cluster mode can put a remote actor behind the same methods.

A handle is valid only inside its ``async with`` block (the lease keeps the
actor live); streams it hands out (:class:`ReplyStream` subscriptions,
:class:`ExportStream`, :class:`Blob`) may be used after it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
from collections.abc import AsyncIterable, Iterator
from dataclasses import dataclass
from typing import IO, Any, Literal, Protocol

import orjson

from actors.actor import SessionActor
from actors.context import build_context, describe
from actors.pubsub import Subscription
from actors.replies import Reply
from actors.responders import Responder
from storage.attachment_ops import (
    op_add_attachment,
    op_delete_attachment,
    op_drop_blob,
)
from storage.attachments import BlobWriter, attachments_dir, blob_path, safe_mime, safe_name
from storage.bundle import iter_bundle
from storage.errors import InvalidInput, NotFound, TooLarge
from storage.export import ExportDocument as ExportDocument  # the façade's document type
from storage.export import active_path_only, iter_export
from storage.ids import now_iso
from storage.layout import DataDir
from storage.ops import (
    MessageDraft,
    op_append,
    op_delete_message,
    op_set_feedback,
    op_update_message,
    op_update_session,
)
from storage.reads import Page, read_by_client_id_prefix, read_siblings
from storage.turns import read_waiting

WRITE_BATCH = 1024 * 1024


class HandleHost(Protocol):
    """What a handle needs of the registry that made it (one-way: no import of it)."""

    @property
    def datadir(self) -> DataDir: ...

    @property
    def responder(self) -> Responder: ...

    @property
    def write_pool(self) -> concurrent.futures.Executor: ...

    @property
    def read_pool(self) -> concurrent.futures.Executor: ...


class LeaseHost(HandleHost, Protocol):
    """What a :class:`SessionLease` needs of the registry: its lease door."""

    async def _enter(self, sid: str, user: str) -> SessionActor: ...

    def _leave(self, actor: SessionActor) -> None: ...


@dataclass(slots=True)
class NewMessage:
    """A message to append (or a chat's user message), already checked for size.

    ``explicit_parent``: ``parent_id`` was given (None then means a root),
    rather than left to default to the active leaf.
    """

    role: str
    content: str
    parts: list[Any] | None = None
    client_id: str | None = None
    parent_id: str | None = None
    tool_name: str | None = None
    tool_call: Any = None
    tool_result: Any = None
    attachments: list[str] | None = None
    metadata: dict[str, Any] | None = None
    request_hash: str | None = None
    explicit_parent: bool = False

    def draft(self) -> MessageDraft:
        return MessageDraft(
            role=self.role,
            content=self.content,
            parts=self.parts,
            client_id=self.client_id,
            parent_id=self.parent_id,
            tool_name=self.tool_name,
            tool_call=self.tool_call,
            tool_result=self.tool_result,
            attachments=self.attachments,
            metadata=self.metadata,
            request_hash=self.request_hash,
            explicit_parent=self.explicit_parent,
        )


class ReplyStream:
    """A reply to stream: live (``subscription`` from the offset asked for) or
    ended (``final``, to replay); :meth:`wait_final` waits for the end instead."""

    __slots__ = ("_reply", "final", "message_id", "subscription")

    def __init__(
        self,
        message_id: str,
        *,
        reply: Reply | None = None,
        subscription: Subscription | None = None,
        final: dict[str, Any] | None = None,
    ) -> None:
        self.message_id = message_id
        self.subscription = subscription
        self.final = final
        self._reply = reply

    async def wait_final(self) -> dict[str, Any]:
        """Drop the subscription and return the reply's final message once it ended."""
        if self._reply is not None:
            if self.subscription is not None:
                self.subscription.close()
                self.subscription = None
            await self._reply.done.wait()
            self.final = self._reply.final
        assert self.final is not None
        return self.final


class SessionHandle:
    """What the server can do with one session (see the module docstring).

    Every method raises the storage/actor errors of the work it does
    (``NotFound``, ``InvalidInput``, ``Conflict``, ``ActorStopped`` ...).
    """

    __slots__ = ("_actor", "_registry")

    def __init__(self, registry: HandleHost, actor: SessionActor) -> None:
        self._registry = registry
        self._actor = actor

    @property
    def sid(self) -> str:
        return self._actor.sid

    @property
    def owner(self) -> str:
        return self._actor.owner

    # -------------------------------------------------------------- reads

    async def read_session(self) -> dict[str, Any]:
        """The session document."""
        return await self._actor.read(lambda f: f.read_session())

    async def overview(self, *, limit: int) -> tuple[dict[str, Any], Page]:
        """The session and the newest page of its active branch, from one snapshot."""

        def read(f: Any) -> tuple[dict[str, Any], Page]:
            with f.snapshot():
                return f.read_session(), f.page(view="active", limit=limit)

        return await self._actor.read(read)

    async def page(
        self, *, view: str, limit: int, before: str | None = None, after: str | None = None
    ) -> Page:
        """A page of messages, oldest first (``InvalidInput`` for a bad cursor)."""
        return await self._actor.read(
            lambda f: f.page(view=view, limit=limit, before=before, after=after)
        )

    async def get_message(self, mid: str) -> dict[str, Any]:
        return await self._actor.read(lambda f: f.read_message(mid))

    async def find_by_client_id_prefix(self, prefix: str) -> dict[str, Any] | None:
        """The newest message whose ``client_id`` starts with ``prefix``, or None."""
        return await self._actor.read(lambda f: read_by_client_id_prefix(f, prefix))

    async def siblings(self, mid: str, *, limit: int) -> list[dict[str, Any]]:
        """Message ``mid`` and its siblings, by sibling index (at most ``limit``)."""
        return await self._actor.read(lambda f: read_siblings(f, mid, limit))

    async def search(self, q: str, *, limit: int, raw: bool = False) -> list[dict[str, Any]]:
        """Messages matching ``q``, best first; the index is caught up first."""
        await self._actor.catch_up_search_index()
        return await self._actor.read(lambda f: f.search(q, limit=limit, raw=raw))

    async def read_attachment(self, aid: str) -> dict[str, Any]:
        """The attachment's record (``NotFound`` if there is none)."""
        return await self._actor.read(lambda f: f.read_attachment(aid))

    # -------------------------------------------------------------- writes

    async def append(self, message: NewMessage) -> tuple[dict[str, Any], bool]:
        """Append a message; ``(message, created)`` (False: a retried ``client_id``)."""
        return await self._actor.submit(op_append(message.draft()))

    async def update_message(
        self, mid: str, changes: dict[str, Any], *, if_match: int | None = None
    ) -> dict[str, Any]:
        """Edit content/parts/metadata in place; ``PreconditionFailed`` on a stale version."""
        return await self._actor.submit(op_update_message(mid, changes, if_match=if_match))

    async def delete_message(self, mid: str) -> None:
        """Stop the message's reply if it runs, then replace it with a tombstone."""
        await self._actor.replies.cancel(mid)
        await self._actor.turns.cancel_waiting(mid)
        await self._actor.submit(op_delete_message(mid))
        self._actor.turns.forget(mid)

    async def update_session(
        self,
        *,
        title: str | None = None,
        set_title: bool = False,
        metadata: dict[str, Any] | None = None,
        active_leaf_id: str | None = None,
        organisation: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Change title (when ``set_title``), metadata, the active leaf, or
        ``organisation`` (pinned, archived, folder, tags, expires_at)."""
        return await self._actor.submit(
            op_update_session(
                title=title,
                set_title=set_title,
                metadata=metadata,
                active_leaf_id=active_leaf_id,
                organisation=organisation,
            )
        )

    async def set_feedback(self, mid: str, feedback: dict[str, Any] | None) -> dict[str, Any]:
        """Set (None: remove) the feedback on message ``mid``; the message as it is now."""
        return await self._actor.submit(op_set_feedback(mid, feedback))

    # -------------------------------------------------------------- replies

    async def chat(
        self,
        message: NewMessage,
        *,
        model: str | None,
        maxsize: int | None,
        on_busy: str | None = None,
    ) -> tuple[dict[str, Any], dict[str, Any] | None, bool, ReplyStream | None]:
        """Commit a user message and a pending reply, start the reply, under the
        turn policy ``on_busy`` (None: the session's, else the server's; issue 19).

        Returns ``(user_message, reply_message, created, stream)``; the stream
        is live (subscribed with a queue of ``maxsize`` frames; None: not
        subscribed), or (a retried ``client_id`` whose reply ended) replays it.
        A queued turn has no reply yet: ``reply_message`` and ``stream`` are
        None and the user message's status is ``queued`` (see :meth:`started`).
        Raises ``SessionBusy`` under ``reject``. Not idempotent but through
        ``client_id``.
        """
        turn = await self._actor.turns.chat(
            message.draft(), self._registry.responder, model=model, on_busy=on_busy
        )
        if turn.reply is None:
            return turn.user, None, turn.created, None
        return turn.user, turn.reply, turn.created, _stream(turn.reply, turn.running, maxsize)

    async def started(
        self, user_mid: str, *, maxsize: int
    ) -> tuple[dict[str, Any], ReplyStream] | None:
        """Wait until queued message ``user_mid`` starts: ``(reply, stream)``; None
        when it will not (deleted, or the actor stopped). Returns at once for a
        message that is not queued (its reply, if it has one, ended or runs)."""
        msg = await self.get_message(user_mid)
        if msg["status"] != "queued":
            return None
        turn = await self._actor.turns.when_started(user_mid)
        if turn is None or turn.reply is None:
            return None
        return turn.reply, _stream(turn.reply, turn.running, maxsize)

    async def waiting_reply(self) -> dict[str, Any] | None:
        """The newest reply waiting for tool results or approvals, or None."""
        return await self._actor.read(read_waiting)

    async def tool_result(
        self, mid: str, tool_call_id: str, *, output: Any = None, error: str | None = None
    ) -> tuple[dict[str, Any], bool, dict[str, Any] | None]:
        """Store the result of a tool call of reply ``mid`` (idempotent per call id):
        ``(tool_message, created, continuation)``; the continuation (a new pending
        reply) starts when this was the last open call."""
        out = await self._actor.turns.tool_result(mid, tool_call_id, output=output, error=error)
        assert out.tool_message is not None
        return out.tool_message, out.created, out.reply

    async def tool_approval(
        self, mid: str, tool_call_id: str, *, approved: bool, reason: str | None
    ) -> tuple[dict[str, Any], dict[str, Any] | None, dict[str, Any] | None]:
        """Approve or deny a call of reply ``mid``: ``(assistant_message,
        tool_message of a denial, continuation)``."""
        out = await self._actor.turns.tool_approval(
            mid, tool_call_id, approved=approved, reason=reason
        )
        return out.assistant, out.tool_message, out.reply

    async def regenerate(
        self, mid: str, *, model: str | None, maxsize: int
    ) -> tuple[dict[str, Any], ReplyStream]:
        """A new reply: a sibling of assistant message ``mid``, or a child of user ``mid``."""
        reply, running = await self._actor.replies.regenerate(
            mid, self._registry.responder, model=model
        )
        return reply, _stream(reply, running, maxsize)

    async def cancel(self, mid: str) -> dict[str, Any]:
        """Stop reply ``mid`` (text so far kept); an ended one is returned as it is."""
        final = await self._actor.replies.cancel(mid)
        if final is None:
            final = await self._actor.turns.cancel_waiting(mid)
        if final is None:
            final = await self.get_message(mid)
        return final

    async def stream(self, mid: str, *, since: int, maxsize: int) -> ReplyStream:
        """Reply ``mid`` from text offset ``since``: live if it runs, else ended.

        Raises ``InvalidInput`` when ``since`` is past the text there is.
        """
        running = self._actor.replies.get(mid)
        if running is not None:
            if since > len(running.committed):
                raise InvalidInput(
                    f"Last-Event-ID {since} is past the {len(running.committed)} "
                    "characters streamed so far"
                )
            return ReplyStream(mid, reply=running, subscription=running.subscribe(maxsize, since))
        msg = await self.get_message(mid)
        if since > len(msg["content"]):
            raise InvalidInput(
                f"Last-Event-ID {since} is past the end of the text "
                f"({len(msg['content'])} characters)"
            )
        return ReplyStream(mid, final=msg)

    # -------------------------------------------------------------- context (issue 21)

    async def context(self, leaf_id: str | None = None) -> dict[str, Any]:
        """What the next reply below ``leaf_id`` (default: the active leaf) would send:
        message ids, summaries, token counts and the budget (``GET /context``).
        ``NotFound`` for an unknown leaf."""
        actor = self._actor
        responder = self._registry.responder

        def read(f: Any) -> dict[str, Any]:
            with f.snapshot():
                leaf = leaf_id or f.read_session()["active_leaf_id"]
                ctx = build_context(
                    f,
                    actor.compactor.policy,
                    leaf,
                    model=None,
                    responder=responder,
                    documents=False,
                )
                return describe(ctx, actor.compactor.policy)

        return await actor.read(read)

    async def compact(self, leaf_id: str | None = None) -> list[dict[str, Any]]:
        """Summarize the uncovered history of the branch ending at ``leaf_id`` (default:
        the active leaf) now, oldest range first (``Compactor.compact``): the summaries
        made, oldest first (empty: nothing to compact)."""
        leaf = leaf_id or (await self.read_session())["active_leaf_id"]
        if leaf is None:
            return []
        await self.get_message(leaf)  # NotFound for an unknown or deleted leaf
        return await self._actor.compactor.compact(leaf, self._registry.responder)

    # -------------------------------------------------------------- files

    async def add_attachment(
        self,
        *,
        filename: str | None,
        content_type: str | None,
        chunks: AsyncIterable[bytes],
        limit: int,
        session_limit: int = 0,
    ) -> dict[str, Any]:
        """Store the bytes of ``chunks`` as an attachment and record it.

        ``filename`` and ``content_type`` are what the client said; the stored
        name keeps only its last path component without control or format
        characters, and the MIME type is checked (else guessed from the name).

        The file is written while hashed, off the event loop; nothing is kept
        if anything fails. Raises ``TooLarge`` over ``limit`` bytes,
        ``SessionFull`` when new bytes would take the session's attachments over
        ``session_limit`` bytes (0: no cap), ``NotFound`` if the session's folder
        went away, and what iterating ``chunks`` raises.
        """
        name = safe_name(filename)
        mime = safe_mime(content_type, name)
        registry = self._registry
        loop = asyncio.get_running_loop()
        sid = self.sid
        try:
            writer = await loop.run_in_executor(
                registry.write_pool, lambda: BlobWriter(registry.datadir, sid, limit=limit)
            )
        except FileNotFoundError:
            raise _gone(sid) from None
        try:
            buf = bytearray()
            async for chunk in chunks:
                buf += chunk
                if len(buf) > limit:  # refuse early, before a write can
                    raise TooLarge(limit)
                if len(buf) >= WRITE_BATCH:
                    await loop.run_in_executor(registry.write_pool, writer.write, bytes(buf))
                    buf.clear()
            if buf:
                await loop.run_in_executor(registry.write_pool, writer.write, bytes(buf))
            sha256, size = await loop.run_in_executor(registry.write_pool, writer.commit)
            return await self._actor.submit(
                op_add_attachment(
                    name=name,
                    mime=mime,
                    size=size,
                    sha256=sha256,
                    place=writer.place,
                    max_session_bytes=session_limit,
                )
            )
        except FileNotFoundError:
            raise _gone(sid) from None
        finally:
            # no-op once placed; otherwise removes the partial or unrecorded file
            await loop.run_in_executor(registry.write_pool, writer.abort)

    async def delete_attachment(self, aid: str) -> dict[str, Any]:
        """Delete attachment ``aid`` (its record) and return it; its blob goes when
        no other record of the session uses the same bytes (reference count).

        Raises ``NotFound`` for an unknown id and ``AttachmentInUse`` while a live
        message names it. Not idempotent: a second delete is ``NotFound``.
        """
        doc = await self._actor.submit(op_delete_attachment(aid))
        path = blob_path(self._registry.datadir, self.sid, doc["sha256"])
        await self._actor.submit(op_drop_blob(doc["sha256"], path))
        return doc

    async def open_blob(self, sha256: str) -> Blob:
        """The stored bytes with this digest; ``FileNotFoundError`` if not stored here."""
        registry = self._registry
        path = blob_path(registry.datadir, self.sid, sha256)
        f = await asyncio.get_running_loop().run_in_executor(registry.read_pool, open, path, "rb")
        return Blob(f, registry.read_pool)

    async def snapshot(self, branch: Literal["active", "all"], *, max_bytes: int) -> bytes | None:
        """The session as it is now, as a JSON export (``roost.session.v1``): every
        branch, or (``active``) the active path's live messages only. None when the
        export is over ``max_bytes``. Reads only; safe to call concurrently.
        """
        stream = await self.export("json")
        buf = bytearray()
        try:
            async for chunk in stream:
                buf += chunk
                if len(buf) > max_bytes:
                    return None
        finally:
            stream.close()
        if branch == "all":
            return bytes(buf)
        return orjson.dumps(active_path_only(orjson.loads(buf)))

    async def export(self, fmt: Literal["json", "markdown", "bundle"]) -> ExportStream:
        """The whole session as one consistent snapshot, streamed (see ``iter_export``);
        ``bundle``: a zip of the JSON export and the attachments' bytes
        (``storage.bundle.iter_bundle``), in constant memory too.

        The snapshot is taken now, and only what is on disk is in it; the
        stream may be read after the handle's block ends. Close it.
        """
        path = self._actor.path
        pool = self._registry.read_pool
        gen: Iterator[bytes]
        if fmt == "bundle":
            folder = attachments_dir(self._registry.datadir, self.sid)
            gen = iter_bundle(path, self.sid, folder, exported_at=now_iso())
        else:
            gen = iter_export(path, self.sid, fmt, exported_at=now_iso())
        out = ExportStream(gen, pool)
        try:
            # the first step opens the connection and the snapshot while the lease holds
            await out.prefetch()
            # the snapshot may hold a commit whose flush is still running: once
            # the gate opens, every commit made before it is on disk
            await self._actor.read(lambda f: None)
        except BaseException:
            out.close()
            raise
        return out


def _stream(reply: dict[str, Any], running: Reply | None, maxsize: int | None) -> ReplyStream:
    if running is None:
        return ReplyStream(reply["id"], final=reply)
    sub = running.subscribe(maxsize) if maxsize is not None else None
    return ReplyStream(reply["id"], reply=running, subscription=sub)


def _gone(sid: str) -> NotFound:
    return NotFound(f"session {sid!r} not found", details={"session_id": sid})


class Blob:
    """An open attachment file: ``size``, ``await read(n, pos)``, ``close()``."""

    def __init__(self, f: IO[bytes], pool: concurrent.futures.Executor) -> None:
        self._f = f
        self._pool = pool
        self.size = os.fstat(f.fileno()).st_size

    async def read(self, n: int, pos: int) -> bytes:
        """Up to ``n`` bytes at ``pos`` (read on the read pool)."""
        return await asyncio.get_running_loop().run_in_executor(
            self._pool, os.pread, self._f.fileno(), n, pos
        )

    def close(self) -> None:
        """Idempotent."""
        self._f.close()


class ExportStream:
    """Chunks of an export, read on the read pool: ``async for chunk in stream``.

    :meth:`close` (idempotent) ends the read transaction, after any step
    still running in the pool.
    """

    def __init__(self, gen: Iterator[bytes], pool: concurrent.futures.Executor) -> None:
        self._gen = gen
        self._pool = pool
        self._step: concurrent.futures.Future[bytes | None] | None = None
        self._first: bytes | None = None
        self._closed = False

    async def prefetch(self) -> None:
        self._first = await self._next()

    async def _next(self) -> bytes | None:
        self._step = self._pool.submit(next, self._gen, None)
        return await asyncio.wrap_future(self._step)

    def __aiter__(self) -> ExportStream:
        return self

    async def __anext__(self) -> bytes:
        first, self._first = self._first, None
        chunk = first if first is not None else await self._next()
        if chunk is None:
            raise StopAsyncIteration
        return chunk

    def close(self) -> None:
        # closing the generator ends its read transaction; it must not run while
        # a step is still executing in the pool (a cancelled reader leaves one).
        # If the pool is already shut down, garbage collection closes it.
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(RuntimeError):
            self._pool.submit(_close_after, self._step, self._gen)


def _close_after(step: concurrent.futures.Future[Any] | None, gen: Iterator[bytes]) -> None:
    if step is not None:
        concurrent.futures.wait([step])
    gen.close()  # type: ignore[attr-defined]


class SessionLease:
    """``async with registry.session(sid, user) as s``: one lease, one handle.

    A plain class rather than a generator-based context manager: it is on
    every request's path.
    """

    __slots__ = ("_actor", "_registry", "_sid", "_user")

    def __init__(self, registry: LeaseHost, sid: str, user: str) -> None:
        self._registry = registry
        self._sid = sid
        self._user = user
        self._actor: SessionActor | None = None

    async def __aenter__(self) -> SessionHandle:
        if self._actor is not None:
            raise RuntimeError("a SessionLease is entered once")
        actor = self._actor = await self._registry._enter(self._sid, self._user)
        return SessionHandle(self._registry, actor)

    async def __aexit__(self, *exc: object) -> None:
        if self._actor is not None:
            self._registry._leave(self._actor)
