"""The storage error tree.

Every error raised on purpose by ``storage`` derives from :class:`StorageError`
and carries a stable ``code`` plus optional ``details``; the HTTP layer maps the
codes to status lines in one place (``server.errors``)::

    StorageError
    ├── InvalidInput        bad ids, cursors, parents, field values      (400)
    │   └── InvalidQuery    a search query the FTS engine cannot parse   (400)
    ├── NotFound            unknown session, message, attachment          (404)
    ├── Conflict            existing id, client_id reused with other body (409)
    ├── PreconditionFailed  stale If-Match version                        (412)
    ├── Unavailable         a session file that cannot be used right now  (503)
    └── StorageFull         the disk is full                              (507)
"""

from __future__ import annotations

from typing import Any


class StorageError(Exception):
    """Base of every deliberate storage failure."""

    code = "storage_error"

    def __init__(self, message: str, *, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class InvalidInput(StorageError):
    code = "invalid_input"


class NotFound(StorageError):
    code = "not_found"


class Conflict(StorageError):
    code = "conflict"


class PreconditionFailed(StorageError):
    code = "precondition_failed"


class Unavailable(StorageError):
    code = "unavailable"


class StorageFull(StorageError):
    code = "storage_full"


class InvalidQuery(InvalidInput):
    """A search query that the full-text engine cannot parse (400)."""

    code = "invalid_query"
