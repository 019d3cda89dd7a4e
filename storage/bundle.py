"""Session bundles (issue 25): a zip of the JSON export plus the attachments' bytes.

::

    session.json          the roost.session.v1 export (deflated)
    blobs/<sha256>        the bytes of each attachment record's blob (stored)

:func:`iter_bundle` streams a bundle in constant memory: the export's chunks
and each blob's chunks go through the zip writer into a small buffer that is
handed out as it fills (a zip written to a stream: sizes and CRCs follow each
entry in a data descriptor; the central directory comes last). The export and
the list of blobs come from one read snapshot; a blob that is not stored here
(an imported record) is left out, and stays 410 after an import.

:func:`read_bundle` checks a bundle (a seekable file) and plans its import;
:func:`restore_blobs` writes its blobs into a new session's folder, each
checked against its name (SHA-256) and its record's size, so a bundle can
never place bytes under a wrong hash. Entry names are never used as paths:
only ``blobs/<sha256>`` of the records are read.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import uuid
import zipfile
from collections.abc import Generator
from pathlib import Path
from typing import IO, Any

from storage.errors import ContentTooLarge, InvalidInput, SessionFull
from storage.export import ImportPlan, iter_export, parse_export
from storage.layout import fsync_path

BUNDLE_JSON = "session.json"
BLOB_PREFIX = "blobs/"
CHUNK = 256 * 1024
#: a zip's first bytes (a local file header)
ZIP_MAGIC = b"PK\x03\x04"


class _Sink:
    """A write-only, unseekable file for ``zipfile``: collects what it is given."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def take(self) -> bytes:
        out = b"".join(self.parts)
        self.parts.clear()
        self.size = 0
        return out


def iter_bundle(
    path: Path, sid: str, blobs: Path, *, exported_at: str, chunk_bytes: int = CHUNK
) -> Generator[bytes, None, None]:
    """Stream the bundle of the session file at ``path`` (blobs from the folder
    ``blobs``) in chunks of about ``chunk_bytes``; memory stays bounded by a few
    chunks whatever the session's size. Drive it from one thread at a time;
    callers that stop early must ``close()`` it (that ends the read snapshot).
    """
    sink = _Sink()
    records: list[dict[str, Any]] = []
    with zipfile.ZipFile(sink, "w", allowZip64=True) as zf:
        info = zipfile.ZipInfo(BUNDLE_JSON, date_time=_zip_time(exported_at))
        info.compress_type = zipfile.ZIP_DEFLATED
        with zf.open(info, "w", force_zip64=True) as out:
            for chunk in iter_export(path, sid, "json", exported_at=exported_at, seen=records):
                out.write(chunk)
                if sink.size >= chunk_bytes:
                    yield sink.take()
        for sha in dict.fromkeys(str(r["sha256"]) for r in records):
            try:
                f = open(blobs / sha, "rb")  # noqa: SIM115 (closed below)
            except FileNotFoundError:
                continue
            with f:
                entry = zipfile.ZipInfo(BLOB_PREFIX + sha, date_time=_zip_time(exported_at))
                entry.compress_type = zipfile.ZIP_STORED
                entry.file_size = os.fstat(f.fileno()).st_size
                with zf.open(entry, "w") as out:
                    while data := f.read(chunk_bytes):
                        out.write(data)
                        if sink.size >= chunk_bytes:
                            yield sink.take()
    if sink.size:
        yield sink.take()


def _zip_time(ts: str) -> tuple[int, int, int, int, int, int]:
    """An RFC 3339 UTC time as a zip entry's (year, month, day, h, m, s)."""
    d, t = ts[:10], ts[11:19]
    return (int(d[:4]), int(d[5:7]), int(d[8:10]), int(t[:2]), int(t[3:5]), int(t[6:8]))


def is_zip(head: bytes) -> bool:
    """Whether a body starting with ``head`` is a zip (a bundle or a ChatGPT export)."""
    return head.startswith(ZIP_MAGIC)


