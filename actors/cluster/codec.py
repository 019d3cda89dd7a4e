"""The plain values that cross Ray between a front and a shard.

Nothing but builtins (dicts, lists, tuples, str, bytes, numbers) crosses:
storage objects and exceptions are turned into these here, in one place, and
back on the other side, so both ends may run different processes of the same
code without pickling classes of their own.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from actors.errors import ActorError
from actors.pubsub import Frame
from actors.session import NewMessage
from storage.errors import StorageError, TooLarge, Unavailable
from storage.reads import Page

FrameTuple = tuple[str, bytes, int | None]


def _subclasses(cls: type[StorageError]) -> dict[str, type[StorageError]]:
    out = {cls.__name__: cls}
    for sub in cls.__subclasses__():
        out.update(_subclasses(sub))
    return out


def encode_error(exc: BaseException) -> dict[str, Any] | None:
    """The plain form of a deliberate error, or None for any other exception."""
    if isinstance(exc, StorageError):
        return {"cls": type(exc).__name__, "message": exc.message, "details": exc.details}
    if isinstance(exc, TooLarge):
        return {"cls": "TooLarge", "limit": exc.limit}
    if isinstance(exc, FileNotFoundError):
        return {"cls": "FileNotFoundError", "message": str(exc)}
    return None


def decode_error(data: dict[str, Any]) -> Exception:
    """The exception :func:`encode_error` described (an unknown class: ``Unavailable``)."""
    name = data.get("cls")
    if name == "TooLarge":
        return TooLarge(int(data["limit"]))
    if name == "FileNotFoundError":
        return FileNotFoundError(data.get("message", ""))
    known = _subclasses(StorageError)
    known.update(_subclasses(ActorError))
    cls = known.get(str(name), Unavailable)
    return cls(str(data.get("message", "")), details=data.get("details"))


def message_to_plain(m: NewMessage) -> dict[str, Any]:
    return dataclasses.asdict(m)


def message_from_plain(d: dict[str, Any]) -> NewMessage:
    return NewMessage(**d)


def page_to_plain(p: Page) -> dict[str, Any]:
    return {"items": p.items, "before": p.before, "after": p.after}


def page_from_plain(d: dict[str, Any]) -> Page:
    return Page(items=d["items"], before=d["before"], after=d["after"])


def frame_to_plain(f: Frame) -> FrameTuple:
    return (f.type, f.data, f.seq)


def frame_from_plain(t: FrameTuple | list[Any]) -> Frame:
    return Frame(t[0], t[1], t[2])
