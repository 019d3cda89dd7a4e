"""Schemas of the catalog and of a session file, versioned by ``PRAGMA user_version``.

Each list holds forward migrations; migration ``i`` takes a database from
version ``i`` to ``i + 1``. :func:`migrate` runs the missing ones on open, each in
its own transaction, and refuses a file from a newer Roost.
"""

from __future__ import annotations

import sqlite3

from storage.errors import Unavailable

SESSION_MIGRATIONS: list[str] = [
    # v1
    """
    CREATE TABLE session (
        id TEXT PRIMARY KEY,
        owner TEXT NOT NULL DEFAULT '',
        title TEXT,
        metadata TEXT NOT NULL DEFAULT '{}',
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        message_count INTEGER NOT NULL DEFAULT 0,
        last_message_at TEXT,
        active_leaf_seq INTEGER,
        active_leaf_id TEXT,
        root_count INTEGER NOT NULL DEFAULT 0,
        event_seq INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE messages (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        parent_seq INTEGER REFERENCES messages(seq),
        parent_id TEXT,
        depth INTEGER NOT NULL,
        sibling_index INTEGER NOT NULL,
        child_count INTEGER NOT NULL DEFAULT 0,
        role TEXT NOT NULL,
        content TEXT NOT NULL,
        parts TEXT,
        status TEXT NOT NULL,
        client_id TEXT UNIQUE,
        request_hash TEXT,
        model_id TEXT,
        provider_id TEXT,
        fallback_notice TEXT,
        tool_name TEXT,
        tool_call TEXT,
        tool_result TEXT,
        attachments TEXT,
        metadata TEXT NOT NULL DEFAULT '{}',
        error TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        version INTEGER NOT NULL DEFAULT 1,
        deleted_at TEXT
    );
    CREATE INDEX messages_by_parent ON messages(parent_seq, seq);
    CREATE INDEX messages_unfinished ON messages(status)
        WHERE status IN ('pending', 'streaming');
    CREATE TABLE active_path (
        depth INTEGER PRIMARY KEY,
        seq INTEGER NOT NULL REFERENCES messages(seq)
    );
    CREATE TABLE events (
        seq INTEGER PRIMARY KEY,
        type TEXT NOT NULL,
        frame BLOB NOT NULL,
        created_at TEXT NOT NULL
    );
    """,
    # v2: attachments (content-addressed blobs in the session's folder) and full-text
    # search. messages_fts is an external-content FTS5 index over messages.content.
    # A message is indexed iff it is live (no deleted_at) and finished (not
    # pending/streaming). Indexing new messages is deferred off the write path:
    # search_index.indexed_seq is a watermark, and messages above it are indexed in
    # batches by op_index_search (when the session is idle, and before every
    # search). Below the watermark, triggers keep the index exact on edits,
    # deletes and a reply's status leaving streaming; each removes exactly what
    # was indexed, so the index never drifts from the table.
    """
    CREATE TABLE attachments (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        mime TEXT NOT NULL,
        size INTEGER NOT NULL,
        sha256 TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE INDEX attachments_by_sha256 ON attachments(sha256);
    CREATE VIRTUAL TABLE messages_fts USING fts5(
        content, content='messages', content_rowid='seq',
        tokenize='unicode61 remove_diacritics 2'
    );
    CREATE TABLE search_index (indexed_seq INTEGER NOT NULL);
    CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages
    WHEN old.deleted_at IS NULL AND old.status NOT IN ('pending', 'streaming')
        AND old.seq <= (SELECT indexed_seq FROM search_index)
    BEGIN
        INSERT INTO messages_fts (messages_fts, rowid, content)
        VALUES ('delete', old.seq, old.content);
    END;
    CREATE TRIGGER messages_fts_update AFTER UPDATE OF content, status, deleted_at ON messages
    WHEN old.seq <= (SELECT indexed_seq FROM search_index)
    BEGIN
        INSERT INTO messages_fts (messages_fts, rowid, content)
        SELECT 'delete', old.seq, old.content
        WHERE old.deleted_at IS NULL AND old.status NOT IN ('pending', 'streaming');
        INSERT INTO messages_fts (rowid, content)
        SELECT new.seq, new.content
        WHERE new.deleted_at IS NULL AND new.status NOT IN ('pending', 'streaming');
    END;
    INSERT INTO messages_fts (rowid, content)
    SELECT seq, content FROM messages
    WHERE deleted_at IS NULL AND status NOT IN ('pending', 'streaming');
    INSERT INTO search_index (indexed_seq) SELECT COALESCE(MAX(seq), 0) FROM messages;
    """,
    # v3 (issue 23): organisation (pinned, archived, folder, tags), where the title came
    # from (title_source: user | auto | null), retention (temporary, expires_at) and
    # message feedback. A title set before v3 counts as the user's.
    """
    ALTER TABLE session ADD COLUMN pinned INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE session ADD COLUMN archived INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE session ADD COLUMN folder TEXT;
    ALTER TABLE session ADD COLUMN tags TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE session ADD COLUMN title_source TEXT;
    ALTER TABLE session ADD COLUMN temporary INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE session ADD COLUMN expires_at TEXT;
    ALTER TABLE messages ADD COLUMN feedback TEXT;
    UPDATE session SET title_source = 'user' WHERE title IS NOT NULL;
    """,
    # v4 (issue 19): per-session settings (system prompt, model, temperature, tools,
    # on_busy) as JSON, and an index over the turn statuses (a running, waiting or
    # queued turn is found without a scan)
    """
    ALTER TABLE session ADD COLUMN settings TEXT NOT NULL DEFAULT '{}';
    CREATE INDEX messages_turns ON messages(status, seq)
        WHERE status IN ('pending', 'streaming', 'queued', 'awaiting_tool', 'awaiting_approval');
    """,
    # v5 (issue 21): the model's context window. Each message's estimated token count
    # (storage.tokens; rows from before get a byte-based estimate), a reply's provider
    # usage and the record of the context it answered (JSON), and compaction summaries:
    # a summary covers the branch path [from_seq, to_seq] (from an ancestor-or-self of
    # to); nothing is deleted. A reply's history finds the summaries of its branch by
    # to_seq (index), walking the parent chain from the leaf: never a scan.
    """
    ALTER TABLE messages ADD COLUMN tokens INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE messages ADD COLUMN usage TEXT;
    ALTER TABLE messages ADD COLUMN context TEXT;
    UPDATE messages SET tokens = 4 + (length(CAST(content AS BLOB)) * 2 + 9) / 10
        WHERE deleted_at IS NULL;
    CREATE TABLE summaries (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        from_seq INTEGER NOT NULL REFERENCES messages(seq),
        to_seq INTEGER NOT NULL REFERENCES messages(seq),
        from_id TEXT NOT NULL,
        to_id TEXT NOT NULL,
        content TEXT NOT NULL,
        tokens INTEGER NOT NULL,
        covered INTEGER NOT NULL,
        model_id TEXT,
        created_at TEXT NOT NULL
    );
    CREATE INDEX summaries_by_to ON summaries(to_seq, seq);
    """,
]

