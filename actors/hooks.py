"""The one observer interface of actors and the registry.

The server's metrics implement :class:`Hooks`; tests may count with
:class:`CountingHooks`. Hooks are called synchronously on the event loop, in
the middle of the actor's work: they must be cheap and must not raise (what
they raise is not caught and breaks the caller).
"""

from __future__ import annotations

from typing import Any


class Hooks:
    """No-op base: override what you observe."""

    def on_commit(self, seconds: float, ops: int) -> None:
        """A group commit of ``ops`` mutations took ``seconds`` (transaction + flush)."""

    def on_stream_lag(self, seconds: float) -> None:
        """Streamed reply text waited ``seconds`` between generation and commit."""

    def on_session_changed(self, sid: str, owner: str, session: dict[str, Any]) -> None:
        """Session ``sid`` committed a change; ``session`` is its document now."""

    def on_session_deleted(self, sid: str, owner: str) -> None:
        """Session ``sid`` of ``owner`` was deleted (by a request or the expiry sweep)."""

    def on_activation(self, sid: str, live: int) -> None:
        """An actor for ``sid`` started; ``live`` actors are now live."""

    def on_hibernation(self, sid: str) -> None:
        """An idle actor is closed after its idle timeout."""

    def on_eviction(self, sid: str) -> None:
        """An actor without work is closed to stay under the live cap."""

    def on_subscriber_dropped(self, sid: str) -> None:
        """A subscriber of ``sid``'s events fell behind and was dropped."""

    def on_usage(self, model: str, usage: dict[str, Any]) -> None:
        """A reply's token ``usage`` (``storage``'s usage record) was committed."""


class CountingHooks(Hooks):
    """Hooks that count: activations, hibernations, evictions, drops, commits."""

    def __init__(self) -> None:
        self.activations = 0
        self.hibernations = 0
        self.evictions = 0
        self.max_live_seen = 0
        self.dropped_subscribers = 0
        self.commits = 0

    def on_commit(self, seconds: float, ops: int) -> None:
        self.commits += 1

    def on_activation(self, sid: str, live: int) -> None:
        self.activations += 1
        self.max_live_seen = max(self.max_live_seen, live)

    def on_hibernation(self, sid: str) -> None:
        self.hibernations += 1

    def on_eviction(self, sid: str) -> None:
        self.evictions += 1

    def on_subscriber_dropped(self, sid: str) -> None:
        self.dropped_subscribers += 1
