"""Replication with Litestream on a single node (issue 18): real processes only.

A real ``moto_server`` (the S3 stand-in, :mod:`scripts.s3_standin`) on loopback,
``roost serve --replica`` as a child process with its own Litestream child.
Skipped only when the ``replica`` extra is not installed.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sqlite3
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest

pytest.importorskip("boto3", reason="replication needs: pip install -e '.[replica]'")
pytest.importorskip("moto", reason="the S3 stand-in needs moto[server] (the replica extra)")

from scripts.s3_standin import S3StandIn
from tests.harness import (
    TIMEOUT,
    Appender,
    Appenders,
    ServerProcess,
    contents,
    create_session,
    deadline,
    eventually,
)

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3StandIn]:
    stand = S3StandIn(tmp_path_factory.mktemp("moto")).start()
    try:
        yield stand
    finally:
        stand.stop()


def serve(s3: S3StandIn, data: Path, prefix: str, *extra: str) -> ServerProcess:
    return ServerProcess(data, *s3.replica_args(prefix), *extra, env=s3.env)


async def listed(http: aiohttp.ClientSession, url: str) -> set[str]:
    async with http.get(f"{url}/api/sessions?limit=100") as r:
        assert r.status == 200
        return {s["id"] for s in (await r.json())["items"]}


def litestream_pids(srv: ServerProcess) -> list[int]:
    """The server's Litestream children (by their parent PID)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == srv.proc.pid and b"litestream" in cmd:
            out.append(int(entry))
    return out


async def test_disk_lost_after_kill9_restores_every_acknowledged_message(
    s3: S3StandIn, tmp_path: Path
) -> None:
    """kill -9 under 8 writers, the data dir deleted: every acknowledged message and
    the session list come back from the replica, once each and in order; the
    server's Litestream child died with it."""
    data = tmp_path / "data"
    srv = serve(s3, data, "lost")
    try:
        await srv.wait_ready()
        kids = litestream_pids(srv)
        assert len(kids) == 1
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as http:
            for sid in ("r1", "r2", "r3"):
                await create_session(http, srv.url, sid)
            writers = Appenders(
                [Appender(http, srv.url, f"r{1 + w % 2}", name=f"w{w}") for w in range(8)]
            ).start()
            await writers.wait_acked(120)
            srv.kill9()
            await writers.stop()
    finally:
        srv.close()
    await eventually(lambda: not any(os.path.exists(f"/proc/{p}") for p in kids), "litestream gone")
    shutil.rmtree(data)
    srv2 = serve(s3, data, "lost")
    try:
        await srv2.wait_ready()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as http:
            assert await listed(http, srv2.url) == {"r1", "r2", "r3"}
            stored = await contents(http, srv2.url, "r1") + await contents(http, srv2.url, "r2")
            assert await contents(http, srv2.url, "r3") == []
    finally:
        srv2.close()
    for a in writers.appenders:
        mine = [c for c in stored if c.startswith(a.name + "-")]
        lost = set(a.acked) - set(mine)
        assert not lost, f"{a.name} lost {len(lost)} acknowledged messages"
        assert mine[: len(a.acked)] == a.acked, f"{a.name}: order or duplicates"
    assert len(stored) == len(set(stored))


async def test_stale_local_copy_is_not_served_and_an_equal_one_is_kept(
    s3: S3StandIn, tmp_path: Path
) -> None:
    """The data dir rolled back to before the last 5 writes: the replica wins. A
    local copy equal to the replica (a plain restart) is kept, not restored."""
    data = tmp_path / "data"
    backup = tmp_path / "backup"
    srv = serve(s3, data, "stale")
    try:
        await srv.wait_ready()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as http:
            await create_session(http, srv.url, "s1")
            w = Appender(http, srv.url, "s1", name="a")
            for i in range(5):
                assert await w.post(f"a-{i}")
            await srv.sigterm()  # consistent files to copy
        shutil.copytree(data, backup)
        srv.close()
        srv = serve(s3, data, "stale")
        await srv.wait_ready()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as http:
            w = Appender(http, srv.url, "s1", name="b")
            for i in range(5):
                assert await w.post(f"b-{i}")
            assert await _metric(http, srv.url, "roost_replica_restores_total") == 0
        srv.kill9()
        srv.close()
        shutil.rmtree(data)
        shutil.copytree(backup, data)  # the node's disk from before the b-* writes
        srv = serve(s3, data, "stale")
        await srv.wait_ready()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as http:
            got = await contents(http, srv.url, "s1")
            assert got == [f"a-{i}" for i in range(5)] + [f"b-{i}" for i in range(5)]
            assert await _metric(http, srv.url, "roost_replica_restores_total") >= 1
    finally:
        srv.close()


async def _metric(http: aiohttp.ClientSession, url: str, name: str) -> float:
    async with http.get(f"{url}/metrics") as r:
        text = await r.text()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


