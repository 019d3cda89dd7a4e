"""The one door: SessionHandle from registry.session(), and the registry's hooks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from actors.actor import ActorConfig
from actors.hooks import CountingHooks
from actors.registry import ActorRegistry
from actors.responders import EchoResponder
from actors.session import NewMessage
from storage.errors import InvalidInput, NotFound
from storage.layout import DataDir


@pytest.fixture
async def registry(tmp_path: Path) -> AsyncIterator[ActorRegistry]:
    reg = ActorRegistry(DataDir(tmp_path / "data"), ActorConfig())
    reg.hooks = CountingHooks()
    reg.responder = EchoResponder(words_per_second=0)
    await reg.start()
    await reg.create_session("s", owner="ann")
    yield reg
    await reg.close()


async def test_session_append_then_page_and_get(registry: ActorRegistry) -> None:
    """An appended message is on the next page and readable by id."""
    async with registry.session("s", "ann") as s:
        msg, created = await s.append(NewMessage(role="user", content="hello"))
        page = await s.page(view="all", limit=10)
        again = await s.get_message(msg["id"])
    assert created and [m["id"] for m in page.items] == [msg["id"]]
    assert again["content"] == "hello"


async def test_session_of_another_user_is_not_found(registry: ActorRegistry) -> None:
    """registry.session() refuses a session the user does not own, as NotFound."""
    with pytest.raises(NotFound):
        async with registry.session("s", "bob"):
            pass


async def test_session_chat_reply_ends_complete(registry: ActorRegistry) -> None:
    """chat() commits both messages; wait_final() gives the finished echo reply."""
    async with registry.session("s", "ann") as s:
        user, reply, created, stream = await s.chat(
            NewMessage(role="user", content="one two three"), model=None, maxsize=64
        )
    final = await stream.wait_final()
    assert created and reply["status"] == "pending" and user["role"] == "user"
    assert final["status"] == "complete" and final["content"] == "one two three"


async def test_session_stream_of_an_ended_reply_replays_it(registry: ActorRegistry) -> None:
    """stream() of an ended reply has no subscription and its final message."""
    async with registry.session("s", "ann") as s:
        _, reply, _, running = await s.chat(
            NewMessage(role="user", content="hi there"), model=None, maxsize=None
        )
        await running.wait_final()
        ended = await s.stream(reply["id"], since=3, maxsize=64)
    assert ended.subscription is None
    assert ended.final is not None and ended.final["content"] == "hi there"


async def test_session_stream_past_the_text_is_invalid_input(registry: ActorRegistry) -> None:
    """Asking for text past what a reply has is InvalidInput (a 400)."""
    async with registry.session("s", "ann") as s:
        _, reply, _, running = await s.chat(
            NewMessage(role="user", content="short"), model=None, maxsize=None
        )
        await running.wait_final()
        with pytest.raises(InvalidInput, match="past the end"):
            await s.stream(reply["id"], since=999, maxsize=64)


async def test_session_export_streams_one_json_document(registry: ActorRegistry) -> None:
    """export() yields the chunks of one JSON document holding the messages."""
    async with registry.session("s", "ann") as s:
        await s.append(NewMessage(role="user", content="kept"))
        stream = await s.export("json")
    try:
        body = b"".join([chunk async for chunk in stream])
    finally:
        stream.close()
    doc = orjson.loads(body)
    assert [m["content"] for m in doc["messages"]] == ["kept"]


async def test_resume_reply_is_none_without_a_running_reply(registry: ActorRegistry) -> None:
    """resume_reply() answers None for an idle session and for another user."""
    async with registry.session("s", "ann"):
        pass
    assert await registry.resume_reply("s", "ann", maxsize=8) is None
    assert await registry.resume_reply("s", "bob", maxsize=8) is None
    assert await registry.resume_reply("nope", "ann", maxsize=8) is None


async def test_hooks_count_activations_and_commits(registry: ActorRegistry) -> None:
    """The registry reports activations and commits to its hooks."""
    hooks = registry.hooks
    assert isinstance(hooks, CountingHooks)
    async with registry.session("s", "ann") as s:
        await s.append(NewMessage(role="user", content="a"))
    assert hooks.activations == 1 and hooks.max_live_seen == 1
    assert hooks.commits >= 1
