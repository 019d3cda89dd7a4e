"""The output gate: nothing that reflects a commit leaves before it is on disk.

Modelled on workerd's ``io-gate.h``. A commit made on the event loop is
visible in the file (WAL) before its ``fdatasync`` returns; while that flush
runs the gate is *held*. Readers ``await gate.wait()`` and then read at once,
with no ``await`` in between, so they never show what a crash could still take
back. A flush that fails still releases the gate (marking it ``broken``):
waiters go on, and the actor, which breaks on that failure, refuses their
reads with its own error.
"""

from __future__ import annotations

import asyncio
from collections import deque


class OutputGate:
    """Holds readers back while a visible commit is not yet flushed.

    ``hold()`` when a commit is written but not flushed, ``release(token)``
    once the flush ended (``error`` if it failed). Tokens are released in the
    order they were held. ``wait()`` returns once nothing held is left.
    """

    __slots__ = ("_broken", "_held")

    def __init__(self) -> None:
        self._held: deque[asyncio.Future[None]] = deque()
        self._broken: BaseException | None = None

    @property
    def held(self) -> bool:
        """Whether some visible commit is still being flushed."""
        return bool(self._held)

    @property
    def broken(self) -> bool:
        """Whether some flush failed (the actor that owns the gate is broken)."""
        return self._broken is not None

    def hold(self) -> asyncio.Future[None]:
        """Close the gate for one commit; the token is what :meth:`release` takes."""
        token: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._held.append(token)
        return token

    def release(self, token: asyncio.Future[None], error: BaseException | None = None) -> None:
        """The flush of ``token``'s commit ended; with ``error``, it failed.

        Raises ``RuntimeError`` if ``token`` is not the oldest one held (flushes
        end in the order their commits were made). Idempotent for a token
        already released.
        """
        if token.done():
            return
        if not self._held or self._held[0] is not token:
            raise RuntimeError("output gate tokens are released in the order they were held")
        self._held.popleft()
        if error is not None and self._broken is None:
            self._broken = error
        token.set_result(None)

    async def wait(self) -> None:
        """Return when no visible commit is unflushed (at once if none is).

        Never raises for a failed flush (see :attr:`broken`); the caller
        must read right after, without awaiting.
        """
        while self._held:
            await asyncio.shield(self._held[-1])