CATALOG_MIGRATIONS: list[str] = [
    # v1
    """
    CREATE TABLE sessions (
        id TEXT PRIMARY KEY,
        owner TEXT NOT NULL DEFAULT '',
        updated_at TEXT NOT NULL,
        doc TEXT NOT NULL
    );
    CREATE INDEX sessions_recent ON sessions(owner, updated_at DESC, id DESC);
    """,
    # v2: share links (a snapshot of a session, readable by anyone with the id)
    """
    CREATE TABLE shares (
        id TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        session_id TEXT NOT NULL,
        branch TEXT NOT NULL,
        created_at TEXT NOT NULL,
        expires_at TEXT,
        snapshot TEXT NOT NULL
    );
    CREATE INDEX shares_by_owner ON shares(owner, created_at DESC, id DESC);
    CREATE INDEX shares_by_session ON shares(session_id);
    """,
    # v3 (issue 23): the list's filters (pinned, archived, folder, tags, temporary) as
    # columns with their indexes, and retention's expiry indexes (the sweep reads
    # only expired rows, never every session)
    """
    ALTER TABLE sessions ADD COLUMN pinned INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE sessions ADD COLUMN archived INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE sessions ADD COLUMN temporary INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE sessions ADD COLUMN folder TEXT;
    ALTER TABLE sessions ADD COLUMN expires_at TEXT;
    CREATE TABLE session_tags (
        owner TEXT NOT NULL,
        tag TEXT NOT NULL,
        session_id TEXT NOT NULL,
        PRIMARY KEY (owner, tag, session_id)
    ) WITHOUT ROWID;
    CREATE INDEX session_tags_by_session ON session_tags(session_id);
    CREATE INDEX sessions_list ON sessions(
        owner, temporary, archived, pinned DESC, updated_at DESC, id DESC
    );
    CREATE INDEX sessions_by_folder ON sessions(owner, folder) WHERE folder IS NOT NULL;
    CREATE INDEX sessions_expiry ON sessions(expires_at) WHERE expires_at IS NOT NULL;
    CREATE INDEX sessions_by_age ON sessions(temporary, updated_at);
    """,
    # v4 (issue 23, bench): a folder's list is read in list order from its own index
    # (it used to walk the whole list, fetching each row to check its folder: 5 ms for
    # an empty folder of 10,000 sessions); the title as a column at the end of the list
    # index, so ``q=`` scans the index, not every row's JSON (18 ms -> ~2 ms for a title
    # no session has, at 10,000 sessions)
    """
    DROP INDEX sessions_by_folder;
    CREATE INDEX sessions_by_folder ON sessions(
        owner, folder, temporary, archived, pinned DESC, updated_at DESC, id DESC
    ) WHERE folder IS NOT NULL;
    ALTER TABLE sessions ADD COLUMN title TEXT;
    UPDATE sessions SET title = json_extract(doc, '$.title');
    DROP INDEX sessions_list;
    CREATE INDEX sessions_list ON sessions(
        owner, temporary, archived, pinned DESC, updated_at DESC, id DESC, title
    );
    """,
]

