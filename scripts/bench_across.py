"""Roost-only bench workloads across a user's sessions (issue 23), for ``scripts/bench.py``.

- ``search-across``: one user with ``--across-sessions`` sessions of
  ``--across-messages`` messages each (seeded by ``POST /api/sessions/import`` of a
  generated ``roost.session.v1`` export per session, text drawn from a fixed,
  Zipf-weighted vocabulary with a seeded RNG), then ``GET /api/search`` over
  queries of differing selectivity. The first search after seeding (which
  catches the index up) is reported on its own; the rounds time steady-state
  queries.
- ``list-filtered``: one user with ``--list-sessions`` sessions of varied
  pinned / archived / folder / tags / title, then ``GET /api/sessions`` with each
  filter, and the 5th page of a keyset walk.

Sizes: ``--quick`` tiny; default 100 x 1,000 messages and 10,000 sessions;
``--big`` the issue's 1,000 x 1,000 (1M messages). The peer has no such routes:
bench.py registers these as Roost-only. Nothing here imports bench.py (it runs
as ``__main__``); the context and target are described by protocols.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol
from urllib.parse import urlencode

import aiohttp
import orjson
from _benchlib_client import expect_json
from _benchlib_servers import BenchError
from _benchlib_stats import latency_summary

Metrics = dict[str, float]

SEED = 23
VOCAB_SIZE = 5_000
SEARCH_REPEATS = 40  # timed requests per query per round
LIST_REPEATS = 40
LIST_PAGE = 25
FOLDERS = ("work", "home", "work/clients", "research/papers", "travel", "recipes")
TAGS = ("todo", "idea", "bug", "draft", "read-later", "urgent", "personal", "python")
IMPORT_CONCURRENCY = 2  # the server parses --max-concurrent-imports (2) at once

_TEXT = (
    "the be to of and a in that have it for not on with he as you do at this but his by "
    "from they we say her she or an will my one all would there their what so up out if "
    "about who get which go me when make can like time no just him know take people into "
    "year your good some could them see other than then now look only come its over think "
    "also back after use two how our work first well way even new want because any these "
    "give day most us database server session message search index query latency python "
    "request response error retry cache memory disk file stream socket thread process "
    "deploy release branch commit merge review test bench metric graph chart model prompt "
    "token context window reply answer question weather coffee garden music travel recipe"
)
_BASE_WORDS = tuple(_TEXT.split())


class Ctx(Protocol):
    """What these workloads use of bench.py's ``Context``."""

    args: argparse.Namespace
    notes: list[str]

    def sid(self, *parts: object) -> str: ...


class Tgt(Protocol):
    """What these workloads use of bench.py's ``Target``."""

    name: str
    http: aiohttp.ClientSession
    state: dict[str, Any]

    @property
    def base(self) -> str: ...


