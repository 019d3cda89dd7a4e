"""The Durable Object guarantees: group commit, output gate, activation, hibernation, cap."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from actors.actor import ActorConfig
from actors.registry import ActorRegistry
from storage.errors import StorageFull
from storage.file import SessionFile
from storage.layout import DataDir
from storage.ops import MessageDraft, op_append
from storage.txn import BulkOp, Txn
from tests.conftest import TIMEOUT, append, eventually, new_session, registry_of


@pytest.fixture
async def registry(tmp_path: Path) -> Any:
    reg = ActorRegistry(DataDir(tmp_path / "data"), ActorConfig())
    await reg.start()
    yield reg
    await reg.close()


def _draft(content: str, **kw: Any) -> MessageDraft:
    return MessageDraft(role="user", content=content, **kw)


async def test_group_commit_batches_queued_mutations(registry: ActorRegistry) -> None:
    """200 concurrent appends commit in a handful of transactions, all in order."""
    await registry.create_session("g")
    async with registry.lease("g") as actor:
        results = await asyncio.gather(
            *(actor.submit(op_append(_draft(f"m{i}"))) for i in range(200))
        )
        assert [m["seq"] for m, _ in results] == list(range(1, 201))
        assert actor.committed_ops == 200
        assert actor.commits <= 3, actor.commits


async def test_group_commit_over_http_uses_fewer_commits(client: Any) -> None:
    """50 concurrent HTTP appends need well under 50 commits."""
    await new_session(client)
    await asyncio.gather(*(append(client, "s1", f"m{i}") for i in range(50)))
    actor = registry_of(client).actor_if_live("s1")
    assert actor.committed_ops == 50
    assert actor.commits < 25, actor.commits


async def test_failed_op_rolls_back_alone(registry: ActorRegistry) -> None:
    """In one batch, a failing op leaves no trace and the others commit."""
    await registry.create_session("f")
    async with registry.lease("f") as actor:
        good = actor.submit(op_append(_draft("a", client_id="c1", request_hash="h1")))
        bad = actor.submit(op_append(_draft("b", client_id="c1", request_hash="OTHER")))
        good2 = actor.submit(op_append(_draft("c")))
        res = await asyncio.gather(good, bad, good2, return_exceptions=True)
        assert not isinstance(res[0], Exception) and not isinstance(res[2], Exception)
        assert type(res[1]).__name__ == "Conflict"
        page = await actor.read(lambda f: f.page(view="all"))
        assert [m["content"] for m in page.items] == ["a", "c"]


@contextlib.asynccontextmanager
async def _held_commit(actor: Any) -> AsyncIterator[tuple[threading.Event, Any]]:
    """Hold the actor's write transaction open until the yielded event is set.

    The blocking op is a ``BulkOp``, so its batch runs on a write-pool thread
    and the event loop stays free (an ordinary op would run on the loop).
    """
    release = threading.Event()
    entered = threading.Event()

    def blocker(txn: Txn) -> None:
        entered.set()
        release.wait(TIMEOUT)

    blocked = actor.submit_nowait(BulkOp(blocker))
    await eventually(entered.is_set, "the blocking op to start")
    try:
        yield release, blocked
    finally:
        release.set()


async def test_output_gate_holds_reply_until_commit(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a commit is in flight, no reply for the queued append leaves the server."""
    await new_session(client)
    reg = registry_of(client)
    async with reg.lease("s1") as actor, _held_commit(actor) as (release, blocked):
        queued = asyncio.Event()
        real_submit = actor.submit_nowait

        def submit_nowait(op: Any) -> Any:
            fut = real_submit(op)
            queued.set()
            return fut

        monkeypatch.setattr(actor, "submit_nowait", submit_nowait)
        post = asyncio.ensure_future(append(client, "s1", "gated"))
        await asyncio.wait_for(queued.wait(), TIMEOUT)  # the append is in the mailbox
        # a later request answered: the server went on past the append
        assert (await client.get("/healthz")).status == 200
        assert not post.done(), "reply sent before its commit"
        # nothing is visible to readers yet either
        path = actor.path
        other = sqlite3.connect(path)
        assert other.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 0
        release.set()
        msg = await asyncio.wait_for(post, TIMEOUT)
        await blocked
        assert other.execute(
            "SELECT content FROM messages WHERE id = ?", (msg["id"],)
        ).fetchone() == ("gated",)
        other.close()


