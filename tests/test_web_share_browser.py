"""The share page /s/{id} in a real browser: a fresh context (no token, no cookie) reads it.

Playwright drives Debian's Chromium, as in ``tests/test_web_browser.py``; without
/usr/bin/chromium the tests skip, unless ``CI`` is set, where that is a failure.
"""

from __future__ import annotations

import http.client
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.conftest import TIMEOUT, ServerProcess, running_server
from tests.test_web_browser import CHROME_ARGS, CHROMIUM, MS, _unavailable

try:
    from playwright.sync_api import Browser, sync_playwright
except ImportError:  # pragma: no cover - the test extra installs it
    sync_playwright = None

A = {"Authorization": "Bearer tok-a"}


@pytest.fixture(scope="module")
def roost(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A real ``roost serve`` with a tokens file: alice (tok-a) and bob (tok-b)."""
    reason = _unavailable()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"browser tests cannot run in CI: {reason}")
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("share")
    tokens = Path(root / "tokens.json")
    tokens.write_text(json.dumps({"tok-a": "alice", "tok-b": "bob"}))
    with running_server(root / "data", "--tokens-file", str(tokens)) as proc:
        yield proc


@pytest.fixture(scope="module")
def browser(roost: ServerProcess) -> Iterator[Browser]:
    assert sync_playwright is not None
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROME_ARGS, timeout=MS * 3)
        try:
            yield b
        finally:
            b.close()


def call(roost: ServerProcess, method: str, path: str, body: Any = None) -> Any:
    conn = http.client.HTTPConnection(urlsplit(roost.url).netloc, timeout=TIMEOUT)
    try:
        headers = {**A, "Content-Type": "application/json"}
        conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
        assert resp.status < 300, raw
        return json.loads(raw) if raw else None
    finally:
        conn.close()


def shared_chat(roost: ServerProcess, branch: str = "active") -> str:
    """A session of alice with two branches (right active); the id of a share of it."""
    sid = call(roost, "POST", "/api/sessions", {"title": "Shared title"})["id"]
    root = call(roost, "POST", f"/api/sessions/{sid}/messages", {"role": "user", "content": "root"})
    for text in ("left", "right"):
        body = {"role": "user", "content": text, "parent_id": root["id"]}
        call(roost, "POST", f"/api/sessions/{sid}/messages", body)
    share_id: str = call(roost, "POST", f"/api/sessions/{sid}/shares", {"branch": branch})["id"]
    return share_id


def test_share_page_in_fresh_context_shows_active_branch(
    roost: ServerProcess, browser: Browser
) -> None:
    """A fresh browser context opens the link: the title and the active path, no copy button."""
    share_id = shared_chat(roost)
    ctx = browser.new_context()
    ctx.set_default_timeout(MS)
    errors: list[str] = []
    try:
        page = ctx.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"{roost.url}/s/{share_id}")
        page.wait_for_selector("#share[data-state=ready]")
        assert page.text_content("#share-title") == "Shared title"
        assert page.locator(".msg .body").all_text_contents() == ["root", "right"]
        assert page.locator("#share-copy").is_hidden()
    finally:
        ctx.close()
    assert not errors, errors


def test_share_page_after_revoke_says_so(roost: ServerProcess, browser: Browser) -> None:
    """A revoked link's page says it was revoked (the API answers 404)."""
    share_id = shared_chat(roost)
    call(roost, "DELETE", f"/api/shares/{share_id}")
    ctx = browser.new_context()
    ctx.set_default_timeout(MS)
    try:
        page = ctx.new_page()
        page.goto(f"{roost.url}/s/{share_id}")
        page.wait_for_selector("#share[data-state=missing]")
        assert "revoked" in (page.text_content("#share-status") or "")
    finally:
        ctx.close()


def test_share_page_signed_in_continues_as_own_copy(roost: ServerProcess, browser: Browser) -> None:
    """Signed in as bob, "Continue as my own copy" opens bob's new session with the chat."""
    share_id = shared_chat(roost)
    ctx = browser.new_context()
    ctx.set_default_timeout(MS)
    try:
        page = ctx.new_page()
        r = ctx.request.post(f"{roost.url}/api/login", data={"token": "tok-b"})
        assert r.ok
        page.goto(f"{roost.url}/s/{share_id}")
        page.wait_for_selector("#share[data-state=ready]")
        page.click("#share-copy")
        page.wait_for_url(re.compile(r".*/#/s/.+"))
        sid = page.url.split("#/s/", 1)[1]
        mine = ctx.request.get(f"{roost.url}/api/sessions/{sid}/messages")
        assert [m["content"] for m in mine.json()["items"]] == ["root", "right"]
    finally:
        ctx.close()
