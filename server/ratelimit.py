"""Token-bucket rate limits per user, per (user, session) and per tenant: pure bookkeeping.

A bucket holds up to ``burst`` tokens and refills at ``rate`` tokens a second;
each request takes one. An empty bucket refuses with the seconds until a token
is back. Buckets live in an LRU table of bounded size: the least recently used
bucket goes first when it is full (an idle bucket has refilled anyway, so
forgetting it changes nothing).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable

DEFAULT_MAX_BUCKETS = 100_000


class RateLimiter:
    """Buckets of one kind (one rate and burst). ``rate == 0`` turns it off."""

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        max_buckets: int = DEFAULT_MAX_BUCKETS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self.max_buckets = max_buckets
        self._clock = clock
        # key -> (tokens left, time of that count)
        self._buckets: OrderedDict[Hashable, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: Hashable) -> float:
        """Take one token for ``key``: 0.0 if allowed, else the seconds to wait (> 0)."""
        if self.rate <= 0:
            return 0.0
        now = self._clock()
        tokens, then = self._buckets.pop(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - then) * self.rate)
        if tokens >= 1.0:
            tokens -= 1.0
            wait = 0.0
        else:
            wait = (1.0 - tokens) / self.rate
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > self.max_buckets:
            self._buckets.popitem(last=False)
        return wait


def retry_after(wait: float) -> str:
    """A ``Retry-After`` value: whole seconds, at least 1."""
    return str(max(1, math.ceil(wait)))


class Limits:
    """The kinds of bucket of one app: per caller, per (caller, session), and per
    tenant (all the users of one tenant together; callers without a tenant take
    none).

    ``active`` is False on a loopback server without tokens (one user, no
    limits); see ``server.access``.
    """

    def __init__(
        self,
        user: RateLimiter,
        session: RateLimiter,
        active: bool,
        tenant: RateLimiter | None = None,
    ) -> None:
        self.user = user
        self.session = session
        self.active = active
        self.tenant = tenant if tenant is not None else RateLimiter(0, 1)