async def test_reads_do_not_wait_behind_writes(client: Any) -> None:
    """A read answers while a write transaction is held open."""
    await new_session(client)
    await append(client, "s1", "first")
    reg = registry_of(client)
    async with reg.lease("s1") as actor, _held_commit(actor) as (release, blocked):
        r = await asyncio.wait_for(client.get("/api/sessions/s1/messages"), 2)
        assert [m["content"] for m in (await r.json())["items"]] == ["first"]
        release.set()
        await blocked


async def test_cold_session_racing_requests_activate_once(client: Any) -> None:
    """20 racing first requests for a cold session start exactly one actor."""
    await new_session(client)
    reg = registry_of(client)
    before = reg.hooks.activations
    opened: list[int] = []
    real_init = SessionFile.__init__

    def counting_init(self: SessionFile, *a: Any, **kw: Any) -> None:
        opened.append(1)
        real_init(self, *a, **kw)

    SessionFile.__init__ = counting_init  # type: ignore[method-assign]
    try:
        rs = await asyncio.gather(*(client.get("/api/sessions/s1/messages") for _ in range(20)))
    finally:
        SessionFile.__init__ = real_init  # type: ignore[method-assign]
    assert all(r.status == 200 for r in rs)
    assert reg.hooks.activations - before == 1
    assert len(opened) == 1


async def test_idle_actor_hibernates_and_reactivates(make_client: Any) -> None:
    """After the idle timeout the actor closes its file; the next request reopens it."""
    client = await make_client(idle_timeout=0.2)
    await new_session(client)
    await append(client, "s1", "before")
    reg = registry_of(client)
    await eventually(lambda: reg.live == 0, "hibernation")
    assert reg.hooks.hibernations >= 1
    m = await append(client, "s1", "after")
    assert m["seq"] == 2
    page = await (await client.get("/api/sessions/s1/messages")).json()
    assert [x["content"] for x in page["items"]] == ["before", "after"]
    assert reg.hooks.activations == 2


async def test_live_actor_cap_is_never_exceeded(make_client: Any) -> None:
    """With a cap of 3, ten busy sessions never have more than 3 live actors."""
    client = await make_client(max_live_actors=3)
    for i in range(10):
        await new_session(client, f"s{i}")
    reg = registry_of(client)
    await asyncio.gather(*(append(client, f"s{i % 10}", f"m{i}") for i in range(60)))
    assert reg.hooks.max_live_seen <= 3
    assert reg.live <= 3
    for i in range(10):
        page = await (await client.get(f"/api/sessions/s{i}/messages")).json()
        assert len(page["items"]) == 6


