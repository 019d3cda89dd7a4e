"""ChatGPT import (issue 25): POST /sessions/import?format=chatgpt.

The fixtures are written here from the format's documented shape (a JSON array
of conversations with a ``mapping`` tree); no real user data."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from storage.chatgpt import ChatGPTError, iter_array
from tests.harness import TIMEOUT
from tests.test_export_import import _peak_rss_kib

T0 = 1_700_000_000.0


def node(nid: str, parent: str | None, children: list[str], message: Any = None) -> dict[str, Any]:
    return {"id": nid, "message": message, "parent": parent, "children": children}


def msg(
    nid: str,
    role: str,
    text: Any,
    t: float,
    *,
    model: str | None = None,
    name: str | None = None,
    hidden: bool = False,
) -> dict[str, Any]:
    content = text if isinstance(text, dict) else {"content_type": "text", "parts": [text]}
    meta: dict[str, Any] = {}
    if model:
        meta["model_slug"] = model
    if hidden:
        meta["is_visually_hidden_from_conversation"] = True
    return {
        "id": nid,
        "author": {"role": role, "name": name, "metadata": {}},
        "create_time": t,
        "update_time": None,
        "content": content,
        "status": "finished_successfully",
        "end_turn": True,
        "weight": 1.0,
        "metadata": meta,
        "recipient": "all",
    }


def branched() -> dict[str, Any]:
    """A conversation with a regenerated answer (two branches), a hidden system
    message, a tool node and a code answer; the user is on the second branch."""
    mapping = {
        "root": node("root", None, ["sys"]),
        "sys": node("sys", "root", ["u1"], msg("sys", "system", "", T0, hidden=True)),
        "u1": node("u1", "sys", ["a1", "a1b"], msg("u1", "user", "hello", T0 + 1)),
        "a1": node("a1", "u1", ["u2"], msg("a1", "assistant", "hi, first", T0 + 2, model="gpt-4")),
        "u2": node("u2", "a1", ["a2"], msg("u2", "user", "tell me more", T0 + 3)),
        "a2": node("a2", "u2", [], msg("a2", "assistant", "more", T0 + 4, model="gpt-4")),
        "a1b": node(
            "a1b", "u1", ["u3"], msg("a1b", "assistant", "hi, second", T0 + 5, model="gpt-4o")
        ),
        "u3": node("u3", "a1b", ["t1"], msg("u3", "user", "compute it", T0 + 6)),
        "t1": node(
            "t1",
            "u3",
            ["a3"],
            msg(
                "t1",
                "tool",
                {"content_type": "execution_output", "text": "42"},
                T0 + 7,
                name="python",
            ),
        ),
        "a3": node(
            "a3",
            "t1",
            [],
            msg(
                "a3",
                "assistant",
                {"content_type": "code", "language": "python", "text": "print(6 * 7)"},
                T0 + 8,
                model="gpt-4o",
            ),
        ),
    }
    return {
        "title": "Branches",
        "create_time": T0,
        "update_time": T0 + 8,
        "mapping": mapping,
        "current_node": "a3",
        "conversation_id": "conv-branched",
        "id": "conv-branched",
        "default_model_slug": "gpt-4o",
    }


def linear() -> dict[str, Any]:
    """A two-message conversation whose question holds an image pointer."""
    image = {"content_type": "image_asset_pointer", "asset_pointer": "file-service://file-abc"}
    question = {"content_type": "multimodal_text", "parts": [image, "what is this?"]}
    return {
        "title": "Picture",
        "create_time": T0 + 100,
        "update_time": T0 + 101,
        "mapping": {
            "r": node("r", None, ["q"]),
            "q": node("q", "r", ["a"], msg("q", "user", question, T0 + 100)),
            "a": node("a", "q", [], msg("a", "assistant", "a cat", T0 + 101, model="gpt-4o")),
        },
        "current_node": "a",
        "conversation_id": "conv-linear",
    }


async def _import(client: Any, body: bytes, ctype: str = "application/json") -> Any:
    return await client.post(
        "/api/sessions/import?format=chatgpt", data=body, headers={"Content-Type": ctype}
    )


async def _sessions(client: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = (await (await client.get("/api/sessions")).json())["items"]
    return items


async def test_chatgpt_import_keeps_branches_and_active_path(client: Any) -> None:
    """A branched conversation imports with every branch, the same parents and sibling
    order, and the current node's path as the active branch."""
    r = await _import(client, orjson.dumps([branched(), linear()]))
    assert r.status == 201, await r.text()
    body = await r.json()
    assert body["count"] == 2
    assert [(s["title"], s["conversation_id"]) for s in body["sessions"]] == [
        ("Branches", "conv-branched"),
        ("Picture", "conv-linear"),
    ]
    sid = body["sessions"][0]["id"]
    page = await (await client.get(f"/api/sessions/{sid}/messages?view=all&limit=50")).json()
    got = {m["id"]: (m["parent_id"], m["role"]) for m in page["items"]}
    assert got == {
        "sys": (None, "system"),  # the message-less root is left out
        "u1": ("sys", "user"),
        "a1": ("u1", "assistant"),
        "u2": ("a1", "user"),
        "a2": ("u2", "assistant"),
        "a1b": ("u1", "assistant"),
        "u3": ("a1b", "user"),
        "t1": ("u3", "tool"),
        "a3": ("t1", "assistant"),
    }
    active = await (await client.get(f"/api/sessions/{sid}/messages?limit=50")).json()
    assert [m["id"] for m in active["items"]] == ["sys", "u1", "a1b", "u3", "t1", "a3"]
    a1b = next(m for m in active["items"] if m["id"] == "a1b")
    assert a1b["siblings"] == {"index": 1, "count": 2}  # regenerated: the second answer
    session = (await (await client.get(f"/api/sessions/{sid}")).json())["session"]
    assert session["active_leaf_id"] == "a3" and session["title"] == "Branches"
    assert session["created_at"] == "2023-11-14T22:13:20.000Z"
    assert session["metadata"]["imported_from"] == "chatgpt"


