"""Replication of one registry's files with Litestream (``--replica``; issue 18).

One :class:`Replica` per registry (a single server, or one cluster shard) owns
one Litestream child (:mod:`actors.litestream`). The catalog is registered
for the registry's whole life; a session file only while its actor is live
(hibernated files cost Litestream nothing).

**Output gate.** After a batch's local commit (and ``fdatasync``) the actor
calls :meth:`Replica.sync`: Litestream's ``POST /sync {"wait": true}`` turns
the WAL into LTX files up to its end (so past this batch's commit, which was
written before the request) and uploads them. Its answer ``txid`` is the
highest local TXID after that and ``replicated_txid`` the replica's; the batch
is acknowledged only when ``replicated_txid >= txid`` and ``txid`` is not
below any TXID a sync confirmed for the file before this one began (see
:meth:`Replica.sync_path`; a concurrent sync can make ``txid`` run ahead, and
the sync is then asked again). Anything else fails the batch (503), nothing
acknowledged.

**Activation** (:meth:`Replica.activate`, before the actor opens the file)
compares positions, never replacing a local copy that is ahead of or equal to
the replica:

- the replica's position: newest epoch with data, highest TXID in it
  (:meth:`actors.replica_s3.Store.positions`);
- the local one: the epoch in the file's sidecar and the highest TXID of
  Litestream's local LTX files.

The local copy is kept when the replica holds nothing, when its epoch is newer
than the replica's newest (written by us, not uploaded yet), or when the
epochs are equal and its TXID is at least the replica's. Otherwise (missing,
no sidecar, older epoch, or behind in the same epoch) the newest epoch is
restored into a temporary file that then replaces it. A session missing
locally is restored only if the catalog lists it (a deleted one stays
deleted). A registry writes each file into an epoch of its own, one above
every epoch seen: a fresh Litestream folder, a fresh snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from actors.litestream import L0_RETENTION, ControlError, Litestream, run_tool
from actors.replica_fence import CLAIM_WAIT, Fence
from actors.replica_s3 import Store
from actors.replica_store import Target, local_txid, meta_dir, read_epoch, write_epoch
from storage.errors import Unavailable
from storage.layout import DataDir, fsync_path

log = logging.getLogger("roost.replica")

SYNC_TIMEOUT = 30
SYNC_TRIES = 5
CLAIM_TRIES = 8
RESTORE_TIMEOUT = 300.0
# at start, the catalog's most recently updated sessions (up to PREFETCH) are made
# current in the background, PREFETCH_CONCURRENCY at a time (a disk lost or
# stale: they are restored before their first request asks)
PREFETCH = 256
PREFETCH_CONCURRENCY = 4
# a live session not written for this long is unregistered from Litestream (its
# monitor costs CPU every second per file) and registered again by its next write
PARK_AFTER = 10.0


@dataclass(slots=True)
class ReplicaStats:
    """Counters for ``/metrics``."""

    syncs: int = 0
    sync_seconds: float = 0.0
    sync_failures: int = 0
    sync_retries: int = 0
    restores: int = 0
    restore_seconds: float = 0.0
    kept_local: int = 0
    superseded: int = 0
    parked: int = 0


class Replica:
    """See the module docstring. ``start`` once, ``close`` idempotently."""

    def __init__(self, target: Target, *, name: str, l0_retention: float = L0_RETENTION) -> None:
        self.target = target
        self.name = name  # the catalog's name in the replica: "node", "shard-<k>"
        self.stats = ReplicaStats()
        self.known: Callable[[str], bool] = lambda sid: True  # the registry sets it
        self._ls = Litestream(l0_retention=l0_retention)
        self._store: Store | None = None
        self._datadir: DataDir | None = None
        self._owned: dict[str, int] = {}  # db path -> the epoch this registry writes
        self._last_txid: dict[str, int] = {}  # db path -> highest TXID a sync answered
        self._bases: dict[str, str] = {}  # db path -> its base in the replica
        self._locks: dict[str, asyncio.Lock] = {}
        self._catalog: str | None = None
        self.park_after = PARK_AFTER
        self._parked: dict[str, str] = {}  # db path -> replica URL: live, not watched
        self._used: dict[str, float] = {}  # db path -> when a sync last ended
        self._busy: dict[str, int] = {}  # db path -> syncs in flight
        self._parker: asyncio.Task[None] | None = None
        self._prefetcher: asyncio.Task[None] | None = None
        self._seen: set[str] = set()  # db paths activate was asked for (never prefetched)
        self.prefetch_limit = PREFETCH
        self._fences = Fence(self._superseded)
        self._lost = False  # a newer incarnation claimed the catalog (see _fence_key)

    @property
    def litestream_pid(self) -> int | None:
        return self._ls.pid

    async def _thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    # ------------------------------------------------------------------ lifecycle

    async def start(self, datadir: DataDir) -> None:
        """Start Litestream; bring the catalog up to the replica (before it is
        opened) and register it."""
        self._datadir = datadir
        started = time.perf_counter()
        # the child starts while the store is reached and the catalog restored
        child = asyncio.ensure_future(self._ls.start())
        cat = datadir.catalog_path
        try:
            self._store = await self._thread(Store, self.target)
            await self._thread(self._store.check)
            await self._prepare(cat, self.target.catalog_base(self.name), may_restore=True)
            await child
        except BaseException:
            with contextlib.suppress(BaseException):
                await child
            await self._ls.close()
            raise
        self._catalog = str(cat)
        log.info("replica %s: catalog ready in %.3f s", self.name, time.perf_counter() - started)

    async def register_catalog(
        self, recent: Callable[[int], list[str]] | None = None, datadir: DataDir | None = None
    ) -> None:
        """Register the catalog once the registry has opened it (WAL mode).
        ``recent(n)``: up to ``n`` ids of sessions the catalog lists and this
        registry hosts, most recently updated first (one catalog query, run on
        the loop); they are prefetched (:meth:`prefetch`) into ``datadir``."""
        assert self._catalog is not None
        cat, base = Path(self._catalog), self.target.catalog_base(self.name)
        if self._catalog not in self._owned:  # it was made just now
            await self._prepare(cat, base, may_restore=True)
        await self._register(cat, base)
        self._parker = asyncio.create_task(self._park_idle(), name="replica:park")
        if recent is not None and datadir is not None and self.prefetch_limit > 0:
            self._prefetcher = asyncio.create_task(
                self._prefetch_recent(recent, datadir), name="replica:prefetch"
            )

    async def _prefetch_recent(self, recent: Callable[[int], list[str]], datadir: DataDir) -> None:
        try:
            sids = recent(self.prefetch_limit)  # on the loop: the reader is the loop's
        except Exception as exc:  # the lazy path still restores each on its first request
            log.warning("replica %s: no prefetch, the catalog failed: %r", self.name, exc)
            return
        await self.prefetch(sids, datadir)

    async def prefetch(self, sids: list[str], datadir: DataDir) -> None:
        """Make the local copies of ``sids`` current ahead of their first request,
        ``PREFETCH_CONCURRENCY`` at a time (see :meth:`_warm`). Never raises."""
        started = time.perf_counter()
        gate = asyncio.Semaphore(PREFETCH_CONCURRENCY)

        async def one(sid: str) -> bool:
            async with gate:
                try:
                    return await self._warm(sid, datadir)
                except Exception as exc:  # its first request tries again (and answers)
                    log.info("replica prefetch of %s failed: %r", sid, exc)
                    return False

        warmed = await asyncio.gather(*(one(sid) for sid in sids))
        log.info(
            "replica %s: prefetched %d of %d sessions in %.3f s",
            self.name,
            sum(warmed),
            len(sids),
            time.perf_counter() - started,
        )

    async def _warm(self, sid: str, datadir: DataDir) -> bool:
        """What :meth:`activate` does before it registers the file, for a session
        that was not activated yet: under the file's lock (a request for it
        waits for this, and then restores nothing: one restore per file), and
        only while the catalog lists it. A session activate was asked for
        (served, created, being deleted) is left to that path, so a deleted
        session is never brought back. Whether it restored or claimed."""
        db = datadir.session_db(sid)
        key = str(db)
        async with self._lock(key):
            if key in self._seen or key in self._owned or not self.known(sid):
                return False
            return await self._prepare(db, self.target.session_base(sid), may_restore=True)

    async def close(self) -> None:
        for task in (self._parker, self._prefetcher):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._catalog is not None:
            with contextlib.suppress(Exception):
                await self.sync_path(self._catalog)
        await self._ls.close()

    # ------------------------------------------------------------------ sessions

    def _lock(self, path: str) -> asyncio.Lock:
        lock = self._locks.get(path)
        if lock is None:
            lock = self._locks[path] = asyncio.Lock()
        return lock

    async def activate(self, sid: str, datadir: DataDir, *, fresh: bool = False) -> None:
        """Make the local copy of ``sid`` current (restoring it when it is missing
        or behind) and register it. ``fresh``: the file was made just now (a
        create; an id used before keeps only its history in older epochs).
        Raises ``Unavailable`` when the replica cannot be read (a stale copy is
        never served instead)."""
        db = datadir.session_db(sid)
        started = time.perf_counter()
        self._seen.add(str(db))
        async with self._lock(str(db)):
            base = self.target.session_base(sid)
            if fresh:
                self._owned.pop(str(db), None)
            if await self._prepare(db, base, may_restore=self.known(sid), fresh=fresh):
                await self._register(db, base)
        log.info("replica activated %s in %.3f s", sid, time.perf_counter() - started)

    async def deactivate(self, sid: str, datadir: DataDir) -> None:
        """Unregister ``sid`` (hibernation, close). Never raises."""
        db = str(datadir.session_db(sid))
        self._used.pop(db, None)
        self._fences.forget(db)
        if self._parked.pop(db, None) is not None or db not in self._ls.registered:
            return
        try:
            await self._ls.unregister(db)
        except Exception as exc:
            log.warning("litestream unregister of %s failed: %r", sid, exc)
        self._locks.pop(db, None)

    async def created(self, sid: str, datadir: DataDir) -> None:
        """A new session's file and its catalog row: replicated before the create
        is acknowledged (the file is registered only for this sync)."""
        await self.activate(sid, datadir, fresh=True)
        try:
            await self.sync_path(str(datadir.session_db(sid)))
        finally:
            await self.deactivate(sid, datadir)
        await self.sync_catalog()

    async def forget(self, sid: str, datadir: DataDir) -> None:
        """A deleted session: its catalog row's removal is replicated."""
        self._owned.pop(str(datadir.session_db(sid)), None)
        self._fences.forget(str(datadir.session_db(sid)))
        await self.sync_catalog()

    async def sync_catalog(self) -> None:
        if self._catalog is not None and self._catalog in self._ls.registered:
            await self.sync_path(self._catalog)

    async def sync(self, path: Path) -> int:
        """The output gate's wait (see the module docstring); the TXID replicated."""
        return await self.sync_path(str(path))

    async def sync_path(self, path: str) -> int:
        """Sync-and-wait ``path`` (its commits so far); the TXID replicated.

        An answer confirms the caller's commit when ``replicated_txid >= txid``
        (``txid``: Litestream's newest local TXID after the sync, which covers
        every commit made before the request) and ``txid`` is at least what
        any earlier confirmed sync of the file answered before this one began.
        Another sync of the same file (Litestream's own monitor, a concurrent
        create's catalog sync) may make a newer TXID between the two reads of
        an answer: then ``txid > replicated_txid`` and the sync is asked again
        (at most ``SYNC_TRIES`` times), never taken as a confirmation.
        """
        started = time.perf_counter()
        before = self._last_txid.get(path, 0)
        self._busy[path] = self._busy.get(path, 0) + 1
        try:
            lock = self._locks.get(path)
            if path in self._parked or (lock is not None and lock.locked()):
                await self._unpark(path)
            self._fences.ahead(*self._fence_key(path))
            for _ in range(SYNC_TRIES):
                ans = await self._ls.request(
                    "POST",
                    "/sync",
                    {"path": path, "wait": True, "timeout": SYNC_TIMEOUT},
                    limit=SYNC_TIMEOUT + 5,
                )
                txid = int(ans.get("txid", 0))
                replicated = int(ans.get("replicated_txid", 0))
                if txid < before or txid < 1:
                    break  # a position going back: never a confirmation
                if replicated >= txid:
                    break
                self.stats.sync_retries += 1
            if txid < 1 or replicated < txid or txid < before:
                raise ControlError(
                    200, f"sync answered txid {txid}, replicated {replicated} (before: {before})"
                )
        except Exception as exc:
            self.stats.sync_failures += 1
            log.warning("replica sync of %s failed: %s", path, exc)
            raise Unavailable(
                "the replica did not confirm this change; retry",
                details={"reason": "replica_sync_failed"},
            ) from exc
        finally:
            self._busy[path] -= 1
            if not self._busy[path]:
                del self._busy[path]
            self._used[path] = time.monotonic()
        await self._fence(path, time.monotonic())
        self._last_txid[path] = max(txid, self._last_txid.get(path, 0))
        log.debug("replica synced %s: txid %s replicated %s", path, txid, replicated)
        self.stats.syncs += 1
        self.stats.sync_seconds += time.perf_counter() - started
        return replicated

    def _fence_key(self, path: str) -> tuple[str, int | None]:
        """The file whose claims fence a sync of ``path``, and this registry's epoch
        of it: the registry's catalog while it owns one, else ``path`` itself.

        Every incarnation claims its catalog (and waits out the lease) before it
        reads the replica of any file it then takes over, and a session is only
        ever hosted under one catalog name (``node``, or ``shard-<k>`` of its
        shard), so a newer claim on a file comes after a newer claim on the
        catalog: one lease on the catalog covers the syncs of all its files.
        Each file still claims its own epoch (its data's path). ``None`` when
        ``path`` is not owned (superseded: nothing is acknowledged)."""
        epoch = self._owned.get(path)
        cat = self._catalog
        if epoch is None or cat is None or cat == path or cat not in self._owned:
            return path, epoch
        return cat, self._owned[cat]

    async def _fence(self, path: str, confirmed: float) -> None:
        """After a sync confirmed at ``confirmed`` (``time.monotonic``): raise
        ``Unavailable`` (nothing acknowledged) when an epoch above this
        registry's was claimed for ``path`` or for its catalog (another
        incarnation took them over, maybe restoring ``path`` before this change
        reached the replica). A lease (:mod:`actors.replica_fence`): a recent
        check covers it, and one lease covers every file of the catalog."""
        key, epoch = self._fence_key(path)
        if self._lost:
            epoch = None  # the catalog was claimed over: this incarnation is done
        try:
            await self._fences.confirm(key, epoch, confirmed)
        except Unavailable as exc:
            self.stats.sync_failures += 1
            reason = exc.details.get("reason") if isinstance(exc.details, dict) else None
            if reason == "replica_superseded":
                self.stats.superseded += 1
                self._owned.pop(path, None)
                self._fences.forget(path)
                if key != path or path == self._catalog:
                    self._lost = True  # never fall back to the files' own claims
            raise

    async def _superseded(self, path: str, epoch: int) -> bool:
        base = self._bases.get(path)
        if base is None:
            return True
        assert self._store is not None
        return bool(await self._thread(self._store.superseded, base, epoch))

    # ------------------------------------------------------------------ idle files

    async def _unpark(self, path: str) -> None:
        """Register ``path`` again before its sync (it was parked while idle)."""
        async with self._lock(path):
            url = self._parked.pop(path, None)
            if url is None:
                return
            try:
                await self._ls.register(path, url)
            except Exception:
                self._ls.registered.pop(path, None)
                self._parked[path] = url
                raise

    async def _park_idle(self) -> None:
        """Unregister live files not written for ``park_after`` seconds (their
        changes are all replicated: each was acknowledged after its sync)."""
        while True:
            await asyncio.sleep(max(0.05, self.park_after / 2))
            cutoff = time.monotonic() - self.park_after
            for path, url in list(self._ls.registered.items()):
                if path == self._catalog or self._busy.get(path):
                    continue
                if self._used.setdefault(path, time.monotonic()) > cutoff:
                    continue
                lock = self._lock(path)
                if lock.locked():
                    continue
                async with lock:
                    if self._busy.get(path) or path not in self._ls.registered:
                        continue
                    self._parked[path] = url
                    try:
                        await self._ls.unregister(path)
                        self.stats.parked += 1
                    except Exception as exc:  # registered again by the next sync
                        log.warning("litestream unregister of %s failed: %r", path, exc)

    # ------------------------------------------------------------------ positions

    async def _prepare(
        self, db: Path, base: str, *, may_restore: bool, fresh: bool = False
    ) -> bool:
        """Bring ``db`` up to the replica (see the module docstring); whether
        there is a local file to serve now. ``fresh``: keep the local file.

        A new epoch is claimed (``Store.claim``, which then waits out the older
        writers' lease) *before* the listing that decides what to restore, so a
        writer of an older epoch, whose confirmed syncs a recent check for newer
        claims must cover (:mod:`actors.replica_fence`), either had its change
        uploaded before that listing or does not acknowledge it.
        Raises ``Unavailable`` when this registry's own epoch was claimed over
        (another incarnation serves the file now)."""
        assert self._store is not None
        key = str(db)
        self._bases[key] = base
        owned = self._owned.get(key)
        claimed: int | None = None
        try:
            if owned is not None and await self._thread(self._store.superseded, base, owned):
                self._owned.pop(key, None)
                self.stats.superseded += 1
                raise Unavailable(
                    "another server took this session over; retry",
                    details={"reason": "replica_superseded"},
                )
            exists, local_epoch = await self._thread(_local_state, db)
            if owned is not None and exists and local_epoch == owned and not fresh:
                # written only by this registry since its claim, and no newer claim:
                # the replica cannot be ahead of it (no listing: an activation after
                # a prefetch, a session woken from hibernation)
                self.stats.kept_local += 1
                return True
            if owned is None:
                claimed = await self._claim(base, max(local_epoch or 0, 0))
            while True:
                positions: dict[int, int] = await self._thread(self._store.positions, base)
                newest = max(positions) if positions else None
                keep = await self._keep(db, exists, local_epoch, positions, fresh)
                mine = owned if claimed is None else claimed
                if claimed is None and (
                    not keep or local_epoch != owned or (newest or 0) > (mine or 0)
                ):
                    claimed = await self._claim(base, max(local_epoch or 0, owned or 0))
                    continue  # read the replica again after the claim
                break
        except Unavailable:
            raise
        except Exception as exc:
            raise Unavailable(
                "the replica cannot be read; retry", details={"reason": "replica_unreachable"}
            ) from exc
        log.info(
            "replica prepare %s: replica %s (%d files), local exists=%s epoch=%s, keep=%s, "
            "restore=%s, claimed=%s",
            db,
            positions,
            self._store.files.pop(base, 0),
            exists,
            local_epoch,
            keep,
            may_restore,
            claimed,
        )
        if newest is not None and not keep:
            if not exists and not may_restore:
                return False  # deleted here: the replica's copy is history only
            await self._restore(db, self.target.url(base, newest))
        elif exists:
            self.stats.kept_local += 1
        if not await self._thread(os.path.exists, db):
            return False
        if claimed is not None:
            await self._thread(_fresh_epoch, db, claimed)
            self._owned[key] = claimed
            self._fences.forget(key)
            self._last_txid.pop(key, None)
        return True

    async def _keep(
        self,
        db: Path,
        exists: bool,
        local_epoch: int | None,
        positions: dict[int, int],
        fresh: bool,
    ) -> bool:
        """Whether the local copy is at least as new as the replica's newest epoch."""
        newest = max(positions) if positions else None
        if newest is None or (fresh and exists):
            return exists
        if not exists or local_epoch is None:
            return False
        if local_epoch > newest:
            return True
        if local_epoch == newest:
            return bool(await self._thread(local_txid, db) >= positions[newest])
        return False

    async def _claim(self, base: str, floor: int) -> int:
        """Claim an epoch above every epoch claimed or holding data under
        ``base`` (and above ``floor``): the epoch this registry writes next."""
        assert self._store is not None
        for _ in range(CLAIM_TRIES):
            positions: dict[int, int]
            claims: list[int]
            positions, claims = await self._thread(self._store.state, base)  # one listing
            epoch = max([*claims, *positions, floor]) + 1
            if await self._thread(self._store.claim, base, epoch):
                log.info("replica claimed %s epoch %s", base, epoch)
                if epoch > 1:  # an older writer may still hold a lease on its epoch
                    await asyncio.sleep(CLAIM_WAIT)
                return epoch
        raise Unavailable(
            "another server is taking this session over; retry",
            details={"reason": "replica_claim_contended"},
        )

    async def _register(self, db: Path, base: str) -> None:
        url = self.target.url(base, self._owned[str(db)])
        try:
            await self._ls.register(str(db), url)
        except Exception as exc:
            self._ls.registered.pop(str(db), None)
            raise Unavailable(
                "replication could not start for this file; retry",
                details={"reason": "replica_register_failed"},
            ) from exc

    async def _restore(self, db: Path, url: str) -> None:
        started = time.perf_counter()
        tmp = db.with_name(db.name + ".restoring")
        await self._thread(_remove_db, tmp)
        await self._thread(lambda: db.parent.mkdir(parents=True, exist_ok=True))
        code, out = await run_tool(["restore", "-o", str(tmp), url], RESTORE_TIMEOUT)
        if code != 0 or not await self._thread(os.path.exists, tmp):
            await self._thread(_remove_db, tmp)
            raise Unavailable(
                "restoring from the replica failed; retry",
                details={"reason": "replica_restore_failed", "output": out[-300:]},
            )
        await self._thread(_replace_db, tmp, db)
        self.stats.restores += 1
        self.stats.restore_seconds += time.perf_counter() - started
        log.info(
            "restored %s from %s in %.3f s", db, url.split("?")[0], time.perf_counter() - started
        )


