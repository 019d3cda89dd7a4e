"""The model's context window (issue 21): budgeted history, summaries, compaction,
``/context``, usage. Real session files, a real app on a real socket."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import pytest

from actors.context import ContextPolicy, build_context
from actors.responders import EchoResponder
from actors.session import NewMessage
from server.settings import context_sizes
from storage.context import op_add_summary, plan_compaction, select_context
from storage.file import SessionFile
from storage.layout import DataDir
from storage.lifecycle import create_session_file
from storage.ops import MessageDraft, op_append
from storage.tokens import estimate_message, estimate_text
from tests.conftest import new_session, registry_of

NOW = "2026-01-01T00:00:00.000Z"


def _file(tmp_path: Path, sid: str = "c") -> SessionFile:
    dd = DataDir(tmp_path)
    dd.ensure()
    create_session_file(dd, sid, owner="", title=None, metadata={}, now=NOW)
    return SessionFile(dd, sid)


def _words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(["alpha", "beta", "gamma", "delta", "word"]) for _ in range(n))


def _append_chain(f: SessionFile, n: int, seed: int = 1) -> list[dict[str, Any]]:
    """``n`` messages on one branch (user/assistant alternating), in batches."""
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    for start in range(0, n, 1000):
        ops = [
            op_append(
                MessageDraft(
                    role="user" if i % 2 == 0 else "assistant", content=_words(rng, 5 + i % 17)
                )
            )
            for i in range(start, min(n, start + 1000))
        ]
        results, _, _ = f.run_batch(ops, NOW)
        out.extend(msg for msg, _ in results)
    return out


def test_tokens_estimate_is_stored_with_each_message(tmp_path: Path) -> None:
    """A committed message carries its estimated token count."""
    f = _file(tmp_path)
    [msg] = _append_chain(f, 1)
    assert msg["tokens"] == estimate_message("user", msg["content"]) > 4
    assert f.read_message(msg["id"])["tokens"] == msg["tokens"]
    f.close()


def test_estimate_text_counts_ascii_symbols_and_other_scripts() -> None:
    """Letters count about a fifth of a token, symbols one, other scripts 0.8."""
    assert estimate_text("") == 0
    assert estimate_text("hello") == 1
    assert estimate_text("{}[]()") == 6
    assert estimate_text("日本語のテキスト") == 7


def test_deep_session_context_is_newest_messages_within_budget(tmp_path: Path) -> None:
    """20,000 messages: the context is the newest messages that fit, in path order;
    the next older one would not have fit."""
    f = _file(tmp_path)
    msgs = _append_chain(f, 20_000)
    sel = select_context(f, msgs[-1]["id"], 1500)
    ids = sel.message_ids
    n = len(ids)
    assert ids == [m["id"] for m in msgs[-n:]]
    assert sel.tokens == sum(m["tokens"] for m in msgs[-n:]) <= 1500
    assert sel.tokens + msgs[-n - 1]["tokens"] > 1500
    assert sel.omitted_id == msgs[-n - 1]["id"] and sel.left_out
    f.close()


def test_deep_session_context_uses_summaries_for_what_is_left_out(tmp_path: Path) -> None:
    """20,000 messages with the old part summarized: the newest messages, then the
    summary in place of its range, and nothing inside the range is sent."""
    f = _file(tmp_path)
    msgs = _append_chain(f, 20_000)
    [(summary, created)], _, _ = f.run_batch(
        [
            op_add_summary(
                msgs[0]["id"], msgs[-41]["id"], "the first 19,960 messages", model_id=None
            )
        ],
        NOW,
    )
    assert created
    sel = select_context(f, msgs[-1]["id"], 5000)
    assert sel.summary_ids == [summary["id"]]
    assert sel.message_ids == [m["id"] for m in msgs[-40:]]
    assert sel.items[0].kind == "summary" and sel.omitted_id is None
    assert sel.tokens == summary["tokens"] + sum(m["tokens"] for m in msgs[-40:])
    assert sel.uncovered_tokens == sum(m["tokens"] for m in msgs[-40:])
    f.close()


def _tool_session(f: SessionFile, rounds: int) -> list[dict[str, Any]]:
    """A chain of rounds: user, assistant with 1-3 tool calls, their tool results."""
    rng = random.Random(7)
    out: list[dict[str, Any]] = []
    for r in range(rounds):
        ops = [op_append(MessageDraft(role="user", content=_words(rng, 3 + r % 5)))]
        calls = [
            {"type": "tool-call", "tool_call_id": f"c{r}_{k}", "tool_name": "t", "args": {"k": k}}
            for k in range(1 + r % 3)
        ]
        ops.append(op_append(MessageDraft(role="assistant", content="", parts=calls)))
        for c in calls:
            ops.append(
                op_append(
                    MessageDraft(
                        role="tool",
                        content=_words(rng, 2 + r % 4),
                        tool_result={"tool_call_id": c["tool_call_id"], "output": 1},
                    )
                )
            )
        results, _, _ = f.run_batch(ops, NOW)
        out.extend(m for m, _ in results)
    return out


def test_tool_call_is_never_split_from_its_results_at_the_budget_edge(tmp_path: Path) -> None:
    """At every budget, the context starts with no tool result whose call is left out."""
    f = _file(tmp_path)
    msgs = _tool_session(f, 40)
    role = {m["id"]: m["role"] for m in msgs}
    for budget in range(8, 1200, 3):
        sel = select_context(f, msgs[-1]["id"], budget)
        ids = sel.message_ids
        assert sel.tokens <= budget
        if ids:
            assert role[ids[0]] != "tool", budget
        assert ids == [m["id"] for m in msgs[len(msgs) - len(ids) :]]
    f.close()


def test_compaction_range_never_ends_between_a_call_and_its_results(tmp_path: Path) -> None:
    """The planned range ends before a round's user message or after its last result."""
    f = _file(tmp_path)
    msgs = _tool_session(f, 30)
    role = {m["id"]: m["role"] for m in msgs}
    index = {m["id"]: i for i, m in enumerate(msgs)}
    for keep in range(10, 400, 7):
        plan = plan_compaction(f, msgs[-1]["id"], keep_tokens=keep, max_tokens=10_000)
        assert plan is not None
        after = msgs[index[plan.to_id] + 1]
        assert role[after["id"]] != "tool", keep
    f.close()


