"""How one message's attachments become a provider's content parts (issue 25).

A user message that names attachments is sent as a list of OpenAI-style
content parts: its text first, then one part per attachment, by MIME type:

- images the provider reads (PNG, JPEG, GIF, WebP) as ``image_url`` parts,
  a ``data:`` URL of the bytes (or ``image_base_url`` + the attachment's API
  path when that is configured: a URL the provider fetches itself);
- text-like files (``text/*``, JSON, XML, YAML, TOML, CSV, code by extension)
  inlined as a ``text`` part, cut to ``text_tokens`` tokens (about 4
  characters a token) with a marker saying how much was kept;
- PDFs as their text, extracted by ``pdf_text`` (the server's: ``pypdf``; cut
  like a text file), or as
  a ``file`` part (``pdf: "file"``) for providers that take PDF files;
- anything else is not sent.

What a model accepts is its :class:`ModelCaps`, looked up by model name in
a table (``--model-capabilities``). An attachment that cannot be sent (the
model takes no images, the type is not supported, the bytes are not stored
here, no text could be extracted) is replaced by a one-line text part that
says so, so the model knows a file was there, and it is named in the
report (:attr:`Converter.report`) that the responder puts in the reply's
metadata under ``attachments``: ``{"sent": [...], "not_sent": [...]}``.

Blocking (reads files, parses PDFs): call :meth:`Converter.content` off the
event loop. No aiohttp here: the echo responder (actors) and the OpenAI one
(server) share it.
"""

from __future__ import annotations

import base64
import contextlib
import fnmatch
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import orjson

from storage.attachments import blob_path
from storage.layout import DataDir

log = logging.getLogger("roost.attachments")

#: reads the blob with this sha256 of this session: its bytes, or None when not stored
BlobReader = Callable[[str, str], bytes | None]

CHARS_PER_TOKEN = 4
#: how many PDFs' text :class:`Attachments` keeps (oldest dropped first)
PDF_CACHE = 32
#: image types OpenAI-compatible vision models take
IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})
TEXT_TYPES = frozenset(
    {
        "application/json",
        "application/ld+json",
        "application/xml",
        "application/x-yaml",
        "application/yaml",
        "application/toml",
        "application/x-toml",
        "application/javascript",
        "application/x-javascript",
        "application/typescript",
        "application/x-sh",
        "application/x-python",
        "application/sql",
        "application/x-ndjson",
        "application/csv",
    }
)
TEXT_EXTENSIONS = frozenset(
    {
        ".txt",
        ".md",
        ".markdown",
        ".rst",
        ".csv",
        ".tsv",
        ".json",
        ".jsonl",
        ".ndjson",
        ".yaml",
        ".yml",
        ".toml",
        ".ini",
        ".cfg",
        ".conf",
        ".log",
        ".xml",
        ".html",
        ".htm",
        ".css",
        ".scss",
        ".js",
        ".mjs",
        ".cjs",
        ".ts",
        ".tsx",
        ".jsx",
        ".py",
        ".pyi",
        ".rb",
        ".go",
        ".rs",
        ".java",
        ".kt",
        ".kts",
        ".scala",
        ".c",
        ".h",
        ".cc",
        ".cpp",
        ".hpp",
        ".cs",
        ".swift",
        ".m",
        ".php",
        ".pl",
        ".lua",
        ".r",
        ".jl",
        ".sh",
        ".bash",
        ".zsh",
        ".ps1",
        ".sql",
        ".graphql",
        ".proto",
        ".tf",
        ".dockerfile",
        ".makefile",
        ".gradle",
        ".env",
        ".tex",
        ".bib",
        ".org",
        ".adoc",
    }
)


@dataclass(frozen=True, slots=True)
class ModelCaps:
    """What one model accepts: ``images`` (image parts), ``pdf`` (``text``: the
    extracted text; ``file``: a file part; ``none``: not sent), and the most
    tokens one text file (or a PDF's text) may take (``text_tokens``)."""

    images: bool = True
    pdf: Literal["text", "file", "none"] = "text"
    text_tokens: int = 8000


_CAP_KEYS = {"images": bool, "pdf": str, "text_tokens": int}