# A user's cross-session search index (issue 23): one file per user
# (``users/<h>/<hash>/search.db``), fed from the sessions' committed events.
USER_SEARCH_MIGRATIONS: list[str] = [
    # v1
    """
    CREATE TABLE docs (
        id INTEGER PRIMARY KEY,
        session_id TEXT NOT NULL,
        message_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        role TEXT NOT NULL,
        created_at TEXT NOT NULL,
        content TEXT NOT NULL,
        UNIQUE (session_id, message_id)
    );
    CREATE VIRTUAL TABLE docs_fts USING fts5(
        content, content='docs', content_rowid='id',
        tokenize='unicode61 remove_diacritics 2'
    );
    CREATE TRIGGER docs_ai AFTER INSERT ON docs BEGIN
        INSERT INTO docs_fts (rowid, content) VALUES (new.id, new.content);
    END;
    CREATE TRIGGER docs_ad AFTER DELETE ON docs BEGIN
        INSERT INTO docs_fts (docs_fts, rowid, content) VALUES ('delete', old.id, old.content);
    END;
    CREATE TRIGGER docs_au AFTER UPDATE OF content ON docs BEGIN
        INSERT INTO docs_fts (docs_fts, rowid, content) VALUES ('delete', old.id, old.content);
        INSERT INTO docs_fts (rowid, content) VALUES (new.id, new.content);
    END;
    CREATE TABLE indexed (
        session_id TEXT PRIMARY KEY,
        event_seq INTEGER NOT NULL
    ) WITHOUT ROWID;
    """,
    # v2: each message's tokens as storage.userrank ranks them (``ntok``: how many;
    # ``norm``: the tokens, lowered and space-separated, only for text that is not
    # ASCII), written with the message, so a search scores its window without the
    # slow tokenizing; rows from v1 have NULLs and are tokenized when read (until
    # they change or ``roost-admin reindex`` rewrites them)
    """
    ALTER TABLE docs ADD COLUMN ntok INTEGER;
    ALTER TABLE docs ADD COLUMN norm BLOB;
    """,
]


def split_statements(script: str) -> list[str]:
    """The SQL statements of ``script``; a ``;`` inside a trigger body does not split."""
    out: list[str] = []
    buf = ""
    for piece in script.split(";"):
        buf += piece + ";"
        if sqlite3.complete_statement(buf):
            if buf.strip(" \n\t;"):
                out.append(buf.strip())
            buf = ""
    if buf.strip(" \n\t;"):
        raise ValueError(f"incomplete SQL statement in migration: {buf.strip()[:80]!r}")
    return out


def migrate(conn: sqlite3.Connection, migrations: list[str], *, what: str) -> int:
    """Bring ``conn`` (autocommit mode) to the newest schema; return that version.

    Raises :class:`Unavailable` when the file was written by a newer Roost.
    """
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    target = len(migrations)
    if version > target:
        raise Unavailable(
            f"{what} has schema version {version}; this Roost knows up to {target}",
            details={"schema_version": version},
        )
    for i in range(version, target):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for stmt in split_statements(migrations[i]):
                conn.execute(stmt)
            conn.execute(f"PRAGMA user_version = {i + 1}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return target
