# ruff: noqa: F811  (pytest fixtures imported from tests.test_web_browser are parameters here)
"""The web page across chats (issue 23) in a real browser: search all chats and open a
hit on its branch; pin, archive; a second tab's list follows GET /api/events."""

from __future__ import annotations

from typing import Any

from tests.conftest import ServerProcess
from tests.test_web_browser import (  # noqa: F401 - the module's fixtures
    browser,
    call,
    open_chat,
    pages,
    roost,
    shot,
)


def _message(roost: ServerProcess, sid: str, content: str, parent: str | None) -> str:
    body: dict[str, Any] = {"role": "user", "content": content}
    if parent is not None:
        body["parent_id"] = parent
    mid: str = call("POST", f"{roost.url}/api/sessions/{sid}/messages", body)["id"]
    return mid


def test_search_all_chats_opens_the_hit_on_its_branch(roost: ServerProcess, pages: Any) -> None:
    """A hit on an older branch opens its chat on that branch, the message shown."""
    sid = call("POST", f"{roost.url}/api/sessions", {"title": "Zoo notes"})["id"]
    root = _message(roost, sid, "animals we saw", None)
    old = _message(roost, sid, "the capybara was asleep", root)
    _message(roost, sid, "the newer branch", root)
    page = pages()
    page.goto(f"{roost.url}/#/")
    page.fill("#all-search-input", "capybara")
    page.press("#all-search-input", "Enter")
    hit = page.locator("#all-search-list button").first
    hit.wait_for()
    assert "Zoo notes" in (hit.text_content() or "")
    assert page.locator("#all-search-list mark").first.text_content() == "capybara"
    shot(page, "across-search.png")
    hit.click()
    page.wait_for_selector(f"#m-{old}")
    assert page.locator(".msg").count() == 2  # root, then the hit's branch
    assert "newer branch" not in (page.locator("#messages").text_content() or "")


def test_pin_and_archive_from_the_menu(roost: ServerProcess, pages: Any) -> None:
    """Pin puts a chat first in the list; archive hides it until "Show archived"."""
    sid = call("POST", f"{roost.url}/api/sessions", {"title": "Pin me"})["id"]
    call("POST", f"{roost.url}/api/sessions", {"title": "Newer chat"})
    page = pages()
    other = pages()
    other.goto(f"{roost.url}/#/")
    other.wait_for_selector("#session-list a[data-sid]")
    open_chat(page, roost, sid)
    page.click("#chat-menu-button")
    page.click("#pin")
    first = page.locator("#session-list li").first
    first.locator(f'a[data-sid="{sid}"]').wait_for()
    assert "Pinned" in (first.text_content() or "")
    # the other tab follows the list feed: its first chat becomes the pinned one
    other.locator("#session-list li").first.locator(f'a[data-sid="{sid}"]').wait_for()
    page.click("#chat-menu-button")
    page.click("#archive")
    page.locator(f'#session-list a[data-sid="{sid}"]').wait_for(state="detached")
    page.click("#show-archived")
    page.locator(f'#session-list a[data-sid="{sid}"]').wait_for()
    assert "Archived" in (page.locator("#session-list li").first.text_content() or "")
    shot(page, "across-archived.png")
