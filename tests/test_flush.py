"""Durable commits on the event loop: the WAL flush (Syncer), the read gate, checkpoints.

With ``synchronous=FULL`` an ordinary batch commits on the event loop at SQLite's
NORMAL level and the actor then ``fdatasync``s the WAL through the registry's
``Syncer`` (Linux AIO, or a thread pool). Until that flush returns, the commit
is in the file but not on disk: no reply, no event and no read may show it.
"""

from __future__ import annotations

import asyncio
import errno
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest

import actors.maintenance
from actors.syncer import Syncer
from server.routes_realtime import close_realtime
from tests.conftest import TIMEOUT, append, eventually, new_session, registry_of
from tests.sse import SSEReader


class _HeldFlushes:
    """Wraps a registry's syncer: each flush waits until the test lets it go."""

    def __init__(self, real: Syncer) -> None:
        self.real = real.fdatasync  # the bound method, taken before it is replaced
        self.asked: list[int] = []
        self.gate = asyncio.Event()
        self.fail_with: OSError | None = None

    def fdatasync(self, fd: int) -> asyncio.Future[None]:
        self.asked.append(fd)
        return asyncio.ensure_future(self._later(fd))

    async def _later(self, fd: int) -> None:
        await self.gate.wait()
        if self.fail_with is not None:
            raise self.fail_with
        await self.real(fd)


