"""Session bundles (issue 25): GET /export?format=bundle and POST /sessions/import of it."""

from __future__ import annotations

import hashlib
import io
import os
import sqlite3
import zipfile
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from storage.ids import now_iso
from storage.layout import DataDir, connect
from storage.lifecycle import create_session_file
from tests.conftest import append, new_session, registry_of
from tests.harness import TIMEOUT
from tests.test_attachments import uploaded
from tests.test_export_import import _peak_rss_kib

FILES = [
    (b"\x89PNG fake image bytes" * 100, "a.png", "image/png"),
    (b"plain text notes\n" * 50, "notes.txt", "text/plain"),
    (bytes(range(256)) * 64, "data.bin", "application/octet-stream"),
]


async def _session_with_files(client: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Session s1: three attachments, a branch (an edit of the second message), refs."""
    await new_session(client, title="with files")
    docs = [await uploaded(client, "s1", data, name=n, mime=m) for data, n, m in FILES]
    first = await append(client, "s1", "here", attachments=[docs[0]["id"], docs[1]["id"]])
    await append(client, "s1", "old branch", attachments=[docs[2]["id"]])
    edit = await append(client, "s1", "new branch", parent_id=first["id"])
    return docs, edit


async def _bundle(client: Any, sid: str = "s1") -> bytes:
    r = await client.get(f"/api/sessions/{sid}/export?format=bundle")
    assert r.status == 200, await r.text()
    assert r.headers["Content-Type"] == "application/zip"
    assert f'filename="{sid}.zip"' in r.headers["Content-Disposition"]
    body: bytes = await r.read()
    return body


async def _import(client: Any, body: bytes, **query: str) -> Any:
    return await client.post(
        "/api/sessions/import",
        data=body,
        params=query,
        headers={"Content-Type": "application/zip"},
    )


def _tree(export: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [
        (m["id"], m["parent_id"], m["role"], m["content"], [a["sha256"] for a in m["attachments"]])
        for m in export["messages"]
    ]


async def test_bundle_holds_the_export_and_the_blobs(client: Any) -> None:
    """A bundle is a zip of session.json and blobs/<sha256>, one per distinct blob."""
    docs, _ = await _session_with_files(client)
    zf = zipfile.ZipFile(io.BytesIO(await _bundle(client)))
    assert zf.testzip() is None
    names = sorted(zf.namelist())
    assert names == sorted(["session.json"] + [f"blobs/{d['sha256']}" for d in docs])
    export = orjson.loads(zf.read("session.json"))
    assert export["format"] == "roost.session.v1" and len(export["attachments"]) == 3
    for (data, _, _), d in zip(FILES, docs, strict=True):
        assert zf.read(f"blobs/{d['sha256']}") == data


async def test_bundle_round_trip_keeps_bytes_hashes_and_tree(client: Any) -> None:
    """Export a bundle, import it: same tree and active leaf, every attachment's bytes
    served again (no 410) with the same sha256."""
    docs, edit = await _session_with_files(client)
    body = await _bundle(client)
    r = await _import(client, body, id="copy")
    assert r.status == 201, await r.text()
    assert (await r.json())["active_leaf_id"] == edit["id"]
    before = await (await client.get("/api/sessions/s1/export")).json()
    after = await (await client.get("/api/sessions/copy/export")).json()
    assert _tree(after) == _tree(before) and after["active_leaf_id"] == before["active_leaf_id"]
    assert [a["sha256"] for a in after["attachments"]] == [d["sha256"] for d in docs]
    for (data, _, mime), d in zip(FILES, docs, strict=True):
        got = await client.get(f"/api/sessions/copy/attachments/{d['id']}")
        assert got.status == 200
        raw = await got.read()
        assert raw == data and hashlib.sha256(raw).hexdigest() == d["sha256"]
        assert got.headers["ETag"] == f'"{d["sha256"]}"' and got.headers["Content-Type"] == mime
    # and the copy exports the same bundle contents again
    again = zipfile.ZipFile(io.BytesIO(await _bundle(client, "copy")))
    assert sorted(again.namelist()) == sorted(zipfile.ZipFile(io.BytesIO(body)).namelist())


async def test_bundle_import_by_format_query_with_octet_stream(client: Any) -> None:
    """?format=bundle takes an application/octet-stream body too."""
    await _session_with_files(client)
    body = await _bundle(client)
    r = await client.post(
        "/api/sessions/import?format=bundle",
        data=body,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert r.status == 201, await r.text()


async def test_bundle_that_is_not_a_zip_returns_400(client: Any) -> None:
    """Bytes that are not a zip: 400, nothing created."""
    r = await _import(client, b"PK\x03\x04 not really a zip", id="x")
    assert r.status == 400 and "not a zip" in (await r.json())["error"]["message"]
    assert (await client.get("/api/sessions/x")).status == 404


async def test_bundle_without_session_json_returns_400(client: Any) -> None:
    """A zip without session.json: 400."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("other.txt", "x")
    r = await _import(client, buf.getvalue(), id="x")
    assert r.status == 400 and "session.json" in (await r.json())["error"]["message"]


async def test_bundle_with_tampered_blob_returns_400_and_creates_nothing(client: Any) -> None:
    """A blob whose bytes do not hash to its name: 400, and no session, no files."""
    docs, _ = await _session_with_files(client)
    src = zipfile.ZipFile(io.BytesIO(await _bundle(client)))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name in src.namelist():
            data = src.read(name)
            if name == f"blobs/{docs[1]['sha256']}":
                data = data[::-1]  # same size, other bytes
            zf.writestr(name, data)
    r = await _import(client, buf.getvalue(), id="bad")
    assert r.status == 400, await r.text()
    assert "SHA-256" in (await r.json())["error"]["message"]
    assert (await client.get("/api/sessions/bad")).status == 404
    dd = registry_of(client).datadir
    assert not dd.session_dir("bad").exists()
    assert [p.name for p in dd.trash.iterdir()] == []  # the spooled body is gone too


async def test_bundle_over_session_byte_cap_returns_413(make_client: Any) -> None:
    """A bundle whose attachments are over max_session_bytes: 413 session_full."""
    client = await make_client()
    await _session_with_files(client)
    body = await _bundle(client)
    small = await make_client(max_session_bytes=1000)
    r = await _import(small, body, id="big")
    assert r.status == 413 and (await r.json())["error"]["code"] == "session_full"


async def test_json_import_of_bundle_export_still_answers_410(client: Any) -> None:
    """The bundle's session.json alone imports as before: records without bytes (410)."""
    docs, _ = await _session_with_files(client)
    export = zipfile.ZipFile(io.BytesIO(await _bundle(client))).read("session.json")
    r = await client.post(
        "/api/sessions/import?id=meta", data=export, headers={"Content-Type": "application/json"}
    )
    assert r.status == 201
    assert (await client.get(f"/api/sessions/meta/attachments/{docs[0]['id']}")).status == 410


# ---------------------------------------------------------------------------- memory

BLOB = 25 << 20


def _session_with_blobs(dd: DataDir, sid: str, count: int, size: int) -> None:
    """Session ``sid`` with ``count`` attachments of ``size`` distinct bytes each,
    written straight to disk (records and blobs)."""
    now = now_iso()
    create_session_file(dd, sid, owner="", title="blobs", metadata={}, now=now)
    folder = dd.session_dir(sid) / "attachments"
    folder.mkdir()
    rows = []
    for i in range(count):
        data = os.urandom(1 << 20) * (size >> 20)
        sha = hashlib.sha256(data).hexdigest()
        (folder / sha).write_bytes(data)
        rows.append((f"a{i}", f"f{i}.bin", "application/octet-stream", size, sha, now))
    conn: sqlite3.Connection = connect(dd.session_db(sid))
    try:
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO attachments VALUES (?, ?, ?, ?, ?, ?)", rows)
        conn.execute("COMMIT")
    finally:
        conn.close()


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
async def test_bundle_export_of_200_mib_runs_in_bounded_memory(
    server_process: Any, tmp_path: Path
) -> None:
    """Exporting a bundle of 200 MiB of attachments barely moves the server's peak RSS."""
    dd = DataDir(tmp_path / "data")
    dd.ensure()
    _session_with_blobs(dd, "small", 1, 1 << 20)
    _session_with_blobs(dd, "large", 8, BLOB)
    srv = server_process()
    await srv.wait_ready()
    timeout = aiohttp.ClientTimeout(total=TIMEOUT * 6)
    async with aiohttp.ClientSession(timeout=timeout) as s:

        async def drain(sid: str) -> tuple[int, str]:
            digest = hashlib.sha256()
            total = 0
            async with s.get(f"{srv.url}/api/sessions/{sid}/export?format=bundle") as r:
                assert r.status == 200
                async for chunk in r.content.iter_chunked(1 << 16):
                    total += len(chunk)
                    digest.update(chunk)
            return total, digest.hexdigest()

        await drain("small")  # warm up every code path first
        base = _peak_rss_kib(srv.proc.pid)
        size, _ = await drain("large")
        peak = _peak_rss_kib(srv.proc.pid)
    assert size > 200 << 20  # the bundle holds the 200 MiB ...
    assert peak - base < 24 << 10, (base, peak)  # ... and the server's peak barely moves (KiB)


# ---------------------------------------------------------------------------- admin


async def test_admin_bundle_export_and_import_round_trip(
    client: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """roost-admin export --format bundle, then roost-admin import: a new session with
    the same tree and bytes, served by the running server; a bad file creates nothing."""
    from scripts import admin

    docs, edit = await _session_with_files(client)
    root = registry_of(client).datadir.root
    out = tmp_path / "s1.zip"
    assert (
        admin.main(["--data-dir", str(root), "export", "s1", "--format", "bundle", "-o", str(out)])
        == 0
    )
    assert sorted(zipfile.ZipFile(out).namelist())[0] == "blobs/" + min(d["sha256"] for d in docs)
    assert admin.main(["--data-dir", str(root), "import", str(out), "--id", "viaadmin"]) == 0
    assert "imported" in capsys.readouterr().out
    got = await client.get(f"/api/sessions/viaadmin/attachments/{docs[2]['id']}")
    assert got.status == 200 and await got.read() == FILES[2][0]
    assert (await (await client.get("/api/sessions/viaadmin")).json())["session"][
        "active_leaf_id"
    ] == edit["id"]
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"PK\x03\x04broken")
    assert admin.main(["--data-dir", str(root), "import", str(bad), "--id", "nope"]) == 1
    assert "not a zip" in capsys.readouterr().err
    assert not registry_of(client).datadir.session_dir("nope").exists()


def test_stale_spooled_import_bodies_are_dropped(tmp_path: Path) -> None:
    """A spooled import body a crash left (older than a day) goes at the next import's
    spool; a recent one (an import running) stays."""
    from server.routes_files import SPOOL_PREFIX, drop_stale_spools

    old, new = tmp_path / f"{SPOOL_PREFIX}old", tmp_path / f"{SPOOL_PREFIX}new"
    other = tmp_path / "a-session.123"
    for p in (old, new, other):
        p.write_bytes(b"x")
    day_ago = old.stat().st_mtime - 90_000
    os.utime(old, (day_ago, day_ago))
    os.utime(other, (day_ago, day_ago))
    assert drop_stale_spools(tmp_path, new.stat().st_mtime) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([new.name, other.name])