def parse_caps(raw: str | None, base: ModelCaps | None = None) -> tuple[tuple[str, ModelCaps], ...]:
    """The ``--model-capabilities`` table: a JSON object mapping a model name or
    a shell-style pattern (``gpt-4o*``) to ``{images?, pdf?, text_tokens?}``.

    Raises ``ValueError`` naming what is wrong. Patterns are tried in the
    order given; a key left out keeps its value in ``base`` (default: :class:`ModelCaps`).
    """
    if raw is None or not raw.strip():
        return ()
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"model capabilities must be a JSON object: {exc}") from None
    if not isinstance(doc, dict):
        raise ValueError('model capabilities must be a JSON object like {"gpt-4o*": {...}}')
    out: list[tuple[str, ModelCaps]] = []
    for pattern, spec in doc.items():
        if not isinstance(spec, dict):
            raise ValueError(f"capabilities of {pattern!r} must be an object")
        unknown = set(spec) - set(_CAP_KEYS)
        if unknown:
            raise ValueError(f"unknown capability {sorted(unknown)[0]!r} for {pattern!r}")
        for key, typ in _CAP_KEYS.items():
            if key in spec and type(spec[key]) is not typ:
                raise ValueError(f"{pattern!r}: {key} must be a {typ.__name__}")
        if spec.get("pdf", "text") not in ("text", "file", "none"):
            raise ValueError(f"{pattern!r}: pdf must be text, file or none")
        if spec.get("text_tokens", 1) < 1:
            raise ValueError(f"{pattern!r}: text_tokens must be at least 1")
        out.append((pattern, replace(base or ModelCaps(), **spec)))
    return tuple(out)


def datadir_blobs(datadir: DataDir) -> BlobReader:
    """A :data:`BlobReader` over the blobs of ``datadir`` (None for a missing one)."""

    def read(session_id: str, sha256: str) -> bytes | None:
        try:
            with open(blob_path(datadir, session_id, sha256), "rb") as f:
                return f.read()
        except (FileNotFoundError, NotADirectoryError):
            return None

    return read


@dataclass(frozen=True, slots=True)
class Attachments:
    """How attachments reach the models of one server: where the bytes are
    (``blobs``; None: nowhere, nothing is sent), each model's capabilities
    (``table``, then ``default``), ``image_base_url``, and ``pdf_text`` (the
    server's ``server.pdftext.pdf_text``: pypdf)."""

    blobs: BlobReader | None = None
    table: tuple[tuple[str, ModelCaps], ...] = ()
    default: ModelCaps = ModelCaps()
    image_base_url: str | None = None
    # a PDF's text (raises on a broken file); None: PDFs cannot be read as text here
    pdf_text: Callable[[bytes], str] | None = None
    # the text of the last PDFs read, by sha256: each turn sends the history again
    pdf_cache: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    def cached_pdf_text(self, sha256: str, data: bytes) -> str:
        """``pdf_text(data)``, remembered for the last :data:`PDF_CACHE` PDFs."""
        text = self.pdf_cache.get(sha256)
        if text is None:
            if self.pdf_text is None:
                raise ImportError("no PDF text extractor")
            text = self.pdf_text(data)
            if len(self.pdf_cache) >= PDF_CACHE:  # replies convert in threads: best effort
                with contextlib.suppress(RuntimeError, StopIteration):
                    self.pdf_cache.pop(next(iter(self.pdf_cache)), None)
            self.pdf_cache[sha256] = text
        return text

    def caps(self, model: str | None) -> ModelCaps:
        """``model``'s capabilities: an exact name first, then the first pattern."""
        name = model or ""
        for pattern, caps in self.table:
            if pattern == name:
                return caps
        for pattern, caps in self.table:
            if fnmatch.fnmatchcase(name, pattern):
                return caps
        return self.default

    def converter(self, model: str | None) -> Converter:
        """A fresh converter for one request to ``model``."""
        return Converter(self, self.caps(model), model or "")


def refs_of(message: dict[str, Any]) -> list[dict[str, Any]]:
    """The attachment refs of ``message`` (its ``attachments``), each once."""
    seen: set[str] = set()
    out = []
    for ref in message.get("attachments") or []:
        if isinstance(ref, dict) and ref.get("id") not in seen:
            seen.add(ref.get("id", ""))
            out.append(ref)
    return out


def is_text(mime: str, name: str) -> bool:
    """Whether a file of this type and name is text to inline."""
    if mime.startswith("text/") or mime in TEXT_TYPES:
        return True
    if mime.endswith("+json") or mime.endswith("+xml"):
        return True
    ext = os.path.splitext(name.lower())[1]
    return ext in TEXT_EXTENSIONS or name.lower() in ("dockerfile", "makefile")


def cut(text: str, tokens: int) -> tuple[str, bool]:
    """``text`` cut to about ``tokens`` tokens, and whether it was cut."""
    limit = tokens * CHARS_PER_TOKEN
    if len(text) <= limit:
        return text, False
    return text[:limit], True