def _fail_first_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """The next commit of any session file fails with StorageFull; later ones work."""
    real = SessionFile.run_batch
    calls = {"n": 0}

    def failing(self: SessionFile, ops: Any, now: str, **kw: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise StorageFull("the disk is full: the change was not saved")
        return real(self, ops, now, **kw)

    monkeypatch.setattr(SessionFile, "run_batch", failing)


async def test_failed_commit_answers_507_storage_full(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit failure fails its caller clearly: 507 with code storage_full."""
    await new_session(client)
    await append(client, "s1", "kept")
    _fail_first_batch(monkeypatch)
    r = await client.post("/api/sessions/s1/messages", json={"role": "user", "content": "lost"})
    assert r.status == 507
    assert (await r.json())["error"]["code"] == "storage_full"


async def test_failed_commit_next_request_starts_a_fresh_actor(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a failed commit the broken actor closes; the next request activates a new
    one that holds what was committed before, and nothing of the failed batch."""
    await new_session(client)
    await append(client, "s1", "kept")
    reg = registry_of(client)
    _fail_first_batch(monkeypatch)
    await client.post("/api/sessions/s1/messages", json={"role": "user", "content": "lost"})
    await eventually(lambda: reg.actor_if_live("s1") is None, "the broken actor to close")
    m = await append(client, "s1", "next")
    assert m["seq"] == 2
    page = await (await client.get("/api/sessions/s1/messages")).json()
    assert [x["content"] for x in page["items"]] == ["kept", "next"]
    assert reg.hooks.activations == 2


async def test_write_leased_before_a_full_disk_break_answers_storage_full(
    registry: ActorRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that took its lease before another op's commit met a full disk gets
    StorageFull (507) from the closing actor, not "shutting down; retry" (503)."""
    await registry.create_session("d")
    _fail_first_batch(monkeypatch)
    async with registry.lease("d") as actor:
        with pytest.raises(StorageFull):
            await actor.submit(op_append(_draft("first")))  # this commit fails: it breaks
        with pytest.raises(StorageFull):
            await actor.submit(op_append(_draft("second")))  # leased before the break


async def test_registry_close_is_idempotent_and_commits_queue(tmp_path: Path) -> None:
    """close() commits queued work and can be called twice."""
    reg = ActorRegistry(DataDir(tmp_path / "d"), ActorConfig())
    await reg.start()
    await reg.create_session("c")
    async with reg.lease("c") as actor:
        futs = [actor.submit_nowait(op_append(_draft(f"m{i}"))) for i in range(20)]
    await reg.close()
    await reg.close()
    assert all(f.done() and not f.exception() for f in futs)
    f = SessionFile(DataDir(tmp_path / "d"), "c")
    assert len(f.page(view="all", limit=50).items) == 20
    f.close()


async def test_list_reads_its_writes_while_the_flusher_writes(
    registry: ActorRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A list read after a commit answered sees it, even while the background
    flusher has taken that update and is still writing it to the catalog."""
    await registry.create_session("r")
    items, _ = await registry.list_sessions()
    assert items[0]["message_count"] == 0
    writing, release = threading.Event(), threading.Event()
    real = registry.catalog.upsert_many

    def gated(rows: Any) -> None:
        writing.set()
        release.wait(TIMEOUT)
        real(rows)

    monkeypatch.setattr(registry.catalog, "upsert_many", gated)
    async with registry.lease("r") as actor:
        await actor.submit(op_append(_draft("hi")))
    loop = asyncio.get_running_loop()
    assert await loop.run_in_executor(None, writing.wait, TIMEOUT)  # the flusher holds it
    listing = asyncio.create_task(registry.list_sessions())
    await asyncio.sleep(0)  # one turn of the loop: a read that does not wait is done now
    release.set()
    items, _ = await asyncio.wait_for(listing, TIMEOUT)
    assert items[0]["message_count"] == 1


def _plan(conn: sqlite3.Connection, sql: str) -> list[str]:
    return [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql)]


@pytest.mark.parametrize("view", ["all", "active"])
def test_page_queries_use_indexes_at_any_depth(tmp_path: Path, view: str) -> None:
    """Every page query searches by key: no table scan, no sort, at the end or deep."""
    from storage.ids import now_iso
    from storage.lifecycle import create_session_file

    dd = DataDir(tmp_path)
    dd.ensure()
    create_session_file(dd, "q", owner="", title=None, metadata={}, now=now_iso())
    f = SessionFile(dd, "q")
    f.run_batch([op_append(_draft(f"m{i}")) for i in range(400)], now_iso())
    statements: list[str] = []
    f.reader.set_trace_callback(statements.append)
    page = f.page(view=view, limit=25)
    deep = f.page(view=view, limit=25, before=page.before)
    for _ in range(10):
        deep = f.page(view=view, limit=25, before=deep.before)
    f.page(view=view, limit=25, after=deep.after)
    f.page(view=view, limit=25, after=page.before)
    f.reader.set_trace_callback(None)
    selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert selects
    for sql in selects:
        plan = _plan(f.reader, sql)
        for line in plan:
            assert not line.startswith(("SCAN m", "SCAN ap", "SCAN messages", "SCAN active")), (
                sql,
                plan,
            )
            assert "TEMP B-TREE" not in line, (sql, plan)
    f.close()
