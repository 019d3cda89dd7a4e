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
