"""Cluster mode on a real multi-node Ray cluster on loopback (SPEC section 10).

One module fixture starts a Ray head on 127.0.0.2 (no ``roost_shard``) and two
worker nodes on 127.0.0.3/4, each a separate ``ray start --block`` process
(``scripts/cluster_trial.LocalRayCluster``), and two fronts (``roost serve
--cluster``) as real processes; everything is stopped by PID. Skipped only
when ``ray`` is not installed (``pip install -e '.[cluster]'``).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

pytest.importorskip("ray", reason="cluster mode needs ray: pip install -e '.[cluster]'")

from actors.cluster.placement import shard_of
from scripts.cluster_trial import Front, LocalRayCluster
from tests.harness import ROOT, TIMEOUT, all_messages

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]

SHARDS = 4
# cluster waits: a shard's first start makes a Ray worker process (seconds on 2 cores)
WAIT = max(TIMEOUT, 60.0)
JSON = {"Content-Type": "application/json"}


class Cluster:
    def __init__(self, ray: LocalRayCluster, a: Front, b: Front, data: Path) -> None:
        self.ray = ray
        self.a = a
        self.b = b
        self.data = data

    def api(self, front: Front) -> str:
        return front.url + "/api"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    base = tmp_path_factory.mktemp("cluster")
    ray = LocalRayCluster(base, workers=2)
    fronts: list[Front] = []
    try:
        ray.start(timeout=WAIT)
        data = base / "data"
        extra = ("--shards", str(SHARDS), "--echo-words-per-second", "20")
        fronts.append(Front(ray, data, *extra))
        fronts[0].wait_ready(WAIT)
        fronts.append(Front(ray, data, *extra))
        fronts[1].wait_ready(WAIT)
        c = Cluster(ray, fronts[0], fronts[1], data)
        asyncio.run(_warm(c))
        yield c
    finally:
        for f in fronts:
            f.stop()
        ray.stop()


async def _warm(c: Cluster) -> None:
    """Start every shard at once (each makes a worker process) before the tests time."""
    ids: dict[int, str] = {}
    n = 0
    while len(ids) < SHARDS:
        ids.setdefault(shard_of(f"warm-{n}", SHARDS), f"warm-{n}")
        n += 1
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT * 2)) as s:

        async def one(sid: str) -> None:
            async with s.post(c.api(c.a) + "/sessions", json={"id": sid}) as r:
                assert r.status == 201, await r.text()
            async with s.delete(c.api(c.b) + f"/sessions/{sid}") as r:
                assert r.status == 204, await r.text()

        await asyncio.gather(*(one(sid) for sid in ids.values()))


@pytest.fixture
async def http() -> Any:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT)) as s:
        yield s


async def until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


async def create(http: aiohttp.ClientSession, front: str, sid: str) -> dict[str, Any]:
    async with http.post(front + "/sessions", json={"id": sid}) as r:
        assert r.status == 201, await r.text()
        doc: dict[str, Any] = await r.json()
        return doc


async def append(
    http: aiohttp.ClientSession, front: str, sid: str, text: str, **kw: Any
) -> tuple[int, dict[str, Any]]:
    body = {"role": "user", "content": text, **kw}
    async with http.post(front + f"/sessions/{sid}/messages", json=body) as r:
        return r.status, await r.json()


async def ws_frames(ws: aiohttp.ClientWebSocketResponse, n: int, kind: str) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    while len(got) < n:
        f = await asyncio.wait_for(ws.receive_json(), WAIT)
        if f["type"] == kind:
            got.append(f)
    return got


async def shard_calls(http: aiohttp.ClientSession, front: Front) -> tuple[float, float]:
    """A front's ``roost_shard_calls_total`` and ``roost_shard_ray_calls_total``."""
    async with http.get(front.url + "/metrics") as r:
        assert r.status == 200
        text = await r.text()
    found: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("roost_shard_calls_total", "roost_shard_ray_calls_total"):
            found[name] = float(value)
    return found["roost_shard_calls_total"], found["roost_shard_ray_calls_total"]


