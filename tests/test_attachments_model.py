"""Attachments reach the model (issue 25): content parts by MIME type, per-model
capabilities, and what cannot be sent named in the reply's metadata."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest

from actors.model_parts import Attachments, ModelCaps, parse_caps
from tests.conftest import new_session
from tests.test_attachments import uploaded
from tests.test_openai import provider  # noqa: F401 (the recording provider fixture)

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


def make_pdf(text: str) -> bytes:
    """A one-page PDF whose page shows ``text`` (ASCII), with a correct xref table."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R"
        b" /Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length " + str(len(stream)).encode() + b" >>\nstream\n" + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for i, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{i} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    for off in offsets:
        out += f"{off:010d} 00000 n \n".encode()
    out += (
        f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    )
    return bytes(out)


async def _chat(client: Any, content: str, ids: list[str], **body: Any) -> dict[str, Any]:
    r = await client.post(
        "/api/sessions/s1/chat",
        json={"content": content, "attachments": ids, **body},
        headers={"Accept": "application/json"},
    )
    assert r.status == 201, await r.text()
    reply: dict[str, Any] = (await r.json())["assistant_message"]
    return reply


def _user_content(seen: list[dict[str, Any]]) -> Any:
    """The last user message's content in the last chat request the provider saw."""
    chats = [
        s for s in seen if not str(s["body"]["messages"][0]["content"]).startswith("Write a title")
    ]
    users = [m for m in chats[-1]["body"]["messages"] if m["role"] == "user"]
    return users[-1]["content"]


async def _openai(make_client: Any, provider: Any, **kw: Any) -> tuple[Any, list[dict[str, Any]]]:  # noqa: F811
    url, seen = provider
    client = await make_client(
        responder="openai", openai_base_url=url, openai_model="good-model", **kw
    )
    await new_session(client)
    return client, seen


async def test_image_attachment_reaches_the_model_as_image_part(
    make_client: Any,
    provider: Any,  # noqa: F811
) -> None:
    """An image attachment is sent as an image_url part holding a data URL of its bytes."""
    client, seen = await _openai(make_client, provider)
    img = await uploaded(client, "s1", PNG, name="dot.png", mime="image/png")
    reply = await _chat(client, "what is this?", [img["id"]])
    content = _user_content(seen)
    assert content[0] == {"type": "text", "text": "what is this?"}
    url = "data:image/png;base64," + base64.b64encode(PNG).decode()
    assert content[1] == {"type": "image_url", "image_url": {"url": url}}
    sent = reply["metadata"]["attachments"]["sent"]
    assert [(a["attachment_id"], a["as"]) for a in sent] == [(img["id"], "image_url")]
    assert reply["metadata"]["attachments"]["not_sent"] == []


async def test_text_file_is_inlined_for_the_model(make_client: Any, provider: Any) -> None:  # noqa: F811
    """A text file arrives inline, inside a file tag naming it."""
    client, seen = await _openai(make_client, provider)
    doc = await uploaded(
        client, "s1", b"line one\nline two\n", name="notes.md", mime="text/markdown"
    )
    await _chat(client, "summarise", [doc["id"]])
    part = _user_content(seen)[1]
    assert part == {"type": "text", "text": '<file name="notes.md">\nline one\nline two\n\n</file>'}


async def test_text_file_over_the_token_cap_is_cut(make_client: Any, provider: Any) -> None:  # noqa: F811
    """A text file longer than attachment_text_tokens is cut, and the cut is said."""
    client, seen = await _openai(make_client, provider, attachment_text_tokens=5)
    doc = await uploaded(client, "s1", b"x" * 100, name="big.csv", mime="text/csv")
    reply = await _chat(client, "read", [doc["id"]])
    text = _user_content(seen)[1]["text"]
    assert "x" * 20 in text and "x" * 21 not in text and "20 of 100 characters" in text
    assert reply["metadata"]["attachments"]["sent"][0]["cut"] is True


async def test_pdf_reaches_the_model_as_text(make_client: Any, provider: Any) -> None:  # noqa: F811
    """A PDF is sent as its extracted text (pypdf)."""
    client, seen = await _openai(make_client, provider)
    doc = await uploaded(client, "s1", make_pdf("Quarterly revenue grew"), name="r.pdf")
    assert doc["mime"] == "application/pdf"
    await _chat(client, "what does it say?", [doc["id"]])
    part = _user_content(seen)[1]
    assert part["type"] == "text" and part["text"].startswith('<file name="r.pdf">')
    assert "Quarterly revenue grew" in part["text"]