def progress(text: str) -> None:
    """One progress line to stderr (bench.py's format, without its clock)."""
    print(f"[bench across] {text}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ sizes


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The size flags of these workloads (defaults depend on --quick / --big)."""
    p.add_argument(
        "--across-sessions",
        type=int,
        default=None,
        help="search-across: sessions of the one user (default 100; 1000 with --big; 10 quick)",
    )
    p.add_argument(
        "--across-messages",
        type=int,
        default=None,
        help="search-across: messages per session (default 1000; 50 quick)",
    )
    p.add_argument(
        "--list-sessions",
        type=int,
        default=None,
        help="list-filtered: sessions of the one user (default 10000; 300 quick)",
    )


def sizes(args: argparse.Namespace) -> tuple[int, int, int]:
    """``(search sessions, messages per session, list sessions)`` for ``args``."""
    quick, big = bool(args.quick), bool(args.big)
    sessions = args.across_sessions or (10 if quick else 1000 if big else 100)
    messages = args.across_messages or (50 if quick else 1000)
    listed = args.list_sessions or (300 if quick else 10_000)
    return sessions, messages, listed


# ------------------------------------------------------------------ text


class Words:
    """A fixed vocabulary (real words, then made-up ones) drawn Zipf-weighted (s = 1)."""

    def __init__(self, seed: int = SEED) -> None:
        rng = random.Random(seed)
        syll = ["ka", "lo", "mi", "ren", "to", "sa", "vel", "qu", "dor", "ni", "bra", "zu"]
        words = list(dict.fromkeys(_BASE_WORDS))
        seen = set(words)
        while len(words) < VOCAB_SIZE:
            w = "".join(rng.choice(syll) for _ in range(rng.randint(2, 4)))
            if w not in seen:
                seen.add(w)
                words.append(w)
        self.words = words
        acc, self.cum = 0.0, []
        for rank in range(1, len(words) + 1):
            acc += 1.0 / rank
            self.cum.append(acc)
        self.rng = rng

    def text(self, n: int) -> str:
        """``n`` words drawn from the vocabulary."""
        return " ".join(self.rng.choices(self.words, cum_weights=self.cum, k=n))

    def rank(self, word: str) -> int:
        """The word's rank (1 = most frequent)."""
        return self.words.index(word) + 1


def export_doc(words: Words, sid: str, index: int, count: int) -> bytes:
    """A ``roost.session.v1`` export of one linear conversation of ``count`` messages."""
    day = 1 + index % 28
    stamp = f"2024-01-{day:02d}T{index % 24:02d}:{{m:02d}}:{{s:02d}}.{{f:03d}}Z"

    def ts(i: int) -> str:
        return stamp.format(m=(i // 60) % 60, s=i % 60, f=i // 3600)

    messages = []
    parent = None
    for i in range(count):
        role = "user" if i % 2 == 0 else "assistant"
        n = words.rng.randint(4, 30) if role == "user" else words.rng.randint(10, 60)
        mid = f"m{i:06d}"
        messages.append(
            {
                "id": mid,
                "seq": i + 1,
                "role": role,
                "content": words.text(n),
                "status": "complete",
                "parent_id": parent,
                "created_at": ts(i),
                "updated_at": ts(i),
            }
        )
        parent = mid
    doc = {
        "format": "roost.session.v1",
        "session": {
            "title": f"Chat about {words.text(3)}",
            "created_at": ts(0),
            "updated_at": ts(max(0, count - 1)),
        },
        "active_leaf_id": parent,
        "messages": messages,
        "attachments": [],
    }
    return orjson.dumps(doc)


# ------------------------------------------------------------------ search-across


def search_queries(words: Words) -> dict[str, str]:
    """Label -> query, from very common to rare (ranks in the Zipf vocabulary)."""
    w = words.words
    return {
        "common": w[4],  # rank 5: in about half the messages
        "medium": w[59],  # rank 60: a few percent
        "rare": w[2999],  # rank 3000: about 0.1%
        "two-word": f"{w[19]} {w[39]}",  # ranks 20 and 40, both (AND)
    }


async def _import(t: Tgt, sid: str, body: bytes) -> None:
    url = f"{t.base}/api/sessions/import?id={sid}"
    headers = {"Content-Type": "application/json"}
    async with t.http.post(url, data=body, headers=headers) as resp:
        raw = await resp.read()
        if resp.status != 201:
            raise BenchError(f"POST {url}: expected 201, got {resp.status}: {raw[:300]!r}")


async def seed_search(ctx: Ctx, t: Tgt, sessions: int, messages: int) -> Metrics:
    """Import ``sessions`` generated sessions; return seeding and first-search figures."""
    words = Words()
    gate = asyncio.Semaphore(IMPORT_CONCURRENCY)
    t0 = time.monotonic()
    done = 0

    async def one(i: int) -> None:
        nonlocal done
        async with gate:
            body = export_doc(words, ctx.sid("across", i), i, messages)
            await _import(t, ctx.sid("across", i), body)
        done += 1
        if done % 100 == 0 or done == sessions:
            rate = done * messages / (time.monotonic() - t0)
            progress(f"{t.name}: imported {done:,}/{sessions:,} sessions ({rate:,.0f} msgs/s)")

    await asyncio.gather(*(one(i) for i in range(sessions)))
    seeded = time.monotonic() - t0
    # the first search catches the user's dirty sessions up (whatever the background
    # indexer has not done yet), then answers
    q = urlencode({"q": search_queries(words)["rare"]})
    t1 = time.monotonic()
    await expect_json(t.http, "GET", f"{t.base}/api/search?{q}", (200,))
    first = time.monotonic() - t1
    return {
        "seed import s": seeded,
        "throughput seed msgs/s": sessions * messages / seeded,
        "first search (catch-up) ms": first * 1000.0,
    }


async def _timed(t: Tgt, url: str, count: int) -> tuple[list[float], Any]:
    latencies: list[float] = []
    body: Any = None
    for _ in range(count):
        t0 = time.monotonic()
        async with t.http.get(url) as resp:
            raw = await resp.read()
            status = resp.status
        latencies.append(time.monotonic() - t0)
        if status != 200:
            raise BenchError(f"GET {url}: expected 200, got {status}: {raw[:300]!r}")
        body = raw
    return latencies, orjson.loads(body)


async def search_run(ctx: Ctx, t: Tgt, rnd: int) -> Metrics:
    """``GET /api/search?q=`` p50/p99 per query and over all of them."""
    n_sessions, n_messages, _ = sizes(ctx.args)
    first: Metrics = {}
    if "across" not in t.state:
        first = await seed_search(ctx, t, n_sessions, n_messages)
        t.state["across"] = True
        progress(f"{t.name}: seeded {n_sessions * n_messages:,} messages: {first}")
    out: Metrics = {}
    every: list[float] = []
    for label, q in search_queries(Words()).items():
        url = f"{t.base}/api/search?{urlencode({'q': q, 'limit': 20})}"
        await _timed(t, url, 2)  # warm
        latencies, body = await _timed(t, url, SEARCH_REPEATS)
        if label == "common" and not body["items"]:  # (a rare word may miss at tiny sizes)
            raise BenchError(f"search {q!r}: expected hits, got none")
        every += latencies
        out.update(latency_summary(latencies, f"{label} "))
    return {
        **latency_summary(every, "all queries "),
        **out,
        **first,
        "messages": float(n_sessions * n_messages),
    }


# ------------------------------------------------------------------ list-filtered


def list_session_body(rng: random.Random, sid: str, i: int) -> dict[str, Any]:
    """A session of varied organisation: ~5% pinned, ~20% archived, ~60% in a folder,
    0-3 tags, a title with a number (so ``q=`` matches some)."""
    body: dict[str, Any] = {"id": sid, "title": f"Chat {i} about {rng.choice(_BASE_WORDS)}"}
    if rng.random() < 0.05:
        body["pinned"] = True
    if rng.random() < 0.2:
        body["archived"] = True
    if rng.random() < 0.6:
        body["folder"] = rng.choice(FOLDERS)
    tags = rng.sample(TAGS, rng.randint(0, 3))
    if tags:
        body["tags"] = tags
    return body


async def seed_list(ctx: Ctx, t: Tgt, count: int) -> float:
    """Create ``count`` sessions of varied organisation; return the seconds it took."""
    rng = random.Random(SEED)
    bodies = [list_session_body(rng, ctx.sid("list", i), i) for i in range(count)]
    gate = asyncio.Semaphore(32)
    t0 = time.monotonic()

    async def one(body: dict[str, Any]) -> None:
        async with gate:
            await expect_json(t.http, "POST", f"{t.base}/api/sessions", (201,), body)

    for start in range(0, count, 2000):
        await asyncio.gather(*(one(b) for b in bodies[start : start + 2000]))
        progress(f"{t.name}: created {min(count, start + 2000):,}/{count:,} sessions")
    return time.monotonic() - t0


LIST_FILTERS: dict[str, dict[str, str]] = {
    "all": {},
    "folder": {"folder": "work"},
    "tag": {"tag": "idea"},
    "pinned": {"pinned": "true"},
    "archived": {"archived": "true"},
    "q": {"q": "about"},
    "folder+tag": {"folder": "home", "tag": "todo"},
    # worst cases: nothing matches, so the whole list is read
    "empty folder": {"folder": "nothing/here"},
    "no such tag": {"tag": "no-such-tag"},
    "q no match": {"q": "no such title"},
}
EMPTY_OK = ("empty folder", "no such tag", "q no match")


async def _page5(t: Tgt, params: dict[str, str]) -> str | None:
    """The URL of the 5th page (4 ``next_cursor`` hops) of the list with ``params``;
    None when it has fewer pages (only at tiny sizes)."""
    query = {**params, "limit": str(LIST_PAGE)}
    url = f"{t.base}/api/sessions?{urlencode(query)}"
    for _ in range(4):
        body = await expect_json(t.http, "GET", url, (200,))
        cursor = body.get("next_cursor")
        if cursor is None:
            return None
        url = f"{t.base}/api/sessions?{urlencode({**query, 'cursor': cursor})}"
    return url


async def list_run(ctx: Ctx, t: Tgt, rnd: int) -> Metrics:
    """``GET /api/sessions`` p50/p99 with each filter, and the 5th page of a keyset walk."""
    _, _, count = sizes(ctx.args)
    extra: Metrics = {}
    if "list" not in t.state:
        extra["seed s"] = await seed_list(ctx, t, count)
        t.state["list"] = True
    out: Metrics = {}
    every: list[float] = []
    for label, params in LIST_FILTERS.items():
        url = f"{t.base}/api/sessions?{urlencode({**params, 'limit': str(LIST_PAGE)})}"
        await _timed(t, url, 2)
        latencies, body = await _timed(t, url, LIST_REPEATS)
        if bool(body["items"]) == (label in EMPTY_OK):
            raise BenchError(f"list {params}: got {len(body['items'])} sessions")
        every += latencies
        out.update(latency_summary(latencies, f"{label} "))
    for label, params in (("page 5", {}), ("page 5 tag", {"tag": "bug"})):
        page5 = await _page5(t, params)
        if page5 is None:
            if label == "page 5":
                raise BenchError(f"list: fewer than 5 pages of {LIST_PAGE} in {count} sessions")
            continue
        latencies, body = await _timed(t, page5, LIST_REPEATS)
        if len(body["items"]) != LIST_PAGE:
            raise BenchError(f"list page 5: expected {LIST_PAGE} items, got {len(body['items'])}")
        every += latencies
        out.update(latency_summary(latencies, f"{label} "))
    summary = latency_summary(every, "all lists ")
    return {**summary, **out, **extra, "sessions on disk": float(count)}


RunFn = Callable[[Any, Any, int], Awaitable[Metrics]]

# (name, description, run): bench.py registers them as Roost-only workloads
WORKLOADS: tuple[tuple[str, str, RunFn], ...] = (
    (
        "search-across",
        "GET /api/search over one user's sessions (100 x 1k msgs; 1k x 1k with --big)",
        search_run,
    ),
    (
        "list-filtered",
        "GET /api/sessions with filters and keyset page 5, 10k sessions of one user",
        list_run,
    ),
)
