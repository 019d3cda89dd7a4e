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


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    """Send every log record of ``level`` and above to stderr as ``fmt`` (text|json).

    Replaces the root logger's handlers, so calling it again reconfigures.
    """
    handler = logging.StreamHandler(sys.stderr)
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
    fields = {
        "method": request.method,
        "route": route_of(request),
        "status": status,
        "duration_ms": round(seconds * 1000, 2),
        "user": user_of(request) or "-",
        "session": session_of(request),
    }
    access_log.info(
        "%s %s %d %.1fms user=%s session=%s",
        fields["method"],
        fields["route"],
        status,
        fields["duration_ms"],
        fields["user"],
        fields["session"],
        extra={"fields": fields},
    )
