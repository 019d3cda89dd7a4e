"""Error responses: the one place where failures become HTTP status lines.

Every error leaves as ``{"error": {"code", "message", "details"}}``.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web
from pydantic import ValidationError

from actors.errors import ActorBroken, ActorStopped, Busy, Unsupported
from storage.errors import (
    Conflict,
    ContentTooLarge,
    InvalidInput,
    NotFound,
    PreconditionFailed,
    StorageError,
    StorageFull,
    Unavailable,
    from_os_error,
)

log = logging.getLogger("roost.server")

STATUS_OF: list[tuple[type[StorageError], int]] = [
    (InvalidInput, 400),
    (NotFound, 404),
    (Conflict, 409),
    (PreconditionFailed, 412),
    (StorageFull, 507),
    (ContentTooLarge, 413),
    (Unsupported, 501),
    (Busy, 503),
    (ActorBroken, 503),
    (ActorStopped, 503),
    (Unavailable, 503),
]

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    411: "length_required",
    412: "precondition_failed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    416: "range_not_satisfiable",
    429: "rate_limited",
}


class ApiError(Exception):
    """An HTTP-level refusal raised by handlers (bad query, media type, ...)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers


def error_body(code: str, message: str, details: Any = None) -> bytes:
    return orjson.dumps({"error": {"code": code, "message": message, "details": details}})


def error_response(
    status: int,
    code: str,
    message: str,
    details: Any = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    return web.Response(
        status=status,
        body=error_body(code, message, details),
        content_type="application/json",
        headers=headers,
    )


def status_of(exc: StorageError) -> int:
    for cls, status in STATUS_OF:
        if isinstance(exc, cls):
            return status
    return 500


def validation_details(exc: ValidationError) -> list[dict[str, Any]]:
    return [
        {"loc": [str(p) for p in e["loc"]], "msg": e["msg"], "type": e["type"]}
        for e in exc.errors(include_url=False, include_input=False)
    ]


_LOGGED_ERRNOS: set[int | None] = set()


def _log_os_error_once(exc: OSError, request: web.Request) -> None:
    """Log a failed file-system call the first time its errno is seen, without a traceback.

    A dead or full file system fails every request the same way: one line says
    so; a traceback per request would only bury it.
    """
    if exc.errno in _LOGGED_ERRNOS:
        return
    _LOGGED_ERRNOS.add(exc.errno)
    log.error(
        "the data dir failed on %s %s: %s (further %s errors are not logged)",
        request.method,
        request.path,
        exc,
        errno.errorcode.get(exc.errno or 0, exc.errno),
    )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure into the JSON error shape with a fitting status."""
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)
    except StorageError as exc:
        status = status_of(exc)
        headers = {"Retry-After": "1"} if status == 503 or exc.code == "session_busy" else None
        return error_response(status, exc.code, exc.message, exc.details, headers)
    except ValidationError as exc:
        return error_response(
            400,
            "invalid_input",
            "the request does not match the schema",
            validation_details(exc),
        )
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        message = (
            exc.reason if exc.text is None or exc.text.startswith(f"{exc.status}:") else exc.text
        )
        headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
        return error_response(exc.status, code, message, None, headers)
    except ConnectionError:
        transport = request.transport
        if transport is None or transport.is_closing():
            # the client went away (an aborted export, upload or stream): not an
            # error; nobody reads this answer, aiohttp only logs its access
            return web.Response(status=499, reason="Client Closed Request")
        raise
    except OSError as exc:
        mapped = from_os_error(exc)
        status = status_of(mapped)
        _log_os_error_once(exc, request)
        headers = {"Retry-After": "1"} if status == 503 else None
        return error_response(status, mapped.code, mapped.message, None, headers)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "internal", "internal server error")
