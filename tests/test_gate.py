"""The output gate on its own, and the actor's reads behind it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from actors.actor import ActorConfig
from actors.errors import ActorStopped
from actors.gate import OutputGate
from actors.registry import ActorRegistry
from actors.session import NewMessage
from storage.errors import Unavailable
from storage.layout import DataDir
from tests.conftest import TIMEOUT, eventually


async def _yield(n: int = 5) -> None:
    """Let the loop run other ready tasks ``n`` times (no timing involved)."""
    for _ in range(n):
        await asyncio.sleep(0)


async def test_gate_wait_returns_at_once_when_nothing_is_held() -> None:
    """With nothing held, wait() completes without suspending."""
    gate = OutputGate()
    waiter = asyncio.ensure_future(gate.wait())
    await _yield(1)
    assert waiter.done() and not gate.held


async def test_gate_wait_blocks_until_the_held_flush_is_released() -> None:
    """A read waits for a held flush and goes on when it is released."""
    gate = OutputGate()
    token = gate.hold()
    waiter = asyncio.ensure_future(gate.wait())
    await _yield()
    assert not waiter.done()
    gate.release(token)
    await asyncio.wait_for(waiter, TIMEOUT)
    assert not gate.held


async def test_gate_wait_covers_commits_held_while_waiting() -> None:
    """A commit held while a reader waits keeps it waiting until that flush ends too."""
    gate = OutputGate()
    first = gate.hold()
    waiter = asyncio.ensure_future(gate.wait())
    await _yield()
    second = gate.hold()
    gate.release(first)
    await _yield()
    assert not waiter.done()
    gate.release(second)
    await asyncio.wait_for(waiter, TIMEOUT)


async def test_gate_release_out_of_order_raises() -> None:
    """Tokens are released in the order they were held; a release twice is a no-op."""
    gate = OutputGate()
    first, second = gate.hold(), gate.hold()
    with pytest.raises(RuntimeError, match="in the order"):
        gate.release(second)
    gate.release(first)
    gate.release(first)
    gate.release(second)
    assert not gate.held


async def test_gate_failed_flush_releases_waiters_and_marks_broken() -> None:
    """A failed flush still lets readers go; the gate says it is broken."""
    gate = OutputGate()
    token = gate.hold()
    waiter = asyncio.ensure_future(gate.wait())
    await _yield()
    gate.release(token, OSError(5, "EIO"))
    await asyncio.wait_for(waiter, TIMEOUT)
    assert gate.broken and not gate.held


class _FailingFlush:
    """Stands in for the syncer's fdatasync: waits for ``go``, then fails."""

    def __init__(self) -> None:
        self.go = asyncio.Event()
        self.asked = 0

    def fdatasync(self, fd: int) -> asyncio.Future[None]:
        self.asked += 1
        return asyncio.ensure_future(self._fail())

    async def _fail(self) -> None:
        await self.go.wait()
        raise OSError(5, "Input/output error")


async def test_read_waiting_on_a_failed_flush_gets_the_broken_actors_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read held behind a flush that fails is refused (ActorStopped), never served."""
    reg = ActorRegistry(DataDir(tmp_path / "d"), ActorConfig(synchronous="FULL"))
    await reg.start()
    try:
        await reg.create_session("s")
        failing = _FailingFlush()
        monkeypatch.setattr(reg.syncer, "fdatasync", failing.fdatasync)
        async with reg.session("s") as s:
            write = asyncio.ensure_future(s.append(NewMessage(role="user", content="x")))
            await eventually(lambda: failing.asked > 0, "the flush to be asked for")
            read = asyncio.ensure_future(s.page(view="all", limit=10))
            await _yield()
            assert not read.done(), "a read answered while the flush was held"
            failing.go.set()
            with pytest.raises(Unavailable):
                await asyncio.wait_for(write, TIMEOUT)
            with pytest.raises(ActorStopped):
                await asyncio.wait_for(read, TIMEOUT)
    finally:
        await reg.close()


async def test_actor_read_runs_fn_on_the_file(tmp_path: Path) -> None:
    """read(fn) returns what fn returns on the open file."""
    reg = ActorRegistry(DataDir(tmp_path / "d"), ActorConfig())
    await reg.start()
    try:
        await reg.create_session("s")
        async with reg.lease("s") as actor:
            got: Any = await actor.read(lambda f: f.event_seq())
        assert got == 0
    finally:
        await reg.close()
