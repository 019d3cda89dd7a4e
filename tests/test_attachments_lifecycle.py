"""Attachment lifecycle (issue 25): delete, blob reference counts, the per-session cap."""

from __future__ import annotations

import hashlib
from typing import Any

from tests.conftest import append, new_session
from tests.test_attachments import DATA, stored_files, upload, uploaded


async def test_delete_unreferenced_attachment_returns_204_and_removes_its_blob(
    client: Any,
) -> None:
    """An attachment no message names is deleted: 204, then 404, and its blob is gone."""
    await new_session(client)
    doc = await uploaded(client, "s1")
    r = await client.delete(doc["url"])
    assert r.status == 204
    assert (await client.get(doc["url"])).status == 404
    assert stored_files(client, "s1") == []
    r = await client.delete(doc["url"])
    assert r.status == 404 and (await r.json())["error"]["code"] == "not_found"


async def test_delete_referenced_attachment_returns_409_and_keeps_it(client: Any) -> None:
    """While a live message names the attachment, delete answers 409 naming the message;
    nothing changes."""
    await new_session(client)
    doc = await uploaded(client, "s1")
    msg = await append(client, "s1", "see file", attachments=[doc["id"]])
    r = await client.delete(doc["url"])
    assert r.status == 409
    err = (await r.json())["error"]
    assert err["code"] == "attachment_in_use" and err["details"]["message_ids"] == [msg["id"]]
    got = await client.get(doc["url"])
    assert got.status == 200 and await got.read() == DATA


async def test_delete_attachment_named_in_a_part_returns_409(client: Any) -> None:
    """An attachment part counts as a reference too."""
    await new_session(client)
    doc = await uploaded(client, "s1")
    parts = [{"type": "text", "text": "x"}, {"type": "attachment", "attachment_id": doc["id"]}]
    await append(client, "s1", "x", parts=parts)
    assert (await client.delete(doc["url"])).status == 409


async def test_delete_after_its_message_is_deleted_returns_204(client: Any) -> None:
    """A tombstone names nothing: once the message is deleted, so can the attachment be."""
    await new_session(client)
    doc = await uploaded(client, "s1")
    msg = await append(client, "s1", "see file", attachments=[doc["id"]])
    assert (await client.delete(f"/api/sessions/s1/messages/{msg['id']}")).status == 204
    assert (await client.delete(doc["url"])).status == 204
    assert stored_files(client, "s1") == []


async def test_same_bytes_twice_then_one_delete_keeps_the_blob(client: Any) -> None:
    """Two uploads of the same bytes share one blob; deleting one record keeps it for
    the other; deleting the second removes it."""
    await new_session(client)
    a = await uploaded(client, "s1", name="a.bin")
    b = await uploaded(client, "s1", name="b.bin")
    assert a["sha256"] == b["sha256"] and stored_files(client, "s1") == [a["sha256"]]
    assert (await client.delete(a["url"])).status == 204
    assert stored_files(client, "s1") == [a["sha256"]]
    got = await client.get(b["url"])
    assert got.status == 200 and await got.read() == DATA
    assert (await client.delete(b["url"])).status == 204
    assert stored_files(client, "s1") == []


async def test_upload_after_delete_of_same_bytes_stores_them_again(client: Any) -> None:
    """Bytes deleted and uploaded again are stored again (the blob is placed anew)."""
    await new_session(client)
    a = await uploaded(client, "s1")
    assert (await client.delete(a["url"])).status == 204
    b = await uploaded(client, "s1")
    got = await client.get(b["url"])
    assert got.status == 200 and await got.read() == DATA


async def test_delete_attachment_of_unknown_session_returns_404(client: Any) -> None:
    """Unknown session: 404."""
    r = await client.delete("/api/sessions/nope/attachments/x")
    assert r.status == 404