def test_build_context_budget_is_window_less_reserve_and_system_prompt(tmp_path: Path) -> None:
    """The message budget is window * (1 - reserve) less the fixed tokens."""
    f = _file(tmp_path)
    msgs = _append_chain(f, 300)
    policy = ContextPolicy({"*": 1000, "big": 100_000}, 0.25, 0.6)
    ctx = build_context(f, policy, msgs[-1]["id"], model=None, responder=EchoResponder())
    assert ctx.record["window"] == 1000 and ctx.record["budget"] == 750
    assert ctx.record["message_budget"] == 750 - ctx.record["fixed_tokens"]
    assert ctx.record["tokens"] <= 750
    assert [m["id"] for m in ctx.history] == ctx.selection.message_ids
    big = build_context(f, policy, msgs[-1]["id"], model="big", responder=EchoResponder())
    assert big.selection.message_ids == [m["id"] for m in msgs]
    f.close()


def test_model_context_setting_parses_and_refuses_bad_values() -> None:
    """--model-context is a JSON object of positive sizes; "*" defaults to 8192."""
    assert context_sizes('{"m": 500}') == {"*": 8192, "m": 500}
    for bad in ("[1]", "{", '{"m": "x"}', '{"m": 0}', '{"m": true}'):
        with pytest.raises(ValueError):
            context_sizes(bad)


# ---------------------------------------------------------------------------- over HTTP


async def _chat(client: Any, sid: str, content: str, **body: Any) -> dict[str, Any]:
    r = await client.post(
        f"/api/sessions/{sid}/chat",
        json={"content": content, **body},
        headers={"Accept": "application/json"},
    )
    assert r.status == 201, await r.text()
    data: dict[str, Any] = await r.json()
    final: dict[str, Any] = data["assistant_message"]
    return final


async def _context(client: Any, sid: str, leaf: str | None = None) -> dict[str, Any]:
    r = await client.get(f"/api/sessions/{sid}/context", params={"leaf_id": leaf} if leaf else None)
    assert r.status == 200, await r.text()
    data: dict[str, Any] = await r.json()
    return data


async def _compact(client: Any, sid: str, leaf: str | None = None) -> tuple[int, dict[str, Any]]:
    r = await client.post(f"/api/sessions/{sid}/compact", json={"leaf_id": leaf} if leaf else {})
    data: dict[str, Any] = await r.json()
    return r.status, data