def _spy_reader(actor: Any, monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """An event set when a request reaches ``actor.read()`` (the read gate)."""
    entered = asyncio.Event()
    real = actor.read

    async def read(fn: Any) -> Any:
        entered.set()
        return await real(fn)

    monkeypatch.setattr(actor, "read", read)
    return entered


async def _loop_went_on(client: Any) -> None:
    """A later request answered: the server ran on past anything sent before it."""
    assert (await client.get("/healthz")).status == 200


def _hold(client: Any, monkeypatch: pytest.MonkeyPatch) -> _HeldFlushes:
    reg = registry_of(client)
    held = _HeldFlushes(reg.syncer)
    monkeypatch.setattr(reg.syncer, "fdatasync", held.fdatasync)
    return held


@pytest.mark.parametrize(
    ("use_aio", "submit_thread"),
    [(True, True), (True, False), (False, False)],
    ids=["aio", "aio-inline-submit", "threads"],
)
async def test_syncer_flushes_files_and_reports_errors(
    tmp_path: Path, use_aio: bool, submit_thread: bool
) -> None:
    """Many concurrent flushes of real files resolve; a closed descriptor fails with
    EBADF instead of hanging, alone or in the middle of a batch of good ones, which
    still succeed; close() with nothing in flight is clean."""
    syncer = Syncer(use_aio=use_aio, submit_thread=submit_thread)
    if use_aio and syncer.kind != "aio":
        syncer.close()
        pytest.skip("Linux AIO is not available on this machine")
    assert syncer.kind == ("aio" if use_aio else "threads")
    fds = []
    try:
        for i in range(20):
            fd = os.open(tmp_path / f"f{i}", os.O_RDWR | os.O_CREAT)
            os.write(fd, b"x" * 4096)
            fds.append(fd)
        await asyncio.wait_for(
            asyncio.gather(*(syncer.fdatasync(fds[i % 20]) for i in range(300))), TIMEOUT
        )
        bad = os.open(tmp_path / "gone", os.O_RDWR | os.O_CREAT)
        os.close(bad)
        with pytest.raises(OSError) as info:
            await asyncio.wait_for(syncer.fdatasync(bad), TIMEOUT)
        assert info.value.errno in (errno.EBADF, errno.EINVAL)
        mixed = [syncer.fdatasync(fds[i % 20]) for i in range(10)]
        mixed.append(syncer.fdatasync(bad))
        mixed += [syncer.fdatasync(fds[i % 20]) for i in range(10)]
        got = await asyncio.wait_for(asyncio.gather(*mixed, return_exceptions=True), TIMEOUT)
        assert got[:10] == [None] * 10 and got[11:] == [None] * 10
        assert isinstance(got[10], OSError) and got[10].errno in (errno.EBADF, errno.EINVAL)
    finally:
        for fd in fds:
            os.close(fd)
        syncer.close()
    syncer.close()  # idempotent


async def test_syncer_close_with_syncs_in_flight_leaves_none_waiting(tmp_path: Path) -> None:
    """close() while a batch is with the submitter thread and syncs are in the kernel:
    every future ends (synced, or failed with OSError), none is left hanging."""
    syncer = Syncer(use_aio=True, probe_dir=str(tmp_path))
    fds = [os.open(tmp_path / f"f{i}", os.O_RDWR | os.O_CREAT) for i in range(8)]
    try:
        for fd in fds:
            os.write(fd, b"y" * 65536)
        futs = [syncer.fdatasync(fds[i % 8]) for i in range(200)]
        await asyncio.sleep(0)  # the first batch goes out
        futs += [syncer.fdatasync(fds[i % 8]) for i in range(200)]
        syncer.close()
        assert all(f.done() for f in futs)
        for f in futs:
            assert f.exception() is None or isinstance(f.exception(), OSError)
    finally:
        for fd in fds:
            os.close(fd)


async def test_syncer_falls_back_to_threads_where_aio_cannot_sync(tmp_path: Path) -> None:
    """A descriptor the kernel cannot sync through AIO (a pipe: EINVAL) moves the syncer
    to threads for good; the caller still gets the real answer, later flushes work."""
    syncer = Syncer(use_aio=True, probe_dir=str(tmp_path))
    if syncer.kind != "aio":
        syncer.close()
        pytest.skip("Linux AIO is not available on this machine")
    r, w = os.pipe()
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    try:
        with pytest.raises(OSError) as info:
            await asyncio.wait_for(syncer.fdatasync(r), TIMEOUT)
        assert info.value.errno == errno.EINVAL
        assert syncer.kind == "threads"
        os.write(fd, b"data")
        await asyncio.wait_for(syncer.fdatasync(fd), TIMEOUT)
    finally:
        for x in (r, w, fd):
            os.close(x)
        syncer.close()


async def test_reply_and_reads_wait_for_the_flush(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The append is in the SQLite file before its flush, yet neither its reply nor a
    GET shows it until the flush returns; afterwards both do."""
    await new_session(client)
    await append(client, "s1", "before")
    held = _hold(client, monkeypatch)
    post = asyncio.ensure_future(append(client, "s1", "held"))
    await eventually(lambda: held.asked, "the flush to be asked for")
    actor = registry_of(client).actor_if_live("s1")
    other = sqlite3.connect(actor.path)
    try:
        rows = other.execute("SELECT content FROM messages ORDER BY seq").fetchall()
        assert rows == [("before",), ("held",)], "the commit should be in the file already"
        at_gate = _spy_reader(actor, monkeypatch)
        get = asyncio.ensure_future(client.get("/api/sessions/s1/messages"))
        await asyncio.wait_for(at_gate.wait(), TIMEOUT)  # the GET reached the read gate
        await _loop_went_on(client)
        assert not post.done(), "reply sent before the flush"
        assert not get.done(), "a read showed a commit that was not on disk yet"
        held.gate.set()
        msg = await asyncio.wait_for(post, TIMEOUT)
        r = await asyncio.wait_for(get, TIMEOUT)
        assert [m["content"] for m in (await r.json())["items"]] == ["before", "held"]
        assert msg["content"] == "held"
    finally:
        other.close()


async def test_export_waits_for_the_flush_of_what_its_snapshot_holds(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An export taken while a commit is being flushed sends nothing until the flush
    returns (its snapshot, read on another connection, already holds the commit)."""
    await new_session(client)
    await append(client, "s1", "before")
    held = _hold(client, monkeypatch)
    post = asyncio.ensure_future(append(client, "s1", "held"))
    await eventually(lambda: held.asked, "the flush to be asked for")
    at_gate = _spy_reader(registry_of(client).actor_if_live("s1"), monkeypatch)
    export = asyncio.ensure_future(client.get("/api/sessions/s1/export"))
    await asyncio.wait_for(at_gate.wait(), TIMEOUT)  # its snapshot is taken, it is at the gate
    await _loop_went_on(client)
    assert not export.done(), "an export showed a commit that was not on disk yet"
    held.gate.set()
    await asyncio.wait_for(post, TIMEOUT)
    r = await asyncio.wait_for(export, TIMEOUT)
    assert r.status == 200
    doc = await r.json()
    assert "held" in [m["content"] for m in doc["messages"]]


async def test_shutdown_sends_the_interrupted_message_only_after_its_flush(
    make_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reply stopped by shutdown: its ``error`` (shutting_down) and ``message``
    (interrupted) events leave only once the commit of its end is on disk."""
    client = await make_client(echo_words_per_second=20, shutdown_grace=0)
    await new_session(client)
    resp = await client.post("/api/sessions/s1/chat", json={"content": " ".join(["w"] * 200)})
    sse = SSEReader(resp)
    ack = await sse.next()
    assert ack is not None
    mid = ack.json()["assistant_message_id"]
    await sse.until("delta")
    actor = registry_of(client).actor_if_live("s1")
    reply = actor.replies.get(mid)
    held = _hold(client, monkeypatch)
    got: list[tuple[bool, str]] = []  # (flush released when it arrived, event)

    async def collect() -> None:
        while (ev := await sse.next()) is not None:
            got.append((held.gate.is_set(), ev.event))

    reader = asyncio.ensure_future(collect())
    await close_realtime(client.server.app)  # on_shutdown: grace 0, the reply stops now
    await eventually(lambda: reply.end_status == "interrupted", "the reply to be stopped")
    await eventually(lambda: held.asked, "a flush to be asked for")
    await _loop_went_on(client)
    assert reply.final is None, "the end was recorded before its flush returned"
    assert not any(name in ("error", "message") for _, name in got), got
    held.gate.set()
    await asyncio.wait_for(reader, TIMEOUT)
    names = [name for _, name in got]
    assert names[-3:] == ["error", "message", "done"], got
    assert all(released for released, name in got if name in ("error", "message")), got
    assert reply.final is not None and reply.final["status"] == "interrupted"


async def test_failed_flush_fails_the_batch_and_the_next_request_recovers(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC from the flush answers 507 to the writer (not acknowledged); the actor is
    replaced and the next append works."""
    await new_session(client)
    held = _hold(client, monkeypatch)
    held.fail_with = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    held.gate.set()
    r = await client.post("/api/sessions/s1/messages", json={"role": "user", "content": "x"})
    assert r.status == 507, await r.text()
    assert (await r.json())["error"]["code"] == "storage_full"
    held.fail_with = None
    msg = await append(client, "s1", "after")
    assert msg["content"] == "after"


@pytest.mark.parametrize("by", ["commits", "ops"])
async def test_checkpoints_run_between_batches(
    client: Any, monkeypatch: pytest.MonkeyPatch, by: str
) -> None:
    """Automatic checkpoints are off on the writer; the actor copies the WAL into the
    database every CHECKPOINT_EVERY commits or CHECKPOINT_OPS ops, so the main file
    (read without the WAL) holds the messages."""
    monkeypatch.setattr(actors.maintenance, "CHECKPOINT_EVERY", 5 if by == "commits" else 10**9)
    monkeypatch.setattr(actors.maintenance, "CHECKPOINT_OPS", 5 if by == "ops" else 10**9)
    await new_session(client)
    for i in range(12):
        await append(client, "s1", f"m{i}")
    path = registry_of(client).actor_if_live("s1").path
    main_only = sqlite3.connect(f"{path.resolve().as_uri()}?immutable=1", uri=True)
    try:
        (n,) = main_only.execute("SELECT COUNT(*) FROM messages").fetchone()
    finally:
        main_only.close()
    assert n >= 10, f"expected the checkpoints to have copied 10 messages, found {n}"
    (auto,) = await (
        registry_of(client)
        .actor_if_live("s1")
        .read(lambda f: f.writer.execute("PRAGMA wal_autocheckpoint").fetchone())
    )
    assert auto == 0
