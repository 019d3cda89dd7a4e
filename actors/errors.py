"""The actors error tree. Storage errors pass through unchanged.

::

    ActorError                 (503 unless said otherwise)
    ├── ActorStopped           the actor closed (shutdown, deletion) before the work ran
    ├── ActorBroken            a commit failed; the work was not saved; retry starts afresh
    ├── Busy                   too much queued work; retry later (429/503)
    └── Unsupported            not available in this mode (cluster mode: share links)  (501)
"""

from __future__ import annotations

from storage.errors import StorageError


class ActorError(StorageError):
    code = "unavailable"


class ActorStopped(ActorError):
    code = "actor_stopped"


class ActorBroken(ActorError):
    code = "actor_broken"


class Busy(ActorError):
    code = "busy"


class Unsupported(ActorError):
    code = "not_implemented"
