"""Which messages a reply sends (issue 21): budgeted history, summaries, compaction plans.

A branch's history, as a model receives it, is the path from the root to the
reply's parent with every range a **summary** covers replaced by that summary.
:func:`select_context` takes the newest items of it (raw messages and
summaries) that fit a token budget, walking the parent chain from the leaf:
the walk reads only what it takes (plus one message past the budget), and
finds a summary by its ``to_seq`` (index ``summaries_by_to``), so it costs the
same at any depth. A tool call is never split from its results: a raw run
never starts (at its old end) with a ``tool`` message, whose call would be
left out.

A summary covers ``[from_id, to_id]`` of one branch path (``from`` is an
ancestor-or-self of ``to``), so every branch below ``to`` shares it and a
branch that forked inside the range does not see it: each branch keeps its
own. Nothing is deleted: the messages stay readable in full.

:func:`plan_compaction` picks the oldest uncovered range of a branch that a
new summary should cover; :func:`op_add_summary` stores one. Pure SQL over
the reader (reads) or the transaction (the op); no I/O beyond that.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson
from pydantic import BaseModel, ConfigDict, Field

from storage.errors import InvalidInput, NotFound
from storage.ids import uuid7
from storage.reads import ReadSource
from storage.rows import MESSAGE_SELECT, MessageRow, message_doc, scalar
from storage.tokens import MESSAGE_OVERHEAD, estimate_message
from storage.txn import Txn

SUMMARY_COLUMNS = (
    "seq, id, from_seq, to_seq, from_id, to_id, content, tokens, covered, model_id, created_at"
)
#: the prefix a summary gets when it is sent to the model (as a system message)
SUMMARY_PREFIX = "Summary of the earlier conversation:\n"
#: the least a compaction plan walks back looking for the oldest uncovered message
SCAN_TOKENS = 200_000

# one walk step per row: (seq, id, parent_seq, role, tokens, deleted, summary seq or null)
_WALK = (
    "WITH RECURSIVE chain(seq, id, parent_seq, role, tokens, deleted, summary, used, n) AS ("
    " SELECT m.seq, m.id, m.parent_seq, m.role, m.tokens, m.deleted_at IS NOT NULL,"
    " (SELECT s.seq FROM summaries s WHERE s.to_seq = m.seq ORDER BY s.seq DESC LIMIT 1),"
    " m.tokens, 0 FROM messages m WHERE m.seq = ?"
    " UNION ALL SELECT m.seq, m.id, m.parent_seq, m.role, m.tokens, m.deleted_at IS NOT NULL,"
    " (SELECT s.seq FROM summaries s WHERE s.to_seq = m.seq ORDER BY s.seq DESC LIMIT 1),"
    " chain.used + m.tokens, chain.n + 1 FROM messages m JOIN chain ON m.seq = chain.parent_seq"
    " WHERE chain.summary IS NULL AND chain.used <= ? AND chain.n < ?)"
    " SELECT seq, id, parent_seq, role, tokens, deleted, summary FROM chain"
)


@dataclass(slots=True)
class Item:
    """One item of a context: a raw message, or a summary (``kind``)."""

    kind: str  # "message" | "summary"
    seq: int
    id: str
    tokens: int
    role: str = "system"
    from_id: str | None = None
    to_id: str | None = None


@dataclass(slots=True)
class Selection:
    """The items a reply below ``leaf_id`` sends, oldest first, within ``budget``.

    ``tokens`` is their sum (estimated, uncorrected); ``omitted_id`` names the
    newest message whose content is not sent (neither itself nor through a
    summary sent), or is None when nothing is left out; ``uncovered_tokens`` counts the
    raw messages sent after the newest summary (what compaction would shrink);
    ``left_out`` is True when the budget stopped the walk.
    """

    leaf_id: str | None
    budget: int
    items: list[Item] = field(default_factory=list)
    tokens: int = 0
    omitted_id: str | None = None
    uncovered_tokens: int = 0
    left_out: bool = False

    @property
    def message_ids(self) -> list[str]:
        return [i.id for i in self.items if i.kind == "message"]

    @property
    def summary_ids(self) -> list[str]:
        return [i.id for i in self.items if i.kind == "summary"]

    def record(self) -> dict[str, Any]:
        """What an assistant message stores of the context it answered: the runs of
        consecutive path messages (``[first_id, last_id, count]``, oldest first; the
        ids are the path between them), the summaries, tokens and budget."""
        runs: list[list[Any]] = []
        prev_kind = ""
        for it in self.items:
            if it.kind == "message" and prev_kind == "message":
                runs[-1][1] = it.id
                runs[-1][2] += 1
            elif it.kind == "message":
                runs.append([it.id, it.id, 1])
            prev_kind = it.kind
        return {
            "runs": runs,
            "summary_ids": self.summary_ids,
            "message_count": sum(count for _, _, count in runs),
            "tokens": self.tokens,
            "budget": self.budget,
            "omitted_id": self.omitted_id,
        }


def _leaf_seq(f: ReadSource, leaf_id: str) -> int:
    row = f.reader.execute("SELECT seq FROM messages WHERE id = ?", (leaf_id,)).fetchone()
    if row is None:
        raise NotFound(f"message {leaf_id!r} not found", details={"leaf_id": leaf_id})
    (seq,) = row
    return int(seq)


def _walk(f: ReadSource, start: int, limit: int) -> Iterator[tuple[Any, ...]]:
    """Path rows from ``start`` upwards, in batches, until a summary's ``to`` or
    (roughly) ``limit`` tokens; the caller stops reading when it has enough."""
    node: int | None = start
    while node is not None:
        steps = max(64, limit // MESSAGE_OVERHEAD + 64)
        rows = f.reader.execute(_WALK, (node, limit, steps)).fetchall()
        if not rows:
            return
        yield from rows
        _, _, parent, _, _, _, summary = rows[-1]
        if summary is not None or len(rows) < steps:
            return  # a summary (the caller jumps) or the root, or past the limit
        node = parent


def _summary(f: ReadSource, seq: int) -> tuple[str, int, int, str, str, int | None]:
    """(id, tokens, from_seq, from_id, to_id, parent of from) of summary ``seq``."""
    sid, tokens, from_seq, from_id, to_id = f.reader.execute(
        "SELECT id, tokens, from_seq, from_id, to_id FROM summaries WHERE seq = ?", (seq,)
    ).fetchone()
    (parent,) = f.reader.execute(
        "SELECT parent_seq FROM messages WHERE seq = ?", (from_seq,)
    ).fetchone() or (None,)
    return sid, int(tokens), int(from_seq), from_id, to_id, parent


def select_context(f: ReadSource, leaf_id: str | None, budget: int) -> Selection:
    """The newest items of the branch ending at ``leaf_id`` that fit ``budget`` tokens
    (see the module docstring). O(what is taken), whatever the branch's depth.

    Raises :class:`NotFound` for an unknown ``leaf_id``; None gives an empty context.
    """
    sel = Selection(leaf_id, budget)
    if leaf_id is None:
        return sel
    with f.snapshot():
        _select(f, _leaf_seq(f, leaf_id), sel)
    return sel


def _select(f: ReadSource, start: int, sel: Selection) -> None:
    taken: list[Item] = []  # newest first
    used = 0
    node: int | None = start
    seen_summary = False
    run_start = 0  # index in ``taken`` where the current raw run began
    while node is not None:
        jumped = False
        for seq, mid, _, role, tokens, deleted, summary in _walk(f, node, sel.budget - used):
            if summary is not None:
                _trim_run(taken, run_start)
                sid, stoks, _, from_id, to_id, above = _summary(f, summary)
                used = sum(i.tokens for i in taken)
                if used + stoks > sel.budget:
                    sel.left_out = True
                    sel.omitted_id = to_id  # covered by a summary that is not sent
                    node = None
                    break
                taken.append(Item("summary", summary, sid, stoks, "system", from_id, to_id))
                used += stoks
                seen_summary = True
                run_start = len(taken)
                node, jumped = above, True
                break
            if deleted:
                continue
            if used + tokens > sel.budget:
                sel.left_out = True
                sel.omitted_id = mid
                node = None
                break
            taken.append(Item("message", seq, mid, tokens, role))
            used += tokens
            if not seen_summary:
                sel.uncovered_tokens += tokens
        if not jumped:
            node = None  # the root was reached, or the budget is full
    dropped = _trim_run(taken, run_start)
    if dropped is not None:
        sel.left_out, sel.omitted_id = True, dropped
    if not seen_summary:
        sel.uncovered_tokens = sum(i.tokens for i in taken)
    taken.reverse()
    sel.items = taken
    sel.tokens = sum(i.tokens for i in taken)


def _trim_run(taken: list[Item], run_start: int) -> str | None:
    """Drop ``tool`` messages at the old end of the raw run ``taken[run_start:]``
    (their call is not sent); the id of the last one dropped, or None."""
    dropped = None
    while len(taken) > run_start and taken[-1].kind == "message" and taken[-1].role == "tool":
        dropped = taken.pop().id
    return dropped


def read_items(f: ReadSource, sel: Selection) -> list[dict[str, Any]]:
    """What a responder reads of ``sel``'s items, oldest first: per message ``id``,
    ``session_id`` (where its attachments' bytes live), ``role``, ``content``,
    ``parts``, ``tool_call``, ``tool_result``, ``attachments``, ``status``,
    ``model_id`` (the Message document's values; the other fields are not read, to
    keep a long context cheap), and each summary as a ``system`` message
    (``summary_id`` set, content prefixed)."""
    seqs = [i.seq for i in sel.items if i.kind == "message"]
    sums = [i.seq for i in sel.items if i.kind == "summary"]
    docs: dict[tuple[str, int], dict[str, Any]] = {}
    loads = orjson.loads
    with f.snapshot():
        if seqs:
            for (
                seq,
                mid,
                role,
                content,
                parts,
                call,
                result,
                atts,
                status,
                model,
            ) in f.reader.execute(
                "SELECT seq, id, role, content, parts, tool_call, tool_result, attachments,"
                " status, model_id FROM messages"
                " WHERE seq IN (SELECT value FROM json_each(?))",
                (orjson.dumps(seqs).decode(),),
            ):
                docs[("message", seq)] = {
                    "id": mid,
                    "session_id": f.sid,
                    "role": role,
                    "content": content,
                    "parts": None if parts is None else loads(parts),
                    "tool_call": None if call is None else loads(call),
                    "tool_result": None if result is None else loads(result),
                    "attachments": [] if atts is None else loads(atts),
                    "status": status,
                    "model_id": model,
                }
        for seq in sums:
            doc = read_summary_by_seq(f, seq)
            docs[("summary", seq)] = {
                "id": doc["id"],
                "role": "system",
                "content": SUMMARY_PREFIX + doc["content"],
                "parts": None,
                "summary_id": doc["id"],
            }
    return [docs[(i.kind, i.seq)] for i in sel.items if (i.kind, i.seq) in docs]


# ---------------------------------------------------------------------------- summaries


def summary_doc(raw: Sequence[Any], session_id: str) -> dict[str, Any]:
    """The API shape of a ``summaries`` row selected as :data:`SUMMARY_COLUMNS`."""
    seq, sid, _, _, from_id, to_id, content, tokens, covered, model_id, created_at = raw
    return {
        "id": sid,
        "session_id": session_id,
        "seq": seq,
        "from_id": from_id,
        "to_id": to_id,
        "content": content,
        "tokens": tokens,
        "covered": covered,
        "model_id": model_id,
        "created_at": created_at,
    }


def read_summary_by_seq(f: ReadSource, seq: int) -> dict[str, Any]:
    raw = f.reader.execute(
        f"SELECT {SUMMARY_COLUMNS} FROM summaries WHERE seq = ?", (seq,)
    ).fetchone()
    return summary_doc(raw, f.sid)


def iter_summaries(conn: Any, session_id: str) -> Iterator[dict[str, Any]]:
    """Every summary of the file open on ``conn`` (sqlite3), oldest first (export)."""
    has = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'summaries'"
    ).fetchone()
    if has is None:
        return
    for raw in conn.execute(f"SELECT {SUMMARY_COLUMNS} FROM summaries ORDER BY seq"):
        yield summary_doc(raw, session_id)


class _Step(NamedTuple):
    seq: int
    id: str
    role: str
    tokens: int


@dataclass(slots=True)
class CompactionPlan:
    """A range to summarize: ``messages`` (documents, oldest first) from ``from_id``
    to ``to_id``, and the summary before it on the branch (or None)."""

    from_id: str
    to_id: str
    messages: list[dict[str, Any]]
    tokens: int
    previous: dict[str, Any] | None


def plan_compaction(
    f: ReadSource, leaf_id: str, *, keep_tokens: int, max_tokens: int
) -> CompactionPlan | None:
    """The oldest uncovered range of the branch ending at ``leaf_id`` that a summary
    should cover, keeping the newest ``keep_tokens`` raw (the leaf at least); None
    when there is none.

    The walk goes back from the leaf through uncovered messages to the newest
    summary (or the root), reading at most ``keep_tokens`` plus 16 times
    ``max_tokens`` (at least :data:`SCAN_TOKENS`) tokens of them; the range starts
    at the oldest message reached and holds at most ``max_tokens``. (A branch
    whose uncovered part is longer, such as an import, gets its summaries from
    the oldest part within reach: older messages stay uncovered, and left out.)
    A range never ends between a tool call and its results. Raises
    :class:`NotFound` for an unknown leaf.
    """
    with f.snapshot():
        start = _leaf_seq(f, leaf_id)
        rows: list[_Step] = []  # newest first
        previous = None
        total = 0
        reach = keep_tokens + max(16 * max_tokens, SCAN_TOKENS)
        for seq, mid, _, role, tokens, deleted, summary in _walk(f, start, reach):
            if summary is not None:
                previous = read_summary_by_seq(f, summary)
                break
            if deleted:
                continue
            if total > reach:
                break
            rows.append(_Step(seq, mid, role, tokens))
            total += tokens
        kept = 0
        i = 0
        while i < len(rows) and (i == 0 or kept + rows[i].tokens <= keep_tokens):
            kept += rows[i].tokens  # the leaf itself is always kept
            i += 1
        while i < len(rows) and rows[i - 1].role == "tool":
            kept += rows[i].tokens  # the oldest kept is a tool result: keep its call too
            i += 1
        older = rows[i:]
        # at the old end, a tool result whose call is out of reach stays uncovered
        while older and older[-1].role == "tool":
            older.pop()
        picked: list[_Step] = []
        size = 0
        for step in reversed(older):  # oldest first, at most max_tokens
            if picked and size + step.tokens > max_tokens:
                break
            picked.append(step)
            size += step.tokens
        while picked and picked[-1].role == "assistant" and _has_calls(f, picked[-1].seq):
            size -= picked.pop().tokens  # never end the range between a call and its results
        if not picked:
            return None
        docs = [
            message_doc(MessageRow._make(raw), f.sid)
            for raw in f.reader.execute(
                f"SELECT {MESSAGE_SELECT} FROM messages"
                " WHERE seq IN (SELECT value FROM json_each(?)) ORDER BY seq",
                (orjson.dumps([p.seq for p in picked]).decode(),),
            )
        ]
        return CompactionPlan(picked[0].id, picked[-1].id, docs, size, previous)


def _has_calls(f: ReadSource, seq: int) -> bool:
    row = f.reader.execute(
        "SELECT 1 FROM messages WHERE parent_seq = ? AND role = 'tool' LIMIT 1", (seq,)
    ).fetchone()
    return row is not None


def op_add_summary(from_id: str, to_id: str, content: str, *, model_id: str | None) -> Any:
    """Store a summary covering ``[from_id, to_id]``; return ``(summary, created)``.

    Idempotent per ``to_id``: when the branch already has a summary ending
    there, that one is returned with ``created`` False. Raises
    :class:`InvalidInput` when either id names no message.
    """

    def run(txn: Txn) -> tuple[dict[str, Any], bool]:
        conn = txn.conn
        ends = {}
        for key, mid in (("from_id", from_id), ("to_id", to_id)):
            row = conn.execute("SELECT seq, depth FROM messages WHERE id = ?", (mid,)).fetchone()
            if row is None:
                raise InvalidInput(f"{key} names no message", details={key: mid})
            ends[key] = row
        (from_seq, from_depth), (to_seq, to_depth) = ends["from_id"], ends["to_id"]
        found = conn.execute(
            f"SELECT {SUMMARY_COLUMNS} FROM summaries WHERE to_seq = ? ORDER BY seq DESC LIMIT 1",
            (to_seq,),
        ).fetchone()
        if found is not None:
            return summary_doc(found, txn.session_id), False
        seq = int(scalar(conn.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM summaries")))
        raw = (
            seq,
            uuid7(),
            from_seq,
            to_seq,
            from_id,
            to_id,
            content,
            estimate_message("system", SUMMARY_PREFIX + content),
            to_depth - from_depth + 1,
            model_id,
            txn.now,
        )
        conn.execute(f"INSERT INTO summaries ({SUMMARY_COLUMNS}) VALUES ({_QS})", raw)
        return summary_doc(raw, txn.session_id), True

    return run


_QS = ", ".join("?" * len(SUMMARY_COLUMNS.split(", ")))


class ImportedSummary(BaseModel):
    """A compaction summary in an export; its token count is estimated again."""

    model_config = ConfigDict(extra="forbid", strict=True)

    id: str = Field(min_length=1, max_length=128)
    session_id: str | None = None
    seq: int | None = None
    from_id: str = Field(min_length=1, max_length=128)
    to_id: str = Field(min_length=1, max_length=128)
    content: str = Field(max_length=1_000_000)
    tokens: int | None = None
    covered: int | None = None
    model_id: str | None = Field(None, max_length=256)
    created_at: str = Field(min_length=1, max_length=64)


def import_summaries(
    conn: Any,
    summaries: Sequence[Any],
    seq_of: dict[str, tuple[int, int]],
    parent_of: dict[int, int | None],
) -> None:
    """Write an export's summaries (``ImportedSummary``) into a new file (import).

    ``seq_of`` maps message ids to ``(seq, depth)``, ``parent_of`` seq to parent
    seq. Raises :class:`InvalidInput` for a summary whose ends name no message
    of the export or whose ``from_id`` is not an ancestor-or-self of ``to_id``.
    """
    rows = []
    for i, s in enumerate(summaries):
        a, b = seq_of.get(s.from_id), seq_of.get(s.to_id)
        if a is None or b is None:
            raise InvalidInput(
                "a summary must cover messages of the export", details={"loc": ["summaries", i]}
            )
        node: int | None = b[0]
        for _ in range(b[1] - a[1] + 1):
            if node == a[0] or node is None:
                break
            node = parent_of.get(node)
        if node != a[0]:
            raise InvalidInput(
                "a summary's from_id must be an ancestor of its to_id",
                details={"loc": ["summaries", i]},
            )
        tokens = estimate_message("system", SUMMARY_PREFIX + s.content)
        rows.append(
            (
                i + 1,
                s.id,
                a[0],
                b[0],
                s.from_id,
                s.to_id,
                s.content,
                tokens,
                b[1] - a[1] + 1,
                s.model_id,
                s.created_at,
            )
        )
    conn.executemany(f"INSERT INTO summaries ({SUMMARY_COLUMNS}) VALUES ({_QS})", rows)