async def test_deleted_session_stays_deleted_after_disk_loss(s3: S3StandIn, tmp_path: Path) -> None:
    """A delete is acknowledged once the catalog's removal is replicated: after the
    disk is lost the session does not come back (its replica is history only)."""
    data = tmp_path / "data"
    srv = serve(s3, data, "deleted")
    try:
        await srv.wait_ready()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as http:
            for sid in ("d1", "d2"):
                await create_session(http, srv.url, sid)
                assert await Appender(http, srv.url, sid).post("hello")
            async with http.delete(f"{srv.url}/api/sessions/d1") as r:
                assert r.status == 204
            # an id used again: its old epochs are history, never restored over it
            await create_session(http, srv.url, "d3")
            assert await Appender(http, srv.url, "d3").post("old")
            async with http.delete(f"{srv.url}/api/sessions/d3") as r:
                assert r.status == 204
            await create_session(http, srv.url, "d3")
            assert await Appender(http, srv.url, "d3").post("new")
            assert await contents(http, srv.url, "d3") == ["new"]
        srv.kill9()
        srv.close()
        shutil.rmtree(data)
        srv = serve(s3, data, "deleted")
        await srv.wait_ready()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as http:
            assert await listed(http, srv.url) == {"d2", "d3"}
            assert await contents(http, srv.url, "d3") == ["new"]
            async with http.get(f"{srv.url}/api/sessions/d1") as r:
                assert r.status == 404
            assert await contents(http, srv.url, "d2") == ["hello"]
    finally:
        srv.close()


async def test_litestream_killed_is_restarted_and_writes_go_on(
    s3: S3StandIn, tmp_path: Path
) -> None:
    """SIGKILL of the Litestream child: it is restarted, the live session is
    registered again, and appends are acknowledged again (none lost)."""
    srv = serve(s3, tmp_path / "data", "restart")
    try:
        await srv.wait_ready()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as http:
            await create_session(http, srv.url, "l1")
            w = Appender(http, srv.url, "l1")
            assert await w.post("w-0")
            (pid,) = litestream_pids(srv)
            os.kill(pid, signal.SIGKILL)

            tries = iter(range(1, 10**6))

            async def again() -> bool:
                # a new text per try: a 503'd one may still be stored (not acknowledged)
                return bool(litestream_pids(srv)) and bool(await w.post(f"w-{next(tries)}"))

            for _ in range(int(TIMEOUT * 20)):
                if await again():
                    break
                await asyncio.sleep(0.05)
            assert litestream_pids(srv) and litestream_pids(srv) != [pid]
            assert set(w.failures) <= {503}
            stored = await contents(http, srv.url, "l1")
            assert [c for c in stored if c in w.acked] == w.acked  # each once, in order
            assert len(stored) == len(set(stored))
    finally:
        srv.close()


async def test_pitr_restores_exactly_the_earlier_state(s3: S3StandIn, tmp_path: Path) -> None:
    """Write 4, note the time, write 3: ``roost-admin pitr --at`` gives exactly the 4
    (as a file and as an imported new session); the live session keeps 7."""
    srv = serve(s3, tmp_path / "data", "pitr")
    try:
        await srv.wait_ready()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as http:
            await create_session(http, srv.url, "p1")
            w = Appender(http, srv.url, "p1")
            for i in range(4):
                assert await w.post(f"m-{i}")
            await asyncio.sleep(1.1)  # LTX timestamps have millisecond steps: a clear gap
            at = datetime.now(UTC)
            await asyncio.sleep(1.1)
            for i in range(4, 7):
                assert await w.post(f"m-{i}")
            out = tmp_path / "p1-then.db"
            await _pitr(s3, "p1", at, "pitr", out, "--import-to", srv.url, "--as", "p1-then")
            assert _stored(out) == [f"m-{i}" for i in range(4)]
            assert await contents(http, srv.url, "p1-then") == [f"m-{i}" for i in range(4)]
            assert await contents(http, srv.url, "p1") == [f"m-{i}" for i in range(7)]
    finally:
        srv.close()


async def _level_keys(s3: S3StandIn, prefix: str, level: int) -> list[str]:
    """The replica's LTX keys of one compaction level under ``prefix``."""
    keys = await asyncio.to_thread(s3.keys, prefix)
    return [k for k in keys if f"/{level:04x}/" in k and k.endswith(".ltx")]


async def _until(what: str, check: Callable[[], Awaitable[bool]], limit: float = 60.0) -> None:
    """Poll ``check`` (a replica listing) until it holds; fail after ``limit`` s."""
    deadline = asyncio.get_running_loop().time() + limit
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


