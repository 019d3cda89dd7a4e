"""Share links (README "Share links"): a read-only snapshot of a session's branch,
stored durably in the catalog, public by id until it expires; a copy imports it as
a new session of the caller. A base of :class:`actors.registry.ActorRegistry`.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from storage.catalog import Catalog
from storage.errors import NotFound
from storage.export import ImportPlan, parse_export
from storage.ids import format_ts, now_iso


class ShareLinks:
    """Share links over the registry's catalog; see the module docstring."""

    write_pool: ThreadPoolExecutor
    _catalog_lock: asyncio.Lock

    @property
    def catalog(self) -> Catalog:
        raise NotImplementedError

    async def _create_from(self, sid: str | None, plan: ImportPlan, owner: str) -> dict[str, Any]:
        raise NotImplementedError

    async def create_share(
        self,
        share_id: str,
        *,
        owner: str,
        sid: str,
        branch: str,
        expires_in: float | None,
        snapshot: bytes,
    ) -> dict[str, Any]:
        """Store a share link and its snapshot durably (see ``Catalog.insert_share``)
        and return it: ``{id, owner, session_id, branch, created_at, expires_at}``."""
        now = time.time()
        share = {
            "id": share_id,
            "owner": owner,
            "session_id": sid,
            "branch": branch,
            "created_at": format_ts(now),
            "expires_at": None if expires_in is None else format_ts(now + expires_in),
        }
        loop = asyncio.get_running_loop()
        async with self._catalog_lock:
            await loop.run_in_executor(self.write_pool, self.catalog.insert_share, share, snapshot)
        return share

    def get_share(self, share_id: str) -> tuple[dict[str, Any], bytes] | None:
        """A share and its snapshot, or None when there is none or it expired
        (whoever asks: a share is public)."""
        found = self.catalog.get_share(share_id)
        expires = found[0]["expires_at"] if found is not None else None
        if expires is not None and expires <= now_iso():
            return None
        return found

    def list_shares(self, owner: str, session_id: str | None = None) -> list[dict[str, Any]]:
        """The shares ``owner`` made (of one session if given), newest first."""
        return self.catalog.list_shares(owner, session_id)

    async def delete_share(self, share_id: str, owner: str) -> None:
        """Delete ``owner``'s share; ``NotFound`` if there is none (or it is another's)."""
        loop = asyncio.get_running_loop()
        async with self._catalog_lock:
            found = await loop.run_in_executor(
                self.write_pool, self.catalog.delete_share, share_id, owner
            )
        if not found:
            raise NotFound(f"share {share_id!r} not found", details={"share_id": share_id})

    async def copy_share(self, share_id: str, owner: str) -> dict[str, Any]:
        """Import share ``share_id``'s snapshot as a new session of ``owner``; its doc.

        ``NotFound`` when there is no such share (or it expired).
        Not idempotent: each call makes a new session.
        """
        found = self.get_share(share_id)
        if found is None:
            raise NotFound(f"share {share_id!r} not found", details={"share_id": share_id})
        _share, snapshot = found
        loop = asyncio.get_running_loop()
        plan = await loop.run_in_executor(self.write_pool, parse_export, snapshot)
        return await self._create_from(None, plan, owner)
