"""The storage error tree.

Every error raised on purpose by ``storage`` derives from :class:`StorageError`
and carries a stable ``code`` plus optional ``details``; the HTTP layer maps the
codes to status lines in one place (``server.errors``)::

    StorageError
    ├── InvalidInput        bad ids, cursors, parents, field values      (400)
    │   ├── InvalidQuery    a search query the FTS engine cannot parse   (400)
    │   └── MalformedJson   an import body that is not JSON              (400)
    ├── NotFound            unknown session, message, attachment          (404)
    ├── Conflict            existing id, client_id reused with other body (409)
    │   └── AttachmentInUse a live message still names the attachment     (409)
    ├── PreconditionFailed  stale If-Match version                        (412)
    ├── Unavailable         a session file that cannot be used right now  (503)
    ├── StorageFull         the disk is full                              (507)
    └── ContentTooLarge     an imported message over the content limit    (413)
        └── SessionFull     the session's attachments over max_session_bytes (413)

    TooLarge (not a StorageError): an upload over its byte limit; the caller
    that set the limit answers for it.
"""

from __future__ import annotations

import errno
import os
import sqlite3
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


class SessionBusy(Conflict):
    """A turn was refused because another one runs (``on_busy: reject``, issue 19);
    ``details.running_message_id`` names it."""

    code = "session_busy"


class PreconditionFailed(StorageError):
    code = "precondition_failed"


class Unavailable(StorageError):
    code = "unavailable"


class StorageFull(StorageError):
    code = "storage_full"


class InvalidQuery(InvalidInput):
    """A search query that the full-text engine cannot parse (400)."""

    code = "invalid_query"


class MalformedJson(InvalidInput):
    """A body that should be JSON is not (an import)."""

    code = "malformed_json"


class ContentTooLarge(StorageError):
    """A piece of an import is over a limit (413)."""

    code = "content_too_large"


class SessionFull(ContentTooLarge):
    """A session's attachments would be over ``max_session_bytes`` (413, issue 25)."""

    code = "session_full"


class AttachmentInUse(Conflict):
    """An attachment a live message still names cannot be deleted (409, issue 25);
    ``details.message_ids`` names those messages."""

    code = "attachment_in_use"


class TooLarge(Exception):
    """An upload went over its size limit; the partial file is already gone.

    Not a :class:`StorageError`: the caller knows the limit and answers for it.
    """

    def __init__(self, limit: int) -> None:
        super().__init__(f"the upload is larger than {limit} bytes")
        self.limit = limit


# below this much free space, a SQLite I/O error on a file there is taken for ENOSPC
NEARLY_FULL_BYTES = 1 << 20


def disk_nearly_full(path: str | os.PathLike[str]) -> bool:
    """Whether the file system holding ``path`` has (almost) no free space left.

    One ``statvfs``; False when it fails (an unknown disk is not called full).
    Used on error paths only.
    """
    try:
        st = os.statvfs(os.path.dirname(os.fspath(path)) or ".")
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < NEARLY_FULL_BYTES


def from_sqlite(
    exc: sqlite3.Error,
    what: str = "the session file",
    *,
    path: str | os.PathLike[str] | None = None,
) -> StorageError:
    """The storage error that explains a SQLite failure on ``what`` (one place for this).

    ``SQLITE_FULL`` is :class:`StorageFull` (507). So is an I/O error
    (``SQLITE_IOERR_*``, "disk I/O error": SQLite reports a failed ``write`` or
    ``fallocate`` of the WAL, even one that met ENOSPC, as that) on ``path``'s
    file system when it has under :data:`NEARLY_FULL_BYTES` free: SQLite does not
    keep the errno, the free space says what it was. Other I/O errors, and any
    with no ``path`` given, are :class:`Unavailable` (503).
    """
    text = str(exc).lower()
    code = getattr(exc, "sqlite_errorcode", None)
    if code == sqlite3.SQLITE_FULL or "database or disk is full" in text:
        return StorageFull("the disk is full: the change was not saved")
    io_error = (code is not None and code & 0xFF == sqlite3.SQLITE_IOERR) or (
        "disk i/o error" in text
    )
    if io_error and path is not None and disk_nearly_full(path):
        return StorageFull("the disk is full: the change was not saved")
    if isinstance(exc, sqlite3.DatabaseError) and (
        "malformed" in text
        or "not a database" in text
        or code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)
    ):
        return Unavailable(
            f"{what} is damaged; an operator must restore it from a backup",
            details={"sqlite": str(exc)},
        )
    return Unavailable(f"{what} could not be used: {exc}")


def from_os_error(exc: OSError) -> StorageError:
    """The storage error that explains a failed file-system call."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return StorageFull("the disk is full: the change was not saved")
    return Unavailable(f"the data dir could not be used: {exc.strerror or exc}")
