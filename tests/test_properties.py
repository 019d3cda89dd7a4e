"""Property tests (hypothesis): ids, paths, cursors and request models on arbitrary input."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from server.errors import ApiError
from server.requests import (
    ChatRequest,
    LoginRequest,
    MessageCreate,
    MessagePatch,
    RegenerateRequest,
    SessionCreate,
    SessionPatch,
    check_metadata,
)
from server.settings import Settings
from storage import cursors
from storage.errors import InvalidInput
from storage.ids import SESSION_ID_RE, validate_path_component, validate_session_id
from storage.layout import DataDir

ROOT = DataDir("/srv/roost-data")
VALID_ID = st.from_regex(SESSION_ID_RE, fullmatch=True)
TRICKY = st.sampled_from(
    ["..", ".", "/", "\\", "\x00", "%2e", "%2f", "~", ":", " ", "a", "Z", "9", "-", "_"]
)
ID_LIKE = st.one_of(
    st.text(max_size=140),
    st.lists(TRICKY, max_size=12).map("".join),
    VALID_ID,
)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


def _inside(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root)


@given(ID_LIKE)
def test_session_id_accepted_exactly_when_it_matches(sid: str) -> None:
    """validate_session_id accepts exactly the documented regex and raises InvalidInput else."""
    if SESSION_ID_RE.fullmatch(sid):
        assert validate_session_id(sid) == sid
    else:
        with pytest.raises(InvalidInput):
            validate_session_id(sid)


@given(VALID_ID)
def test_valid_session_id_maps_inside_the_data_dir(sid: str) -> None:
    """A valid id is one folder directly under its shard, inside the sessions root."""
    d = ROOT.session_dir(sid)
    assert _inside(d, ROOT.sessions_root)
    assert d.name == sid
    assert d.parent.parent == ROOT.sessions_root


@given(ID_LIKE)
def test_any_id_either_refused_or_inside(sid: str) -> None:
    """Whatever the id, session_dir refuses it or stays inside the data dir."""
    try:
        d = ROOT.session_dir(sid)
    except InvalidInput:
        return
    assert _inside(d, ROOT.sessions_root)


@given(VALID_ID, ID_LIKE)
def test_attachment_name_either_refused_or_inside(sid: str, name: str) -> None:
    """An attachment file name is refused or lands inside the session's attachments folder."""
    try:
        p = ROOT.attachment_path(sid, name)
    except InvalidInput:
        assert SESSION_ID_RE.fullmatch(name) is None
        return
    assert p.parent == ROOT.session_dir(sid) / "attachments"
    assert _inside(p, ROOT.session_dir(sid) / "attachments")


@pytest.mark.parametrize("name", ["..", "../x", "a/b", "/etc/passwd", "a\x00b", ".env", ""])
def test_attachment_path_tricks_are_refused(name: str) -> None:
    """Separators, parents, NUL, dotfiles and empty names never become paths."""
    with pytest.raises(InvalidInput):
        validate_path_component(name)


KINDS = st.sampled_from(["s", "d", "u"])


@given(KINDS, st.integers(min_value=0, max_value=2**62 - 1))
def test_int_cursor_round_trips(kind: str, value: int) -> None:
    """decode_int(encode_int(v)) == v for every position."""
    assert cursors.decode_int(kind, cursors.encode_int(kind, value)) == value


@given(st.integers(min_value=0, max_value=2**62 - 1))
def test_int_cursor_of_another_kind_is_refused(value: int) -> None:
    """A cursor of one listing is refused by another."""
    with pytest.raises(InvalidInput):
        cursors.decode_int("d", cursors.encode_int("s", value))


@given(
    st.text(min_size=1, max_size=40).filter(lambda t: "|" not in t),
    st.text(min_size=1, max_size=60),
)
def test_pair_cursor_round_trips(ts: str, ident: str) -> None:
    """decode_pair(encode_pair(ts, id)) == (ts, id)."""
    assert cursors.decode_pair("u", cursors.encode_pair("u", ts, ident)) == (ts, ident)


@given(st.one_of(st.text(max_size=600), st.binary(max_size=80).map(lambda b: b.hex())))
def test_garbage_cursor_raises_only_invalid_input(raw: str) -> None:
    """Any string is a cursor or an InvalidInput, never another exception."""
    for decode in (
        lambda c: cursors.decode_int("s", c),
        lambda c: cursors.decode_pair("u", c),
    ):
        with contextlib.suppress(InvalidInput):
            decode(raw)


MODELS: list[type[BaseModel]] = [
    SessionCreate,
    SessionPatch,
    MessageCreate,
    MessagePatch,
    ChatRequest,
    RegenerateRequest,
    LoginRequest,
]


def _bodies(model: type[BaseModel]) -> st.SearchStrategy[Any]:
    keys = st.sampled_from([*model.model_fields, "type", "extra"])
    parts = st.lists(
        st.fixed_dictionaries(
            {"type": st.sampled_from(["text", "tool-call", "tool-result", "attachment", "x"])},
            optional={
                "text": JSON,
                "tool_call_id": JSON,
                "tool_name": JSON,
                "attachment_id": JSON,
                "args": JSON,
            },
        ),
        max_size=3,
    )
    return st.one_of(JSON, st.dictionaries(keys, st.one_of(JSON, parts), max_size=8))


@pytest.mark.parametrize("model", MODELS, ids=[m.__name__ for m in MODELS])
@settings(max_examples=80, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_request_models_raise_only_validation_errors(model: type[BaseModel], data: Any) -> None:
    """Arbitrary JSON parses or raises ValidationError, never anything else."""
    body = data.draw(_bodies(model))
    with contextlib.suppress(ValidationError):
        model.model_validate(body)


@given(st.dictionaries(st.text(max_size=8), JSON, max_size=6))
def test_metadata_check_raises_only_api_errors(meta: dict[str, Any]) -> None:
    """The metadata limits refuse with ApiError (4xx) or accept; nothing else."""
    s = Settings(data_dir="/tmp/unused", max_metadata_depth=2, max_metadata_bytes=64)
    try:
        check_metadata(meta, s, len(repr(meta)))
    except ApiError as exc:
        assert 400 <= exc.status < 500


def _cursor(kind: str) -> Any:
    return lambda n: cursors.encode_int(kind, n)


@pytest.fixture(scope="module")
def session_file(tmp_path_factory: Any) -> Any:
    from storage.file import SessionFile
    from storage.ids import now_iso
    from storage.lifecycle import create_session_file
    from storage.ops import MessageDraft, op_append

    dd = DataDir(tmp_path_factory.mktemp("prop"))
    dd.ensure()
    create_session_file(dd, "p", owner="", title=None, metadata={}, now=now_iso())
    f = SessionFile(dd, "p")
    f.run_batch(
        [op_append(MessageDraft(role="user", content=f"m{i}")) for i in range(30)], now_iso()
    )
    yield f
    f.close()


@settings(max_examples=100, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    view=st.sampled_from(["active", "all"]),
    before=st.none()
    | st.text(max_size=40)
    | st.integers(0, 40).map(lambda n: cursors.encode_int("s", n)),
    after=st.none()
    | st.text(max_size=40)
    | st.integers(0, 40).map(lambda n: cursors.encode_int("d", n)),
)
def test_page_with_any_cursor_pages_or_refuses(
    session_file: Any, view: str, before: str | None, after: str | None
) -> None:
    """page() with any cursor strings returns a page or raises InvalidInput."""
    try:
        page = session_file.page(view=view, limit=10, before=before, after=after)
    except InvalidInput:
        return
    assert len(page.items) <= 10
