"""Faults: a full disk and a damaged session file lose nothing acknowledged."""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from server.app import make_app
from server.settings import Settings
from storage.errors import Unavailable
from storage.file import SessionFile
from storage.ids import now_iso
from storage.layout import DataDir
from storage.lifecycle import create_session_file
from storage.ops import op_append
from tests.conftest import append, eventually, new_session, registry_of
from tests.test_actors import _draft


async def _contents(client: Any, sid: str, **kw: Any) -> list[str]:
    r = await client.get(f"/api/sessions/{sid}/messages?view=all&limit=200", **kw)
    assert r.status == 200, await r.text()
    return [m["content"] for m in (await r.json())["items"]]


# ---------------------------------------------------------------------------- a full disk


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 8 MiB tmpfs (needs root and mount, as in CI); skipped where unavailable."""
    mnt = tmp_path / "fs"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture
async def fs_client(small_fs: Path) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    app = make_app(Settings(data_dir=str(small_fs / "data")))
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


def _fill(path: Path) -> None:
    """Write ``path`` until the file system has no space left."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for size in (65536, 4096, 512, 1):
            try:
                while os.write(fd, b"\0" * size):
                    pass
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)


async def test_full_disk_answers_507_and_loses_nothing_acknowledged(
    fs_client: Any, small_fs: Path
) -> None:
    """On a really full disk writes answer 507; acknowledged messages stay; space heals it."""
    client = fs_client
    await new_session(client, "s1")
    acked = [(await append(client, "s1", f"kept {i}"))["content"] for i in range(5)]
    ballast = small_fs / "ballast"
    _fill(ballast)
    refused = None
    for i in range(200):
        r = await client.post(
            "/api/sessions/s1/messages", json={"role": "user", "content": f"more {i} " * 500}
        )
        if r.status in (200, 201):
            acked.append((await r.json())["content"])
            continue
        refused = r
        break
    assert refused is not None, "the disk never filled up"
    assert refused.status == 507
    error = (await refused.json())["error"]
    assert error["code"] == "storage_full"
    assert "disk is full" in error["message"]
    assert await _contents(client, "s1") == acked
    ballast.unlink()
    m = await append(client, "s1", "after")
    assert await _contents(client, "s1") == [*acked, "after"]
    assert m["seq"] == len(acked) + 1


async def test_full_disk_session_create_is_507_and_leaves_nothing(
    fs_client: Any, small_fs: Path
) -> None:
    """Creating a session on a full disk is 507, and the same id works once space returns."""
    client = fs_client
    await new_session(client, "warm")
    ballast = small_fs / "ballast"
    _fill(ballast)
    r = await client.post("/api/sessions", json={"id": "new1"})
    assert r.status == 507, await r.text()
    assert (await r.json())["error"]["code"] == "storage_full"
    ballast.unlink()
    await new_session(client, "new1")
    await append(client, "new1", "hello")
    assert await _contents(client, "new1") == ["hello"]


async def test_sqlite_full_in_a_commit_is_507_and_keeps_earlier_messages(client: Any) -> None:
    """A real SQLITE_FULL (page cap) at commit: 507, earlier messages kept, next write works."""
    await new_session(client, "s1")
    await append(client, "s1", "kept")
    reg = registry_of(client)
    async with reg.lease("s1") as actor:

        def cap(f: Any) -> None:
            pages = f.writer.execute("PRAGMA page_count").fetchone()[0]
            f.writer.execute(f"PRAGMA max_page_count = {pages}")

        await actor.read(cap)
    r = await client.post(
        "/api/sessions/s1/messages", json={"role": "user", "content": "lost " * 20_000}
    )
    assert r.status == 507
    assert (await r.json())["error"]["code"] == "storage_full"
    await eventually(lambda: reg.actor_if_live("s1") is None, "the broken actor to close")
    await append(client, "s1", "next")
    assert await _contents(client, "s1") == ["kept", "next"]


# ---------------------------------------------------------------------------- a damaged file


async def _hibernate(client: Any, sid: str) -> Path:
    """Close ``sid``'s actor (its file is checkpointed and closed); return the file."""
    reg = registry_of(client)
    actor = reg.actor_if_live(sid)
    if actor is not None:
        await actor.close()
    path: Path = reg.datadir.session_db(sid)
    assert _wal_empty(path)
    return path


def _wal_empty(path: Path) -> bool:
    wal = Path(str(path) + "-wal")
    return not wal.exists() or wal.stat().st_size == 0


def _damage_header(path: Path) -> None:
    with open(path, "r+b") as f:
        f.write(b"this is not an SQLite file at all" * 3)


