"""The import slots: at most ``--max-concurrent-imports`` imports at once, and the
heap given back when the last of them ends.

An import parses a body of up to ``--max-import-bytes`` (several times its size in
Python objects). ``malloc_trim`` after each import is not enough when imports
overlap: one that ends early trims while the others still hold their bodies, and
the last may end with its arena still in use by a neighbour's leftovers. So the
heap is trimmed when no import is running or waiting for a slot any more: at that
moment every body is garbage (each route drops its own before it leaves).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager


class ImportSlots:
    """``async with slots.slot(trim):`` around an import's whole body handling.

    ``trim`` (the registry's ``trim_heap``) is awaited by the import that leaves
    last, after its slot is released. Use on the event loop only.
    """

    def __init__(self, slots: int) -> None:
        self._sem = asyncio.Semaphore(slots)
        self.entered = 0  # running or waiting for a slot

    @asynccontextmanager
    async def slot(self, trim: Callable[[], Awaitable[None]]) -> AsyncIterator[None]:
        self.entered += 1
        try:
            async with self._sem:
                yield
        finally:
            self.entered -= 1
            if self.entered == 0:  # a failed import's garbage goes back too
                await trim()
