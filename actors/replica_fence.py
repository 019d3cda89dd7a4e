"""The writer's fence against a newer incarnation, as a lease (issue 18).

Two live incarnations of one registry (Ray restarting a shard elsewhere while
the old process still runs, a partition) must never both acknowledge writes
of one file: the newer one (B) restores from the replica, and whatever the
older one (A) acknowledges after that listing would be lost. B claims a new
epoch before it reads the replica (``claims/<epoch>``, a conditional PUT);
A checks that no newer epoch is claimed (:meth:`actors.replica_s3.Store.superseded`,
one HEAD).

**The lease.** A check that *started* at ``c`` on A's monotonic clock and
found no newer claim covers every sync A confirmed until ``c + LEASE``. A
claimer whose epoch is above 1 (someone may have written before it) waits
``CLAIM_WAIT`` after its claim was made before it reads the replica.

**Why that is safe.** Say A's check read the store at ``r``, with ``r >= c``,
and saw no claim. Then B's claim came after ``r``, because the store is
linearizable (S3 has been since 2020, and so is moto). B lists at least
``CLAIM_WAIT`` after its claim, so after ``r + LEASE``. A's upload was
confirmed by ``c + LEASE``, so before that listing, and B's copy holds it.
This assumes clock *rates* agree within the margin. It needs no agreement on
the time of day.

**One lease per registry.** The checks are made on the registry's catalog
(:meth:`actors.replica.Replica._fence_key`): every incarnation claims its
catalog, and waits, before it reads the replica of any file it takes over, so a
newer claim on any file of the catalog's comes after a newer claim on the
catalog, and one check covers the syncs of every session of the registry.

**What it costs.** A sync whose answer finds no check younger than
``LEASE`` waits for one. One is started ahead, together with a sync, once the
newest is ``LEASE / 2`` old. So a registry pays at most ten HEADs a
second, beside its syncs, however many sessions it writes, not one round trip
after each batch (per file before: at 64 sessions x 1 writer, one per append). Before this,
a listing after every sync was about half of the replica's added append
latency against moto. A
claimer pays ``CLAIM_WAIT`` once per file per incarnation, only when an older
epoch exists. A create of a new id does not wait.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable

from actors.tasks import retrieved
from storage.errors import Unavailable

log = logging.getLogger("roost.replica")

LEASE = 0.2  # seconds a check covers after it started (A's clock)
# what a claimer waits before reading the replica: the lease plus a rate-drift
# margin of 20% and 50 ms for scheduling
CLAIM_WAIT = LEASE * 1.2 + 0.05


class Fence:
    """Per-file checks for :class:`actors.replica.Replica` (see the module docstring).

    ``check(path, epoch)`` is the store's lookup, run on a thread by the caller's
    function: whether an epoch above ``epoch`` is claimed for ``path``; it raises
    when the store cannot be read.
    """

    def __init__(self, check: Callable[[str, int], Awaitable[bool]]) -> None:
        self._check = check
        self._checked: dict[str, tuple[int, float]] = {}  # path -> (epoch, check's start)
        self._running: dict[str, tuple[int, float, asyncio.Task[None]]] = {}
        self.lease = LEASE

    def forget(self, path: str) -> None:
        """The file's epoch changed or the file left: its checks no longer count."""
        self._checked.pop(path, None)
        self._running.pop(path, None)

    def ahead(self, path: str, epoch: int | None) -> None:
        """Start a check now (beside a sync) when the newest is half a lease old."""
        if epoch is None:
            return
        seen = self._checked.get(path)
        if seen is not None and seen[0] == epoch and time.monotonic() - seen[1] < self.lease / 2:
            return
        self._start(path, epoch)

    async def confirm(self, path: str, epoch: int | None, confirmed: float) -> None:
        """Return when a check of ``epoch`` that started at most a lease before
        ``confirmed`` (when the sync's answer came, on ``time.monotonic``) found
        no newer claim. Raises ``Unavailable`` when a newer epoch is claimed
        (``replica_superseded``) or the store cannot be read (``replica_unreachable``)."""
        if epoch is None:
            raise _superseded()
        called = time.monotonic()
        floor = confirmed - self.lease
        seen = self._checked.get(path)
        while seen is None or seen[0] != epoch or seen[1] < floor:
            started, task = self._start(path, epoch, not_before=floor)
            await asyncio.shield(task)
            if started >= min(floor, called):
                return  # this check was young enough and found no newer claim
            seen = self._checked.get(path)

    def _start(
        self, path: str, epoch: int, not_before: float = -math.inf
    ) -> tuple[float, asyncio.Task[None]]:
        """The check of ``epoch`` in flight (if it started at ``not_before`` or
        later), else a new one: its start and task."""
        running = self._running.get(path)
        if (
            running is not None
            and running[0] == epoch
            and running[1] >= not_before
            and not running[2].done()
        ):
            return running[1], running[2]
        started = time.monotonic()
        task = asyncio.get_running_loop().create_task(
            self._run(path, epoch, started), name="replica:fence"
        )
        task.add_done_callback(retrieved)  # one started ahead may go unawaited
        self._running[path] = (epoch, started, task)
        return started, task

    async def _run(self, path: str, epoch: int, started: float) -> None:
        try:
            gone = await self._check(path, epoch)
        except Exception as exc:
            raise Unavailable(
                "the replica did not confirm this change; retry",
                details={"reason": "replica_unreachable"},
            ) from exc
        if gone:
            log.warning("replica of %s was claimed by another writer: not acknowledged", path)
            raise _superseded()
        seen = self._checked.get(path)
        if seen is None or seen[0] != epoch or seen[1] < started:
            self._checked[path] = (epoch, started)


def _superseded() -> Unavailable:
    return Unavailable(
        "another server took this session over; retry",
        details={"reason": "replica_superseded"},
    )