def _damage_pages(path: Path) -> None:
    """Overwrite every page but the first (the schema survives, the tables do not)."""
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.seek(4096)
        f.write(b"\xff" * (size - 4096))


async def _one_damaged(client: Any, damage: Any) -> None:
    """Sessions bad and good with three messages each; bad's file is then damaged."""
    await new_session(client, "bad")
    await new_session(client, "good")
    for i in range(3):
        await append(client, "bad", f"b{i}")
        await append(client, "good", f"g{i}")
    damage(await _hibernate(client, "bad"))


@pytest.mark.parametrize("damage", [_damage_header, _damage_pages], ids=["header", "pages"])
async def test_damaged_session_is_503_everywhere(client: Any, damage: Any) -> None:
    """A damaged file: that session answers 503 unavailable on every route."""
    await _one_damaged(client, damage)
    for method, path, body in [
        ("GET", "/api/sessions/bad", None),
        ("GET", "/api/sessions/bad/messages", None),
        ("POST", "/api/sessions/bad/messages", {"role": "user", "content": "x"}),
        ("PATCH", "/api/sessions/bad", {"title": "t"}),
        ("POST", "/api/sessions/bad/chat", {"content": "x"}),
        ("GET", "/api/sessions/bad/events", None),
    ]:
        r = await client.request(method, path, json=body)
        assert r.status == 503, (method, path, r.status)
        error = (await r.json())["error"]
        assert error["code"] == "unavailable"
        assert "damaged" in error["message"]


@pytest.mark.parametrize("damage", [_damage_header, _damage_pages], ids=["header", "pages"])
async def test_damaged_session_leaves_other_sessions_working(client: Any, damage: Any) -> None:
    """Next to a damaged session, another one still takes appends and keeps its history."""
    await _one_damaged(client, damage)
    await client.get("/api/sessions/bad/messages")  # the damage is found
    await append(client, "good", "g3")
    assert await _contents(client, "good") == ["g0", "g1", "g2", "g3"]


@pytest.mark.parametrize("damage", [_damage_header, _damage_pages], ids=["header", "pages"])
async def test_damaged_session_is_still_listed(client: Any, damage: Any) -> None:
    """The session list still shows a damaged session next to the others."""
    await _one_damaged(client, damage)
    await client.get("/api/sessions/bad/messages")  # the damage is found
    listed = await (await client.get("/api/sessions")).json()
    assert {s["id"] for s in listed["items"]} == {"bad", "good"}


async def test_damaged_session_of_another_user_is_404(make_client: Any, tmp_path: Path) -> None:
    """A damaged file does not reveal that another user's session exists."""
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({"tok-a": "alice", "tok-b": "bob"}))
    client = await make_client(tokens_file=str(tokens))
    a = {"Authorization": "Bearer tok-a"}
    assert (await client.post("/api/sessions", json={"id": "bad"}, headers=a)).status == 201
    _damage_header(await _hibernate(client, "bad"))
    r = await client.get("/api/sessions/bad", headers={"Authorization": "Bearer tok-b"})
    assert r.status == 404
    r = await client.get("/api/sessions/bad", headers=a)
    assert r.status == 503


async def test_restored_file_serves_again(client: Any) -> None:
    """Once an operator puts a good file back, the session works with everything in it."""
    await new_session(client, "s")
    await append(client, "s", "one")
    path = await _hibernate(client, "s")
    good = path.read_bytes()
    _damage_header(path)
    assert (await client.get("/api/sessions/s")).status == 503
    path.write_bytes(good)
    assert await _contents(client, "s") == ["one"]


def test_reader_failure_is_unavailable_not_sqlite_error(tmp_path: Path) -> None:
    """A read that hits a damaged page raises Unavailable, never a raw sqlite3 error."""
    dd = DataDir(tmp_path)
    dd.ensure()
    create_session_file(dd, "r", owner="", title=None, metadata={}, now=now_iso())
    f = SessionFile(dd, "r")
    f.run_batch([op_append(_draft(f"m{i} " + "x" * 2000)) for i in range(50)], now_iso())
    f.close()
    path = dd.session_db("r")
    conn = sqlite3.connect(path)
    root = conn.execute("SELECT rootpage FROM sqlite_schema WHERE name = 'messages'").fetchone()[0]
    conn.close()
    with open(path, "r+b") as fh:
        fh.seek((root - 1) * 4096)
        fh.write(os.urandom(4096))
    f = SessionFile(dd, "r")
    try:
        with pytest.raises(Unavailable, match="damaged"):
            f.page(view="all", limit=25)
    finally:
        f.close()
