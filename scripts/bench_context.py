"""Context assembly at depth (issue 21): ``scripts/bench.py --context`` (or run this).

For each depth (50, 10,000 and 1,000,000 messages in one branch; ``--quick``:
50, 1,000, 10,000) a session file is written directly (one transaction of
bulk inserts: the rows an append would write, token counts included), then the
next reply's context is assembled ``--samples`` times at the leaf, in process,
on the file's reader connection (what a reply and ``GET /context`` run):

- ``ids``: the selection only (``GET /context``: ids, counts, budget);
- ``docs``: the selection and the message documents (what a reply reads);

each for a branch with no summary (the walk fills the budget with raw
messages) and one whose old part a summary covers (the walk takes the newest
100 messages and the summary). Messages are 8-40 random words (about 10-50
tokens); the model's window is the default 8,192 tokens (budget 6,144).
Reports p50/p90/p99 in ms per case and the goal (p50 under 2 ms) as ok/MISS.
Roost only: the peer has no such thing. Warm cache (the file was just written).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from actors.context import ContextPolicy, build_context
from actors.responders import EchoResponder
from storage.context import op_add_summary
from storage.file import SessionFile
from storage.ids import uuid7
from storage.layout import DataDir
from storage.lifecycle import create_session_file
from storage.rows import NEW_MESSAGE_INSERT, MessageRow, new_message_values
from storage.tokens import estimate_message

NOW = "2026-01-01T00:00:00.000Z"
WORDS = tuple(
    [
        "the",
        "of",
        "and",
        "to",
        "in",
        "is",
        "it",
        "you",
        "that",
        "he",
        "was",
        "for",
        "on",
        "are",
        "with",
        "as",
        "his",
        "they",
        "be",
        "at",
        "one",
        "have",
    ]
)
GOAL_MS = 2.0


def build(dd: DataDir, sid: str, depth: int, seed: int = 21) -> list[str]:
    """A session ``sid`` holding one branch of ``depth`` messages; their ids."""
    create_session_file(dd, sid, owner="", title=None, metadata={}, now=NOW)
    f = SessionFile(dd, sid)
    rng = random.Random(seed)
    ids: list[str] = []
    conn = f.writer
    conn.execute("BEGIN IMMEDIATE")
    sql = (
        f"INSERT INTO messages ({NEW_MESSAGE_INSERT}) "
        f"VALUES ({', '.join('?' * len(NEW_MESSAGE_INSERT.split(', ')))})"
    )
    batch: list[tuple[Any, ...]] = []
    for i in range(depth):
        role = "user" if i % 2 == 0 else "assistant"
        content = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 40)))
        mid = uuid7()
        row = MessageRow(
            seq=i + 1,
            id=mid,
            parent_seq=i or None,
            parent_id=ids[-1] if ids else None,
            depth=i,
            sibling_index=0,
            child_count=1 if i + 1 < depth else 0,
            role=role,
            content=content,
            parts=None,
            status="complete",
            client_id=None,
            request_hash=None,
            model_id=None,
            provider_id=None,
            fallback_notice=None,
            tool_name=None,
            tool_call=None,
            tool_result=None,
            attachments=None,
            metadata="{}",
            error=None,
            created_at=NOW,
            updated_at=NOW,
            version=1,
            deleted_at=None,
            feedback=None,
            tokens=estimate_message(role, content),
            usage=None,
            context=None,
        )
        ids.append(mid)
        batch.append(new_message_values(row))
        if len(batch) >= 10_000:
            conn.executemany(sql, batch)
            batch.clear()
    conn.executemany(sql, batch)
    conn.execute(
        "UPDATE session SET message_count = ?, active_leaf_seq = ?, active_leaf_id = ?, "
        "root_count = 1",
        (depth, depth, ids[-1]),
    )
    conn.execute("COMMIT")
    f.close()
    return ids


def time_case(f: SessionFile, leaf: str, documents: bool, samples: int) -> dict[str, float]:
    policy = ContextPolicy()
    echo = EchoResponder()
    out = []
    for _ in range(samples):
        t0 = time.perf_counter()
        build_context(f, policy, leaf, model=None, responder=echo, documents=documents)
        out.append((time.perf_counter() - t0) * 1000)
    out.sort()

    def q(p: float) -> float:
        return round(out[min(len(out) - 1, int(p * len(out)))], 3)

    return {"p50_ms": q(0.5), "p90_ms": q(0.9), "p99_ms": q(0.99)}


def run(depths: list[int], samples: int, keep: bool) -> list[dict[str, Any]]:
    tmp = Path(tempfile.mkdtemp(prefix="roost-bench-context-"))
    rows: list[dict[str, Any]] = []
    try:
        dd = DataDir(tmp)
        dd.ensure()
        for depth in depths:
            sid = f"d{depth}"
            t0 = time.perf_counter()
            ids = build(dd, sid, depth)
            built = time.perf_counter() - t0
            f = SessionFile(dd, sid)
            sel = build_context(f, ContextPolicy(), ids[-1], model=None, responder=EchoResponder())
            for documents in (False, True):
                rows.append(
                    {
                        "depth": depth,
                        "summary": False,
                        "what": "docs" if documents else "ids",
                        "sent": sel.record["message_count"],
                        **time_case(f, ids[-1], documents, samples),
                    }
                )
            if depth > 200:
                f.run_batch([op_add_summary(ids[0], ids[-101], "old part", model_id=None)], NOW)
                echo = EchoResponder()
                s = build_context(f, ContextPolicy(), ids[-1], model=None, responder=echo)
                assert s.record["summary_ids"] and s.record["message_count"] == 100
                for documents in (False, True):
                    rows.append(
                        {
                            "depth": depth,
                            "summary": True,
                            "what": "docs" if documents else "ids",
                            "sent": s.record["message_count"],
                            **time_case(f, ids[-1], documents, samples),
                        }
                    )
            f.close()
            print(f"# depth {depth}: built in {built:.1f} s", file=sys.stderr)
    finally:
        if keep:
            print(f"# kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return rows


def report(rows: list[dict[str, Any]]) -> None:
    print("depth     summary  what  sent  p50_ms  p90_ms  p99_ms  goal(p50<2ms)")
    for r in rows:
        goal = "ok" if r["p50_ms"] < GOAL_MS else "MISS"
        print(
            f"{r['depth']:<9} {'yes' if r['summary'] else 'no':8} {r['what']:5} {r['sent']:<5} "
            f"{r['p50_ms']:<7} {r['p90_ms']:<7} {r['p99_ms']:<7} {goal}"
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="depths 50, 1000, 10000")
    p.add_argument("--samples", type=int, default=300, help="assemblies timed per case")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--keep", action="store_true", help="keep the temp data dir")
    args = p.parse_args(argv)
    depths = [50, 1_000, 10_000] if args.quick else [50, 10_000, 1_000_000]
    rows = run(depths, args.samples, args.keep)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        report(rows)
    return 0 if all(r["p50_ms"] < GOAL_MS for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
