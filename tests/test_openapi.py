"""``/openapi.json``: generated, complete, true to the real responses, and fuzzed."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import aiohttp
from pydantic import BaseModel

from server import responses
from storage.export import ExportDocument
from tests.conftest import append, new_session, registry_of

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"


async def _doc(client: Any) -> dict[str, Any]:
    r = await client.get("/openapi.json")
    assert r.status == 200
    doc: dict[str, Any] = await r.json()
    return doc


def _check(model: type[BaseModel], data: Any) -> None:
    model.model_validate(data)


async def test_openapi_lists_every_route(client: Any) -> None:
    """Every route of the app is in the document, with its method."""
    doc = await _doc(client)
    for route in client.server.app.router.routes():
        if route.method in ("HEAD", "OPTIONS"):
            continue
        path = route.resource.canonical
        assert route.method.lower() in doc["paths"].get(path, {}), (route.method, path)


async def test_openapi_describes_every_route(client: Any) -> None:
    """No route is left with the placeholder answer: each has @describe(...) responses."""
    doc = await _doc(client)
    bare = [
        f"{method.upper()} {path}"
        for path, ops in doc["paths"].items()
        for method, op in ops.items()
        if "200" in op["responses"]
        and op["responses"]["200"]["description"].startswith("success (not described")
    ]
    assert bare == []


async def test_openapi_request_schemas_carry_setting_limits(make_client: Any) -> None:
    """Request schemas come from the models, with the server's own limits filled in."""
    client = await make_client(max_content_chars=1234, max_page_limit=77)
    doc = await _doc(client)
    content = doc["components"]["schemas"]["MessageCreate"]["properties"]["content"]
    assert content["maxLength"] == 1234
    params = doc["paths"]["/api/sessions/{sid}/messages"]["get"]["parameters"]
    limit = next(p for p in params if p["name"] == "limit")
    assert limit["schema"]["maximum"] == 77


async def test_openapi_is_public_with_tokens(make_client: Any, tmp_path: Path) -> None:
    """The document needs no token and declares bearer security."""
    tokens = tmp_path / "t.json"
    tokens.write_text('{"tok-u": "u"}')
    client = await make_client(tokens_file=str(tokens))
    doc = await _doc(client)
    assert doc["security"] == [{"bearer": []}]
    assert doc["paths"]["/healthz"]["get"]["security"] == []


async def test_session_responses_match_models(client: Any) -> None:
    """Real session answers validate against the documented response models."""
    r = await client.post("/api/sessions", json={"id": "s1", "title": "t", "metadata": {"k": 1}})
    _check(responses.Session, await r.json())
    await append(client, "s1", "hi")
    _check(responses.SessionView, await (await client.get("/api/sessions/s1")).json())
    _check(responses.SessionList, await (await client.get("/api/sessions")).json())
    r = await client.patch("/api/sessions/s1", json={"title": "u"})
    _check(responses.Session, await r.json())


async def test_message_responses_match_models(client: Any) -> None:
    """Real message answers (both views, tombstones, tool parts) validate against the models."""
    await new_session(client, "s1")
    m = await append(
        client,
        "s1",
        "hi",
        parts=[{"type": "tool-call", "tool_call_id": "c1", "tool_name": "f", "args": {"a": 1}}],
        metadata={"x": [1]},
    )
    _check(responses.Message, m)
    await append(client, "s1", "second")
    await client.delete(f"/api/sessions/s1/messages/{m['id']}")
    for view in ("active", "all"):
        page = await (await client.get(f"/api/sessions/s1/messages?view={view}")).json()
        _check(responses.MessagePage, page)
    r = await client.get(f"/api/sessions/s1/messages/{(await append(client, 's1', 'x'))['id']}")
    _check(responses.Message, await r.json())


async def test_chat_json_answer_matches_model(make_client: Any) -> None:
    """Chat and regenerate with Accept: application/json validate against ChatResult."""
    client = await make_client(echo_words_per_second=0)
    await new_session(client, "s1")
    r = await client.post(
        "/api/sessions/s1/chat", json={"content": "hello"}, headers={"Accept": "application/json"}
    )
    body = await r.json()
    _check(responses.ChatResult, body)
    mid = body["assistant_message"]["id"]
    r = await client.post(
        f"/api/sessions/s1/messages/{mid}/regenerate", headers={"Accept": "application/json"}
    )
    _check(responses.ChatResult, await r.json())
    r = await client.post(f"/api/sessions/s1/messages/{mid}/cancel")
    _check(responses.Message, await r.json())


async def test_files_responses_match_models(client: Any) -> None:
    """Upload, search, export and import answers validate against their documented models."""
    await new_session(client, "s1")
    await append(client, "s1", "find the needle here")
    form = aiohttp.FormData()
    form.add_field("file", b"bytes", filename="a.bin", content_type="application/x-thing")
    r = await client.post("/api/sessions/s1/attachments", data=form)
    assert r.status == 201
    _check(responses.Attachment, await r.json())
    r = await client.get("/api/sessions/s1/search", params={"q": "needle"})
    page = await r.json()
    assert len(page["items"]) == 1
    _check(responses.SearchPage, page)
    r = await client.get("/api/sessions/s1/export")
    exported = await r.json()
    _check(ExportDocument, exported)
    r = await client.post("/api/sessions/import", json=exported, params={"id": "s2"})
    assert r.status == 201
    _check(responses.Session, await r.json())


async def test_siblings_response_matches_model(client: Any) -> None:
    """The siblings page validates against SiblingsPage, tombstones included."""
    await new_session(client, "s1")
    first = await append(client, "s1", "one")
    await append(client, "s1", "two", parent_id=None)
    await client.delete(f"/api/sessions/s1/messages/{first['id']}")
    r = await client.get(f"/api/sessions/s1/messages/{first['id']}/siblings")
    page = await r.json()
    assert len(page["items"]) == 2 and page["items"][0]["deleted"] is True
    _check(responses.SiblingsPage, page)


async def test_error_and_misc_responses_match_models(client: Any) -> None:
    """Errors, health and whoami validate against their models."""
    _check(responses.Error, await (await client.get("/api/sessions/nope")).json())
    _check(responses.Health, await (await client.get("/healthz")).json())
    _check(responses.User, await (await client.get("/api/whoami")).json())
    assert registry_of(client).live >= 0
