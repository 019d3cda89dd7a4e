"""The replica fence's lease (``actors.replica_fence``), in process.

The store lookup is an in-process function that counts its calls and answers
from a dict of claims, so each test says exactly which checks must run; the
end-to-end fence (two ``roost serve --replica`` processes on one moto prefix)
is ``tests/test_replica.py``.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from actors.replica_fence import CLAIM_WAIT, LEASE, Fence
from storage.errors import Unavailable


class Claims:
    """Newest claimed epoch per path; ``calls`` counts lookups; ``gate`` holds them."""

    def __init__(self) -> None:
        self.newest: dict[str, int] = {}
        self.calls = 0
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail = False

    async def check(self, path: str, epoch: int) -> bool:
        self.calls += 1
        await self.gate.wait()
        if self.fail:
            raise OSError("store unreachable")
        return self.newest.get(path, epoch) > epoch


def _reason(exc: pytest.ExceptionInfo[Unavailable]) -> str:
    details = exc.value.details
    assert isinstance(details, dict)
    return str(details["reason"])


def test_the_claimer_waits_longer_than_the_lease() -> None:
    assert CLAIM_WAIT > LEASE * 1.1


async def test_one_check_covers_the_syncs_confirmed_within_its_lease() -> None:
    claims = Claims()
    fence = Fence(claims.check)
    await fence.confirm("a", 1, time.monotonic())
    assert claims.calls == 1
    for _ in range(5):
        fence.ahead("a", 1)  # younger than half a lease: no new check
        await fence.confirm("a", 1, time.monotonic())
    assert claims.calls == 1
    # a sync confirmed more than a lease after the check's start needs a new one
    fence.lease = 0.0
    await fence.confirm("a", 1, time.monotonic())
    assert claims.calls == 2
    # and a check in flight that started too long before the answer is not enough
    claims.gate.clear()
    fence.lease = LEASE
    fence.ahead("a", 1)  # not half a lease old: nothing started
    await asyncio.sleep(0)
    assert claims.calls == 2
    fence.lease = 0.0
    fence.ahead("a", 1)  # started now, held at the gate
    await asyncio.sleep(0)
    assert claims.calls == 3
    waiting = asyncio.ensure_future(fence.confirm("a", 1, time.monotonic() + 1.0))
    await asyncio.sleep(0)
    claims.gate.set()
    await waiting
    assert claims.calls == 4  # the held one, then one started after the answer


async def test_a_check_started_ahead_is_shared_and_a_newer_claim_refuses() -> None:
    claims = Claims()
    fence = Fence(claims.check)
    claims.gate.clear()
    fence.ahead("a", 1)
    fence.ahead("a", 1)  # the one in flight is reused
    await asyncio.sleep(0)
    waiting = asyncio.ensure_future(fence.confirm("a", 1, time.monotonic()))
    await asyncio.sleep(0)
    assert not waiting.done() and claims.calls == 1
    claims.newest["a"] = 2  # another incarnation claimed epoch 2 before the lookup read
    claims.gate.set()
    with pytest.raises(Unavailable) as exc:
        await waiting
    assert _reason(exc) == "replica_superseded"
    with pytest.raises(Unavailable) as exc:
        await fence.confirm("a", None, time.monotonic())  # the owner dropped the epoch
    assert _reason(exc) == "replica_superseded"


async def test_a_check_of_another_epoch_or_too_old_does_not_count() -> None:
    claims = Claims()
    fence = Fence(claims.check)
    await fence.confirm("a", 1, time.monotonic())
    fence.forget("a")  # the registry claimed a new epoch for the file
    await fence.confirm("a", 2, time.monotonic())
    assert claims.calls == 2
    await fence.confirm("b", 2, time.monotonic())  # per file
    assert claims.calls == 3


async def test_an_unreachable_store_acknowledges_nothing() -> None:
    claims = Claims()
    fence = Fence(claims.check)
    claims.fail = True
    with pytest.raises(Unavailable) as exc:
        await fence.confirm("a", 1, time.monotonic())
    assert _reason(exc) == "replica_unreachable"
    claims.fail = False
    await fence.confirm("a", 1, time.monotonic())
    # a failed check started ahead is no error for the syncs its lease did not cover
    claims.fail = True
    calls = claims.calls
    fence.lease = 0.0
    fence.ahead("a", 1)
    await asyncio.sleep(0)
    assert claims.calls == calls + 1
    claims.fail = False
    await fence.confirm("a", 1, time.monotonic())  # a new check, which finds none
    assert claims.calls == calls + 2
