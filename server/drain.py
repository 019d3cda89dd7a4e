"""Shutdown of the real-time side: the state one drain keeps (see
``server.routes_realtime.close_realtime`` for the order of the steps).

Kept apart so that ``server.keys`` can name its type without importing a
module that imports the keys.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


class Drain:
    """The one shutdown drain of an application.

    ``start`` runs the drain as a task (once; later calls are ignored);
    ``feeds_stopped`` is set when the drain has told every registered feed
    to end, so a feed registered after that must stop itself at once;
    ``wait`` returns when the drain has finished (at once if it never began).
    """

    __slots__ = ("_task", "feeds_stopped")

    def __init__(self) -> None:
        self._task: asyncio.Task[None] | None = None
        self.feeds_stopped = False

    @property
    def started(self) -> bool:
        return self._task is not None

    def start(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` as the drain; idempotent (a second ``work`` is closed unrun)."""
        if self._task is not None:
            work.close()
            return
        self._task = asyncio.create_task(work, name="shutdown:drain")

    async def wait(self) -> None:
        """Wait for the drain to finish; never raises what the drain raised."""
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