SMALL = {"echo_words_per_second": 0, "model_context": '{"*": 400}', "compact_at": 0}


async def test_compaction_on_two_branches_gives_each_its_own_summary(make_client: Any) -> None:
    """Each branch gets its own summary; switching branches switches what is sent;
    export then import keeps the summaries and the same /context."""
    client = await make_client(**SMALL)
    await new_session(client)
    first = await _chat(client, "s1", "the very first question about apples")
    leaves = {}
    for branch in ("red", "blue"):
        fork = {"parent_id": first["id"]}  # the branches fork after the first exchange
        for i in range(12):
            text = f"{branch} branch message {i} " + "lorem ipsum " * 8
            last = await _chat(client, "s1", text, **(fork if i == 0 else {}))
        leaves[branch] = last["id"]
    status, red = await _compact(client, "s1", leaves["red"])
    assert status == 201 and red["summary"]["created"]
    status, blue = await _compact(client, "s1", leaves["blue"])
    assert status == 201
    red_ids = [x["id"] for x in red["summaries"]]
    blue_ids = [x["id"] for x in blue["summaries"]]
    red_id, blue_id = red_ids[-1], blue_ids[-1]
    assert not set(red_ids) & set(blue_ids)
    red_ctx = await _context(client, "s1", leaves["red"])
    blue_ctx = await _context(client, "s1", leaves["blue"])
    # each branch sends its own summaries, the newest ones that fit, oldest first
    for ctx, ids in ((red_ctx, red_ids), (blue_ctx, blue_ids)):
        n = len(ctx["summary_ids"])
        assert n >= 1 and ctx["summary_ids"] == ids[len(ids) - n :]
    assert not set(red_ctx["message_ids"]) & set(blue_ctx["message_ids"])
    assert red_ctx["tokens"] <= red_ctx["budget"]
    # the active branch is blue (the last one chatted on); switching switches /context
    assert (await _context(client, "s1")) == blue_ctx
    r = await client.patch("/api/sessions/s1", json={"active_leaf_id": leaves["red"]})
    assert r.status == 200
    assert (await r.json())["active_leaf_id"] == leaves["red"]
    assert (await _context(client, "s1")) == red_ctx
    # the same compaction again: the branch has it already
    status, again = await _compact(client, "s1", leaves["red"])
    assert status == 200 and again["summaries"] == []
    # export, import: the summaries and /context are the same
    r = await client.get("/api/sessions/s1/export")
    assert r.status == 200
    doc = await r.json()
    assert {s["id"] for s in doc["summaries"]} >= {red_id, blue_id}
    r = await client.post(
        "/api/sessions/import", json={**doc, "session": {**doc["session"], "id": None}}
    )
    assert r.status == 201, await r.text()
    copy = (await r.json())["id"]
    for name, ctx in (("red", red_ctx), ("blue", blue_ctx)):
        got = await _context(client, copy, leaves[name])
        assert got == ctx, name
    # the messages stay readable in full
    r = await client.get("/api/sessions/s1/messages", params={"view": "all", "limit": 200})
    assert r.status == 200 and len((await r.json())["items"]) == 2 + 2 * 12 * 2


async def test_compaction_runs_after_a_reply_past_the_threshold(make_client: Any) -> None:
    """With --compact-at, a long chat gets summaries on its own and stays in budget."""
    client = await make_client(echo_words_per_second=0, model_context='{"*": 400}', compact_at=0.5)
    await new_session(client)
    actor = None
    for i in range(20):
        last = await _chat(client, "s1", f"message {i} " + "some words here " * 6)
        actor = registry_of(client).actor_if_live("s1")
        assert actor is not None
        await actor.compactor.wait_idle()
    assert actor is not None and actor.compactor.compactions >= 2
    ctx = await _context(client, "s1")
    assert ctx["summary_ids"] and ctx["tokens"] <= ctx["budget"]
    assert ctx["message_ids"][-1] == last["id"]


