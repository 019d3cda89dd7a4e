"""Logging: the process's log setup and the access log.

:func:`setup_logging` configures the root logger once per process: ``text``
lines (``time LEVEL logger message``) or ``json`` objects, one per line, for
log shippers. :func:`access_log_middleware` writes one ``roost.access`` line
per request: method, route template, status, duration, user, session.
Structured fields of a record (``extra={"fields": {...}}``) become keys of
the JSON object; text lines carry them in the message already.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Middleware

from server.http import user_of
from server.settings import Settings

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
access_log = logging.getLogger("roost.access")
#: status logged for a request whose client went away before the answer
CLIENT_GONE = 499


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``message``, fields."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            doc.update(fields)
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


class BatchingStderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """stderr, written once per event-loop iteration rather than once per line.

    On the event loop's thread, INFO and DEBUG lines (the access log: one per
    request) are buffered and written together by a callback at the end of the
    loop's current iteration: under load that is one ``write`` for dozens of
    lines instead of one each, which costs more than building the line. A
    WARNING or worse, or a line from another thread or with no loop running, is
    written at once (after whatever is buffered, so the order holds). At most
    one iteration's lines can be lost to a ``kill -9``.
    """

    def __init__(self, *, fast_text: bool = False) -> None:
        super().__init__(sys.stderr)
        self._pending: list[str] = []
        #: lines are ``TEXT_FORMAT`` text, so a caller may hand over a line it made
        self.fast_text = fast_text

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
        except Exception:
            self.handleError(record)
            return
        self._queue(line, record.levelno < logging.WARNING)

    def write_line(self, line: str) -> None:
        """Queue a finished INFO line (with its newline), as :meth:`emit` would."""
        self._queue(line, True)

    def _queue(self, line: str, may_wait: bool) -> None:
        loop: asyncio.AbstractEventLoop | None = None
        if may_wait:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
        with self.lock:  # type: ignore[union-attr]
            if loop is None:
                self._pending.append(line)
                self._write_pending()
                return
            if not self._pending:
                loop.call_soon(self.flush_pending)
            self._pending.append(line)

    def flush_pending(self) -> None:
        """Write what is buffered now (idempotent; the loop calls it)."""
        with self.lock:  # type: ignore[union-attr]
            self._write_pending()

    def _write_pending(self) -> None:
        if not self._pending:
            return
        text, self._pending = "".join(self._pending), []
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # stderr gone: nothing to tell anyone
            pass

    def close(self) -> None:
        self.flush_pending()
        super().close()


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    """Send every log record of ``level`` and above to stderr as ``fmt`` (text|json),
    in batches (:class:`BatchingStderrHandler`).

    Replaces the root logger's handlers, so calling it again reconfigures.
    """
    handler = BatchingStderrHandler(fast_text=fmt != "json")
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


def route_of(request: web.Request) -> str:
    """The route template that matched (``/api/sessions/{sid}``), or ``-``."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "-"


def session_of(request: web.Request) -> str:
    """The session a request is about (``{sid}``, or the AI SDK's ``{id}``), or ``-``."""
    info = request.match_info
    return info.get("sid") or info.get("id") or "-"


def access_middlewares(settings: Settings) -> list[Middleware]:
    """The access-log middleware ``--access-log`` asks for (none when ``off``)."""
    every = settings.access_log_every()
    return [access_log_middleware(every)] if every > 0 else []


def access_log_middleware(every: int) -> Middleware:
    """A middleware logging 1 request in ``every`` (1 = all), and every 5xx.

    Put it first (outermost) so that it sees the final status of every request,
    refusals of the other middlewares included. ``every`` must be >= 1.
    """
    counter = itertools.count()

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        status = 500
        try:
            resp = await handler(request)
            status = resp.status
            return resp
        except web.HTTPException as exc:
            status = exc.status
            raise
        except BaseException as exc:  # a client that disconnects cancels its handler
            gone = isinstance(exc, (ConnectionError, asyncio.CancelledError))
            status = CLIENT_GONE if gone else 500
            raise
        finally:
            if status >= 500 or next(counter) % every == 0:
                _write(request, status, time.perf_counter() - started)

    return middleware


def _write(request: web.Request, status: int, seconds: float) -> None:
    method, route, ms = request.method, route_of(request), round(seconds * 1000, 2)
    user, session = user_of(request) or "-", session_of(request)
    handlers = _ROOT.handlers
    if (
        len(handlers) == 1
        and isinstance(handler := handlers[0], BatchingStderrHandler)
        and handler.fast_text
        and not access_log.handlers
        and access_log.isEnabledFor(logging.INFO)
    ):
        # the usual case: text lines to stderr; the same line the formatter would
        # make, without a LogRecord (this runs once per request)
        handler.write_line(
            f"{_asctime()} INFO roost.access {method} {route} {status} {ms:.1f}ms "
            f"user={user} session={session}\n"
        )
        return
    fields = {
        "method": method,
        "route": route,
        "status": status,
        "duration_ms": ms,
        "user": user,
        "session": session,
    }
    access_log.info(
        "%s %s %d %.1fms user=%s session=%s",
        method,
        route,
        status,
        ms,
        user,
        session,
        extra={"fields": fields},
    )


_ROOT = logging.getLogger()
_SECOND: list[Any] = [-1, ""]


def _asctime() -> str:
    """``logging.Formatter``'s default ``asctime`` (local time, ``,mmm``), the seconds
    part made once per second."""
    now = time.time()
    sec = int(now)
    if sec != _SECOND[0]:
        _SECOND[0], _SECOND[1] = sec, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(sec))
    return f"{_SECOND[1]},{int((now - sec) * 1000):03d}"