async def test_chatgpt_import_keeps_roles_times_models_and_tools(client: Any) -> None:
    """Roles, timestamps, model slugs, tool names and non-text content survive."""
    r = await _import(client, orjson.dumps([branched()]))
    sid = (await r.json())["sessions"][0]["id"]
    page = await (await client.get(f"/api/sessions/{sid}/messages?view=all&limit=50")).json()
    by_id = {m["id"]: m for m in page["items"]}
    assert by_id["a1"]["model_id"] == "gpt-4" and by_id["a1b"]["model_id"] == "gpt-4o"
    assert by_id["u1"]["model_id"] is None
    assert by_id["u1"]["created_at"] == "2023-11-14T22:13:21.000Z"
    assert by_id["t1"]["tool_name"] == "python" and by_id["t1"]["content"] == "42"
    assert by_id["a3"]["content"] == "```python\nprint(6 * 7)\n```"
    assert by_id["a3"]["metadata"]["content_type"] == "code"
    assert by_id["sys"]["metadata"]["hidden"] is True
    assert all(m["status"] == "complete" for m in page["items"])


async def test_chatgpt_import_from_the_export_zip(client: Any) -> None:
    """The export's zip (conversations.json among other files) imports the same."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("user.json", "{}")
        zf.writestr("conversations.json", orjson.dumps([linear()]))
        zf.writestr("chat.html", "<html></html>")
    r = await _import(client, buf.getvalue(), "application/zip")
    assert r.status == 201, await r.text()
    sid = (await r.json())["sessions"][0]["id"]
    page = await (await client.get(f"/api/sessions/{sid}/messages")).json()
    assert page["items"][0]["content"] == "[image_asset_pointer: file-abc]\nwhat is this?"


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b'{"not": "an array"}', "must be a JSON array"),
        (b"[1, 2]", "is not a JSON object"),
        (b"[{}]", "has no mapping"),
        (b'[{"mapping": {"a": {"parent": "zz", "children": []}}}]', "unknown parent"),
        (b"[" + orjson.dumps(linear()) + b", {broken", "ends inside"),
        (b"[" + orjson.dumps(linear()) + b"] trailing", "data after its array"),
    ],
)
async def test_malformed_chatgpt_export_returns_400_and_creates_nothing(
    client: Any, body: bytes, says: str
) -> None:
    """Malformed input: 400 with what is wrong, and no session at all (not even the
    conversations before the bad one)."""
    r = await _import(client, body)
    assert r.status == 400, await r.text()
    assert says in (await r.json())["error"]["message"]
    assert await _sessions(client) == []


async def test_chatgpt_conversation_with_bad_current_node_returns_400(client: Any) -> None:
    """A current_node that is not in the mapping is refused (details name the conversation)."""
    conv = dict(linear(), current_node="nowhere")
    r = await _import(client, orjson.dumps([linear(), conv]))
    assert r.status == 400
    err = (await r.json())["error"]
    assert err["details"]["index"] == 1 and "current_node" in err["message"]
    assert await _sessions(client) == []


async def test_chatgpt_import_refuses_an_id(client: Any) -> None:
    """?id= makes no sense for many sessions: 400."""
    r = await client.post(
        "/api/sessions/import?format=chatgpt&id=x",
        data=b"[]",
        headers={"Content-Type": "application/json"},
    )
    assert r.status == 400


def test_array_splitter_handles_any_chunk_boundary() -> None:
    """Elements come out whole whatever the read size, with brackets, quotes and
    escapes inside strings."""
    items = [{"a": 'x]}[{\\"', "b": [1, {"c": "\u00e9"}]}, {"d": ""}, {}]
    raw = b" [ " + b" ,\n".join(orjson.dumps(i) for i in items) + b" ] \n"
    for chunk in (1, 2, 3, 7, 64, 1 << 20):
        stream = io.BytesIO(raw)
        got = [
            orjson.loads(e) for e in iter_array(stream.read, max_element_bytes=1000, chunk=chunk)
        ]
        assert got == items
    empty = io.BytesIO(b"[]")
    assert list(iter_array(empty.read, max_element_bytes=10)) == []
    big = io.BytesIO(b'[{"a": "' + b"x" * 5000 + b'"}]')
    with pytest.raises(ChatGPTError, match="larger than"):
        list(iter_array(big.read, max_element_bytes=1000, chunk=100))


# ---------------------------------------------------------------------------- memory


def _big_export(path: Path, conversations: int, messages: int, text_chars: int) -> int:
    """Write a linear-conversations export to ``path``; return its size."""
    with open(path, "wb") as f:
        f.write(b"[")
        for c in range(conversations):
            mapping: dict[str, Any] = {"r": node("r", None, ["m0"])}
            for i in range(messages):
                role = "user" if i % 2 == 0 else "assistant"
                text = f"{c}-{i} " + "lorem ipsum " * (text_chars // 12)
                nxt = [f"m{i + 1}"] if i + 1 < messages else []
                parent = f"m{i - 1}" if i else "r"
                mapping[f"m{i}"] = node(f"m{i}", parent, nxt, msg(f"m{i}", role, text, T0 + i))
            conv = {"title": f"c{c}", "create_time": T0, "mapping": mapping}
            conv["current_node"] = f"m{messages - 1}"
            f.write((b"," if c else b"") + orjson.dumps(conv))
        f.write(b"]")
        return f.tell()


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
async def test_chatgpt_import_of_36_mb_runs_in_bounded_memory(
    server_process: Any, tmp_path: Path
) -> None:
    """A 36 MB conversations.json imports (every conversation) while the server's peak
    RSS grows by less than the file: it is stream-parsed, one conversation at a time."""
    small, big = tmp_path / "small.json", tmp_path / "big.json"
    _big_export(small, 2, 300, 2000)  # the same shape: every buffer reaches its size
    size = _big_export(big, 60, 300, 2000)
    assert size > 36 << 20
    srv = server_process()
    await srv.wait_ready()
    timeout = aiohttp.ClientTimeout(total=TIMEOUT * 10)
    headers = {"Content-Type": "application/json"}
    url = f"{srv.url}/api/sessions/import?format=chatgpt"
    async with aiohttp.ClientSession(timeout=timeout) as s:
        async with s.post(url, data=io.BytesIO(small.read_bytes()), headers=headers) as r:
            assert r.status == 201, await r.text()  # warm up every code path first
        base = _peak_rss_kib(srv.proc.pid)
        async with s.post(url, data=io.BytesIO(big.read_bytes()), headers=headers) as r:
            assert r.status == 201, await r.text()
            assert (await r.json())["count"] == 60
        peak = _peak_rss_kib(srv.proc.pid)
    # KiB: about half the file at most (measured: +11 MB for a 6 MB file, +17 MB for
    # 39 MB: one conversation's worth, plus caches that fill as sessions are made)
    assert peak - base < 24 << 10, (base, peak)
