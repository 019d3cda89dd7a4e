"""Process-wide tuning for a process that runs session actors: descriptors and malloc.

Nothing here touches a file or an actor: these are calls into the OS and glibc
that the registry (and the server process that hosts it) make at start and
when memory can be given back. Safe to call more than once.
"""

from __future__ import annotations

import ctypes
import resource


def raise_nofile_limit() -> tuple[int, int]:
    """Raise the soft open-files limit to the hard limit; return (soft, hard).

    Each live session holds a writer and a reader on a WAL database, about
    five descriptors, so the default soft limit of 1024 caps a server at a
    couple of hundred live sessions.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft, hard


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to tune
        return None


def limit_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc's malloc arenas (call before starting threads).

    SQLite work runs on a pool of threads; with one arena per thread, memory
    freed when sessions hibernate stays fragmented across arenas and is never
    returned to the system.
    """
    libc = _libc()
    if libc is not None:
        m_arena_max = -8
        libc.mallopt(m_arena_max, arenas)


def trim_heap() -> None:
    """Return freed heap memory to the system (glibc ``malloc_trim``)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
