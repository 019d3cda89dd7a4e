"""Small HTTP helpers: JSON in and out, query parameters, the caller's user id."""

from __future__ import annotations

import hashlib
from typing import Any, TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel

from server.errors import ApiError
from server.keys import SETTINGS, USER, state_of
from storage.ids import ascii_int

M = TypeVar("M", bound=BaseModel)


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(data), content_type="application/json", headers=headers
    )


async def read_json(request: web.Request) -> tuple[dict[str, Any], bytes]:
    """The request body as a JSON object, and its raw bytes.

    415 unless the body is ``application/json``; 413 over the size limit;
    400 for malformed JSON or a body that is not an object.
    """
    if request.content_type != "application/json":
        raise ApiError(
            415,
            "unsupported_media_type",
            f"expected Content-Type application/json, got {request.content_type or 'none'}",
        )
    settings = state_of(request)[SETTINGS]
    if request.content_length is not None and request.content_length > settings.max_body_bytes:
        raise ApiError(
            413,
            "payload_too_large",
            f"body is {request.content_length} bytes; the limit is {settings.max_body_bytes}",
        )
    raw = await request.read()
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "malformed_json", f"the body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_input", "the body must be a JSON object")
    return data, raw


async def parse_body(request: web.Request, model: type[M]) -> M:
    data, _ = await read_json(request)
    return model.model_validate(data)


def request_hash(model: BaseModel) -> str:
    """A stable digest of a parsed request, to tell a retry from a different request
    with the same ``client_id``. Only computed when a ``client_id`` is given."""
    canon = orjson.dumps(model.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canon).hexdigest()


def query_int(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    value = ascii_int(raw, 9)
    if value is None or not lo <= value <= hi:
        raise ApiError(
            400,
            "invalid_input",
            f"{name} must be an integer from {lo} to {hi}, got {raw[:40]!r}",
            {"loc": ["query", name]},
        )
    return value


def query_str(request: web.Request, name: str, max_len: int = 512) -> str | None:
    raw = request.query.get(name)
    if raw is not None and (len(raw) > max_len or "\x00" in raw):
        raise ApiError(400, "invalid_input", f"{name} is not valid", {"loc": ["query", name]})
    return raw


def query_choice(request: web.Request, name: str, choices: tuple[str, ...]) -> str:
    raw = request.query.get(name, choices[0])
    if raw not in choices:
        raise ApiError(
            400,
            "invalid_input",
            f"{name} must be one of {', '.join(choices)}, got {raw[:40]!r}",
            {"loc": ["query", name]},
        )
    return raw


def user_of(request: web.Request) -> str:
    """The authenticated user id ('' when the server runs without tokens)."""
    user: str = request.get(USER, "")
    return user


def query_since(request: web.Request, *, header: str | None = None, digits: int = 15) -> int | None:
    """The ``since`` event seq of a feed request (else the ``header``'s value, e.g.
    ``Last-Event-ID``), at most ``digits`` digits; None when neither is given.
    Raises a 400 ``invalid_input`` for anything but a plain integer."""
    raw = request.query.get("since")
    if raw is None and header is not None:
        raw = request.headers.get(header)
    if raw is None or raw == "":
        return None
    value = ascii_int(raw, digits)
    if value is None:
        raise ApiError(
            400,
            "invalid_input",
            f"since must be an event seq (an integer), got {raw[:40]!r}",
            {"loc": ["query", "since"]},
        )
    return value