async def test_pitr_older_than_l0_retention_restores_from_compacted_files(
    s3: S3StandIn, tmp_path: Path
) -> None:
    """With ``--replica-l0-retention 1``: write 4, wait for their L1 file, note the
    time, write 3, wait until the L0 files are gone from the replica; ``pitr --at``
    still gives exactly the 4 (from the compacted files), never a later state."""
    srv = serve(s3, tmp_path / "data", "pitr-old", "--replica-l0-retention", "1")
    base = "pitr-old/sessions/p2/"
    try:
        await srv.wait_ready()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as http:
            await create_session(http, srv.url, "p2")
            w = Appender(http, srv.url, "p2")
            for i in range(4):
                assert await w.post(f"m-{i}")
            l1 = len(await _level_keys(s3, base, 1))

            async def compacted() -> bool:
                return len(await _level_keys(s3, base, 1)) > l1

            await _until("an L1 file holding the first writes", compacted)
            await asyncio.sleep(0.05)  # LTX timestamps have millisecond steps
            at = datetime.now(UTC)
            await asyncio.sleep(0.05)
            for i in range(4, 7):
                assert await w.post(f"m-{i}")
            l1 = len(await _level_keys(s3, base, 1))
            await _until("an L1 file holding the last writes", compacted)

            async def l0_gone() -> bool:  # Litestream keeps the newest L0 file
                return len(await _level_keys(s3, base, 0)) <= 1

            await _until("the L0 files past --replica-l0-retention deleted", l0_gone)
            out = tmp_path / "p2-then.db"
            text = await _pitr(s3, "p2", at, "pitr-old", out)
            assert "its newest change: " in text, text
            assert _stored(out) == [f"m-{i}" for i in range(4)]
    finally:
        srv.close()


def _admin() -> list[str]:
    import sys

    return [sys.executable, "-m", "scripts.admin"]