async def metrics(http: aiohttp.ClientSession, front: Front, *names: str) -> list[float]:
    """The values of a front's counters ``names`` (``roost_shard_*_total``)."""
    async with http.get(front.url + "/metrics") as r:
        assert r.status == 200
        text = await r.text()
    found = dict(line.partition(" ")[::2] for line in text.splitlines() if line[:1] != "#")
    return [float(found[n]) for n in names]


DIRECT = os.environ.get("ROOST_SHARD_TRANSPORT", "direct") != "ray"
direct_only = pytest.mark.skipif(not DIRECT, reason="the direct shard path is off")
COUNTS = (
    "roost_shard_direct_calls_total",
    "roost_shard_ray_calls_total",
    "roost_shard_direct_connects_total",
)


def ws_url(front: str, sid: str, since: int | None = None) -> str:
    q = "" if since is None else f"?since={since}"
    return front.replace("http://", "ws://") + f"/sessions/{sid}/ws{q}"


# ---------------------------------------------------------------------------- the tests


async def test_cluster_create_on_a_read_on_b(cluster: Cluster, http: aiohttp.ClientSession) -> None:
    """A session made through front A is there, with its messages, through front B."""
    a, b = cluster.api(cluster.a), cluster.api(cluster.b)
    await create(http, a, "c-read")
    status, msg = await append(http, a, "c-read", "hello")
    assert status == 201
    async with http.get(b + "/sessions/c-read") as r:
        assert r.status == 200
        view = await r.json()
    assert [m["id"] for m in view["messages"]] == [msg["id"]]
    async with http.get(b + "/sessions/no-such-session") as r:
        assert r.status == 404
        assert (await r.json())["error"]["code"] == "not_found"


