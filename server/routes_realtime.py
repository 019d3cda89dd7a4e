"""Real time: a session's events over WebSocket and over SSE (SPEC section 4)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from aiohttp import WSMsgType, web
from pydantic import ValidationError

from actors.feed import End, Feed
from actors.pubsub import Frame
from server import access, frames
from server.errors import ApiError, status_of, validation_details
from server.http import query_since, user_of
from server.keys import DRAIN, OPEN_FEEDS, OPEN_SOCKETS, OPEN_STREAMS, REGISTRY, SETTINGS, state_of
from server.openapi import FEED_EVENTS, SSE, Param, Reply, describe
from server.requests import ChatRequest, chat_draft
from server.sse import open_sse, pump
from storage.errors import StorageError

routes = web.RouteTableDef()  # mounted under /api
log = logging.getLogger("roost.server")

# Seconds the feeds' senders get at shutdown to send what they hold and close with 1001.
SOCKET_CLOSE_WAIT = 1.0


def origin_allowed(request: web.Request) -> bool:
    """Same-origin requests, requests without Origin (non-browsers), and the allow-list."""
    return access.origin_allowed(request)


async def _open_feed(request: web.Request, since: int | None) -> Feed:
    if not origin_allowed(request):
        raise ApiError(
            403, "forbidden_origin", f"origin {request.headers.get('Origin')!r} is not allowed"
        )
    feed = Feed(state_of(request)[REGISTRY], request.match_info["sid"], user_of(request), since)
    await feed.open()
    return feed


@routes.get("/sessions/{sid}/ws")
@describe(
    params=(Param("since", "query", {"type": "string"}, "the last event seq you saw"),),
    responses={101: Reply("a WebSocket (subprotocol roost.v1) of the session's events")},
)
async def websocket(request: web.Request) -> web.WebSocketResponse:
    """hello, the events missed since ``since``, then live events; takes chat/cancel/ping."""
    settings = state_of(request)[SETTINGS]
    feed = await _open_feed(request, query_since(request))
    ws = web.WebSocketResponse(
        heartbeat=settings.ws_heartbeat,
        max_msg_size=settings.max_ws_frame_bytes,
        compress=False,
        protocols=("roost.v1",),
    )
    try:
        await ws.prepare(request)
    except BaseException:
        feed.close()
        raise
    state_of(request)[OPEN_FEEDS].add(feed)
    feed.direct = _direct_writer(request, ws)
    closing = asyncio.Event()
    sender = asyncio.create_task(_send_feed(ws, feed, closing))
    state_of(request)[OPEN_SOCKETS][ws] = sender
    _stop_if_draining(request, feed)
    try:
        async for msg in ws:
            if msg.type is WSMsgType.TEXT:
                await _on_client_frame(request, ws, msg.data)
            elif msg.type is WSMsgType.BINARY:
                await _send(ws, frames.binary_refused())
    finally:
        try:
            if closing.is_set():
                # the feed ended and the sender is closing the socket: let it finish
                # the handshake (bounded by the socket's close timeout), so the client
                # reads our close code and a clean close rather than a dropped link
                await asyncio.wait({sender})
        finally:
            sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
        feed.close()
        state_of(request)[OPEN_FEEDS].discard(feed)
        state_of(request)[OPEN_SOCKETS].pop(ws, None)
    return ws


def _stop_if_draining(request: web.Request, feed: Feed) -> None:
    """A feed registered after the shutdown drain stopped the others ends at once."""
    if state_of(request)[DRAIN].feeds_stopped:
        feed.stop()


async def _send(ws: web.WebSocketResponse, payload: bytes) -> None:
    """One text frame of ``payload`` (built by :mod:`server.frames`), unless closed."""
    if not ws.closed:
        await ws.send_frame(payload, WSMsgType.TEXT)


def _direct_writer(request: web.Request, ws: web.WebSocketResponse) -> Callable[[Frame], bool]:
    """Write a live frame straight to the socket while it keeps up.

    Fan-out to many sockets then costs one ``transport.write`` of bytes encoded
    once per event, instead of a task switch and a frame build per socket. When
    the transport holds unsent bytes (the peer is not reading fast enough) the
    frame is refused and queued instead, so a slow subscriber meets the same
    bounded queue and the same drop (close 4001) as before. aiohttp writes its
    own frames (pongs, acks) whole in one call too, so frames never interleave.
    """
    transport = request.transport

    def write(frame: Frame) -> bool:
        if (
            ws.closed
            or transport is None
            or transport.is_closing()
            or transport.get_write_buffer_size() > 0
        ):
            return False
        transport.write(frames.ws_bytes(frame))
        return True

    return write


async def _send_feed(ws: web.WebSocketResponse, feed: Feed, closing: asyncio.Event) -> None:
    """Send the feed's frames, then close the socket with the code its end calls for.

    Sets ``closing`` before the close: from then on the handler waits for this task
    (the handshake reads the client's close reply) instead of cancelling it.
    """
    try:
        async for frame in feed.frames():
            if ws.closed:
                return
            await ws.send_frame(frame.data, WSMsgType.TEXT)
    except ConnectionResetError:
        return
    except StorageError as exc:  # the session went away during the replay
        code, reason = frames.close_deleted(exc.message)
    else:
        if feed.end is End.DROPPED:
            code, reason = frames.close_lagged(feed.last_seq)
        elif feed.end is End.DELETED:
            code, reason = frames.close_deleted()
        else:
            code, reason = frames.close_going_away()
    closing.set()
    await ws.close(code=code, message=reason)


async def _on_client_frame(request: web.Request, ws: web.WebSocketResponse, text: str) -> None:
    """Answer one client frame: ``ping``, ``chat`` or ``cancel``; errors as ``error``."""
    if text == "ping":
        await ws.send_str(frames.PONG_TEXT)
        return
    ref = None
    try:
        try:
            data = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise ApiError(400, "malformed_json", f"the frame is not valid JSON: {exc}") from exc
        if not isinstance(data, dict) or not isinstance(data.get("type"), str):
            raise ApiError(400, "invalid_input", 'a frame is a JSON object with a "type"')
        kind = data.pop("type")
        ref = data.pop("ref", None)
        if kind == "ping":
            await _send(ws, frames.pong(ref))
        elif kind == "chat":
            access.check_rate(request, request.match_info["sid"])
            state_of(request)[REGISTRY].check_disk()
            await _ws_chat(request, ws, data, ref)
        elif kind == "cancel":
            mid = data.get("message_id")
            if not isinstance(mid, str) or set(data) != {"message_id"}:
                raise ApiError(400, "invalid_input", "cancel takes exactly a message_id string")
            async with state_of(request)[REGISTRY].session(
                request.match_info["sid"], user_of(request)
            ) as s:
                final = await s.cancel(mid)
            await _send(ws, frames.cancel_ack(ref, final))
        else:
            raise ApiError(
                400, "invalid_input", f"unknown frame type {kind!r}; expected chat, cancel or ping"
            )
    except ApiError as exc:
        await _send_error(ws, ref, exc.code, exc.message, exc.status, exc.details)
    except StorageError as exc:
        await _send_error(ws, ref, exc.code, exc.message, status_of(exc), exc.details)
    except ValidationError as exc:
        await _send_error(
            ws,
            ref,
            "invalid_input",
            "the frame does not match the schema",
            400,
            validation_details(exc),
        )


async def _send_error(
    ws: web.WebSocketResponse, ref: Any, code: str, message: str, status: int, details: Any
) -> None:
    """An ``error`` frame answering the client frame ``ref``, with the HTTP-like status."""
    await _send(ws, frames.error(ref, code, message, status, details))


async def _ws_chat(
    request: web.Request, ws: web.WebSocketResponse, data: dict[str, Any], ref: Any
) -> None:
    """Chat over the socket: like POST /chat; the reply streams as message.delta events."""
    settings = state_of(request)[SETTINGS]
    body = ChatRequest.model_validate(data)
    draft = chat_draft(body, settings)
    async with state_of(request)[REGISTRY].session(
        request.match_info["sid"], user_of(request)
    ) as s:
        # not subscribed: the reply streams as message.delta events of the feed
        user, reply, _, _ = await s.chat(
            draft, model=body.model, maxsize=None, on_busy=body.on_busy
        )
    await _send(ws, frames.chat_ack(ref, body.client_id, user, reply))


@routes.get("/sessions/{sid}/events")
@describe(
    params=(
        Param("since", "query", {"type": "string"}, "the last event seq you saw"),
        Param(
            "Last-Event-ID",
            "header",
            {"type": "string", "pattern": "^[0-9]{0,15}$"},
            "the same, as SSE sends it",
        ),
    ),
    responses={200: Reply("the session's events as SSE", None, (SSE,), FEED_EVENTS)},
)
async def events(request: web.Request) -> web.StreamResponse:
    """The WebSocket's event stream as SSE; resumes from ``Last-Event-ID`` (or ``?since=``)."""
    settings = state_of(request)[SETTINGS]
    feed = await _open_feed(request, query_since(request, header="Last-Event-ID"))
    state_of(request)[OPEN_FEEDS].add(feed)
    _stop_if_draining(request, feed)
    try:
        resp = await open_sse(request)
        await pump(
            request, resp, _feed_events(feed), heartbeat=settings.sse_heartbeat, stop=feed.stop
        )
    finally:
        feed.close()
        state_of(request)[OPEN_FEEDS].discard(feed)
    return resp


async def _feed_events(feed: Feed) -> AsyncIterator[bytes]:
    """The feed as SSE events, then ``lagged`` if it fell behind."""
    async for frame in feed.frames():
        yield frames.sse_bytes(frame)
    if feed.end is End.DROPPED:
        yield frames.sse_lagged(feed.last_seq)


async def close_realtime(app: web.Application) -> None:
    """on_shutdown: start the drain of the real-time side (:func:`drain_realtime`).

    Returns at once: the drain runs while aiohttp waits for the handlers in
    flight (``serve``'s ``shutdown_timeout`` is the grace and a margin), and
    the streams' cleanup waits for it. Idempotent.
    """
    app[DRAIN].start(drain_realtime(app))


async def drain_realtime(app: web.Application) -> None:
    """Shutdown of replies, streams and sockets, in this order; never raises.

    1. Running replies get ``--shutdown-grace`` to finish, then stop as
       ``interrupted`` with their text kept (``ActorRegistry.stop_replies``):
       each reply stream (chat, regenerate, resume, the AI SDK's) gets an
       ``error`` event ``shutting_down`` and the final ``message`` (sent
       after its commit is flushed), then ends; the feeds get the
       ``message.updated`` event.
    2. Every feed ends: a WebSocket's sender sends what its feed still holds
       and closes with 1001; an SSE feed ends after what it holds.
    3. Reply streams still registered end (their subscriptions close).
    4. Sockets whose sender has not closed them within
       :data:`SOCKET_CLOSE_WAIT` seconds (a peer that does not read) are
       closed here with 1001.
    """
    drain = app[DRAIN]
    try:
        await app[REGISTRY].stop_replies()
    except Exception:
        log.exception("stopping the replies at shutdown failed")
    feeds = app[OPEN_FEEDS]
    for feed in list(feeds):
        feed.stop()
    drain.feeds_stopped = True
    streams = app[OPEN_STREAMS]
    for sub in list(streams):
        sub.close()
    sockets = app[OPEN_SOCKETS]
    senders = set(sockets.values())
    if senders:
        await asyncio.wait(senders, timeout=SOCKET_CLOSE_WAIT)
    code, reason = frames.close_going_away()
    for ws in [ws for ws in list(sockets) if not ws.closed]:
        with contextlib.suppress(Exception):
            await ws.close(code=code, message=reason)