def read_bundle(
    file: IO[bytes],
    *,
    max_json_bytes: int,
    max_session_bytes: int = 0,
    max_title_chars: int | None = None,
    max_content_chars: int | None = None,
) -> tuple[ImportPlan, zipfile.ZipFile, list[str]]:
    """Check the bundle in ``file`` and plan its import: ``(plan, zip, shas)``,
    ``shas`` being the blobs it holds that records name (to :func:`restore_blobs`).

    Raises ``InvalidInput`` for a file that is not a zip, has no
    ``session.json``, or holds a blob whose size is not its record's;
    ``ContentTooLarge`` when ``session.json`` is over ``max_json_bytes``;
    ``SessionFull`` when the named blobs are over ``max_session_bytes`` (0: no
    cap); and what :func:`storage.export.parse_export` raises. The caller closes
    the zip.
    """
    try:
        zf = zipfile.ZipFile(file)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise InvalidInput(f"the bundle is not a zip file: {exc}") from None
    try:
        try:
            info = zf.getinfo(BUNDLE_JSON)
        except KeyError:
            raise InvalidInput(f"the bundle has no {BUNDLE_JSON}") from None
        if info.file_size > max_json_bytes:
            raise ContentTooLarge(
                f"the bundle's {BUNDLE_JSON} is over the limit of {max_json_bytes} bytes"
            )
        raw = bytearray()
        with zf.open(info) as f:
            while data := f.read(CHUNK):
                raw += data
                if len(raw) > max_json_bytes:
                    raise ContentTooLarge(
                        f"the bundle's {BUNDLE_JSON} is over the limit of {max_json_bytes} bytes"
                    )
        plan = parse_export(
            raw, max_title_chars=max_title_chars, max_content_chars=max_content_chars
        )
        names = set(zf.namelist())
        size_of = {a.sha256: a.size for a in plan.attachments}
        shas = [s for s in size_of if BLOB_PREFIX + s in names]
        wrong = [s for s in shas if zf.getinfo(BLOB_PREFIX + s).file_size != size_of[s]]
        if wrong:
            raise InvalidInput(
                "a blob of the bundle does not have its record's size",
                details={"sha256": wrong[:20]},
            )
        total = sum(size_of.values())
        if max_session_bytes and total > max_session_bytes:
            raise SessionFull(
                f"the bundle's attachments take {total} bytes, over the limit of "
                f"{max_session_bytes}",
                details={"size": total, "limit": max_session_bytes},
            )
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError) as exc:
        zf.close()
        raise InvalidInput(f"the bundle cannot be read: {exc}") from None
    except BaseException:
        zf.close()
        raise
    return plan, zf, shas


def restore_blobs(conn: sqlite3.Connection, zf: zipfile.ZipFile, shas: list[str]) -> None:
    """Write the blobs ``shas`` of bundle ``zf`` into the attachments folder beside
    the session file open on ``conn`` (a new session, not yet published: the
    ``populate`` step of an import), each hashed on the way and made durable.

    Raises ``InvalidInput`` for a blob whose bytes do not hash to its name.
    """
    db = Path(conn.execute("PRAGMA database_list").fetchone()[2])
    folder = db.parent / "attachments"
    folder.mkdir(exist_ok=True)
    for sha in shas:
        tmp = folder / f".up-{uuid.uuid4().hex}"
        digest = hashlib.sha256()
        try:
            with zf.open(BLOB_PREFIX + sha) as src, open(tmp, "xb") as dst:
                while data := src.read(CHUNK):
                    digest.update(data)
                    dst.write(data)
                dst.flush()
                os.fsync(dst.fileno())
            if digest.hexdigest() != sha:
                raise InvalidInput(
                    "a blob of the bundle does not match its SHA-256", details={"sha256": sha}
                )
            os.rename(tmp, folder / sha)
        except (zipfile.BadZipFile, EOFError) as exc:
            raise InvalidInput(f"the bundle's blob {sha} cannot be read: {exc}") from None
        finally:
            tmp.unlink(missing_ok=True)
    fsync_path(folder)