async def _pitr(s3: S3StandIn, sid: str, at: datetime, prefix: str, out: Path, *extra: str) -> str:
    """``roost-admin pitr SID --at AT --out OUT`` against ``prefix``; its output
    (asserts it exited 0)."""
    proc = await asyncio.create_subprocess_exec(
        *_admin(),
        "pitr",
        sid,
        "--at",
        at.isoformat().replace("+00:00", "Z"),
        *s3.replica_args(prefix),
        "--out",
        str(out),
        *extra,
        env={**os.environ, **s3.env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    raw, _ = await asyncio.wait_for(proc.communicate(), TIMEOUT * 6)
    text = raw.decode()
    assert proc.returncode == 0, text
    return text


def _stored(db: Path) -> list[str]:
    """The contents of a restored session file's messages, in order."""
    conn = sqlite3.connect(db)
    try:
        return [r[0] for r in conn.execute("SELECT content FROM messages ORDER BY rowid")]
    finally:
        conn.close()


async def test_idle_live_session_is_parked_and_its_next_write_replicated(
    s3: S3StandIn, tmp_path: Path
) -> None:
    """A live session unwritten for --replica-idle is unregistered from Litestream;
    its next write registers it again before it is acknowledged: after kill -9 and
    the disk lost, every acknowledged message is back."""
    data = tmp_path / "data"
    srv = serve(s3, data, "park", "--replica-idle", "0.2", "--idle-timeout", "600")
    try:
        await srv.wait_ready()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as http:
            await create_session(http, srv.url, "k1")
            w = Appender(http, srv.url, "k1")
            assert await w.post("before")
            for round_ in range(2):

                async def parked(n: int = round_ + 1) -> bool:
                    return await _metric(http, srv.url, "roost_replica_parked_total") >= n

                for _ in range(int(TIMEOUT * 20)):
                    if await parked():
                        break
                    await asyncio.sleep(0.05)
                assert await parked()
                assert await w.post(f"after-{round_}")
        srv.kill9()
        srv.close()
        shutil.rmtree(data)
        srv = serve(s3, data, "park")
        await srv.wait_ready()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as http:
            assert await contents(http, srv.url, "k1") == ["before", "after-0", "after-1"]
    finally:
        srv.close()


async def test_one_lease_on_the_catalog_fences_every_session(s3: S3StandIn, tmp_path: Path) -> None:
    """The fence's lookups are on the catalog's claims, one lease for all files:
    24 appends over 8 sessions look a session's own claims up only when it is
    activated (once each), not per append (before: a session written less often
    than its lease paid one lookup per append: 24 here)."""
    srv = serve(s3, tmp_path / "data", "lease")
    try:
        await srv.wait_ready()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as http:
            sids = [f"l{i}" for i in range(8)]
            for sid in sids:
                await create_session(http, srv.url, sid)
            log = s3.workdir / f"moto-{s3.port}.log"
            before = log.read_text(errors="replace").count("\n")
            for i in range(3):
                for sid in sids:
                    assert await Appender(http, srv.url, sid).post(f"m-{i}")
        lines = log.read_text(errors="replace").splitlines()[before:]
        heads = [x for x in lines if "HEAD /" in x and "/claims/" in x and "/lease/" in x]
        on_sessions = [x for x in heads if "/lease/sessions/" in x]
        assert len(on_sessions) <= len(sids), (len(on_sessions), on_sessions[:3])
        on_catalog = [x for x in heads if "/lease/catalogs/node/claims/" in x]
        assert on_catalog, "no lookup of the catalog's claims: the appends were not fenced"
        assert len(on_sessions) + len(on_catalog) == len(heads)
    finally:
        srv.close()


async def test_an_older_incarnation_never_acknowledges_after_a_newer_one_restored(
    s3: S3StandIn, tmp_path: Path
) -> None:
    """The root cause of the cluster loss (issue 18): two live writers of one
    session on one replica, as when Ray restarts a shard elsewhere while the
    old process still runs. The newer one (B) restores the session; the older
    one (A) must then answer 503 rather than acknowledge a change B never sees.
    Every change either writer acknowledged is in a third copy restored later."""
    a = serve(s3, tmp_path / "a", "fence")
    started = [a]
    try:
        await a.wait_ready()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as http:

            async def post(url: str, text: str) -> int:
                body = {"role": "user", "content": text}
                async with http.post(f"{url}/api/sessions/f1/messages", json=body) as r:
                    await r.read()
                    return r.status

            await create_session(http, a.url, "f1")
            assert await post(a.url, "a-0") == 201
            assert await post(a.url, "a-1") == 201
            # B starts now: its catalog lists f1 (A replicated the create)
            b = serve(s3, tmp_path / "b", "fence")
            started.append(b)
            await b.wait_ready()
            assert await contents(http, b.url, "f1") == ["a-0", "a-1"]  # restored by B
            status = await post(a.url, "a-2")  # A is live and still holds f1 open
            assert status == 503, "the older writer acknowledged after the newer one restored"
            assert await post(b.url, "b-0") == 201
            assert await _metric(http, a.url, "roost_replica_superseded_total") >= 1
            c = serve(s3, tmp_path / "c", "fence")
            started.append(c)
            await c.wait_ready()
            got = await contents(http, c.url, "f1")
            assert got[:2] == ["a-0", "a-1"] and got[-1] == "b-0"
            assert set(got) <= {"a-0", "a-1", "a-2", "b-0"}
    finally:
        for srv in started:
            srv.close()


async def test_disk_lost_sessions_are_restored_before_their_first_request(
    s3: S3StandIn, tmp_path: Path
) -> None:
    """A server starting on an empty data dir restores the sessions its catalog lists
    in the background (prefetch), before any request for them, once each; a deleted
    session is not among them."""
    data = tmp_path / "data"
    srv = serve(s3, data, "prefetch")
    try:
        await srv.wait_ready()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as http:
            for sid in ("p1", "p2", "p3"):
                await create_session(http, srv.url, sid)
                assert await Appender(http, srv.url, sid).post(f"hello {sid}")
            async with http.delete(f"{srv.url}/api/sessions/p2") as r:
                assert r.status == 204
        srv.kill9()
    finally:
        srv.close()
    shutil.rmtree(data)
    srv = serve(s3, data, "prefetch")
    try:
        await srv.wait_ready()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as http:
            async with deadline("p1 and p3 prefetched"):  # and the catalog; nothing asked
                while await _metric(http, srv.url, "roost_replica_restores_total") < 3:
                    await asyncio.sleep(0.02)
            files = {p.parent.name for p in data.glob("sessions/*/*/session.db")}
            assert files == {"p1", "p3"}
            assert await contents(http, srv.url, "p1") == ["hello p1"]
            assert await contents(http, srv.url, "p3") == ["hello p3"]
            async with http.get(f"{srv.url}/api/sessions/p2") as r:
                assert r.status == 404
            assert await _metric(http, srv.url, "roost_replica_restores_total") == 3
    finally:
        srv.close()


def test_the_fence_sees_a_newer_claim_by_one_lookup(
    s3: S3StandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``Store.superseded`` (after every confirmed sync) is one HEAD of the next
    epoch's claim: the claims the real ``Store.claim`` makes run without gaps,
    so it answers as a listing of every newer claim would."""
    from actors.replica_s3 import Store
    from actors.replica_store import Target

    for key, value in s3.env.items():
        monkeypatch.setenv(key, value)
    store = Store(Target.parse(s3.replica_url("fence-store"), s3.endpoint))
    base = "fence-store/sessions/s1"
    assert not store.superseded(base, 1)  # nothing claimed yet
    assert store.claim(base, 1) and not store.claim(base, 1)  # conditional: once only
    assert not store.superseded(base, 1)
    assert store.claim(base, 2)
    assert store.superseded(base, 1) and not store.superseded(base, 2)
    assert store.claims(base) == [1, 2]
