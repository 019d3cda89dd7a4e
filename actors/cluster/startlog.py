"""A shard's start, logged and shortened (issue 18: what a failover spends its
seconds on).

A shard's ``roost`` loggers write to its Ray worker's stderr (``worker-*.err``)
at the front's ``--log-level``; ``roost.failover`` lines give the timeline of a
(re)start: the process's start, ``__init__``, the registry started, serving.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import threading
from pathlib import Path

timeline = logging.getLogger("roost.failover")


def process_started() -> float:
    """When this process started (unix seconds; 0.0 if ``/proc`` cannot say)."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        lines = Path("/proc/stat").read_text().splitlines()
        boot = next(int(line.split()[1]) for line in lines if line.startswith("btime "))
    except (OSError, ValueError, IndexError, StopIteration):
        return 0.0
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def shard_logging(level: str) -> None:
    """Send the shard's ``roost`` log records of ``level`` and above to the
    worker's stderr (Ray's ``worker-*.err``), once per process."""
    root = logging.getLogger("roost")
    if root.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level.upper())
    root.propagate = False


def preload(module: str) -> None:
    """Import ``module`` on a daemon thread (what the registry's start needs next,
    imported while the actor becomes reachable); a failure is only logged (the
    start imports it again and reports it)."""

    def run() -> None:
        try:
            importlib.import_module(module)
        except Exception as exc:
            timeline.warning("preload of %s failed: %r", module, exc)

    threading.Thread(target=run, name=f"preload:{module}", daemon=True).start()
