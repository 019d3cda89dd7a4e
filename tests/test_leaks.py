"""Activation and hibernation leak nothing: file descriptors, threads, asyncio tasks.

A registry capped at two live actors serves four sessions in turn, so every
lease of a cold session activates its actor (opens its SQLite file) and evicts
another (commits, closes the file). After 1,000 such cycles the process holds
the same resources as after the warm-up, within a small constant.
"""

from __future__ import annotations

import asyncio
import gc
import os
import threading
from pathlib import Path

from actors.actor import ActorConfig
from actors.hooks import CountingHooks
from actors.registry import ActorRegistry
from storage.layout import DataDir
from storage.ops import MessageDraft, op_append

CYCLES = 1000
SESSIONS = 4
SLACK = 2  # resources that may come and go between two looks (a pool thread, a timer task)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _snapshot() -> tuple[int, int, int]:
    gc.collect()  # a closed-but-unreferenced connection still holds its fd until collected
    return _open_fds(), threading.active_count(), len(asyncio.all_tasks())


async def _cycle(reg: ActorRegistry, i: int) -> None:
    """Lease session ``i % SESSIONS`` (activating it, evicting another) and append."""
    async with reg.lease(f"leak{i % SESSIONS}") as actor:
        await actor.submit(op_append(MessageDraft(role="user", content=f"m{i}")))


async def test_activate_hibernate_cycles_leak_no_fds_threads_or_tasks(tmp_path: Path) -> None:
    """1,000 activate/evict cycles end with the fds, threads and tasks of the warm-up."""
    reg = ActorRegistry(
        DataDir(tmp_path / "data"), ActorConfig(max_live=2), write_threads=4, read_threads=2
    )
    hooks = reg.hooks = CountingHooks()
    await reg.start()
    try:
        for n in range(SESSIONS):
            await reg.create_session(f"leak{n}")
        for i in range(4 * SESSIONS):  # warm-up: pools spawn their threads, caches fill
            await _cycle(reg, i)
        await reg.user_search.catch_up("")  # the user's search index file opens once
        base = _snapshot()
        before = hooks.activations, hooks.evictions
        for i in range(CYCLES):
            await _cycle(reg, i)
        after = _snapshot()
        activations = hooks.activations - before[0]
        evictions = hooks.evictions - before[1]
    finally:
        await reg.close()
    assert activations >= CYCLES and evictions >= CYCLES - 2, (activations, evictions)
    fds, threads, tasks = after
    assert fds <= base[0] + SLACK, f"file descriptors {base[0]} -> {fds}"
    assert threads <= base[1] + SLACK, f"threads {base[1]} -> {threads}"
    assert tasks <= base[2] + SLACK, f"asyncio tasks {base[2]} -> {tasks}"
