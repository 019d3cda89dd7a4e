"""The page's files over HTTP, and the siblings route its branch switcher uses."""

from __future__ import annotations

import re
from typing import Any

from server.assets import STATIC_DIR
from tests.conftest import append, new_session


async def test_index_served_at_root_without_caching(client: Any) -> None:
    """GET / is the page: HTML, no-cache, a CSP that allows only this origin."""
    r = await client.get("/")
    assert r.status == 200
    assert r.content_type == "text/html"
    assert r.headers["Cache-Control"] == "no-cache"
    assert "default-src 'self'" in r.headers["Content-Security-Policy"]
    body = await r.text()
    assert '<script type="module" src="/static/app.js">' in body


async def test_page_references_only_local_files(client: Any) -> None:
    """Nothing the page loads comes from another host."""
    for path in sorted(STATIC_DIR.iterdir()):
        if path.is_dir():
            continue  # vendor/: see test_vendored_code_imports_only_local_files
        text = path.read_text()
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", ""), path.name
        assert "https://" not in text, path.name


async def test_asset_served_with_etag_and_304(client: Any) -> None:
    """An asset has a strong ETag; If-None-Match with it answers 304 with no body."""
    r = await client.get("/static/app.js")
    assert r.status == 200
    assert r.content_type == "text/javascript"
    etag = r.headers["ETag"]
    assert etag.startswith('"') and etag.endswith('"')
    r2 = await client.get("/static/app.js", headers={"If-None-Match": etag})
    assert r2.status == 304
    assert await r2.read() == b""


async def test_asset_changed_etag_gets_full_body(client: Any) -> None:
    """A stale ETag gets the file again."""
    r = await client.get("/static/app.css", headers={"If-None-Match": '"stale"'})
    assert r.status == 200
    assert r.content_type == "text/css"
    assert len(await r.read()) > 100


async def test_static_unknown_or_tricky_names_404(client: Any) -> None:
    """Unknown files, dot-dot and encoded slashes never reach the file system."""
    for path in (
        "/static/nope.js",
        "/static/..%2fapp.py",
        "/static/%2e%2e%2fapp.py",
        "/static/.hidden.js",
        "/static/routes_static.py",
    ):
        r = await client.get(path)
        assert r.status == 404, path
        assert (await r.json())["error"]["code"] == "not_found"


async def test_siblings_lists_branch_in_order(client: Any) -> None:
    """The siblings route gives every sibling, in sibling-index order."""
    await new_session(client)
    root = await append(client, "s1", "q")
    a = await append(client, "s1", "a1", role="assistant")
    b = await append(client, "s1", "a2", role="assistant", parent_id=root["id"])
    r = await client.get(f"/api/sessions/s1/messages/{b['id']}/siblings")
    assert r.status == 200
    items = (await r.json())["items"]
    assert [i["id"] for i in items] == [a["id"], b["id"]]
    assert items[0]["deleted"] is False
    page = await (await client.get("/api/sessions/s1/messages")).json()
    assert page["items"][-1]["siblings"] == {"index": 1, "count": 2}


async def test_siblings_of_roots_are_the_roots(client: Any) -> None:
    """A root message's siblings are the session's roots (edits of the first message)."""
    await new_session(client)
    first = await append(client, "s1", "one")
    second = await append(client, "s1", "two", parent_id=None)
    r = await client.get(f"/api/sessions/s1/messages/{first['id']}/siblings")
    assert [i["id"] for i in (await r.json())["items"]] == [first["id"], second["id"]]


async def test_siblings_unknown_message_404(client: Any) -> None:
    """An unknown message id answers 404."""
    await new_session(client)
    r = await client.get("/api/sessions/s1/messages/nope/siblings")
    assert r.status == 404


async def test_siblings_bad_limit_400(client: Any) -> None:
    """A limit out of range is a 400."""
    await new_session(client)
    m = await append(client, "s1", "x")
    r = await client.get(f"/api/sessions/s1/messages/{m['id']}/siblings?limit=0")
    assert r.status == 400


async def test_vendored_code_imports_only_local_files(client: Any) -> None:
    """Vendored libraries import nothing, load no script, and are served with their licenses.

    Their text names URLs (licenses, XML namespaces, issue links); what matters is
    that none is loaded: no import from a URL, no dynamic import, and the CSP
    (connect-src/script-src 'self') blocks any other host anyway.
    """
    vendor = STATIC_DIR / "vendor"
    names = sorted(p.name for p in vendor.iterdir())
    assert {"marked.js", "purify.js", "highlight.js"} <= set(names)
    for name in names:
        text = (vendor / name).read_text()
        if name.endswith(".js"):
            # no dynamic import, no import of anything (the word in keyword lists is fine)
            assert (
                re.search(r"""\bimport\s*\(|\bimport\s*[{*]|\bfrom\s*['"][./\w:]""", text) is None
            ), name
            assert "sourceMappingURL" not in text, name
        r = await client.get(f"/static/vendor/{name}")
        assert r.status == 200, name
    for lib in ("marked", "dompurify", "highlightjs"):
        assert f"LICENSE-{lib}.txt" in names


async def test_vendor_route_refuses_deeper_or_tricky_names(client: Any) -> None:
    """Only base names under vendor/ are served; app files are not reachable through it."""
    for path in (
        "/static/vendor/app.js",
        "/static/vendor/..%2fapp.js",
        "/static/vendor/%2e%2e%2fapp.js",
        "/static/vendor/x/marked.js",
        "/static/marked.js",
    ):
        r = await client.get(path)
        assert r.status == 404, path