async def test_session_byte_cap_refuses_new_bytes_with_413(make_client: Any) -> None:
    """Over max_session_bytes: 413 session_full, no file kept, no record; the same
    bytes again still go (they take no room); after a delete there is room again."""
    client = await make_client(max_session_bytes=len(DATA) + 100)
    await new_session(client)
    first = await uploaded(client, "s1")
    other = DATA[::-1]
    r = await upload(client, "s1", other)
    assert r.status == 413
    err = (await r.json())["error"]
    assert err["code"] == "session_full" and err["details"]["limit"] == len(DATA) + 100
    assert stored_files(client, "s1") == [first["sha256"]]
    again = await uploaded(client, "s1", name="again.bin")  # same bytes: no new room needed
    assert (await client.delete(first["url"])).status == 204
    assert (await upload(client, "s1", other)).status == 413  # "again" still holds them
    assert (await client.delete(again["url"])).status == 204
    doc = await uploaded(client, "s1", other)
    assert doc["sha256"] == hashlib.sha256(other).hexdigest()
    assert stored_files(client, "s1") == [doc["sha256"]]


def test_upload_racing_a_delete_of_the_same_bytes_keeps_its_blob(tmp_path: Any) -> None:
    """Both interleavings of an upload of bytes whose last record is being deleted end
    with the blob on disk for the new record: the placing and the removal are ops of
    the same serialized session."""
    from storage.attachment_ops import op_add_attachment, op_delete_attachment, op_drop_blob
    from storage.attachments import BlobWriter, blob_path
    from storage.file import SessionFile
    from storage.ids import now_iso
    from storage.layout import DataDir
    from storage.lifecycle import create_session_file

    dd = DataDir(tmp_path / "data")
    dd.ensure()
    create_session_file(dd, "r", owner="", title=None, metadata={}, now=now_iso())
    f = SessionFile(dd, "r")
    try:

        def upload() -> tuple[BlobWriter, str, int]:
            w = BlobWriter(dd, "r", limit=1 << 20)
            w.write(DATA)
            sha, size = w.commit()
            return w, sha, size

        def run(op: Any) -> Any:
            (result,), _, _ = f.run_batch([op], now_iso())
            if isinstance(result, Exception):
                raise result
            return result

        def add(w: BlobWriter, sha: str, size: int) -> dict[str, Any]:
            op = op_add_attachment(name="a", mime="x/y", size=size, sha256=sha, place=w.place)
            doc: dict[str, Any] = run(op)
            return doc

        w, sha, size = upload()
        first = add(w, sha, size)
        path = blob_path(dd, "r", sha)
        # 1: the new upload is written, the old record deleted and its blob dropped,
        # then the new record is added: it places its own copy
        w2, _, _ = upload()
        run(op_delete_attachment(first["id"]))
        assert run(op_drop_blob(sha, path)) is True and not path.exists()
        second = add(w2, sha, size)
        assert path.read_bytes() == DATA
        # 2: the new record is added first, then the old one's drop finds it in use
        w3, _, _ = upload()
        run(op_delete_attachment(second["id"]))
        add(w3, sha, size)
        assert run(op_drop_blob(sha, path)) is False and path.read_bytes() == DATA
        assert [p.name for p in path.parent.iterdir()] == [sha]  # no temporary file left
    finally:
        f.close()


def test_place_after_abort_fails_so_no_record_lacks_bytes(tmp_path: Any) -> None:
    """An upload aborted while its op waited (a cancelled handler) cannot be placed:
    place raises, so the op recording it fails instead of leaving a record without bytes."""
    import pytest

    from storage.attachments import BlobWriter
    from storage.ids import now_iso
    from storage.layout import DataDir
    from storage.lifecycle import create_session_file

    dd = DataDir(tmp_path / "data")
    dd.ensure()
    create_session_file(dd, "p", owner="", title=None, metadata={}, now=now_iso())
    w = BlobWriter(dd, "p", limit=1 << 20)
    w.write(DATA)
    w.commit()
    w.abort()
    with pytest.raises(FileNotFoundError):
        w.place()
