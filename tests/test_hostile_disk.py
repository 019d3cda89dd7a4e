"""Issue 16, hostile disks (points 1, 4, 5 and 7's dead file system), on real small
file systems and a real ``roost serve`` process.

The file systems are loop-mounted ext4 with 1 KiB blocks (what ``mkfs.ext4``
makes on a small volume): that needs root and ``mount``. Without them the tests
skip, except when ``CI`` is set (CI runs as root), where they must run.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from server.errors import error_middleware
from storage.errors import StorageFull, Unavailable, from_sqlite
from storage.layout import SHM_PREALLOC_BYTES, connect, needs_shm_preallocation
from tests.conftest import TIMEOUT
from tests.test_hostile_limits import Server

EXT4_IOC_SHUTDOWN = 0x8004587D  # _IOR('X', 125, __u32)
EXT4_GOING_FLAGS_NOLOGFLUSH = 2


def _skip_or_fail(why: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the full-disk tests: {why}")
    pytest.skip(why)


@pytest.fixture
def small_ext4(tmp_path: Path) -> Iterator[Path]:
    """A 24 MiB ext4 with 1 KiB blocks, loop-mounted; unmounted (by path) afterwards."""
    if os.geteuid() != 0:
        _skip_or_fail("loop-mounting a small ext4 needs root")
    img = tmp_path / "fs.img"
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with open(img, "wb") as f:
        f.truncate(24 << 20)
    made = subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-b", "1024", "-m", "0", str(img)],
        capture_output=True,
        check=False,
    )
    if made.returncode != 0:
        _skip_or_fail(f"mkfs.ext4 failed: {made.stderr.decode().strip()}")
    done = subprocess.run(
        ["mount", "-o", "loop", str(img), str(mnt)], capture_output=True, check=False
    )
    if done.returncode != 0:
        _skip_or_fail(f"cannot loop-mount a small ext4 here: {done.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True, check=False)
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, check=False)


def _fill(path: Path, leave: int = 0) -> None:
    """Write ``path`` until fewer than ``leave`` bytes are free (0: until ENOSPC).

    Bounded: the file system is 24 MiB, so at most 24 MiB are written.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for size in (65536, 4096, 1024):
            try:
                for _ in range((24 << 20) // size):
                    st = os.statvfs(path)
                    if leave and st.f_bavail * st.f_frsize < leave + size:
                        break
                    os.write(fd, b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
        os.fsync(fd)
    finally:
        os.close(fd)


def _shutdown_fs(mnt: Path) -> None:
    """Make every further write on ``mnt`` fail with EIO (ext4's forced shutdown)."""
    fd = os.open(mnt, os.O_RDONLY)
    try:
        fcntl.ioctl(fd, EXT4_IOC_SHUTDOWN, EXT4_GOING_FLAGS_NOLOGFLUSH.to_bytes(4, "little"))
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------- point 1


def test_writer_connection_leaves_no_hole_in_the_wal_index(small_ext4: Path) -> None:
    """After a writer connects, its ``-shm`` has real blocks for the preallocated size,
    so no store through SQLite's mapping can fault (SIGBUS) on a full disk."""
    db = small_ext4 / "s.db"
    conn = connect(db)
    try:
        conn.execute("CREATE TABLE t (v)")
        conn.execute("INSERT INTO t VALUES (1)")
        st = os.stat(str(db) + "-shm")
        assert st.st_size >= SHM_PREALLOC_BYTES
        assert st.st_blocks * 512 >= st.st_size, "the -shm has holes"
    finally:
        conn.close()


def test_big_blocks_need_no_preallocation_and_leave_no_hole(tmp_path: Path) -> None:
    """Where blocks are 4 KiB (this machine's disk), the ``-shm`` is not preallocated
    (a cold activation saves the ``posix_fallocate``) and SQLite's own page writes leave
    no hole in it, even after the WAL grows past one index region."""
    if os.statvfs(tmp_path).f_frsize < 4096:
        pytest.skip("the temporary directory's file system has small blocks")
    assert not needs_shm_preallocation(str(tmp_path))
    db = tmp_path / "s.db"
    conn = connect(db)
    try:
        conn.execute("PRAGMA wal_autocheckpoint=0")
        conn.execute("CREATE TABLE t (v)")
        shm = str(db) + "-shm"
        assert os.stat(shm).st_size < SHM_PREALLOC_BYTES  # SQLite's first region only
        for _ in range(5_000):  # > 4,062 frames: a second 32 KiB region
            conn.execute("INSERT INTO t VALUES (?)", (os.urandom(3000),))
        st = os.stat(shm)
        assert st.st_size >= 2 * 32 * 1024
        assert st.st_blocks * 512 >= st.st_size, "the -shm has holes"
    finally:
        conn.close()


def test_small_blocks_need_preallocation(small_ext4: Path) -> None:
    assert needs_shm_preallocation(str(small_ext4))


def test_preallocation_keeps_sqlites_locks_on_the_wal_index(small_ext4: Path) -> None:
    """Preallocating must not close a descriptor of the ``-shm`` while SQLite holds
    locks on it (POSIX locks die with any close): another process opening the database
    must still see this one's connection and not truncate the index under its mapping
    (which is SIGBUS for this process)."""
    db = small_ext4 / "s.db"
    conn = connect(db)
    reader = connect(db, readonly=True)
    try:
        conn.execute("CREATE TABLE t (v)")
        conn.execute("INSERT INTO t VALUES (1)")
        shm = str(db) + "-shm"
        before = os.stat(shm).st_size
        assert before >= SHM_PREALLOC_BYTES
        code = (
            "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
            "c.execute('SELECT * FROM t').fetchall(); c.close()"
        )
        subprocess.run([sys.executable, "-c", code, str(db)], check=True, timeout=30)
        assert os.stat(shm).st_size == before, "another process truncated the -shm"
        assert reader.execute("SELECT v FROM t").fetchall() == [(1,)]
    finally:
        reader.close()
        conn.close()


async def _post(http: aiohttp.ClientSession, url: str, content: str) -> int:
    async with http.post(url, json={"role": "user", "content": content}) as r:
        return r.status


async def _ws_replayed_messages(http: aiohttp.ClientSession, url: str) -> list[str]:
    """Connect to ``url`` (a ``?since=`` replay) and return the contents of the
    ``message.created`` events replayed up to the ``hello`` seq."""
    async with http.ws_connect(url) as ws:
        hello = await ws.receive_json(timeout=TIMEOUT)
        assert hello["type"] == "hello"
        contents, seq = [], 0
        while seq < hello["seq"]:
            frame = await ws.receive_json(timeout=TIMEOUT)
            seq = frame.get("seq", seq)
            if frame["type"] == "message.created":
                contents.append(frame["message"]["content"])
        return contents


async def test_full_small_disk_refuses_writes_serves_reads_and_resumes(
    small_ext4: Path,
) -> None:
    """Under the disk reserve every write answers 507, reads (pages, export, a
    WebSocket replay with ``?since=``) answer, the process lives, nothing
    acknowledged is lost, and writes resume once space is freed."""
    s = Server(
        small_ext4 / "data",
        "--disk-reserve",
        str(1 << 20),
        "--synchronous",
        "FULL",
        log_dir=small_ext4.parent,
    )
    try:
        acked: list[str] = []
        async with aiohttp.ClientSession() as http:
            async with http.post(s.url + "/api/sessions", json={"id": "d1"}) as r:
                assert r.status == 201
            url = s.url + "/api/sessions/d1/messages"
            for i in range(20):
                assert await _post(http, url, f"kept {i} " + "x" * 500) == 201
                acked.append(f"kept {i} " + "x" * 500)
            ballast = small_ext4 / "ballast"
            _fill(ballast, leave=512 << 10)
            # the free space is read at most every 50 ms while far from the reserve:
            # a write or two may still pass (and is kept) before refusals begin
            for i in range(1000):
                status = await _post(http, url, f"late {i}")
                if status == 507:
                    break
                assert status == 201
                acked.append(f"late {i}")
            assert status == 507
            for i in range(50):
                assert await _post(http, url, f"refused {i}") == 507
            async with http.post(s.url + "/api/sessions", json={"id": "d2"}) as r:
                assert r.status == 507
                assert (await r.json())["error"]["code"] == "storage_full"
            async with http.get(url, params={"limit": "200"}) as r:
                assert r.status == 200
                got = [m["content"] for m in (await r.json())["items"]]
            assert got == acked
            async with http.get(s.url + "/api/sessions/d1/export") as r:
                assert r.status == 200
            assert await _ws_replayed_messages(http, s.url + "/api/sessions/d1/ws?since=0") == acked
            assert s.proc.poll() is None
            ballast.unlink()
            assert await _post(http, url, "after") == 201
    finally:
        s.close()


async def test_really_full_small_disk_never_kills_the_server(small_ext4: Path) -> None:
    """With no reserve and the disk filled to the last block, appends answer 201 or 507
    (never a dropped connection) and the process survives."""
    s = Server(small_ext4 / "data", env={"ROOST_DISK_RESERVE": "0"}, log_dir=small_ext4.parent)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(s.url + "/api/sessions", json={"id": "f1"}) as r:
                assert r.status == 201
            url = s.url + "/api/sessions/f1/messages"
            for i in range(200):
                assert await _post(http, url, f"warm {i} " + "y" * 200) == 201
            _fill(small_ext4 / "ballast")
            statuses = {await _post(http, url, f"on full {i} " + "z" * 200) for i in range(200)}
            assert statuses <= {201, 507, 503}
            async with http.get(s.url + "/healthz") as r:
                assert r.status == 200
        assert s.proc.poll() is None
    finally:
        s.close()


async def test_really_full_disk_keeps_reads_and_answers_507_not_503(small_ext4: Path) -> None:
    """A disk full to the last block, met by a fresh session: the process lives (it died
    of SIGBUS before the ``-shm`` was preallocated), every write answers 507 (none 503),
    reads and exports keep working, a restart on the full disk still serves them, and
    writes resume once space is freed."""
    s = Server(small_ext4 / "data", env={"ROOST_DISK_RESERVE": "0"}, log_dir=small_ext4.parent)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(s.url + "/api/sessions", json={"id": "r1"}) as r:
                assert r.status == 201
            url = s.url + "/api/sessions/r1/messages"
            assert await _post(http, url, "kept") == 201
            _fill(small_ext4 / "ballast")
            statuses = [await _post(http, url, "x" * 2000) for _ in range(100)]
            assert set(statuses) <= {201, 507}, statuses
            form = aiohttp.FormData()
            form.add_field("file", b"z" * 50_000, filename="a.bin")
            async with http.post(s.url + "/api/sessions/r1/attachments", data=form) as r:
                assert r.status == 507, await r.text()
            async with http.get(url) as r:
                assert r.status == 200
            async with http.get(s.url + "/api/sessions/r1/export") as r:
                assert r.status == 200
            replayed = await _ws_replayed_messages(http, s.url + "/api/sessions/r1/ws?since=0")
            assert replayed == ["kept"] + ["x" * 2000] * statuses.count(201)
        s.close()
        s = Server(small_ext4 / "data", env={"ROOST_DISK_RESERVE": "0"}, log_dir=small_ext4.parent)
        async with aiohttp.ClientSession() as http:
            async with http.get(s.url + "/api/sessions/r1/messages") as r:
                assert r.status == 200
                assert (await r.json())["items"][0]["content"] == "kept"
            (small_ext4 / "ballast").unlink()
            assert await _post(http, s.url + "/api/sessions/r1/messages", "resumed") == 201
    finally:
        s.close()


async def test_start_on_a_full_disk_keeps_the_aio_flush(small_ext4: Path) -> None:
    """A server started on a full disk still flushes through AIO (its probe must not
    turn AIO off for the whole run because the probe file met ENOSPC)."""
    s = Server(small_ext4 / "data", env={"ROOST_DISK_RESERVE": "0"}, log_dir=small_ext4.parent)
    s.close()
    _fill(small_ext4 / "ballast")
    s = Server(small_ext4 / "data", env={"ROOST_DISK_RESERVE": "0"}, log_dir=small_ext4.parent)
    try:
        log = s.log.read_text()
    finally:
        s.close()
    assert "flushed with aio" in log, log


def test_sqlite_io_error_on_a_full_disk_is_storage_full(small_ext4: Path) -> None:
    """SQLite reports a WAL write that met ENOSPC as "disk I/O error"
    (``SQLITE_IOERR_WRITE``): on a full disk that is 507 ``storage_full``."""
    db = small_ext4 / "s.db"
    db.touch()
    _fill(small_ext4 / "ballast")
    exc = sqlite3.OperationalError("disk I/O error")
    exc.sqlite_errorcode = sqlite3.SQLITE_IOERR_WRITE  # type: ignore[attr-defined]
    assert isinstance(from_sqlite(exc, path=db), StorageFull)


def test_sqlite_io_error_with_free_space_is_unavailable(tmp_path: Path) -> None:
    """The same I/O error where the disk has room is a failing disk: 503 ``unavailable``."""
    exc = sqlite3.OperationalError("disk I/O error")
    exc.sqlite_errorcode = sqlite3.SQLITE_IOERR_WRITE  # type: ignore[attr-defined]
    err = from_sqlite(exc, path=tmp_path / "s.db")
    assert isinstance(err, Unavailable) and not isinstance(err, StorageFull)


# ---------------------------------------------------------------------------- point 7


async def test_dead_file_system_answers_503_and_logs_once(small_ext4: Path) -> None:
    """Once the data dir's file system fails (EIO on every write), requests answer 503
    ``unavailable`` or a 4xx (never 500), without a traceback each (a regression guard:
    this already held before issue 16)."""
    s = Server(small_ext4 / "data", log_dir=small_ext4.parent)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(s.url + "/api/sessions", json={"id": "a1"}) as r:
                assert r.status == 201
            _shutdown_fs(small_ext4)
            creates, uploads = [], []
            for i in range(20):
                async with http.post(s.url + "/api/sessions", json={"id": f"b{i}"}) as r:
                    creates.append(r.status)
                    assert (await r.json())["error"]["code"] == "unavailable"
                form = aiohttp.FormData()
                form.add_field("file", b"z" * 1000, filename="a.bin")
                async with http.post(s.url + "/api/sessions/a1/attachments", data=form) as r:
                    uploads.append(r.status)
            assert set(creates) == {503}, creates
            # a shut-down ext4 answers ENOENT to some creates: 404 is what that means
            assert all(400 <= st < 500 or st == 503 for st in uploads), uploads
        assert s.proc.poll() is None
        assert s.log.read_text().count("Traceback") <= 1
    finally:
        s.close()


# ---------------------------------------------------------------------------- point 5


async def test_crash_loop_leaves_the_wal_bounded(tmp_path: Path) -> None:
    """15 activations of 150 commits each (fewer than the per-activation checkpoint
    count), each ended by kill -9: the WAL stays under 8 MiB (twice SQLite's own
    autocheckpoint size). The issue measured the same loop growing it to 71 MiB."""
    data = tmp_path / "data"
    wal: Path | None = None
    body = "w" * 8000
    for round_ in range(15):
        s = Server(data, "--synchronous", "OFF")
        try:
            async with aiohttp.ClientSession() as http:
                if round_ == 0:
                    async with http.post(s.url + "/api/sessions", json={"id": "wal"}) as r:
                        assert r.status == 201
                url = s.url + "/api/sessions/wal/messages"
                for _ in range(150):
                    assert await _post(http, url, body) == 201
        finally:
            s.close()  # kill -9
        wal = next(data.glob("sessions/*/wal/session.db-wal"))
    assert wal is not None
    assert wal.stat().st_size < 8 << 20, f"WAL is {wal.stat().st_size} bytes"


@pytest.mark.parametrize("code", [errno.ENOTCONN, errno.EIO])
async def test_os_error_from_the_data_dir_is_503_logged_once(
    code: int, caplog: pytest.LogCaptureFixture
) -> None:
    """A handler whose file-system call fails (a dead FUSE mount answers ENOTCONN to
    ``Path.exists()``) answers 503 ``unavailable``; the failure is logged once, with no
    traceback, however many requests meet it. (A shut-down ext4 above still answers
    ``stat`` from its caches, so this runs the real middleware on a real socket
    with a route that meets the error.)"""

    async def dead(request: web.Request) -> web.Response:
        raise OSError(code, os.strerror(code), "/data/sessions/ab/s1")

    app = web.Application(middlewares=[error_middleware])
    app.router.add_get("/dead", dead)
    caplog.set_level(logging.INFO, logger="roost.server")
    async with TestClient(TestServer(app)) as client:
        for _ in range(5):
            r = await client.get("/dead")
            assert r.status == 503
            assert (await r.json())["error"]["code"] == "unavailable"
    mine = [rec for rec in caplog.records if rec.name == "roost.server"]
    assert len(mine) <= 1
    assert all(rec.exc_info is None for rec in mine)
