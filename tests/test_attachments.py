"""Attachments: upload, download (ETag, Range, 304), limits, dedup, message refs."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from storage.attachments import safe_mime, safe_name
from tests.conftest import append, new_session, registry_of

DATA = bytes(range(256)) * 40  # 10 240 bytes


async def upload(
    client: Any, sid: str, data: bytes, name: str = "a.bin", mime: str | None = None
) -> Any:
    form = aiohttp.FormData(quote_fields=False)  # raw UTF-8 names, as browsers send them
    form.add_field("file", data, filename=name, content_type=mime or "application/octet-stream")
    return await client.post(f"/api/sessions/{sid}/attachments", data=form)


async def uploaded(client: Any, sid: str, data: bytes = DATA, **kw: Any) -> dict[str, Any]:
    r = await upload(client, sid, data, **kw)
    assert r.status == 201, await r.text()
    doc: dict[str, Any] = await r.json()
    return doc


def att_dir(client: Any, sid: str) -> Path:
    path: Path = registry_of(client).datadir.session_dir(sid) / "attachments"
    return path


def stored_files(client: Any, sid: str) -> list[str]:
    folder = att_dir(client, sid)
    return sorted(os.listdir(folder)) if folder.exists() else []


async def test_upload_returns_record_with_hash(client: Any) -> None:
    """An upload answers 201 with id, name, mime, size, sha256, url, created_at."""
    await new_session(client)
    r = await upload(client, "s1", DATA, name="notes.txt", mime="text/plain")
    doc = await r.json()
    assert r.status == 201
    assert doc["name"] == "notes.txt" and doc["mime"] == "text/plain"
    assert doc["size"] == len(DATA) and doc["sha256"] == hashlib.sha256(DATA).hexdigest()
    assert doc["url"] == f"/api/sessions/s1/attachments/{doc['id']}"
    assert r.headers["Location"] == doc["url"] and doc["created_at"].endswith("Z")


async def test_download_returns_bytes_type_and_etag(client: Any) -> None:
    """GET answers the exact bytes with Content-Type and the hash as ETag."""
    await new_session(client)
    doc = await uploaded(client, "s1", mime="image/png", name="p.png")
    r = await client.get(doc["url"])
    assert r.status == 200 and await r.read() == DATA
    assert r.headers["Content-Type"] == "image/png"
    assert r.headers["ETag"] == f'"{doc["sha256"]}"'
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.headers["Content-Disposition"].startswith("inline;")


async def test_download_if_none_match_returns_304(client: Any) -> None:
    """A matching If-None-Match answers 304 without a body."""
    await new_session(client)
    doc = await uploaded(client, "s1")
    r = await client.get(doc["url"], headers={"If-None-Match": f'"{doc["sha256"]}"'})
    assert r.status == 304 and await r.read() == b""
    r = await client.get(doc["url"], headers={"If-None-Match": '"other"'})
    assert r.status == 200


async def test_download_range_returns_206_slice(client: Any) -> None:
    """Range bytes=a-b answers 206 with exactly that slice and Content-Range."""
    await new_session(client)
    doc = await uploaded(client, "s1")
    r = await client.get(doc["url"], headers={"Range": "bytes=100-299"})
    assert r.status == 206 and await r.read() == DATA[100:300]
    assert r.headers["Content-Range"] == f"bytes 100-299/{len(DATA)}"
    r = await client.get(doc["url"], headers={"Range": "bytes=-10"})
    assert r.status == 206 and await r.read() == DATA[-10:]
    r = await client.get(doc["url"], headers={"Range": "bytes=10000-"})
    assert r.status == 206 and await r.read() == DATA[10000:]


async def test_download_range_past_end_returns_416(client: Any) -> None:
    """A range that starts past the end answers 416 with Content-Range */size."""
    await new_session(client)
    doc = await uploaded(client, "s1")
    r = await client.get(doc["url"], headers={"Range": f"bytes={len(DATA)}-"})
    assert r.status == 416
    assert r.headers["Content-Range"] == f"bytes */{len(DATA)}"


async def test_download_stale_if_range_sends_everything(client: Any) -> None:
    """If-Range naming another version ignores Range and answers 200."""
    await new_session(client)
    doc = await uploaded(client, "s1")
    r = await client.get(doc["url"], headers={"Range": "bytes=0-9", "If-Range": '"stale"'})
    assert r.status == 200 and await r.read() == DATA


async def test_download_unknown_attachment_returns_404(client: Any) -> None:
    """An id that is not an attachment of the session answers 404."""
    await new_session(client)
    doc = await uploaded(client, "s1")
    await new_session(client, "s2")
    r = await client.get(f"/api/sessions/s2/attachments/{doc['id']}")
    assert r.status == 404 and (await r.json())["error"]["code"] == "not_found"


async def test_upload_oversize_returns_413_and_leaves_no_file(make_client: Any) -> None:
    """A streamed (chunked) upload over the limit answers 413; no partial file stays."""
    client = await make_client(max_attachment_bytes=2 << 20)
    await new_session(client)
    boundary = "XyZ-boundary"

    async def body() -> AsyncIterator[bytes]:
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            'filename="big.bin"\r\nContent-Type: application/octet-stream\r\n\r\n'
        ).encode()
        for _ in range(48):  # 3 MiB in 64 KiB chunks
            yield b"x" * 65536
        yield f"\r\n--{boundary}--\r\n".encode()

    r = await client.post(
        "/api/sessions/s1/attachments",
        data=body(),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert r.status == 413 and (await r.json())["error"]["code"] == "payload_too_large"
    assert stored_files(client, "s1") == []
    assert (await upload(client, "s1", b"small")).status == 201


async def test_upload_declared_oversize_returns_413_before_reading(make_client: Any) -> None:
    """A Content-Length far over the limit is refused at once."""
    client = await make_client(max_attachment_bytes=1000)
    await new_session(client)
    r = await upload(client, "s1", b"y" * 200_000)
    assert r.status == 413
    assert stored_files(client, "s1") == []


async def test_identical_uploads_share_one_blob(client: Any) -> None:
    """The same bytes twice: two records, one stored file named by the hash."""
    await new_session(client)
    a = await uploaded(client, "s1", name="one.bin")
    b = await uploaded(client, "s1", name="two.bin")
    assert a["id"] != b["id"] and a["sha256"] == b["sha256"]
    assert stored_files(client, "s1") == [a["sha256"]]
    assert await (await client.get(b["url"])).read() == DATA


async def test_upload_name_is_made_safe(client: Any) -> None:
    """Path components and format characters leave the name; the header stays safe."""
    await new_session(client)
    doc = await uploaded(client, "s1", name="../../etc/r\u00e9su\u202em\u00e9 1.txt")
    assert doc["name"] == "r\u00e9sum\u00e9 1.txt"
    r = await client.get(doc["url"] + "?download=1")
    cd = r.headers["Content-Disposition"]
    assert cd == "attachment; filename=\"r_sum_ 1.txt\"; filename*=UTF-8''r%C3%A9sum%C3%A9%201.txt"


async def test_upload_malformed_part_header_returns_400(client: Any) -> None:
    """A control character in a part header is a 400, not a server error."""
    await new_session(client)
    body = (
        b'--b0\r\nContent-Disposition: form-data; name="file"; filename="a\x07b"\r\n\r\n'
        b"abc\r\n--b0--\r\n"
    )
    r = await client.post(
        "/api/sessions/s1/attachments",
        data=body,
        headers={"Content-Type": "multipart/form-data; boundary=b0"},
    )
    assert r.status == 400 and stored_files(client, "s1") == []


def test_safe_name_and_mime_rules() -> None:
    """Names keep their last component; bad or generic types are guessed from the name."""
    assert safe_name("C:\\Users\\x\\r\u00e9sum\u00e9.pdf") == "r\u00e9sum\u00e9.pdf"
    assert safe_name("..") == "file" and safe_name("") == "file"
    assert safe_name('a\x00b\x1b"c\n.txt') == 'ab"c.txt'
    assert len(safe_name("a" * 400 + ".txt")) == 255
    assert safe_mime("Text/HTML; charset=utf-8", "x") == "text/html"
    assert safe_mime("not a type", "x.png") == "image/png"
    assert safe_mime(None, "noext") == "application/octet-stream"


async def test_upload_without_file_field_returns_400(client: Any) -> None:
    """A multipart body whose first part is not 'file' answers 400."""
    await new_session(client)
    form = aiohttp.FormData()
    form.add_field("other", b"abc", filename="x.bin")
    r = await client.post("/api/sessions/s1/attachments", data=form)
    assert r.status == 400 and stored_files(client, "s1") == []


async def test_upload_with_a_part_after_file_returns_400(client: Any) -> None:
    """Unknown fields are refused (as in JSON bodies, and as the document says):
    a part after 'file' answers 400 and nothing is kept."""
    await new_session(client)
    form = aiohttp.FormData()
    form.add_field("file", b"abc", filename="x.bin")
    form.add_field("note", "hi")
    r = await client.post("/api/sessions/s1/attachments", data=form)
    assert r.status == 400 and stored_files(client, "s1") == []
    r = await client.get("/api/sessions/s1")
    assert r.status == 200


async def test_upload_not_multipart_returns_415(client: Any) -> None:
    """A JSON body is not an upload."""
    await new_session(client)
    r = await client.post("/api/sessions/s1/attachments", json={"file": "x"})
    assert r.status == 415


async def test_upload_to_unknown_session_returns_404(client: Any) -> None:
    """Uploading never creates a session."""
    r = await upload(client, "nope", DATA)
    assert r.status == 404
    assert not registry_of(client).datadir.session_dir("nope").exists()


async def test_message_with_attachment_stores_ref(client: Any) -> None:
    """A message naming an attachment stores {id, name, mime, size, sha256, url}."""
    await new_session(client)
    doc = await uploaded(client, "s1", name="a.txt", mime="text/plain")
    m = await append(client, "s1", "see file", attachments=[doc["id"]])
    want = {k: doc[k] for k in ("id", "name", "mime", "size", "sha256", "url")}
    assert m["attachments"] == [want]
    got = await (await client.get(f"/api/sessions/s1/messages/{m['id']}")).json()
    assert got["attachments"] == [want]


@pytest.mark.parametrize("where", ["attachments", "parts"])
async def test_message_with_unknown_attachment_returns_400(client: Any, where: str) -> None:
    """An attachment id that is not in this session answers 400 and appends nothing."""
    await new_session(client)
    await new_session(client, "s2")
    other = await uploaded(client, "s2")
    body: dict[str, Any] = {"role": "user", "content": "x"}
    if where == "attachments":
        body["attachments"] = [other["id"]]
    else:
        body["parts"] = [{"type": "attachment", "attachment_id": "nope"}]
    r = await client.post("/api/sessions/s1/messages", json=body)
    assert r.status == 400 and (await r.json())["error"]["message"] == "unknown attachment id"
    s = await (await client.get("/api/sessions/s1")).json()
    assert s["session"]["message_count"] == 0


async def test_edit_with_unknown_attachment_part_returns_400(client: Any) -> None:
    """A PATCH whose parts name an unknown attachment answers 400 and changes nothing."""
    await new_session(client)
    m = await append(client, "s1", "hello")
    parts = [{"type": "attachment", "attachment_id": "nope"}]
    r = await client.patch(f"/api/sessions/s1/messages/{m['id']}", json={"parts": parts})
    assert r.status == 400
    got = await (await client.get(f"/api/sessions/s1/messages/{m['id']}")).json()
    assert got["version"] == m["version"] and got["parts"] is None


async def test_chat_with_attachment_stores_ref(make_client: Any) -> None:
    """Chat accepts attachment ids of the session on the user message."""
    client = await make_client(echo_words_per_second=0)
    await new_session(client)
    doc = await uploaded(client, "s1")
    r = await client.post(
        "/api/sessions/s1/chat",
        json={"content": "look", "attachments": [doc["id"]]},
        headers={"Accept": "application/json"},
    )
    assert r.status == 201, await r.text()
    body = await r.json()
    assert [a["id"] for a in body["user_message"]["attachments"]] == [doc["id"]]


async def test_delete_session_removes_its_attachments(client: Any) -> None:
    """Deleting a session removes its attachment files; the URL then answers 404."""
    await new_session(client)
    doc = await uploaded(client, "s1")
    folder = att_dir(client, "s1")
    assert (folder / doc["sha256"]).exists()
    assert (await client.delete("/api/sessions/s1")).status == 204
    assert not folder.exists()
    assert (await client.get(doc["url"])).status == 404
    trash = registry_of(client).datadir.trash
    assert list(trash.iterdir()) == []
