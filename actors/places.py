""":class:`Places`: what the server needs of "the place that owns a session".

The server holds one ``Places`` for its whole run, chosen once at start:
the in-process :class:`actors.registry.ActorRegistry` (single node), or the
remote façade of cluster mode (:class:`actors.cluster.front.ClusterRegistry`),
which sends each session's work to its shard. Routes never know which one
they talk to: they ask ``registry.session(sid, user)`` for a
:class:`actors.session.SessionHandle` and call its methods with plain values.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from actors.hooks import Hooks
from actors.pubsub import Frame, Subscription, Topic
from actors.session import SessionHandle
from actors.userlog import UserLog, UserLogs
from storage.catalog import ListFilters


class ShardCallStats:
    """What a front's calls to its shards cost (``/metrics``): façade and other
    calls answered, the Ray calls that carried them, the calls that went over the
    direct path instead (:mod:`actors.cluster.wire`) and the connections it opened,
    and the seconds callers waited."""

    __slots__ = ("calls", "direct_calls", "direct_connects", "ray_calls", "seconds")

    def __init__(self) -> None:
        self.calls = 0
        self.direct_calls = 0
        self.direct_connects = 0
        self.ray_calls = 0
        self.seconds = 0.0

    def count(self, calls: int, seconds: float) -> None:
        self.calls += calls
        self.seconds += seconds * calls


class Places(Protocol):
    """The registry surface the server uses (see the module docstring).

    Every method raises the storage/actor errors of the work it does
    (``NotFound``, ``Conflict``, ``Unavailable`` ...), the same whichever
    implementation answers.
    """

    hooks: Hooks

    @property
    def live(self) -> int: ...

    def subscriber_count(self) -> int: ...

    def running_replies(self) -> int: ...

    def shard_calls(self) -> ShardCallStats | None:
        """Cluster mode: what this front's calls to shards cost; single node: None."""
        ...

    def session(self, sid: str, user: str = "") -> AbstractAsyncContextManager[SessionHandle]: ...

    async def create_session(
        self,
        sid: str | None,
        *,
        owner: str = "",
        title: str | None = None,
        metadata: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]: ...

    async def list_sessions(
        self,
        *,
        owner: str = "",
        limit: int = 25,
        cursor: str | None = None,
        filters: ListFilters | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]: ...

    async def delete_session(self, sid: str, user: str = "") -> None: ...

    # across a user's sessions (README "Across a user's sessions")
    user_logs: UserLogs
    expired_total: int

    async def folders(self, owner: str) -> list[dict[str, Any]]: ...

    async def search_sessions(
        self, owner: str, q: str, *, limit: int, cursor: str | None, raw: bool
    ) -> tuple[list[dict[str, Any]], str | None]: ...

    def user_log(self, owner: str) -> UserLog: ...

    async def import_session(
        self,
        sid: str | None,
        raw: bytearray,
        *,
        owner: str = "",
        max_title_chars: int,
        max_content_chars: int,
    ) -> dict[str, Any]: ...

    async def resume_reply(
        self, sid: str, user: str, *, maxsize: int
    ) -> tuple[dict[str, Any], Subscription] | None: ...

    async def stop_replies(self, grace: float | None = None) -> None: ...

    async def close(self) -> None: ...

    def check_disk(self) -> None: ...

    async def trim_heap(self) -> None: ...

    async def cluster_info(self) -> dict[str, Any] | None:
        """What ``/healthz`` says of the cluster (None: single node)."""

    # feeds (actors.feed.Feed)
    async def feed_open(
        self, sid: str, user: str
    ) -> tuple[Topic, Subscription, int, list[Frame]]: ...

    async def feed_events(
        self, sid: str, user: str, since: int, limit: int
    ) -> list[Frame] | None: ...

    def topics_alive(self) -> set[str] | dict[str, Topic]: ...

    def release_topic(self, sid: str) -> None: ...

    # share links (README "Share links")
    async def create_share(
        self,
        share_id: str,
        *,
        owner: str,
        sid: str,
        branch: str,
        expires_in: float | None,
        snapshot: bytes,
    ) -> dict[str, Any]: ...

    def get_share(self, share_id: str) -> tuple[dict[str, Any], bytes] | None: ...

    def list_shares(self, owner: str, session_id: str | None = None) -> list[dict[str, Any]]: ...

    async def delete_share(self, share_id: str, owner: str) -> None: ...

    async def copy_share(self, share_id: str, owner: str) -> dict[str, Any]: ...
