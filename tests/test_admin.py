"""The admin script (issue 6): offline against a data dir built with ``storage``,
and live against a real server process being written to."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from scripts import admin
from storage.catalog import Catalog
from storage.export import export_json_chunks, export_markdown_chunks
from storage.file import SessionFile
from storage.ids import now_iso
from storage.layout import DataDir
from storage.lifecycle import create_session_file
from storage.ops import MessageDraft, op_append, op_delete_message
from storage.schema import SESSION_MIGRATIONS
from tests.harness import Appender, Appenders, running_server

REPO = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- offline data dir


def _append(sf: SessionFile, role: str, content: str, parent: str | None = None) -> dict[str, Any]:
    draft = MessageDraft(role, content, parent_id=parent)
    results, _, _ = sf.run_batch([op_append(draft)], now_iso())
    msg, _created = results[0]
    return dict(msg)


@pytest.fixture
def datadir(tmp_path: Path) -> dict[str, Any]:
    """A data dir: ``s1`` (a fork and a tombstone), ``empty`` and ``big`` (~300 messages).

    s1's tree: u1 -> a1 | u1 -> a2 -> u2 -> (deleted); active leaf u2.
    """
    dd = DataDir(tmp_path / "data")
    dd.ensure()
    cat = Catalog(dd)
    ids: dict[str, Any] = {}
    try:
        for sid, owner, title in (("s1", "alice", "Hello"), ("empty", "", None), ("big", "", None)):
            create_session_file(dd, sid, owner=owner, title=title, metadata={}, now=now_iso())
            sf = SessionFile(dd, sid)
            try:
                if sid == "s1":
                    u1 = _append(sf, "user", "hi there")
                    a1 = _append(sf, "assistant", "first answer\nsecond line")
                    a2 = _append(sf, "assistant", "other answer", parent=u1["id"])
                    u2 = _append(sf, "user", "and then?")
                    gone = _append(sf, "user", "to be deleted")
                    sf.run_batch([op_delete_message(gone["id"])], now_iso())
                    ids.update(u1=u1["id"], a1=a1["id"], a2=a2["id"], u2=u2["id"], gone=gone["id"])
                elif sid == "big":
                    drafts = [
                        op_append(MessageDraft("user", f"message {i} " + "x" * 400))
                        for i in range(300)
                    ]
                    sf.run_batch(drafts, now_iso())
                cat.upsert_many([(owner, sf.read_session())])
            finally:
                sf.close()
    finally:
        cat.close()
    return {"root": dd.root, "dd": dd, "ids": ids}


def run(capsys: pytest.CaptureFixture[str], root: Path, *argv: str) -> tuple[int, str, str]:
    """Run the admin script in-process; return (exit code, stdout, stderr)."""
    code = admin.main(["--data-dir", str(root), *argv])
    out, err = capsys.readouterr()
    return code, out, err


def tree_state(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` with its size and mtime."""
    return {
        str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()
    }


