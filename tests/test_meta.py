"""``GET /api/models`` and ``GET /api/capabilities``: what the page learns in one call."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from server.routes_meta import model_list
from server.settings import Settings


async def test_models_echo_lists_one_model(client: Any) -> None:
    """The echo responder offers one model, ``echo``, as the default."""
    r = await client.get("/api/models")
    assert r.status == 200
    assert await r.json() == {
        "responder": "echo",
        "default": "echo",
        "models": [{"id": "echo", "role": "default"}],
    }


def test_models_openai_lists_default_then_fallbacks(tmp_path: Path) -> None:
    """The configured model comes first, then each fallback once, in order."""
    settings = Settings(
        data_dir=str(tmp_path),
        responder="openai",
        openai_model="big",
        openai_fallback_models=" small, ,big,tiny,small",
    )
    body = model_list(settings).model_dump()
    assert body["default"] == "big"
    assert body["models"] == [
        {"id": "big", "role": "default"},
        {"id": "small", "role": "fallback"},
        {"id": "tiny", "role": "fallback"},
    ]


async def test_capabilities_without_tokens(client: Any) -> None:
    """Without tokens: no user, auth none, and the optional routes this build has."""
    r = await client.get("/api/capabilities")
    assert r.status == 200
    body = await r.json()
    assert body["user"] == "" and body["auth"] == "none"
    assert body["features"] == {
        "search": True,
        "export": True,
        "attachments": True,
        "user_events": True,
        "search_all": True,
    }
    assert body["max_content_chars"] == 100_000


async def test_capabilities_with_tokens_names_the_caller(make_client: Any, tmp_path: Path) -> None:
    """Behind tokens it needs one (401 without) and names who is asking."""
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({"tok-a": "alice"}))
    client = await make_client(tokens_file=str(tokens))
    assert (await client.get("/api/capabilities")).status == 401
    r = await client.get("/api/capabilities", headers={"Authorization": "Bearer tok-a"})
    assert r.status == 200
    body = await r.json()
    assert (body["user"], body["auth"]) == ("alice", "tokens")
