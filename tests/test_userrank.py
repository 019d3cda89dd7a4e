"""Cross-session search ranked in Python (storage.userrank): the same hits, order and
scores as FTS5's bm25() over the same window, from stored tokens or from old rows."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

import storage.userrank as userrank
import storage.usersearch as usersearch
from storage.layout import connect
from storage.schema import USER_SEARCH_MIGRATIONS, migrate
from storage.usersearch import Doc, UserIndex

WORDS = [
    "gull",
    "tern",
    "sea",
    "salt",
    "wind",
    "wave",
    "rock",
    "sand",
    "shell",
    "kelp",
    "crab",
    "foam",
    "tide",
    "reef",
]
WORDS += [f"{a}{b}" for a in ("ka", "lo", "mi") for b in ("ren", "to", "vel", "dor", "ni")]
WEIGHTS = [1.0 / (rank + 4) for rank in range(len(WORDS))]
PUNCT = (" ", " ", " ", ", ", ". ", "-", "'", " (", ") ", ": ", "  ", "!\n")
QUERIES = ("gull", "sea", "gull sea", "tern tern", "sa*", "ke* tide", "don't", "rock-sand")


def _text(rng: random.Random) -> str:
    out = []
    for word in rng.choices(WORDS, weights=WEIGHTS, k=rng.randint(1, 16)):
        out.append(word.upper() if rng.random() < 0.1 else word)
        out.append(rng.choice(PUNCT))
    if rng.random() < 0.05:
        out.append("don't")
    return "".join(out)


def _docs(n: int, seed: int = 7) -> list[Doc]:
    rng = random.Random(seed)
    return [Doc(f"m{i:04d}", i + 1, "user", "2026-01-01T00:00:00Z", _text(rng)) for i in range(n)]


def _hits(idx: UserIndex, q: str, limit: int = 30, offset: int = 0) -> list[tuple[str, float]]:
    return [(h["message_id"], h["score"]) for h in idx.search(q, limit=limit, offset=offset)]


def _by_fts5(idx: UserIndex, q: str, mp: pytest.MonkeyPatch, **kw: int) -> list[tuple[str, float]]:
    with mp.context() as m:
        m.setattr(userrank, "FTS5_RATIO", 10**12)  # FTS5 is always "cheaper"
        return _hits(idx, q, **kw)


def _same(a: list[tuple[str, float]], b: list[tuple[str, float]]) -> None:
    assert [m for m, _ in a] == [m for m, _ in b]
    assert [s for _, s in a] == pytest.approx([s for _, s in b], rel=1e-12)


@pytest.fixture
def python_ranks(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.setattr(userrank, "FTS5_RATIO", 0)  # Python always ranks plain words
    return monkeypatch


def test_python_ranking_equals_bm25(tmp_path: Path, python_ranks: pytest.MonkeyPatch) -> None:
    """Words, repeats, prefixes, punctuation and case: the same hits, order and scores
    as FTS5's bm25(), over every match and over a bounded window, on every page."""
    idx = UserIndex(tmp_path / "search.db")
    try:
        idx.rebuild_session("s", _docs(400), 1)
        for q in QUERIES:
            _same(_hits(idx, q), _by_fts5(idx, q, python_ranks))
            _same(_hits(idx, q, offset=7), _by_fts5(idx, q, python_ranks, offset=7))
        python_ranks.setattr(usersearch, "RANK_WINDOW", 50)
        for q in QUERIES:
            _same(_hits(idx, q, limit=60), _by_fts5(idx, q, python_ranks, limit=60))
        hit = idx.search("gull sea", limit=1)[0]
        assert hit["snippet"]["spans"] and "\ue000" not in hit["snippet"]["text"]
    finally:
        idx.close()


def test_python_ranking_sees_edits_and_deletes(
    tmp_path: Path, python_ranks: pytest.MonkeyPatch
) -> None:
    """After edits and deletes (past the document counts' slack) the ranking is still
    FTS5's, and a deleted or edited-away message is never a hit."""
    idx = UserIndex(tmp_path / "search.db")
    try:
        docs = _docs(300)
        idx.rebuild_session("s", docs, 1)
        before = _hits(idx, "salt")
        assert before
        gone = [d.message_id for d in docs if "salt" in d.content.lower()][:40]
        changes = [usersearch.Change(m, None) for m in gone[:20]] + [
            usersearch.Change(m, Doc(m, 1, "user", "2026-01-01T00:00:00Z", "only kelp"))
            for m in gone[20:]
        ]
        idx.apply("s", changes, 2)
        after = _hits(idx, "salt", limit=400)
        assert not set(gone) & {m for m, _ in after}
        _same(after, _by_fts5(idx, "salt", python_ranks, limit=400))
    finally:
        idx.close()


def test_another_connections_write_is_seen(
    tmp_path: Path, python_ranks: pytest.MonkeyPatch
) -> None:
    """A write by another connection (``roost-admin reindex`` beside the server)
    drops the cached document counts: the scores stay FTS5's."""
    idx = UserIndex(tmp_path / "search.db")
    other = UserIndex(tmp_path / "search.db")
    try:
        idx.rebuild_session("s", _docs(50), 1)
        first = _hits(idx, "tern")
        other.rebuild_session("t", _docs(500, seed=8), 1)
        again = _hits(idx, "tern", limit=600)
        assert len(again) > len(first)
        _same(again, _by_fts5(idx, "tern", python_ranks, limit=600))
    finally:
        other.close()
        idx.close()