async def test_cluster_context_and_compact_through_either_front(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    """GET /context and POST /compact (issue 21) are answered by the session's shard."""
    a, b = cluster.api(cluster.a), cluster.api(cluster.b)
    await create(http, a, "c-ctx")
    ids = []
    for i in range(3):
        status, msg = await append(http, a, "c-ctx", f"note {i}")
        assert status == 201
        ids.append(msg["id"])
    async with http.get(b + "/sessions/c-ctx/context") as r:
        assert r.status == 200, await r.text()
        ctx = await r.json()
    assert ctx["message_ids"] == ids and ctx["tokens"] <= ctx["budget"]
    async with http.post(b + "/sessions/c-ctx/compact", json={"leaf_id": ids[-1]}) as r:
        assert r.status in (200, 201), await r.text()
        assert "summaries" in await r.json()
    async with http.get(a + "/sessions/c-ctx/context?leaf_id=nope") as r:
        assert r.status == 404


async def test_cluster_concurrent_appends_over_both_fronts_make_one_chain(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    """64 concurrent appends split over both fronts: all acknowledged, one chain; the
    fronts batch them (fewer Ray calls than shard calls, counted in /metrics)."""
    a, b = cluster.api(cluster.a), cluster.api(cluster.b)
    await create(http, a, "c-chain")
    before = [await shard_calls(http, f) for f in (cluster.a, cluster.b)]
    results = await asyncio.gather(
        *(append(http, a if i % 2 else b, "c-chain", f"m{i}") for i in range(64))
    )
    assert all(status == 201 for status, _ in results)
    after = [await shard_calls(http, f) for f in (cluster.a, cluster.b)]
    calls = sum(x[0] - y[0] for x, y in zip(after, before, strict=True))
    ray_calls = sum(x[1] - y[1] for x, y in zip(after, before, strict=True))
    assert calls >= 64, (before, after)
    assert ray_calls < calls, (before, after)
    seqs = [m["seq"] for _, m in results]
    assert len(set(seqs)) == 64
    stored = await all_messages(http, b, "c-chain")
    assert sorted(m["id"] for m in stored) == sorted(m["id"] for _, m in results)
    assert [m["seq"] for m in stored] == sorted(seqs)
    parent = None
    for m in stored:  # each is the child of the one before it: one line
        assert m["parent_id"] == parent
        parent = m["id"]


async def test_cluster_client_id_retry_on_other_front(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    """The same client_id sent again through the other front answers 200 with the stored one."""
    a, b = cluster.api(cluster.a), cluster.api(cluster.b)
    await create(http, a, "c-retry")
    status, first = await append(http, a, "c-retry", "once", client_id="k-1")
    assert status == 201
    status, again = await append(http, b, "c-retry", "once", client_id="k-1")
    assert status == 200
    assert again == first
    status, _ = await append(http, b, "c-retry", "other text", client_id="k-1")
    assert status == 409


async def test_cluster_listing_reads_your_writes_on_any_front(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    """A new session is in the list at once through the other front, and a delete is too."""
    a, b = cluster.api(cluster.a), cluster.api(cluster.b)
    sids = [f"c-list-{i}" for i in range(6)]  # spread over the shards
    for sid in sids:
        await create(http, a, sid)
        async with http.get(b + "/sessions?limit=200") as r:
            listed = {s["id"] for s in (await r.json())["items"]}
        assert sid in listed
    async with http.delete(b + f"/sessions/{sids[0]}") as r:
        assert r.status == 204
    async with http.get(a + "/sessions?limit=200") as r:
        listed = {s["id"] for s in (await r.json())["items"]}
    assert sids[0] not in listed and set(sids[1:]) <= listed


async def test_cluster_organisation_filters_and_folders_through_any_front(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    """Pinned/archived/folder/tags set through A filter the list and count the folders
    through B (the owner's directory shard), and the not-yet-clustered routes say so."""
    a, b = cluster.api(cluster.a), cluster.api(cluster.b)
    body = {"id": "c-org-0", "folder": "work/roost", "tags": ["x"], "pinned": True}
    async with http.post(a + "/sessions", json=body) as r:
        assert r.status == 201, await r.text()
    for i in (1, 2):
        await create(http, a, f"c-org-{i}")
    async with http.patch(a + "/sessions/c-org-1", json={"archived": True}) as r:
        assert r.status == 200, await r.text()

    async def listed(q: str) -> list[str]:
        async with http.get(b + "/sessions?limit=200" + q) as r:
            assert r.status == 200, await r.text()
            return [s["id"] for s in (await r.json())["items"] if s["id"].startswith("c-org")]

    assert await listed("&folder=work/roost") == ["c-org-0"]
    assert await listed("&tag=x") == ["c-org-0"]
    assert (await listed(""))[0] == "c-org-0"  # pinned first
    await until(
        lambda: _eq(listed("&archived=true"), ["c-org-1"]), "the archive reaching the directory"
    )
    assert "c-org-1" not in await listed("")
    async with http.get(b + "/folders") as r:
        assert r.status == 200
        folders = {f["folder"]: f["count"] for f in (await r.json())["items"]}
    assert folders.get("work/roost") == 1
    async with http.get(b + "/capabilities") as r:
        features = (await r.json())["features"]
    assert features["search_all"] is False and features["user_events"] is False
    async with http.get(b + "/search?q=hello") as r:
        assert r.status == 501
        assert (await r.json())["error"]["code"] == "not_implemented"


async def _eq(got: Awaitable[list[str]], want: list[str]) -> bool:
    return await got == want


async def test_cluster_ai_sdk_route_and_web_page_through_a_front(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    """The AI SDK route (SPEC section 8) answers its UI message stream through front A
    (the chat id names a session made on first use) and front B has both messages;
    the web page and its scripts are served by a front."""
    a, b = cluster.api(cluster.a), cluster.api(cluster.b)
    body = {
        "id": "c-ai",
        "trigger": "submit-message",
        "messages": [{"id": "u1", "role": "user", "parts": [{"type": "text", "text": "hi ai"}]}],
    }
    async with http.post(a + "/ai/chat", json=body) as r:
        assert r.status == 200, await r.text()
        assert r.headers["x-vercel-ai-ui-message-stream"] == "v1"
        text = await r.text()
    chunks = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
    assert chunks[-1] == "[DONE]"
    kinds = [json.loads(c)["type"] for c in chunks[:-1]]
    assert kinds[0] == "start" and kinds[-1] == "finish" and "text-delta" in kinds
    items = await all_messages(http, b, "c-ai")
    assert [(m["role"], m["content"], m["status"]) for m in items] == [
        ("user", "hi ai", "complete"),
        ("assistant", "hi ai", "complete"),
    ]
    for path in ("/", "/static/app.js"):
        async with http.get(cluster.b.url + path) as r:
            assert r.status == 200, path


async def test_cluster_ws_on_b_sees_a_in_order_and_since_replays_on_a(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    """A socket on B gets every message.created made through A in seq order; a
    reconnect to A with since replays exactly what was missed."""
    a, b = cluster.api(cluster.a), cluster.api(cluster.b)
    await create(http, a, "c-ws")
    ws = await http.ws_connect(ws_url(b, "c-ws", 0), protocols=["roost.v1"])
    assert (await ws.receive_json())["type"] == "hello"
    made = [(await append(http, a, "c-ws", f"live {i}"))[1] for i in range(10)]
    seen = await ws_frames(ws, 10, "message.created")
    assert [f["message"]["id"] for f in seen] == [m["id"] for m in made]
    assert [f["seq"] for f in seen] == sorted(f["seq"] for f in seen)
    last = seen[-1]["seq"]
    await ws.close()
    missed = [(await append(http, b, "c-ws", f"missed {i}"))[1] for i in range(5)]
    ws = await http.ws_connect(ws_url(a, "c-ws", last), protocols=["roost.v1"])
    hello = await ws.receive_json()
    assert hello["seq"] > last
    replay = await ws_frames(ws, 5, "message.created")
    assert [f["message"]["id"] for f in replay] == [m["id"] for m in missed]
    assert replay[0]["seq"] == last + 1
    await ws.close()


async def test_cluster_chat_on_a_streams_deltas_on_b(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    """A chat POSTed on A streams message.delta frames to a socket on B and ends complete."""
    a, b = cluster.api(cluster.a), cluster.api(cluster.b)
    await create(http, a, "c-chat")
    ws = await http.ws_connect(ws_url(b, "c-chat", 0), protocols=["roost.v1"])
    assert (await ws.receive_json())["type"] == "hello"
    words = "one two three four five six"
    async with http.post(
        a + "/sessions/c-chat/chat", json={"content": words}, headers={"Accept": "application/json"}
    ) as r:
        assert r.status == 201
        reply = (await r.json())["assistant_message"]
    assert reply["status"] == "complete" and reply["content"] == words
    text = ""
    while True:
        f = await asyncio.wait_for(ws.receive_json(), WAIT)
        if f["type"] == "message.delta" and f["message_id"] == reply["id"]:
            assert f["offset"] == len(text)
            text += f["text"]
        if f["type"] == "message.updated" and f["message"]["status"] == "complete":
            break
    assert text == words
    await ws.close()


async def test_cluster_stream_resumes_on_b_from_last_event_id(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    """A reply started on A resumes on B from Last-Event-ID: the rest of the text, then done."""
    a, b = cluster.api(cluster.a), cluster.api(cluster.b)
    await create(http, a, "c-resume")
    words = " ".join(f"w{i}" for i in range(30))  # 1.5 s at 20 words a second
    async with http.post(a + "/sessions/c-resume/chat", json={"content": words}) as r:
        assert r.status == 200
        mid = r.headers["X-Assistant-Message-Id"]
        async for line in r.content:  # read up to the first delta, then leave
            if line.startswith(b"event: delta"):
                break
    async with http.get(
        b + f"/sessions/c-resume/messages/{mid}/stream", headers={"Last-Event-ID": "2"}
    ) as r:
        assert r.status == 200
        body = (await r.read()).decode()
    data = [line[len("data: ") :] for line in body.splitlines() if line.startswith("data: ")]
    deltas = [d for d in data if d.startswith('{"message_id"')]
    texts = [json.loads(d) for d in deltas if '"offset"' in d]
    assert texts[0]["offset"] == 2
    assert "".join(t["text"] for t in texts) == words[2:]
    assert "event: done" in body


async def test_cluster_front_killed_loses_nothing(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    """SIGKILL of a front loses nothing; its socket clients resume on B with since."""
    b = cluster.api(cluster.b)
    c = Front(cluster.ray, cluster.data, "--shards", str(SHARDS))
    try:
        await asyncio.get_running_loop().run_in_executor(None, c.wait_ready, WAIT)
        capi = c.url + "/api"
        await create(http, capi, "c-front")
        ws = await http.ws_connect(ws_url(capi, "c-front", 0), protocols=["roost.v1"])
        assert (await ws.receive_json())["type"] == "hello"
        acked = [(await append(http, capi, "c-front", f"m{i}"))[1] for i in range(10)]
        seen = await ws_frames(ws, 5, "message.created")
        c.proc.send_signal(signal.SIGKILL)
        c.proc.wait(timeout=WAIT)
        await ws.close()
        stored = await all_messages(http, b, "c-front")
        assert [m["id"] for m in stored] == [m["id"] for m in acked]
        ws = await http.ws_connect(ws_url(b, "c-front", seen[-1]["seq"]), protocols=["roost.v1"])
        assert (await ws.receive_json())["type"] == "hello"
        rest = await ws_frames(ws, 5, "message.created")
        assert [f["message"]["id"] for f in rest] == [m["id"] for m in acked[5:]]
        await ws.close()
    finally:
        c.stop()


def _shard_pid(data: Path, k: int) -> int:
    """The pid of shard ``k``'s process, from the lock file of its newest data dir."""
    locks = sorted(
        data.glob(f"nodes/*/shard-{k}/roost.lock"), key=lambda p: p.stat().st_mtime, reverse=True
    )
    assert locks, f"no data dir of shard {k}"
    return int(locks[0].read_text().strip())


async def test_cluster_shards_are_spread_over_the_shard_nodes(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    """Each of the 4 shards lives on one node, 2 on each worker node
    (``actors.cluster.spread``: Ray's default packed them all onto one)."""
    a = cluster.api(cluster.a)
    todo, n = set(range(SHARDS)), 0
    while todo:  # a session on every shard, so that every shard has started
        sid = f"c-spread-{n}"
        n += 1
        if shard_of(sid, SHARDS) in todo:
            await create(http, a, sid)
            todo.discard(shard_of(sid, SHARDS))
    homes = {k: sorted(cluster.data.glob(f"nodes/*/shard-{k}/roost.lock")) for k in range(SHARDS)}
    assert all(len(v) == 1 for v in homes.values()), homes
    per_node: dict[str, int] = {}
    for (lock,) in homes.values():
        per_node[lock.parent.parent.name] = per_node.get(lock.parent.parent.name, 0) + 1
    assert sorted(per_node.values()) == [2, 2], per_node


async def test_cluster_shard_process_killed_is_survived(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    """Killing a shard's worker process: Ray restarts it and every acknowledged message is there."""
    a, b = cluster.api(cluster.a), cluster.api(cluster.b)
    sid = "c-shard-kill"
    await create(http, a, sid)
    acked = [(await append(http, a, sid, f"m{i}"))[1] for i in range(20)]
    pid = _shard_pid(cluster.data, shard_of(sid, SHARDS))
    os.kill(pid, signal.SIGKILL)

    async def back() -> bool:
        async with http.get(b + f"/sessions/{sid}/messages?view=all&limit=200") as r:
            if r.status == 503:
                assert "Retry-After" in r.headers
                return False
            assert r.status == 200, await r.text()
            items = (await r.json())["items"]
            assert [m["id"] for m in items] == [m["id"] for m in acked]
            return True

    await until(back, "the shard to come back with every message")
    assert _shard_pid(cluster.data, shard_of(sid, SHARDS)) != pid
    # it came back on its own node, next to its files (soft node affinity)
    assert len(list(cluster.data.glob(f"nodes/*/shard-{shard_of(sid, SHARDS)}"))) == 1
    status, _ = await append(http, b, sid, "after the restart")
    assert status == 201


async def test_cluster_attachments_reach_the_model_delete_and_bundle_through_fronts(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    """Issue 25 in cluster mode: an upload on A reaches the (shard's) echo responder, is
    refused deletion while named and deleted on B after; a bundle exports on B; a
    bundle import answers 501; a ChatGPT import works."""
    a, b = cluster.api(cluster.a), cluster.api(cluster.b)
    await create(http, a, "c-files")
    form = aiohttp.FormData()
    form.add_field("file", b"shard notes", filename="n.txt", content_type="text/plain")
    async with http.post(a + "/sessions/c-files/attachments", data=form) as r:
        assert r.status == 201, await r.text()
        att = await r.json()
    body = {"content": "read", "attachments": [att["id"]]}
    headers = {"Accept": "application/json"}
    async with http.post(b + "/sessions/c-files/chat", json=body, headers=headers) as r:
        assert r.status == 201, await r.text()
        reply = (await r.json())["assistant_message"]
    assert reply["metadata"]["attachments"]["sent"][0]["as"] == "text"
    async with http.delete(b + f"/sessions/c-files/attachments/{att['id']}") as r:
        assert r.status == 409
    async with http.get(b + "/sessions/c-files/export?format=bundle") as r:
        assert r.status == 200
        raw = await r.read()
    zf = zipfile.ZipFile(io.BytesIO(raw))
    assert zf.read(f"blobs/{att['sha256']}") == b"shard notes"
    zheaders = {"Content-Type": "application/zip"}
    async with http.post(a + "/sessions/import", data=raw, headers=zheaders) as r:
        assert r.status == 501
    async with http.post(a + "/sessions/c-files/attachments", data=form) as r:
        assert r.status == 201
        spare = await r.json()
    async with http.delete(b + f"/sessions/c-files/attachments/{spare['id']}") as r:
        assert r.status == 204
    conv = {
        "title": "t",
        "mapping": {
            "r": {"id": "r", "message": None, "parent": None, "children": ["u"]},
            "u": {
                "id": "u",
                "parent": "r",
                "children": [],
                "message": {
                    "author": {"role": "user"},
                    "content": {"content_type": "text", "parts": ["hi"]},
                },
            },
        },
        "current_node": "u",
    }
    async with http.post(a + "/sessions/import?format=chatgpt", json=[conv]) as r:
        assert r.status == 201, await r.text()
        made = (await r.json())["sessions"][0]["id"]
    async with http.get(b + f"/sessions/{made}") as r:
        assert (await r.json())["session"]["active_leaf_id"] == "u"


async def test_cluster_front_with_other_shard_count_refuses_to_start(cluster: Cluster) -> None:
    """A front whose --shards differs from the cluster's exits 1 with one roost: line."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "server.cli",
        "serve",
        "--port",
        "0",
        "--data-dir",
        str(cluster.data),
        "--cluster",
        cluster.ray.address,
        "--shards",
        str(SHARDS + 1),
        cwd=ROOT,
        env=cluster.ray.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), WAIT)
    assert proc.returncode == 1
    lines = [line for line in err.decode().splitlines() if line.startswith("roost:")]
    assert len(lines) == 1, err.decode()
    assert f"has {SHARDS} shards" in lines[0] and f"--shards {SHARDS + 1}" in lines[0]


async def test_cluster_unreachable_shard_answers_503_within_the_timeout(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    """A shard that does not answer within --request-timeout gives 503 with Retry-After."""
    # a new cluster name: its shards do not exist yet, and the first one's start
    # (a new worker process) takes longer than the 0.2 s allowed
    c = Front(
        cluster.ray,
        cluster.data,
        "--shards",
        "2",
        "--cluster-name",
        "slowstart",
        "--request-timeout",
        "0.2",
    )
    try:
        await asyncio.get_running_loop().run_in_executor(None, c.wait_ready, WAIT)
        started = time.monotonic()
        async with http.get(c.url + "/api/sessions/anything") as r:
            elapsed = time.monotonic() - started
            assert r.status == 503, await r.text()
            assert r.headers["Retry-After"] == "1"
            assert (await r.json())["error"]["code"] == "unavailable"
        assert elapsed < 5
    finally:
        c.stop()


@direct_only
async def test_cluster_facade_calls_go_over_the_direct_path(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    """Appends and reads go over the fronts' direct connections: no Ray call per append."""
    a = cluster.api(cluster.a)
    await create(http, a, "c-direct")
    await append(http, a, "c-direct", "first")  # connected (the warm-up did it already)
    direct, ray_calls, connects = await metrics(http, cluster.a, *COUNTS)
    assert direct > 0 and connects > 0
    for i in range(10):
        status, _ = await append(http, a, "c-direct", f"m{i}")
        assert status == 201
    direct2, ray_calls2, connects2 = await metrics(http, cluster.a, *COUNTS)
    assert direct2 - direct >= 10
    assert ray_calls2 == ray_calls and connects2 == connects


@direct_only
async def test_cluster_direct_path_in_flight_call_fails_503_and_front_reconnects(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    """A call in flight on the direct connection when the shard's process dies answers
    503 with Retry-After at once (well within the timeout), is applied at most once, and
    the front reconnects to the restarted shard: every acknowledged message is there."""
    b = cluster.api(cluster.b)
    sid = "c-direct-kill"
    await create(http, b, sid)
    acked = [(await append(http, b, sid, f"m{i}"))[1] for i in range(5)]
    direct, _, connects = await metrics(http, cluster.b, *COUNTS)
    pid = _shard_pid(cluster.data, shard_of(sid, SHARDS))
    os.kill(pid, signal.SIGSTOP)  # the next call stays in flight
    try:
        started = time.monotonic()
        body = {"role": "user", "content": "in flight", "client_id": "flight-1"}

        async def in_flight() -> tuple[int, str | None, dict[str, Any]]:
            async with http.post(b + f"/sessions/{sid}/messages", json=body) as r:
                return r.status, r.headers.get("Retry-After"), await r.json()

        pending = asyncio.ensure_future(in_flight())

        async def sent() -> bool:
            return (await metrics(http, cluster.b, *COUNTS))[0] > direct

        await until(sent, "the call to be sent on the direct path")
        assert not pending.done()
    finally:
        os.kill(pid, signal.SIGKILL)
    status, retry_after, answer = await asyncio.wait_for(pending, WAIT)
    assert status == 503, answer
    assert retry_after and answer["error"]["code"] == "unavailable"
    assert time.monotonic() - started < 25  # the lost connection, not the 30 s timeout

    async def back() -> bool:
        async with http.get(b + f"/sessions/{sid}/messages?view=all&limit=200") as r:
            if r.status == 503:
                assert "Retry-After" in r.headers
                return False
            assert r.status == 200, await r.text()
            return True

    await until(back, "the shard to come back")
    stored = await all_messages(http, b, sid)
    assert [m["id"] for m in stored][: len(acked)] == [m["id"] for m in acked]
    assert len(stored) <= len(acked) + 1  # the lost call ran at most once
    status, again = await append(http, b, sid, "in flight", client_id="flight-1")
    assert status in (200, 201), again
    stored = await all_messages(http, b, sid)
    assert [m.get("client_id") for m in stored].count("flight-1") == 1
    assert len(stored) == len(acked) + 1
    direct2, _, connects2 = await metrics(http, cluster.b, *COUNTS)
    assert connects2 > connects and direct2 > direct + 1
