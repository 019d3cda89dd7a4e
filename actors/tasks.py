"""Small asyncio task helpers shared by the actors and the cluster code."""

from __future__ import annotations

import asyncio
from typing import Any


def retrieved(task: asyncio.Future[Any]) -> None:
    """A done callback: fetch a finished task's exception, so that none is reported
    as never retrieved (whoever needs the outcome awaits the task itself)."""
    if not task.cancelled():
        task.exception()