def test_rows_from_a_v1_index_are_ranked_and_migrated(
    tmp_path: Path, python_ranks: pytest.MonkeyPatch
) -> None:
    """A v1 index (no stored tokens) opens at the newest version; its rows are
    tokenized when read (the same ranking) and get their tokens when rewritten."""
    path = tmp_path / "search.db"
    conn = connect(path, synchronous="NORMAL")
    migrate(conn, USER_SEARCH_MIGRATIONS[:1], what="v1 index")
    docs = _docs(200)
    conn.executemany(
        "INSERT INTO docs (session_id, message_id, seq, role, created_at, content) "
        "VALUES ('s', ?, ?, ?, ?, ?)",
        [(d.message_id, d.seq, d.role, d.created_at, d.content) for d in docs],
    )
    conn.execute("INSERT INTO indexed VALUES ('s', 1)")
    conn.close()
    idx = UserIndex(path)
    try:
        version = idx.conn.execute("PRAGMA user_version").fetchone()[0]
        assert version == len(USER_SEARCH_MIGRATIONS)
        old = _hits(idx, "gull sea")
        assert old
        _same(old, _by_fts5(idx, "gull sea", python_ranks))
        idx.rebuild_session("s", docs, 1)
        nulls = idx.conn.execute("SELECT count(*) FROM docs WHERE ntok IS NULL").fetchone()[0]
        assert nulls == 0
        _same(_hits(idx, "gull sea"), old)
    finally:
        idx.close()


def test_words_it_does_not_rank_go_to_fts5(
    tmp_path: Path, python_ranks: pytest.MonkeyPatch
) -> None:
    """A word that is not ASCII, or is only punctuation, is ranked by FTS5; accented
    text still matches a plain word (remove_diacritics) and counts at least once."""
    assert userrank.phrases("café") is None and userrank.phrases("--- gull") is None
    idx = UserIndex(tmp_path / "search.db")
    try:
        texts = ["Café au lait", "cafe cafe CAFÉ", "un café noir", "plain tea"]
        docs = [Doc(f"m{i}", i + 1, "user", "2026-01-01T00:00:00Z", t) for i, t in enumerate(texts)]
        idx.rebuild_session("s", docs, 1)
        _same(_hits(idx, "cafe"), _by_fts5(idx, "cafe", python_ranks))
        # tokens are kept for text that is not ASCII only; ASCII is tokenized again
        kept = idx.conn.execute("SELECT message_id, norm, ntok FROM docs ORDER BY id").fetchall()
        assert kept == [
            ("m0", b" cafe  au  lait ", 3),
            ("m1", b" cafe  cafe  cafe ", 3),
            ("m2", b" un  cafe  noir ", 3),
            ("m3", None, 2),
        ]
        assert next(m for m, _ in _hits(idx, "cafe")) == "m1"
        assert sorted(m for m, _ in _hits(idx, "café")) == ["m0", "m1", "m2"]
    finally:
        idx.close()


def test_normalize_and_phrases() -> None:
    """Tokens are lowered and separated as unicode61 does; phrases mirror fts_query."""
    assert userrank.normalize("Don't  STOP-me, now!") == (b" don  t  stop  me  now ", 5)
    assert userrank.normalize("Crème brûlée") == (b" creme  brulee ", 2)
    assert userrank.normalize("...") == (b"  ", 0)
    got = userrank.phrases('rock-sand sa* "quoted"')
    assert got is not None
    assert [(p.expr, p.pattern) for p in got] == [
        ('"rock-sand"', b" rock  sand "),
        ('"sa"*', b" sa"),
        ('"""quoted"""', b" quoted "),
    ]


def test_idf_is_fts5s_and_takes_a_stale_count() -> None:
    """FTS5's IDF, floored at 1e-6; a cached count above the rows (deletes since) is
    taken as all rows rather than failing."""
    assert userrank.idf(1000, 10) == pytest.approx(math.log(990.5 / 10.5))
    assert userrank.idf(1000, 600) == 1e-6
    assert userrank.idf(990, 1000) == 1e-6


def test_averages_and_varints(tmp_path: Path) -> None:
    """The FTS5 averages record gives the row and token counts."""
    for value in (0, 127, 128, 16383, 16384, 2**31, 2**56 + 5, 2**63 - 1):
        encoded = _varint(value)
        assert userrank.read_varint(encoded + b"\x00", 0) == (value, len(encoded))
    idx = UserIndex(tmp_path / "search.db")
    try:
        assert userrank.averages(idx.conn, "docs_fts") is None
        docs = _docs(120)
        idx.rebuild_session("s", docs, 1)
        tokens = sum(userrank.normalize(d.content)[1] for d in docs)
        assert userrank.averages(idx.conn, "docs_fts") == (120, tokens)
    finally:
        idx.close()


def _varint(v: int) -> bytes:
    """SQLite's varint encoding (sqlite3PutVarint)."""
    if v > 0x00FFFFFFFFFFFFFF:
        out = [v & 0xFF]
        v >>= 8
        for _ in range(8):
            out.append((v & 0x7F) | 0x80)
            v >>= 7
        return bytes(reversed(out))
    out = [v & 0x7F]
    v >>= 7
    while v:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    return bytes(reversed(out))
