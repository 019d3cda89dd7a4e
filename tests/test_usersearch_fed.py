"""The cross-session index fed from commits (storage.usersearch.prepare_fed and
UserIndex.apply_fed; actors.usersearch.UserSearch.feed): events are applied only
where they continue what the index holds, and everything else falls back to
reading the session."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

import actors.usersearch
import storage.usersearch
from storage import userrank
from storage.txn import Event
from storage.usersearch import Doc, UserIndex, prepare_fed
from tests.conftest import append, new_session, registry_of


def _created(seq: int, mid: str, content: str, status: str = "complete") -> Event:
    msg = {
        "id": mid,
        "seq": seq,
        "role": "user",
        "created_at": "2026-12-03T00:00:00.000Z",
        "content": content,
        "status": status,
    }
    return Event(seq, "message.created", orjson.dumps({"type": "message.created", "message": msg}))


def _updated(seq: int, mid: str, content: str) -> Event:
    ev = _created(seq, mid, content)
    return Event(seq, "message.updated", ev.frame)


def _deleted(seq: int, mid: str) -> Event:
    frame = orjson.dumps({"type": "message.deleted", "message_id": mid})
    return Event(seq, "message.deleted", frame)


def _found(idx: UserIndex, word: str) -> list[str]:
    return sorted(h["message_id"] for h in idx.search(word, limit=50))


def _index_at(tmp_path: Path, sid: str, mark: int) -> UserIndex:
    idx = UserIndex(tmp_path / "search.db")
    idx.rebuild_session(sid, [Doc("m0", 1, "user", "2026-12-03T00:00:00Z", "seed")], mark)
    return idx


def test_fed_events_after_the_mark_are_applied_in_order(tmp_path: Path) -> None:
    idx = _index_at(tmp_path, "s", 2)
    events = [
        _created(1, "old", "walrus"),  # at or below the mark: indexed already, skipped
        _created(2, "old2", "walrus"),
        _created(3, "a", "walrus one"),
        _created(4, "b", "walrus two"),
        _updated(5, "a", "narwhal now"),  # the last change of a message wins
        _deleted(6, "b"),
        Event(None, "message.delta", b"{}"),  # ephemeral: not an event of the log
        _created(7, "c", "pending walrus", status="streaming"),  # unfinished: not indexed
    ]
    fed = prepare_fed("s", events)
    assert fed is not None and (fed.first_seq, fed.last_seq) == (1, 7)
    assert idx.apply_fed([fed]) == []
    assert _found(idx, "walrus") == []
    assert _found(idx, "narwhal") == ["a"]
    assert idx.watermark("s") == 7


def test_fed_events_partly_indexed_apply_only_past_the_mark(tmp_path: Path) -> None:
    """A session indexed from its log up to 4 meanwhile: events up to 4 are not
    applied again (an older state of a message must not come back)."""
    idx = _index_at(tmp_path, "s", 2)
    fed = prepare_fed(
        "s", [_created(3, "a", "walrus"), _updated(4, "a", "narwhal"), _created(5, "b", "orca")]
    )
    assert fed is not None
    idx.apply("s", [], 4)  # the log path got there first (a's state is whatever it indexed)
    assert idx.apply_fed([fed]) == []
    assert _found(idx, "walrus") == [] and _found(idx, "narwhal") == []
    assert _found(idx, "orca") == ["b"]
    assert idx.watermark("s") == 5


def test_fed_events_that_do_not_continue_the_index_are_left(tmp_path: Path) -> None:
    idx = _index_at(tmp_path, "s", 2)
    gap = prepare_fed("s", [_created(4, "a", "walrus")])  # 3 never reached the index
    unknown = prepare_fed("t", [_created(1, "b", "walrus")])  # never indexed: rebuild it
    stale = prepare_fed("s", [_created(2, "c", "walrus")])  # nothing past the mark
    assert gap is not None and unknown is not None and stale is not None
    assert sorted(idx.apply_fed([gap, unknown, stale])) == ["s", "t"]
    assert _found(idx, "walrus") == []
    assert idx.watermark("s") == 2 and idx.watermark("t") is None
    assert prepare_fed("s", [_created(3, "a", "x"), _created(5, "b", "y")]) is None  # a gap
    assert prepare_fed("s", [Event(None, "message.delta", b"{}")]) is None  # nothing durable


def _docs(idx: UserIndex) -> list[tuple[Any, ...]]:
    cur = idx.conn.execute(
        "SELECT session_id, message_id, seq, role, created_at, content, ntok, norm, "
        "typeof(seq), typeof(ntok), typeof(norm) FROM docs ORDER BY message_id"
    )
    return cur.fetchall()


def test_one_statement_writes_the_rows_one_by_one_would(tmp_path: Path) -> None:
    """apply_fed writes a batch in one statement over JSON: every column comes out
    as the row-by-row upsert writes it (non-ASCII tokens as a blob, a NUL in the
    text kept whole), and a later batch updates and drops rows in place."""
    texts = {
        "a": "plain walrus",
        "b": "Crème brûlée walrus",  # not ASCII: its tokens are kept (norm)
        "c": "nul\x00inside walrus",  # SQLite's JSON text would stop at the NUL
        "d": 'quotes " and \\ backslash walrus',
        "e": "emoji 🦭 walrus",
    }
    created = [_created(i + 3, mid, text) for i, (mid, text) in enumerate(texts.items())]
    later = [_updated(8, "a", "narwhal now"), _deleted(9, "e"), _created(10, "f", "orca")]
    batched = _index_at(tmp_path / "one", "s", 2)
    fed = prepare_fed("s", created)
    assert fed is not None and batched.apply_fed([fed]) == []
    fed = prepare_fed("s", later)
    assert fed is not None and batched.apply_fed([fed]) == []
    by_row = _index_at(tmp_path / "rows", "s", 2)
    for mid, text in [*texts.items(), ("a", "narwhal now"), ("f", "orca")]:
        doc = Doc(mid, 0, "user", "2026-12-03T00:00:00.000Z", text)
        by_row.conn.execute(
            storage.usersearch._UPSERT_SQL, storage.usersearch._upsert_row("s", doc)
        )
    by_row.conn.execute("DELETE FROM docs WHERE message_id = 'e'")

    def seqless(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        return [row[:2] + row[3:] for row in rows]

    assert seqless(_docs(batched)) == seqless(_docs(by_row))
    rows = {row[1]: row for row in _docs(batched)}
    assert rows["b"][7] == userrank.normalize(texts["b"])[0]  # what ranking reads
    assert rows["c"][5] == "nul\x00inside walrus" and rows["a"][5] == "narwhal now"
    assert (rows["a"][9], rows["a"][10], rows["b"][10]) == ("integer", "null", "blob")
    assert _found(batched, "walrus") == ["b", "c", "d"]
    assert _found(batched, "brulee") == ["b"] and _found(batched, "orca") == ["f"]
    assert batched.watermark("s") == 10


@pytest.mark.parametrize("budget", [0, 2_000])
async def test_search_is_exact_when_the_feed_runs_out_of_room(
    make_client: Any, monkeypatch: pytest.MonkeyPatch, budget: int
) -> None:
    """Past FED_BYTES a session is indexed from its log instead: nothing is missed,
    and edits and deletes still win over what came before them."""
    monkeypatch.setattr(actors.usersearch, "FED_BYTES", budget)
    client = await make_client()
    ids: dict[str, list[str]] = {}
    for sid in ("a", "b", "c"):
        await new_session(client, sid)
        ids[sid] = [(await append(client, sid, f"gecko {sid} {i}"))["id"] for i in range(6)]

    async def hits(q: str) -> list[str]:
        r = await client.get("/api/search", params={"q": q, "limit": 50})
        assert r.status == 200, await r.text()
        return sorted(h["message_id"] for h in (await r.json())["items"])

    assert await hits("gecko") == sorted(m for ms in ids.values() for m in ms)
    r = await client.patch(f"/api/sessions/a/messages/{ids['a'][0]}", json={"content": "iguana"})
    assert r.status == 200
    r = await client.delete(f"/api/sessions/b/messages/{ids['b'][1]}")
    assert r.status == 204
    for i in range(3):
        await append(client, "c", f"iguana late {i}")
    expected = sorted(m for ms in ids.values() for m in ms if m not in (ids["a"][0], ids["b"][1]))
    assert await hits("gecko") == expected
    assert len(await hits("iguana")) == 4


async def test_what_is_left_to_index_goes_in_before_a_clean_stop(make_client: Any) -> None:
    """Closing indexes what was committed since the last round: after a restart the
    last messages are found, though their sessions are never written again."""
    client = await make_client()
    registry_of(client).user_search.delay = 3600.0  # no background round before the stop
    await new_session(client, "s1")
    last = await append(client, "s1", "the capybara arrives last")
    await client.close()
    client = await make_client()
    r = await client.get("/api/search", params={"q": "capybara"})
    assert r.status == 200, await r.text()
    assert [h["message_id"] for h in (await r.json())["items"]] == [last["id"]]
