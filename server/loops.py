"""Which event loop the server runs on (``--event-loop``).

``uvloop`` (libuv under asyncio's API) spends less CPU per request and per
socket write than asyncio's own selector loop, and every microsecond of server
CPU is one the clients sharing the machine do not get (docs/performance.md,
"Speed, round 2"). ``auto`` takes it where it is installed (a dependency on
Linux and macOS) and serves single-node Roost on it; a cluster front stays on
asyncio's loop unless ``uvloop`` is asked for by name, because Ray's driver
is only measured there. ``asyncio`` always means the standard loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

LoopFactory = Callable[[], asyncio.AbstractEventLoop]


class LoopError(Exception):
    """The loop asked for cannot be had (``--event-loop uvloop`` without uvloop)."""


def loop_factory(choice: str, *, cluster: bool = False) -> LoopFactory | None:
    """The factory for ``asyncio.Runner`` that ``choice`` names; None = asyncio's own.

    ``choice`` is ``auto``, ``uvloop`` or ``asyncio`` (validated by the settings).
    Raises :class:`LoopError` for ``uvloop`` when it does not import.
    """
    if choice == "asyncio" or (choice == "auto" and cluster):
        return None
    try:
        import uvloop
    except ImportError as exc:
        if choice == "uvloop":
            raise LoopError(
                f"--event-loop uvloop was asked for, but uvloop does not import ({exc}); "
                "install it (pip install uvloop) or use --event-loop asyncio"
            ) from exc
        return None
    factory: LoopFactory = uvloop.new_event_loop
    return factory


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """``uvloop`` or ``asyncio``: what the running server is on (for its start line)."""
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