@dataclass(slots=True)
class Converter:
    """Turns messages into content for one request; collects :attr:`report`."""

    config: Attachments
    caps: ModelCaps
    model: str
    sent: list[dict[str, Any]] = field(default_factory=list)
    not_sent: list[dict[str, Any]] = field(default_factory=list)

    @property
    def report(self) -> dict[str, Any] | None:
        """``{"sent": [...], "not_sent": [...]}``; None when no message had attachments."""
        if not self.sent and not self.not_sent:
            return None
        return {"sent": list(self.sent), "not_sent": list(self.not_sent)}

    def content(self, message: dict[str, Any]) -> str | list[dict[str, Any]]:
        """``message``'s content for the provider: its text as it is when it has no
        attachments (or is not a user message), else a list of content parts."""
        refs = refs_of(message)
        if not refs or message.get("role") != "user":
            return str(message.get("content") or "")
        parts: list[dict[str, Any]] = []
        if message.get("content"):
            parts.append({"type": "text", "text": message["content"]})
        for ref in refs:
            parts.append(self._part(message, ref))
        return parts

    # ------------------------------------------------------------ one attachment

    def _part(self, message: dict[str, Any], ref: dict[str, Any]) -> dict[str, Any]:
        mime = str(ref.get("mime") or "application/octet-stream")
        name = str(ref.get("name") or "file")
        base = {"attachment_id": ref.get("id"), "message_id": message.get("id")}
        base |= {"name": name, "mime": mime}
        try:
            return self._convert(message, ref, mime, name, base)
        except _NotSent as exc:
            self.not_sent.append({**base, "reason": exc.reason})
            return {
                "type": "text",
                "text": f"[attachment {name} ({mime}) was not sent: {exc.reason}]",
            }

    def _convert(
        self,
        message: dict[str, Any],
        ref: dict[str, Any],
        mime: str,
        name: str,
        base: dict[str, Any],
    ) -> dict[str, Any]:
        caps = self.caps
        image = mime in IMAGE_TYPES
        pdf = mime == "application/pdf"
        text = not image and not pdf and is_text(mime, name)
        if mime.startswith("image/") and not image:
            raise _NotSent(f"the image type {mime} is not one models take")
        if image and not caps.images:
            raise _NotSent(f"the model {self.model or '(default)'} does not take images")
        if pdf and caps.pdf == "none":
            raise _NotSent(f"the model {self.model or '(default)'} does not take PDFs")
        if not (image or pdf or text):
            raise _NotSent(f"files of type {mime} are not sent to models")
        if image and self.config.image_base_url and ref.get("url"):
            url = self.config.image_base_url.rstrip("/") + str(ref["url"])
            self.sent.append({**base, "as": "image_url", "bytes": ref.get("size")})
            return {"type": "image_url", "image_url": {"url": url}}
        data = self._bytes(message, ref)
        if image:
            self.sent.append({**base, "as": "image_url", "bytes": len(data)})
            return {"type": "image_url", "image_url": {"url": _data_url(mime, data)}}
        if pdf and caps.pdf == "file":
            self.sent.append({**base, "as": "file", "bytes": len(data)})
            return {"type": "file", "file": {"filename": name, "file_data": _data_url(mime, data)}}
        if pdf:
            try:
                body = self.config.cached_pdf_text(str(ref.get("sha256")), data)
            except ImportError:
                raise _NotSent("no PDF text extractor is installed (pip install pypdf)") from None
            except Exception as exc:
                log.info("PDF %s: no text: %r", ref.get("id"), exc)
                raise _NotSent("the PDF could not be read") from None
            if not body:
                raise _NotSent("the PDF has no text (a scan?)")
        else:
            try:
                body = data.decode("utf-8")
            except UnicodeDecodeError:
                raise _NotSent("the file is not UTF-8 text") from None
        kept, was_cut = cut(body, caps.text_tokens)
        self.sent.append(
            {**base, "as": "text", "chars": len(kept), "of_chars": len(body), "cut": was_cut}
        )
        tail = f"\n[... cut: {len(kept)} of {len(body)} characters shown]" if was_cut else ""
        return {"type": "text", "text": f'<file name="{_attr(name)}">\n{kept}{tail}\n</file>'}

    def _bytes(self, message: dict[str, Any], ref: dict[str, Any]) -> bytes:
        sha = ref.get("sha256")
        reader = self.config.blobs
        data = None
        if reader is not None and isinstance(sha, str):
            try:
                data = reader(str(message.get("session_id") or ""), sha)
            except (OSError, ValueError) as exc:
                log.warning("attachment %s: cannot read its bytes: %r", ref.get("id"), exc)
        if data is None:
            raise _NotSent("its bytes are not stored on this server")
        return data


class _NotSent(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _data_url(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _attr(name: str) -> str:
    return name.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")
