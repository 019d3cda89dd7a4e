"""Attachment blobs: content-addressed files inside a session's folder.

::

    sessions/<h>/<sid>/attachments/<sha256>     the bytes, named by their hash
    sessions/<h>/<sid>/attachments/.up-<hex>    an upload in progress

The same bytes uploaded twice are stored once; each upload still gets its own
record (id, name, mime) in the session file's ``attachments`` table. Blobs are
written by :class:`BlobWriter` (hash on the way, fsync; then, inside the op that
records the upload, :meth:`BlobWriter.place` renames it under its hash), so a
crash leaves either no blob or a complete one, never a partial file under a
hash name. Blobs are reference-counted by their records (issue 25): deleting
the last record of a hash removes the blob (``storage.attachment_ops``); both
the placing and the removal run inside the session's serialized ops, so an
upload of the same bytes racing a delete never loses its blob. Blobs are also
removed with their session (its folder goes as a whole); an upload whose
record never got committed leaves an unreferenced blob, which is harmless and
reused by the next upload of the same bytes.

Everything here is blocking file I/O or a pure function; callers choose the
thread.
"""

from __future__ import annotations

import contextlib
import hashlib
import mimetypes
import os
import re
import unicodedata
import uuid
from pathlib import Path
from typing import BinaryIO

from storage.errors import InvalidInput, TooLarge
from storage.layout import DataDir, fsync_path

SHA256_RE = re.compile(r"[0-9a-f]{64}")
_MIME_RE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}")
MAX_NAME_CHARS = 255


def attachments_dir(datadir: DataDir, sid: str) -> Path:
    """The attachments folder of session ``sid`` (validates the id)."""
    return datadir.session_dir(sid) / "attachments"


def blob_path(datadir: DataDir, sid: str, sha256: str) -> Path:
    """Where the blob with hash ``sha256`` of session ``sid`` lives."""
    if SHA256_RE.fullmatch(sha256) is None:
        raise InvalidInput("not a sha256 hex digest", details={"sha256": sha256[:80]})
    return attachments_dir(datadir, sid) / sha256


def attachment_url(sid: str, aid: str) -> str:
    """The API path that serves attachment ``aid`` of session ``sid``."""
    return f"/api/sessions/{sid}/attachments/{aid}"


def safe_name(raw: str | None) -> str:
    """A file name that is safe to store and echo back.

    Keeps only the last path component (``/`` and ``\\`` both separate),
    drops control and format characters, trims blanks and dots at the ends,
    and caps the length; an empty result becomes ``"file"``.
    """
    text = unicodedata.normalize("NFC", raw or "")
    text = re.split(r"[/\\]", text)[-1]
    text = "".join(ch for ch in text if unicodedata.category(ch)[0] != "C")
    text = text.strip().strip(".").strip()
    if len(text) > MAX_NAME_CHARS:
        stem, dot, ext = text.rpartition(".")
        if dot and 0 < len(ext) <= 16:
            text = stem[: MAX_NAME_CHARS - len(ext) - 1] + "." + ext
        else:
            text = text[:MAX_NAME_CHARS]
    return text or "file"


def safe_mime(raw: str | None, name: str) -> str:
    """A plain ``type/subtype`` (parameters dropped, lower case).

    A missing, malformed or generic type is guessed from ``name``'s extension,
    falling back to ``application/octet-stream``.
    """
    mime = (raw or "").split(";", 1)[0].strip().lower()
    if _MIME_RE.fullmatch(mime) is None or mime == "application/octet-stream":
        guessed = mimetypes.guess_type(name, strict=False)[0]
        mime = guessed.lower() if guessed and _MIME_RE.fullmatch(guessed.lower()) else ""
    return mime or "application/octet-stream"


class BlobWriter:
    """Writes one upload to a temporary file while hashing it.

    Use from one thread at a time: :meth:`write` any number of times, then
    exactly one of :meth:`commit` or :meth:`abort`. :meth:`abort` is
    idempotent and safe after a failed :meth:`commit`; after either, the
    temporary file no longer exists.
    """

    def __init__(self, datadir: DataDir, sid: str, *, limit: int) -> None:
        """Open a temporary file in the session's attachments folder.

        The session folder must exist (``FileNotFoundError`` otherwise): an
        upload never creates a session.
        """
        folder = attachments_dir(datadir, sid)
        if not folder.parent.is_dir():
            raise FileNotFoundError(folder.parent)
        folder.mkdir(exist_ok=True)
        self.folder = folder
        self.limit = limit
        self.size = 0
        self._hash = hashlib.sha256()
        self.tmp = folder / f".up-{uuid.uuid4().hex}"
        self.digest = ""
        self._file: BinaryIO | None = open(self.tmp, "xb")  # noqa: SIM115

    def write(self, chunk: bytes) -> None:
        """Append ``chunk``; over the limit, remove the file and raise :class:`TooLarge`."""
        if self._file is None:
            raise ValueError("the upload is already finished")
        self.size += len(chunk)
        if self.size > self.limit:
            self.abort()
            raise TooLarge(self.limit)
        self._hash.update(chunk)
        self._file.write(chunk)

    def commit(self) -> tuple[str, int]:
        """Make the bytes durable (still under the temporary name); return
        ``(sha256, size)``. Then :meth:`place` (inside the op that records the
        upload) or :meth:`abort`."""
        if self._file is None:
            raise ValueError("the upload is already finished")
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
            self.digest = self._hash.hexdigest()
        except BaseException:
            self.abort()
            raise
        return self.digest, self.size

    def place(self) -> None:
        """Put the committed bytes under their hash name (durably). If a blob with
        that hash exists already, the temporary file is dropped and the existing
        one kept (same bytes). Idempotent; after it :meth:`abort` does nothing.

        Raises ``FileNotFoundError`` when the upload was aborted meanwhile (its
        handler was cancelled while the op waited) and no blob of that hash is
        there: then the op that records it fails, so no record is left without bytes.
        """
        final = self.folder / self.digest
        if not self.tmp.exists():
            if final.exists():
                return
            raise FileNotFoundError(self.tmp)
        if final.exists():
            self.tmp.unlink(missing_ok=True)
        else:
            os.rename(self.tmp, final)
        fsync_path(self.folder)

    def abort(self) -> None:
        """Close and remove the temporary file. Idempotent."""
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
        with contextlib.suppress(FileNotFoundError):
            self.tmp.unlink()
