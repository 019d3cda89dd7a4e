"""Cluster twins of the session façade's context methods (issue 21).

:class:`RemoteContext` is mixed into :class:`actors.cluster.front.RemoteSessionHandle`:
``context`` and ``compact`` are answered by the session's shard (its
``CALLS`` table), with the same arguments and results as single node.
"""

from __future__ import annotations

from typing import Any


class RemoteContext:
    """``context`` / ``compact`` through the shard (``_call`` is the handle's)."""

    __slots__ = ()

    async def _call(self, method: str, **kw: Any) -> Any:  # the handle's own
        raise NotImplementedError

    async def context(self, leaf_id: str | None = None) -> dict[str, Any]:
        doc: dict[str, Any] = await self._call("context", leaf_id=leaf_id)
        return doc

    async def compact(self, leaf_id: str | None = None) -> list[dict[str, Any]]:
        docs: list[dict[str, Any]] = await self._call("compact", leaf_id=leaf_id)
        return docs