def corrupt(path: Path) -> None:
    """Overwrite bytes in the middle of every page after the first two."""
    data = bytearray(path.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    for start in range(2 * page, len(data), page):
        mid = start + page // 2
        data[mid - 64 : mid + 64] = b"\xa5" * 128
    path.write_bytes(bytes(data))


# --------------------------------------------------------------------------- sessions


def test_sessions_lists_catalog_with_counts_and_sizes(capsys, datadir):
    code, out, _ = run(capsys, datadir["root"], "sessions")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["ID", "OWNER", "MESSAGES", "SIZE"]
    s1 = next(line for line in lines if line.startswith("s1 "))
    assert s1.split()[1:3] == ["alice", "4"]
    assert "KiB" in s1
    assert lines[-1] == "3 sessions"


def test_sessions_json_carries_same_facts_as_table(capsys, datadir):
    _, table_out, _ = run(capsys, datadir["root"], "sessions")
    code, out, _ = run(capsys, datadir["root"], "sessions", "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["count"] == 3
    by_id = {s["id"]: s for s in doc["sessions"]}
    for line in table_out.splitlines()[1:-1]:
        sid, owner, count = line.split()[:3]
        assert by_id[sid]["message_count"] == int(count)
        assert (by_id[sid]["owner"] or "-") == owner
        assert by_id[sid]["last_activity"] in line
    assert by_id["s1"]["db_bytes"] > 0 and by_id["s1"]["in_catalog"] and by_id["s1"]["on_disk"]


def test_sessions_flags_file_missing_from_catalog(capsys, datadir):
    dd: DataDir = datadir["dd"]
    create_session_file(dd, "orphan", owner="bob", title=None, metadata={}, now=now_iso())
    code, out, _ = run(capsys, datadir["root"], "sessions", "--json")
    orphan = next(s for s in json.loads(out)["sessions"] if s["id"] == "orphan")
    assert code == 0
    assert orphan["in_catalog"] is False and orphan["owner"] == "bob"


# --------------------------------------------------------------------------- show


def test_show_reports_roles_branches_leaf_and_checks(capsys, datadir):
    code, out, _ = run(capsys, datadir["root"], "show", "s1")
    assert code == 0
    text = out
    assert "4 live, 1 deleted" in text
    assert "assistant 2, user 2" in text
    assert "2 leaves, 1 fork points" in text
    assert datadir["ids"]["u2"] in text
    assert f"schema version     {len(SESSION_MIGRATIONS)}" in text
    assert "integrity_check    ok" in text and "foreign_key_check  ok" in text
    assert out.splitlines()[0].split() == ["session", "s1"]


def test_show_json_carries_same_facts_as_table(capsys, datadir):
    _, table_out, _ = run(capsys, datadir["root"], "show", "s1")
    code, out, _ = run(capsys, datadir["root"], "show", "s1", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["ok"] is True
    assert doc["messages"]["live"] == 4 and doc["messages"]["deleted"] == 1
    assert doc["messages"]["by_role"] == {"assistant": 2, "user": 2}
    assert doc["branches"]["leaves"] == 2 and doc["branches"]["fork_points"] == 1
    assert doc["active_leaf"]["id"] == datadir["ids"]["u2"]
    assert doc["integrity_check"] == ["ok"] and doc["foreign_key_check"] == []
    assert doc["schema_version"] == len(SESSION_MIGRATIONS) and doc["files"]["db_bytes"] > 0
    assert f"{doc['active_leaf']['id']} (seq {doc['active_leaf']['seq']}" in table_out
    assert doc["session"]["updated_at"] in table_out


# --------------------------------------------------------------------------- messages


def test_messages_before_cursor_pages_back_through_the_log(capsys, datadir):
    code, out, _ = run(capsys, datadir["root"], "messages", "big", "--limit", "100", "--json")
    page1 = json.loads(out)
    assert code == 0
    assert [m["seq"] for m in page1["items"]] == list(range(201, 301))
    _, out, _ = run(
        capsys, datadir["root"], "messages", "big", "--limit", "250", "--before", page1["before"]
    )
    rows = out.splitlines()[1:]
    assert [int(r.split()[0]) for r in rows] == list(range(1, 201))


def test_messages_hides_tombstones_unless_asked(capsys, datadir):
    _, out, _ = run(capsys, datadir["root"], "messages", "s1", "--json")
    assert datadir["ids"]["gone"] not in out
    _, out, _ = run(capsys, datadir["root"], "messages", "s1", "--json", "--deleted")
    gone = [m for m in json.loads(out)["items"] if m["deleted"]]
    assert [m["id"] for m in gone] == [datadir["ids"]["gone"]]


def test_messages_bad_cursor_exits_2(capsys, datadir):
    code, _, err = run(capsys, datadir["root"], "messages", "s1", "--before", "nonsense!")
    assert code == 2 and "--before" in err


# --------------------------------------------------------------------------- tree


def test_tree_draws_fork_and_marks_active_path(capsys, datadir):
    code, out, _ = run(capsys, datadir["root"], "tree", "s1")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "*#1 user: hi there"
    assert lines[1].startswith("├─  #2 assistant")
    assert lines[2].startswith("└─ *#3 assistant")
    assert lines[3] == "   *#4 user: and then?"
    assert lines[4] == "    #5 user: (deleted)"


def test_tree_json_lists_children_and_active_nodes(capsys, datadir):
    ids = datadir["ids"]
    code, out, _ = run(capsys, datadir["root"], "tree", "s1", "--json")
    doc = json.loads(out)
    nodes = {n["id"]: n for n in doc["nodes"]}
    assert code == 0 and doc["leaves"] == 2
    assert nodes[ids["u1"]]["children"] == [ids["a1"], ids["a2"]]
    assert [n["id"] for n in doc["nodes"] if n["active"]] == [ids["u1"], ids["a2"], ids["u2"]]
    assert nodes[ids["gone"]]["deleted"] is True


# --------------------------------------------------------------------------- export


def test_export_json_holds_every_message_with_tombstones(capsys, datadir):
    code, out, _ = run(capsys, datadir["root"], "export", "s1", "--format", "json")
    doc = json.loads(out)
    assert code == 0
    assert doc["format"] == "roost.session.v1" and doc["attachments"] == []
    assert doc["session"]["id"] == "s1" and doc["session"]["owner"] == "alice"
    assert doc["active_leaf_id"] == datadir["ids"]["u2"]
    assert [m["seq"] for m in doc["messages"]] == [1, 2, 3, 4, 5]
    assert [m["deleted"] for m in doc["messages"]] == [False] * 4 + [True]
    assert set(doc["messages"][0]) >= {"id", "session_id", "role", "content", "parent_id"}


def test_export_markdown_renders_active_path(capsys, datadir):
    code, out, _ = run(capsys, datadir["root"], "export", "s1", "--format", "markdown")
    assert code == 0
    assert out == (
        "# Hello\n\n## user\n\nhi there\n\n## assistant\n\nother answer\n\n## user\n\nand then?\n\n"
    )


def test_export_output_file_written_atomically(capsys, datadir, tmp_path):
    target = tmp_path / "out.json"
    code, out, _ = run(capsys, datadir["root"], "export", "big", "-o", str(target))
    assert code == 0 and out == ""
    assert len(json.loads(target.read_bytes())["messages"]) == 300
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_export_renderers_consume_iterables_lazily():
    pulled: list[int] = []

    def gen() -> Iterator[dict[str, Any]]:
        for i in range(3):
            pulled.append(i)
            yield {"seq": i, "role": "user", "content": f"c{i}", "deleted": i == 1}

    chunks = export_json_chunks({"id": "x", "active_leaf_id": None}, gen(), exported_at="t")
    head = next(chunks)
    assert pulled == []
    doc = json.loads(head + b"".join(chunks))
    assert [m["seq"] for m in doc["messages"]] == [0, 1, 2]
    md = "".join(export_markdown_chunks({"id": "x", "title": None}, gen()))
    assert md == "# x\n\n## user\n\nc0\n\n## user\n\nc2\n\n"


# --------------------------------------------------------------------------- check


def test_check_passes_on_healthy_sessions(capsys, datadir):
    code, out, err = run(capsys, datadir["root"], "check", "--all")
    assert code == 0
    assert out.strip().endswith("all 4 checked: ok")
    assert (out + err).count("checked") == 1  # one summary, not one per stream


def test_check_fails_on_corrupted_file(capsys, datadir):
    corrupt(datadir["dd"].session_db("big"))
    code, out, _ = run(capsys, datadir["root"], "check", "big")
    assert code == 1
    assert "FAIL  big: integrity: " in out or ("FAIL  big: " in out and "is damaged" in out)
    assert out.strip().endswith("1 of 1 checked have problems")


def test_check_all_fails_on_one_corrupted_session(capsys, datadir):
    corrupt(datadir["dd"].session_db("big"))
    code, out, _ = run(capsys, datadir["root"], "check", "--all", "--json")
    doc = json.loads(out)
    assert code == 1 and doc["ok"] is False and doc["failed"] == 1
    assert [r["session_id"] for r in doc["results"] if not r["ok"]] == ["big"]


def test_check_reports_file_holding_another_session(capsys, datadir):
    dd: DataDir = datadir["dd"]
    dd.session_db("empty").write_bytes(dd.session_db("s1").read_bytes())
    code, out, _ = run(capsys, datadir["root"], "check", "empty")
    assert code == 1 and "holds session 's1'" in out


def test_check_all_draws_progress_bar_when_asked(capsys, datadir):
    code, _, err = run(capsys, datadir["root"], "check", "--all", "--progress")
    assert code == 0
    assert "\r[" in err and "4/4" in err


# --------------------------------------------------------------------------- errors


def test_missing_data_dir_exits_2(capsys, tmp_path):
    code, _, err = run(capsys, tmp_path / "nope", "sessions")
    assert code == 2 and "does not exist" in err


def test_unknown_session_exits_2(capsys, datadir):
    code, _, err = run(capsys, datadir["root"], "show", "ghost")
    assert code == 2 and "unknown session 'ghost'" in err


def test_invalid_session_id_exits_2(capsys, datadir):
    code, _, err = run(capsys, datadir["root"], "show", "../etc")
    assert code == 2 and "not a valid session id" in err


def test_file_that_is_not_a_database_exits_2(capsys, datadir):
    datadir["dd"].session_db("empty").write_bytes(b"hello, I am not SQLite" * 100)
    code, _, err = run(capsys, datadir["root"], "show", "empty")
    assert code == 2 and "not a SQLite database" in err


def test_sqlite_file_without_roost_schema_exits_2(capsys, datadir):
    path = datadir["dd"].session_db("empty")
    path.unlink()
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    code, _, err = run(capsys, datadir["root"], "messages", "empty")
    assert code == 2 and "not a Roost session database" in err


def test_read_commands_leave_data_dir_untouched(capsys, datadir):
    root = datadir["root"]
    before = tree_state(root)
    for argv in (
        ["sessions"],
        ["show", "s1"],
        ["messages", "s1"],
        ["messages", "s1", "--follow", "--timeout", "0.3", "--interval", "0.05"],
        ["tree", "s1"],
        ["export", "s1"],
        ["check", "--all"],
    ):
        assert run(capsys, root, *argv)[0] == 0, argv
    assert tree_state(root) == before


# --------------------------------------------------------------------------- backup / restore


def test_backup_writes_consistent_standalone_copy(capsys, datadir, tmp_path):
    dest = tmp_path / "b.db"
    code, out, _ = run(capsys, datadir["root"], "backup", "s1", str(dest), "--json")
    report = json.loads(out)
    assert code == 0 and report["ok"] and report["messages"] == 4 and report["rows"] == 5
    conn = sqlite3.connect(f"file:{dest}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.db", "data"]


def test_backup_refuses_existing_dest_without_force(capsys, datadir, tmp_path):
    dest = tmp_path / "b.db"
    dest.write_text("precious")
    code, _, err = run(capsys, datadir["root"], "backup", "s1", str(dest))
    assert code == 2 and "--force" in err and dest.read_text() == "precious"


def test_restore_with_rename_makes_a_new_listed_session(capsys, datadir, tmp_path):
    dest = tmp_path / "b.db"
    run(capsys, datadir["root"], "backup", "s1", str(dest))
    code, _, _ = run(capsys, datadir["root"], "restore", str(dest), "copy", "--rename")
    assert code == 0
    sf = SessionFile(datadir["dd"], "copy")
    try:
        assert sf.read_session()["message_count"] == 4
        assert sf.read_session()["id"] == "copy"
    finally:
        sf.close()
    _, out, _ = run(capsys, datadir["root"], "sessions", "--json")
    assert "copy" in {s["id"] for s in json.loads(out)["sessions"] if s["in_catalog"]}
    assert run(capsys, datadir["root"], "check", "copy")[0] == 0


def test_restore_replaces_existing_session_file(capsys, datadir, tmp_path):
    dest = tmp_path / "b.db"
    run(capsys, datadir["root"], "backup", "s1", str(dest))
    sf = SessionFile(datadir["dd"], "s1")
    try:
        _append(sf, "user", "after the backup")
    finally:
        sf.close()
    code, out, _ = run(capsys, datadir["root"], "restore", str(dest), "s1")
    assert code == 0 and "replaced" in out
    _, out, _ = run(capsys, datadir["root"], "messages", "s1", "--json")
    assert "after the backup" not in out and len(json.loads(out)["items"]) == 4


def test_restore_refuses_other_session_id_without_rename(capsys, datadir, tmp_path):
    dest = tmp_path / "b.db"
    run(capsys, datadir["root"], "backup", "s1", str(dest))
    code, _, err = run(capsys, datadir["root"], "restore", str(dest), "empty")
    assert code == 2 and "--rename" in err


def test_restore_refuses_source_that_is_not_roost(capsys, datadir, tmp_path):
    src = tmp_path / "junk.db"
    src.write_bytes(b"junk" * 1000)
    code, _, err = run(capsys, datadir["root"], "restore", str(src), "s1")
    assert code == 2 and "not a SQLite database" in err


# --------------------------------------------------------------------------- a real server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A real ``roost serve`` process on a free port and a temporary data dir."""
    data = tmp_path_factory.mktemp("live") / "data"
    with running_server(data) as proc:
        yield {"base": proc.url, "data": data}


async def admin_proc(data: Path, *argv: str) -> tuple[int, str, str]:
    """Run ``python -m scripts.admin`` as a subprocess without blocking the loop."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "scripts.admin",
        "--data-dir",
        str(data),
        *argv,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    return proc.returncode or 0, out.decode(), err.decode()


async def _new_session(http: aiohttp.ClientSession, base: str, sid: str) -> None:
    async with http.post(f"{base}/api/sessions", json={"id": sid}) as resp:
        assert resp.status == 201


async def _with_writers(
    server: dict[str, Any], sid: str, n: int = 2
) -> tuple[aiohttp.ClientSession, Appenders]:
    """``n`` appenders writing to a new session ``sid`` (one message acknowledged already)."""
    http = aiohttp.ClientSession()
    await _new_session(http, server["base"], sid)
    writers = Appenders([Appender(http, server["base"], sid, name=f"w{i}") for i in range(n)])
    await writers.appenders[0].post("first")
    return http, writers.start(pause=0.005)


async def _stop(http: aiohttp.ClientSession, writers: Appenders) -> None:
    await writers.stop()
    await http.close()


async def test_show_works_while_server_writes(server):
    http, writers = await _with_writers(server, "live-show")
    try:
        results = [
            await admin_proc(server["data"], "show", "live-show", "--json") for _ in range(3)
        ]
        acked_during = writers.count
    finally:
        await _stop(http, writers)
    for code, out, err in results:
        doc = json.loads(out)
        assert code == 0, err
        assert doc["ok"] and doc["integrity_check"] == ["ok"] and doc["roost_check"] == []
        assert doc["files"]["wal_bytes"] > 0
    assert json.loads(results[-1][1])["messages"]["live"] >= 1
    assert acked_during > 3 and not writers.failures


async def test_follow_prints_messages_as_committed(server):
    http = aiohttp.ClientSession()
    try:
        await _new_session(http, server["base"], "live-follow")
        writer = Appender(http, server["base"], "live-follow")
        await writer.post("already there")
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "scripts.admin",
            "--data-dir",
            str(server["data"]),
            "messages",
            "live-follow",
            "--limit",
            "1",
            "--follow",
            "--json",
            "--count",
            "5",
            "--timeout",
            "20",
            "--interval",
            "0.05",
            cwd=REPO,
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            assert proc.stdout is not None
            first = json.loads(await asyncio.wait_for(proc.stdout.readline(), 10))
            assert first["content"] == "already there"
            sent = [(await writer.post(f"new {i}"))["id"] for i in range(5)]
            seen = [json.loads(await asyncio.wait_for(proc.stdout.readline(), 10)) for _ in sent]
            assert await asyncio.wait_for(proc.wait(), 10) == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    finally:
        await http.close()
    assert [m["id"] for m in seen] == sent
    assert [m["content"] for m in seen] == [f"new {i}" for i in range(5)]


async def test_backup_during_writes_holds_every_acknowledged_message(server, tmp_path):
    http, writers = await _with_writers(server, "live-backup")
    dest = tmp_path / "backup.db"
    try:
        await writers.wait_acked(20)  # the session holds a history before the backup
        acked_before = writers.acked_ids
        n_before = writers.count
        code, _, err = await admin_proc(server["data"], "backup", "live-backup", str(dest))
        n_after = writers.count
    finally:
        await _stop(http, writers)
    assert code == 0, err
    assert n_after > n_before  # the server kept committing while the backup ran
    conn = sqlite3.connect(f"file:{dest}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        ids = {r[0] for r in conn.execute("SELECT id FROM messages")}
        count = conn.execute("SELECT message_count FROM session").fetchone()[0]
    finally:
        conn.close()
    assert acked_before <= ids
    assert count == len(ids)


async def test_admin_commands_never_block_server_writes(server, tmp_path):
    http, writers = await _with_writers(server, "live-latency")
    try:
        for argv in (
            ["check", "live-latency"],
            ["backup", "live-latency", str(tmp_path / "b.db")],
            ["export", "live-latency"],
            ["tree", "live-latency"],
        ):
            code, _, err = await admin_proc(server["data"], *argv)
            assert code == 0, (argv, err)
    finally:
        await _stop(http, writers)
    latencies = [x for w in writers.appenders for x in w.latencies]
    assert not writers.failures
    assert len(latencies) > 10
    assert max(latencies) < 2.0


async def test_restore_refuses_session_live_in_server(server, tmp_path):
    http = aiohttp.ClientSession()
    try:
        await _new_session(http, server["base"], "live-restore")
        writer = Appender(http, server["base"], "live-restore")
        await writer.post("keep me")
        dest = tmp_path / "b.db"
        assert (await admin_proc(server["data"], "backup", "live-restore", str(dest)))[0] == 0
        await writer.post("written after the backup")
        code, _, err = await admin_proc(server["data"], "restore", str(dest), "live-restore")
        async with http.get(
            f"{server['base']}/api/sessions/live-restore/messages", params={"view": "all"}
        ) as resp:
            items = (await resp.json())["items"]
    finally:
        await http.close()
    assert code == 1
    assert "is live" in err and "Stop the server" in err and "--force" in err
    assert [m["content"] for m in items] == ["keep me", "written after the backup"]


async def test_restored_copy_is_served_by_running_server(server, tmp_path):
    http = aiohttp.ClientSession()
    try:
        await _new_session(http, server["base"], "live-src")
        writer = Appender(http, server["base"], "live-src")
        for i in range(3):
            await writer.post(f"m{i}")
        dest = tmp_path / "b.db"
        assert (await admin_proc(server["data"], "backup", "live-src", str(dest)))[0] == 0
        code, _, err = await admin_proc(
            server["data"], "restore", str(dest), "live-copy", "--rename"
        )
        assert code == 0, err
        async with http.get(f"{server['base']}/api/sessions/live-copy/messages") as resp:
            assert resp.status == 200
            items = (await resp.json())["items"]
        copy = Appender(http, server["base"], "live-copy")
        await copy.post("m3")
    finally:
        await http.close()
    assert [m["content"] for m in items] == ["m0", "m1", "m2"]
    assert all(m["session_id"] == "live-copy" for m in items)
    assert copy.acked and not copy.failures


def test_environment_variable_names_data_dir(datadir):
    env = {**os.environ, "ROOST_DATA_DIR": str(datadir["root"])}
    proc = subprocess.run(
        [sys.executable, "-m", "scripts.admin", "sessions", "--json"],
        cwd=REPO,
        env=env,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["count"] == 3


def test_plural_says_one_session() -> None:
    """Counts read as English: 1 session, 0 and 2 sessions."""
    assert [admin.plural(n, "session") for n in (0, 1, 2)] == [
        "0 sessions",
        "1 session",
        "2 sessions",
    ]


def test_sessions_one_session_is_singular(capsys: pytest.CaptureFixture[str], datadir: Any) -> None:
    """A data dir with one session ends its listing with "1 session"."""
    _, out, _ = run(capsys, datadir["root"], "sessions", "--limit", "1")
    assert out.strip().splitlines()[-1] == "1 session"