async def test_pdf_goes_as_file_part_where_the_model_takes_files(
    make_client: Any,
    provider: Any,  # noqa: F811
) -> None:
    """With pdf: file for the model, the PDF goes as a file part with its bytes."""
    caps = orjson.dumps({"good-*": {"pdf": "file"}}).decode()
    client, seen = await _openai(make_client, provider, model_capabilities=caps)
    pdf = make_pdf("hello")
    doc = await uploaded(client, "s1", pdf, name="r.pdf", mime="application/pdf")
    await _chat(client, "read", [doc["id"]])
    part = _user_content(seen)[1]
    data = "data:application/pdf;base64," + base64.b64encode(pdf).decode()
    assert part == {"type": "file", "file": {"filename": "r.pdf", "file_data": data}}


async def test_model_without_vision_gets_a_note_instead_of_the_image(
    make_client: Any,
    provider: Any,  # noqa: F811
) -> None:
    """A model configured without images gets a text note, and the reply names the
    image as not sent."""
    caps = orjson.dumps({"good-model": {"images": False}}).decode()
    client, seen = await _openai(make_client, provider, model_capabilities=caps)
    img = await uploaded(client, "s1", PNG, name="dot.png", mime="image/png")
    reply = await _chat(client, "look", [img["id"]])
    content = _user_content(seen)
    assert not any(p["type"] == "image_url" for p in content)
    assert content[1] == {
        "type": "text",
        "text": "[attachment dot.png (image/png) was not sent: "
        "the model good-model does not take images]",
    }
    (note,) = reply["metadata"]["attachments"]["not_sent"]
    assert note["attachment_id"] == img["id"] and "does not take images" in note["reason"]


async def test_unsupported_type_is_named_not_dropped(make_client: Any, provider: Any) -> None:  # noqa: F811
    """A binary file is not sent; the model gets a note and the reply's metadata says why."""
    client, seen = await _openai(make_client, provider)
    doc = await uploaded(client, "s1", b"\x00\x01zip", name="a.zip", mime="application/zip")
    reply = await _chat(client, "open it", [doc["id"]])
    assert "a.zip (application/zip) was not sent" in _user_content(seen)[1]["text"]
    (note,) = reply["metadata"]["attachments"]["not_sent"]
    assert note["name"] == "a.zip" and "not sent to models" in note["reason"]


async def test_message_without_attachments_keeps_plain_text_content(
    make_client: Any,
    provider: Any,  # noqa: F811
) -> None:
    """No attachments: the content stays a string and no report is added."""
    client, seen = await _openai(make_client, provider)
    reply = await _chat(client, "hello", [])
    assert _user_content(seen) == "hello"
    assert "attachments" not in reply["metadata"]


async def test_echo_reports_what_it_received(make_client: Any) -> None:
    """Offline, the echo responder says what a model would have been sent."""
    client = await make_client(echo_words_per_second=0)
    await new_session(client)
    img = await uploaded(client, "s1", PNG, name="dot.png", mime="image/png")
    txt = await uploaded(client, "s1", b"abc", name="a.txt", mime="text/plain")
    reply = await _chat(client, "see", [img["id"], txt["id"]])
    assert reply["content"] == "see\n[dot.png: image_url, 70 bytes]\n[a.txt: text, 3 characters]"
    sent = reply["metadata"]["attachments"]["sent"]
    assert [a["as"] for a in sent] == ["image_url", "text"]


async def test_echo_names_an_attachment_whose_bytes_are_gone(make_client: Any) -> None:
    """An attachment record without its bytes (an import) is named as not sent."""
    client = await make_client(echo_words_per_second=0)
    await new_session(client)
    doc = await uploaded(client, "s1", b"abc", name="a.txt", mime="text/plain")
    from tests.test_attachments import att_dir

    (att_dir(client, "s1") / doc["sha256"]).unlink()
    reply = await _chat(client, "see", [doc["id"]])
    (note,) = reply["metadata"]["attachments"]["not_sent"]
    assert note["reason"] == "its bytes are not stored on this server"
    assert reply["content"].endswith("[a.txt: not sent: its bytes are not stored on this server]")


def test_capability_table_patterns_and_errors() -> None:
    """Exact names win over patterns; patterns are tried in order; bad tables are refused."""
    table = parse_caps('{"gpt-4o*": {"images": true}, "gpt-4o-text": {"images": false}}')
    cfg = Attachments(table=table, default=ModelCaps(images=False))
    assert cfg.caps("gpt-4o-text").images is False
    assert cfg.caps("gpt-4o-mini").images is True
    assert cfg.caps("other").images is False
    for bad in ("[]", '{"m": 1}', '{"m": {"vision": true}}', '{"m": {"pdf": "ocr"}}', "{"):
        with pytest.raises(ValueError):
            parse_caps(bad)


async def test_bad_capability_setting_is_refused_at_start(make_client: Any) -> None:
    """--model-capabilities that is not a valid table stops the settings from loading."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="capabilit"):
        await make_client(model_capabilities='{"m": {"vision": true}}')