async def restore_at(target: Target, sid: str, at: datetime, out: Path) -> int:
    """Write session ``sid`` as it was at ``at`` to the new file ``out``; the epoch used
    (point-in-time restore: ``roost-admin pitr``).

    Tries the newest epoch first, then older ones (an epoch starts with a
    snapshot, so an earlier time lives in an earlier epoch). Raises
    ``LookupError`` when no epoch holds that time.
    """
    loop = asyncio.get_running_loop()
    store = await replica_store(target)
    base = target.session_base(sid)
    positions: dict[int, int] = await loop.run_in_executor(None, store.positions, base)
    stamp = at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    last = "the replica holds no copy of it"
    for epoch in sorted(positions, reverse=True):
        await loop.run_in_executor(None, _remove_db, out)
        args = ["restore", "-timestamp", stamp, "-o", str(out), target.url(base, epoch)]
        code, last = await run_tool(args, RESTORE_TIMEOUT)
        if code == 0 and await loop.run_in_executor(None, os.path.exists, out):
            return epoch
    raise LookupError(f"no replica of {sid!r} holds {stamp}: {last.strip()[-300:]}")


async def replica_store(target: Target) -> Store:
    """A :class:`Store` made off the event loop (boto3's import is slow)."""
    return await asyncio.get_running_loop().run_in_executor(None, Store, target)


def _local_state(db: Path) -> tuple[bool, int | None]:
    """Whether ``db`` exists, and the epoch of its sidecar."""
    exists = db.exists()
    return exists, read_epoch(db) if exists else None


def _fresh_epoch(db: Path, epoch: int) -> None:
    """Start ``db`` in ``epoch``: Litestream's local folder goes (a new snapshot)."""
    shutil.rmtree(meta_dir(db), ignore_errors=True)
    write_epoch(db, epoch)


def _remove_db(db: Path) -> None:
    for p in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(p)


def _replace_db(tmp: Path, db: Path) -> None:
    """Put the restored ``tmp`` in ``db``'s place, durably: the old WAL, index,
    Litestream folder and sidecar go first."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    for suffix in ("-wal", "-shm", ".replica"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(db.with_name(db.name + suffix))
    shutil.rmtree(meta_dir(db), ignore_errors=True)
    os.replace(tmp, db)
    fsync_path(db.parent)
