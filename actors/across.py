"""Across a user's sessions (issue 23): folders, search, the list feed, retention, titles.

:class:`AcrossSessions` is a part of :class:`actors.registry.ActorRegistry`
(its base class), kept here so the registry stays about activation. What it
uses of the registry is declared below.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from actors.actor import ActorConfig, SessionActor
from actors.responders import Responder
from actors.userlog import UserLog, UserLogs
from actors.usersearch import UserSearch
from storage.catalog import Catalog
from storage.cursors import decode_pair, encode_pair
from storage.errors import InvalidInput, NotFound, StorageError
from storage.ids import ascii_int, format_ts
from storage.ops import op_auto_title

log = logging.getLogger("roost.actors")

# a search cursor pages at most this deep (offset paging over the BM25 order)
MAX_SEARCH_OFFSET = 10_000


def _query_key(q: str, raw: bool) -> str:
    return hashlib.sha256(f"{raw}\x00{q}".encode()).hexdigest()[:16]


class AcrossSessions:
    """Work across the sessions of a user; see the module docstring."""

    config: ActorConfig
    responder: Responder
    user_logs: UserLogs
    user_search: UserSearch
    expired_total: int
    # cluster mode: whether a catalog row's session lives here (None: all of them)
    hosted: Callable[[str], bool] | None = None
    make_title: Callable[[Responder, str, str], Awaitable[str]]
    _closed: bool

    @property
    def catalog(self) -> Catalog:
        raise NotImplementedError

    async def flush_catalog(self) -> bool:
        raise NotImplementedError

    async def delete_session(self, sid: str, user: str = "") -> None:
        raise NotImplementedError

    async def folders(self, owner: str) -> list[dict[str, Any]]:
        """``owner``'s folders with counts (see ``Catalog.folders``)."""
        await self.flush_catalog()
        return self.catalog.folders(owner)

    def recent_hosted(self, limit: int) -> list[str]:
        """Up to ``limit`` ids of the catalog's sessions hosted here, most recently
        updated first (the replica's prefetch at start; on the event loop, like
        every read of the catalog's reader)."""
        hosted = self.hosted
        out: list[str] = []
        for sid in self.catalog.recent_ids():
            if hosted is None or hosted(sid):
                out.append(sid)
                if len(out) >= limit:
                    break
        return out

    def user_log(self, owner: str) -> UserLog:
        """``owner``'s list feed (session created / updated / deleted)."""
        return self.user_logs.get(owner)

    async def search_sessions(
        self, owner: str, q: str, *, limit: int, cursor: str | None, raw: bool
    ) -> tuple[list[dict[str, Any]], str | None]:
        """``owner``'s messages matching ``q`` in every session, best first:
        ``(hits, next_cursor)``. Each hit carries its session's document
        (``session``) and its ``rank`` in the whole answer; hits of sessions the
        catalog no longer lists are left out. A cursor belongs to its query
        (``InvalidInput`` otherwise) and reaches at most ``MAX_SEARCH_OFFSET``
        deep. Raises ``InvalidQuery``.
        """
        key = _query_key(q, raw)
        offset = 0
        if cursor is not None:
            got, pos = decode_pair("q", cursor)
            n = ascii_int(pos, 6)
            if got != key or n is None or n > MAX_SEARCH_OFFSET:
                raise InvalidInput("bad cursor: not a cursor of this query")
            offset = n
        hits = await self.user_search.search(owner, q, limit=limit + 1, offset=offset, raw=raw)
        more = len(hits) > limit
        hits = hits[:limit]
        await self.flush_catalog()
        docs = self.catalog.docs(owner, (h["session_id"] for h in hits))
        out = []
        for rank, h in enumerate(hits, offset + 1):
            doc = docs.get(h["session_id"])
            if doc is not None:
                out.append({**h, "session": doc, "rank": rank})
        nxt = None
        if more and offset + limit <= MAX_SEARCH_OFFSET:
            nxt = encode_pair("q", key, str(offset + limit))
        return out, nxt

    # ------------------------------------------------------------------ retention

    def expiry_cutoffs(self, now: float) -> tuple[str | None, str | None]:
        """(session_cutoff, temporary_cutoff): sessions last updated at or before
        these are expired (None: that rule is off)."""
        cfg = self.config
        session_cut = format_ts(now - cfg.session_ttl) if cfg.session_ttl > 0 else None
        temp_cut = format_ts(now - cfg.temporary_ttl) if cfg.temporary_ttl > 0 else None
        return session_cut, temp_cut

    async def sweep_expired(self, *, limit: int = 500) -> list[dict[str, Any]]:
        """Delete the sessions that expired (``Catalog.expired``), each through its
        actor like ``DELETE`` (tabs get ``session.deleted``); return them.

        Costs one indexed catalog query per rule, however many sessions sleep.
        Never raises: a session that cannot be deleted now is tried next time.
        """
        await self.flush_catalog()
        now = time.time()
        session_cut, temp_cut = self.expiry_cutoffs(now)
        try:
            due = self.catalog.expired(
                now=format_ts(now),
                session_cutoff=session_cut,
                temporary_cutoff=temp_cut,
                limit=limit,
            )
        except StorageError as exc:
            log.warning("the expiry sweep could not read the catalog: %s", exc.message)
            return []
        gone = []
        for item in due:
            if self._closed:
                break
            if self.hosted is not None and not self.hosted(item["id"]):
                continue  # a directory row of a session another shard hosts (and sweeps)
            try:
                await self.delete_session(item["id"], item["owner"])
            except NotFound:
                continue
            except Exception as exc:
                log.warning("could not delete expired session %s: %r", item["id"], exc)
                continue
            self.expired_total += 1
            log.info("session %s expired (%s) and was deleted", item["id"], item["reason"])
            gone.append(item)
        return gone

    async def _expiry_sweep(self) -> None:
        while True:
            await asyncio.sleep(self.config.sweep_interval)
            await self.sweep_expired()

    # ------------------------------------------------------------------ titles

    async def _after_reply(
        self, actor: SessionActor, final: dict[str, Any], history: list[dict[str, Any]]
    ) -> None:
        users = [m for m in history if m.get("role") == "user"]
        if users:
            await self.auto_title(actor, users[-1]["content"], final.get("content") or "")

    async def auto_title(self, actor: SessionActor, user_text: str, reply_text: str) -> None:
        """After a first reply: give the session a title if it has none (see
        ``op_auto_title``). Never raises."""
        try:
            session = await actor.read(lambda f: f.read_session())
            if session.get("title_source") is not None or session.get("title") is not None:
                return
            title = await self.make_title(self.responder, user_text, reply_text)
            if title:
                await actor.submit(op_auto_title(title))
        except Exception as exc:
            log.warning("could not title session %s: %r", actor.sid, exc)