async def test_reply_records_its_context_and_usage(make_client: Any) -> None:
    """A reply stores the context it answered and its usage; the metric counts it."""
    client = await make_client(**SMALL)
    await new_session(client)
    await _chat(client, "s1", "hello there")
    before = await _context(client, "s1")
    final = await _chat(client, "s1", "second question")
    r = await client.get(f"/api/sessions/s1/messages/{final['id']}")
    msg = await r.json()
    ctx = msg["context"]
    assert ctx["message_count"] == len(before["message_ids"]) + 1
    assert (
        ctx["runs"][0][0] == before["message_ids"][0] and ctx["runs"][-1][1] == final["parent_id"]
    )
    assert ctx["tokens"] <= ctx["budget"] and ctx["window"] == 400
    usage = msg["usage"]
    assert usage["source"] == "estimate" and usage["prompt_tokens"] == ctx["tokens"]
    assert usage["completion_tokens"] == estimate_text("second question")
    assert usage["ttft_ms"] is not None and usage["model"] == "echo"
    r = await client.get("/metrics")
    text = await r.text()
    assert 'roost_tokens_total{kind="prompt",model="echo"}' in text


async def test_context_of_unknown_leaf_is_404_and_bad_compact_body_is_400(
    make_client: Any,
) -> None:
    """Bad input: a clear 4xx JSON error, nothing changed."""
    client = await make_client(**SMALL)
    await new_session(client)
    r = await client.get("/api/sessions/s1/context", params={"leaf_id": "nope"})
    assert r.status == 404 and (await r.json())["error"]["code"] == "not_found"
    r = await client.get("/api/sessions/s1/context?leaf_id=")
    assert r.status == 400
    r = await client.post("/api/sessions/s1/compact", json={"leaf_id": 5})
    assert r.status == 400
    r = await client.post("/api/sessions/s1/compact", json={"leaf_id": "nope"})
    assert r.status == 404
    status, empty = await _compact(client, "s1")
    assert status == 200 and empty == {"summary": None, "summaries": []}
    assert (await _context(client, "s1"))["message_ids"] == []


async def test_deep_session_over_http_context_fits_budget(make_client: Any) -> None:
    """20,000 messages appended through the actor: /context fits the budget and ends
    at the leaf; a compaction makes a summary cover what was left out."""
    client = await make_client(**SMALL)
    await new_session(client)
    async with registry_of(client).session("s1") as s:
        last = None
        for start in range(0, 20_000, 500):
            results = await asyncio.gather(
                *(
                    s.append(NewMessage(role="user", content=f"note {i} alpha beta gamma"))
                    for i in range(start, start + 500)
                )
            )
            last = results[-1][0]
    assert last is not None
    ctx = await _context(client, "s1")
    assert ctx["message_ids"][-1] == last["id"] and ctx["tokens"] <= ctx["budget"]
    # --compact-at 0: nothing compacts on its own
    assert ctx["omitted_id"] is not None and ctx["needs_compaction"] is False
    # on demand, the oldest uncovered ranges are summarized first (from the root)
    status, made = await _compact(client, "s1")
    assert status == 201 and len(made["summaries"]) == 8
    r = await client.get("/api/sessions/s1/messages", params={"view": "all", "limit": 1})
    assert r.status == 200
    assert made["summaries"][0]["covered"] >= 2
    after = await _context(client, "s1")
    assert after["message_ids"][-1] == last["id"] and after["tokens"] <= after["budget"]


def test_file_from_before_v5_gets_token_estimates_on_open(tmp_path: Path) -> None:
    """A v4 file's messages get a byte-based token estimate when it migrates."""
    import sqlite3

    from storage.schema import SESSION_MIGRATIONS, split_statements

    dd = DataDir(tmp_path)
    dd.ensure()
    folder = dd.session_dir("old")
    folder.mkdir(parents=True)
    conn = sqlite3.connect(folder / "session.db")
    for script in SESSION_MIGRATIONS[:4]:
        for stmt in split_statements(script):
            conn.execute(stmt)
    conn.execute("PRAGMA user_version = 4")
    conn.execute("INSERT INTO session (id, created_at, updated_at) VALUES ('old', 't', 't')")
    conn.execute(
        "INSERT INTO messages (seq, id, depth, sibling_index, role, content, status, "
        "created_at, updated_at) VALUES (1, 'm1', 0, 0, 'user', ?, 'complete', 't', 't')",
        ("x" * 100,),
    )
    conn.commit()
    conn.close()
    f = SessionFile(dd, "old")
    assert f.read_message("m1")["tokens"] == 4 + 20
    assert select_context(f, "m1", 100).message_ids == ["m1"]
    f.close()
