"""storage/: folder fsyncs of new WALs and new folders, and recovery as an op."""

from __future__ import annotations

from pathlib import Path

from storage.file import SessionFile
from storage.layout import DataDir, fsync_path
from storage.lifecycle import create_session_file, remove_session_files
from storage.ops import MessageDraft, op_append, op_recover_unfinished


class Recorder:
    """An fsync_dir seam that syncs for real and remembers which folders it synced."""

    def __init__(self) -> None:
        self.calls: list[Path] = []

    def __call__(self, path: Path) -> None:
        fsync_path(path)
        self.calls.append(path)


def _make(tmp_path: Path, sid: str = "d") -> DataDir:
    dd = DataDir(tmp_path)
    dd.ensure()
    create_session_file(dd, sid, owner="", title=None, metadata={}, now="t0")
    return dd


def test_wal_fd_fsyncs_session_folder_once(tmp_path: Path) -> None:
    """Opening the WAL's descriptor syncs the session folder, once per open file."""
    dd = _make(tmp_path)
    rec = Recorder()
    f = SessionFile(dd, "d", fsync_dir=rec)
    f.run_batch([op_append(MessageDraft(role="user", content="a"))], "t1", sync=False)
    fd = f.wal_fd()
    f.run_batch([op_append(MessageDraft(role="user", content="b"))], "t2", sync=False)
    assert f.wal_fd() == fd
    assert rec.calls == [dd.session_dir("d")]
    f.close()


def test_each_open_syncs_the_folder_of_its_new_wal(tmp_path: Path) -> None:
    """Every activation makes a new -wal file, so every open syncs the folder again."""
    dd = _make(tmp_path)
    rec = Recorder()
    for _ in range(2):
        f = SessionFile(dd, "d", fsync_dir=rec)
        f.run_batch([op_append(MessageDraft(role="user", content="a"))], "t1", sync=False)
        f.wal_fd()
        f.close()
    assert rec.calls == [dd.session_dir("d")] * 2


def test_create_session_file_fsyncs_parent_of_each_new_folder(tmp_path: Path) -> None:
    """The shard folder is new: its parent is synced, and the shard after the rename."""
    dd = DataDir(tmp_path)
    dd.ensure()
    rec = Recorder()
    create_session_file(dd, "n", owner="", title=None, metadata={}, now="t0", fsync_dir=rec)
    shard = dd.session_dir("n").parent
    assert rec.calls == [dd.sessions_root, shard]


def test_create_session_file_in_existing_shard_syncs_only_the_rename(tmp_path: Path) -> None:
    """No folder to create: only the rename into place is synced."""
    dd = DataDir(tmp_path)
    dd.ensure()
    dd.session_dir("n").parent.mkdir(parents=True)
    rec = Recorder()
    create_session_file(dd, "n", owner="", title=None, metadata={}, now="t0", fsync_dir=rec)
    assert rec.calls == [dd.session_dir("n").parent]


def test_recover_unfinished_op_interrupts_pending_replies(tmp_path: Path) -> None:
    """A reply left pending becomes interrupted, with one message.updated event."""
    dd = _make(tmp_path)
    f = SessionFile(dd, "d")
    (res,), _, _ = f.run_batch(
        [op_append(MessageDraft(role="assistant", content="half", status="pending"))], "t1"
    )
    msg, _ = res
    f.close()
    f = SessionFile(dd, "d")
    _, events, _ = f.run_batch([op_recover_unfinished()], "t2")
    assert [e.type for e in events] == ["message.updated"]
    got = f.read_message(msg["id"])
    assert (got["status"], got["content"]) == ("interrupted", "half")
    f.close()


def test_recover_unfinished_op_twice_changes_nothing(tmp_path: Path) -> None:
    """With nothing unfinished, the op records no event and leaves the session alone."""
    dd = _make(tmp_path)
    f = SessionFile(dd, "d")
    f.run_batch([op_append(MessageDraft(role="user", content="done"))], "t1")
    before = f.read_session()
    results, events, session = f.run_batch([op_recover_unfinished()], "t2")
    assert (results, events, session) == ([None], [], None)
    assert f.read_session() == before
    f.close()


def test_close_keeping_the_index_keeps_the_shm_for_the_reopen(tmp_path: Path) -> None:
    """A file closed with ``keep_index`` (a broken actor's close) keeps its ``-shm``
    (the same, preallocated inode) until the next open, which releases it; without
    it, the last close removes the ``-shm`` and a reopen needs a new one (which a
    full disk cannot allocate: issue 16)."""
    dd = DataDir(tmp_path / "d")
    dd.ensure()
    create_session_file(dd, "k", owner="", title=None, metadata={}, now="t0")
    shm = Path(f"{dd.session_db('k')}-shm")
    f = SessionFile(dd, "k")
    f.read_session()
    before = shm.stat().st_ino
    f.close(keep_index=True)
    assert shm.exists() and shm.stat().st_ino == before
    f = SessionFile(dd, "k")
    assert shm.stat().st_ino == before
    f.close()  # the parked connection was released by the open: this close is the last
    assert not shm.exists()
    f = SessionFile(dd, "k")
    f.close(keep_index=True)
    remove_session_files(dd, "k")  # a delete releases what was parked
    assert not dd.session_db("k").exists()
