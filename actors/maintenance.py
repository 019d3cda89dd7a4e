"""An actor's upkeep, off its hot path: search indexing and WAL checkpoints.

Indexing: messages are indexed for search once the session has had no write
for ``index_delay`` seconds (one timer per actor, re-armed rather than made per
commit), or at once before a search reads the index (:meth:`catch_up`).
Checkpoints: after ``CHECKPOINT_EVERY`` commits or ``CHECKPOINT_OPS`` ops,
whichever comes first; the actor runs them on the write pool between batches.

The WAL is also bounded by its size, whatever the counters say (they restart
with each activation, so a crash loop never reaches them): every
``WAL_CHECK_EVERY`` commits the actor reads the WAL's size (one ``fstat``) and
checkpoints with TRUNCATE when it is over ``WAL_LIMIT_BYTES``; an activation
truncates a WAL over ``WAL_OPEN_LIMIT_BYTES`` (one a crash left large) before
serving.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from storage.ops import op_index_search
from storage.txn import BulkOp

# a session's WAL is checkpointed (two flushes, on the write pool) after this many
# commits or this many ops, whichever comes first: that bounds the WAL file (a
# one-message commit adds ~8 pages; under group commit, a few pages per message)
CHECKPOINT_EVERY = 200
CHECKPOINT_OPS = 2000
# the WAL's size is checked every WAL_CHECK_EVERY commits; over WAL_LIMIT_BYTES it is
# checkpointed and truncated. The limit sits well above the size the commit counters
# keep it at (~200 commits of ~8 pages: ~6.4 MiB), because a truncated WAL must grow
# again, and a flush that grows a file also commits the file system's journal (the
# 1-client append p50 rose from 0.78 to 0.93 ms with a 4 MiB limit). On activation a
# WAL over WAL_OPEN_LIMIT_BYTES is truncated before serving: that is what bounds a
# crash loop, whose counters restart with each activation.
WAL_CHECK_EVERY = 16
WAL_LIMIT_BYTES = 16 << 20
WAL_OPEN_LIMIT_BYTES = 4 << 20

Enqueue = Callable[[BulkOp[bool], "asyncio.Future[bool]"], None]


class Maintenance:
    """The indexing and checkpoint policy of one actor.

    The actor tells it about commits (:meth:`committed`) and idle spells
    (:meth:`idle`); it queues indexing work through ``enqueue`` (the actor's
    mailbox, bypassing the queue cap) when ``queued()`` says the mailbox is
    empty. :meth:`stop` is idempotent; after it nothing more is queued.
    """

    def __init__(self, *, index_delay: float, enqueue: Enqueue, queued: Callable[[], bool]) -> None:
        self.index_delay = index_delay
        self.index_due = True  # new activation: messages may await indexing
        self._enqueue = enqueue
        self._queued = queued
        self._timer: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()
        # the first catch-up of the search index waits for an idle spell too
        self._last_write = self._loop.time()
        self._since_checkpoint = 0
        self._ops_since_checkpoint = 0
        self._since_size_check = 0
        self._stopped = False

    def committed(self, ops: int, wrote: bool) -> bool:
        """Note a commit of ``ops`` ops (``wrote``: it logged events); return
        whether a checkpoint is due now (the count then starts again)."""
        if wrote:
            self.index_due = True
        self._last_write = self._loop.time()
        self._since_checkpoint += 1
        self._ops_since_checkpoint += ops
        if (
            self._since_checkpoint >= CHECKPOINT_EVERY
            or self._ops_since_checkpoint >= CHECKPOINT_OPS
        ):
            self._since_checkpoint = self._ops_since_checkpoint = 0
            return True
        return False

    def size_check_due(self) -> bool:
        """Whether the actor should read the WAL's size after this commit (every
        ``WAL_CHECK_EVERY`` calls, one per commit; the count then starts again)."""
        self._since_size_check += 1
        if self._since_size_check >= WAL_CHECK_EVERY:
            self._since_size_check = 0
            return True
        return False

    def idle(self) -> None:
        """The mailbox is empty: arm the indexing timer if indexing is due."""
        if self.index_due and self._timer is None and not self._stopped:
            self._timer = self._loop.call_at(
                self._last_write + self.index_delay, self._index_when_idle
            )

    def stop(self) -> None:
        """Queue nothing more (the actor is closing). Idempotent."""
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def catch_up(self, submit: Callable[[BulkOp[bool]], Awaitable[bool]]) -> None:
        """Index every committed message for search (before a search reads it)."""
        while await submit(op_index_search(2000)):
            pass
        self.index_due = False

    def _index_when_idle(self) -> None:
        self._timer = None
        if not self.index_due or self._stopped:
            return
        due = self._last_write + self.index_delay
        now = self._loop.time()
        if self._queued() or due > now:
            self._timer = self._loop.call_at(
                max(due, now + self.index_delay / 4), self._index_when_idle
            )
            return
        fut: asyncio.Future[bool] = self._loop.create_future()
        fut.add_done_callback(self._index_done)
        self._enqueue(op_index_search(500), fut)

    def _index_done(self, fut: asyncio.Future[bool]) -> None:
        if not fut.cancelled() and fut.exception() is None and not fut.result():
            self.index_due = False
