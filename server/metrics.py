"""The instruments behind ``GET /metrics`` (Prometheus, via prometheus-client). No aiohttp.

Each app has its own CollectorRegistry (tests run many apps in one process).
:class:`MetricsHooks` is the actors' :class:`~actors.hooks.Hooks`: it feeds the
histograms and keeps the counters; gauges and counters are read at scrape
time by a custom collector.
The route and the request-timing middleware are in :mod:`server.routes_ops`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from actors.hooks import CountingHooks
from actors.places import Places

_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


#: distinct model labels of ``roost_tokens_total`` (more are counted as "other")
MAX_MODEL_LABELS = 100


class Metrics:
    """The instruments of one app."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._collector: _RegistryCollector | None = None
        self._request_children: dict[tuple[str, str, int], Histogram] = {}
        self.requests = Histogram(
            "roost_request_seconds",
            "HTTP request latency by route",
            ["method", "route", "status"],
            registry=self.registry,
            buckets=_LATENCY_BUCKETS,
        )
        self.commit_seconds = Histogram(
            "roost_commit_seconds",
            "time of one group commit (transaction + fsync)",
            registry=self.registry,
            buckets=_LATENCY_BUCKETS,
        )
        self.batch_size = Histogram(
            "roost_commit_batch_size",
            "mutations per group commit",
            registry=self.registry,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
        )
        self.stream_lag = Histogram(
            "roost_stream_persist_lag_seconds",
            "time from a reply's text being generated to it being committed",
            registry=self.registry,
            buckets=_LATENCY_BUCKETS,
        )
        self.tokens = Counter(
            "roost_tokens",
            "tokens of replies by model and kind (prompt, completion, cached, reasoning), "
            "as the provider reported them (or Roost's estimate when it reported none)",
            ["model", "kind"],
            registry=self.registry,
        )
        self.feedback = Counter(
            "roost_feedback",
            "message feedback given (rating 1 or -1) or removed (rating removed)",
            ["rating"],
            registry=self.registry,
        )

    def request_timer(self, method: str, route: str, status: int) -> Histogram:
        """The request-latency child for these labels (memoized: ``labels()`` is slow)."""
        key = (method, route, status)
        child = self._request_children.get(key)
        if child is None:
            child = self.requests.labels(method, route, str(status))
            if len(self._request_children) < 10_000:
                self._request_children[key] = child
        return child

    def attach(self, actors: Places) -> None:
        """Observe ``actors`` (before it makes any actor): its hooks become ours.

        Call once per registry; undo with :meth:`detach`.
        """
        hooks = MetricsHooks(self)
        actors.hooks = hooks
        self._collector = _RegistryCollector(actors, hooks)
        self.registry.register(self._collector)

    def detach(self, actors: Places) -> None:
        """Stop reading ``actors``' gauges at scrape time (idempotent). Its hooks stay
        (they only count and feed this app's own histograms)."""
        collector, self._collector = self._collector, None
        if collector is not None:
            self.registry.unregister(collector)


class MetricsHooks(CountingHooks):
    """The actors' hooks: histograms for commits and stream lag, plus the counters."""

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self._commit_seconds = metrics.commit_seconds.observe
        self._batch_size = metrics.batch_size.observe
        self._stream_lag = metrics.stream_lag.observe
        self._tokens = metrics.tokens
        self._models: set[str] = set()

    def on_commit(self, seconds: float, ops: int) -> None:
        self.commits += 1
        self._commit_seconds(seconds)
        self._batch_size(ops)

    def on_stream_lag(self, seconds: float) -> None:
        self._stream_lag(seconds)

    def on_usage(self, model: str, usage: dict[str, Any]) -> None:
        if model not in self._models:
            if len(self._models) >= MAX_MODEL_LABELS:
                model = "other"
            self._models.add(model)
        for kind in ("prompt", "completion", "cached", "reasoning"):
            n = usage.get(f"{kind}_tokens")
            if isinstance(n, int) and n > 0:
                self._tokens.labels(model, kind).inc(n)


class _RegistryCollector(Collector):
    def __init__(self, actors: Places, hooks: CountingHooks) -> None:
        self.actors = actors
        self.hooks = hooks

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        a = self.actors
        stats = self.hooks
        yield GaugeMetricFamily("roost_live_actors", "session actors with an open file", a.live)
        yield CounterMetricFamily("roost_activations", "actor activations", stats.activations)
        yield CounterMetricFamily(
            "roost_hibernations", "actors closed after their idle timeout", stats.hibernations
        )
        yield CounterMetricFamily(
            "roost_evictions", "actors closed to stay under the live cap", stats.evictions
        )
        yield GaugeMetricFamily(
            "roost_subscribers", "WebSocket and SSE event subscribers", a.subscriber_count()
        )
        yield CounterMetricFamily(
            "roost_dropped_subscribers",
            "subscribers dropped for falling behind",
            stats.dropped_subscribers,
        )
        yield GaugeMetricFamily(
            "roost_running_replies", "replies being generated", a.running_replies()
        )
        yield CounterMetricFamily(
            "roost_expired_sessions", "sessions deleted by the expiry sweep", a.expired_total
        )
        shard = a.shard_calls()
        if shard is not None:  # cluster mode (a front)
            yield CounterMetricFamily(
                "roost_shard_calls", "calls this front made to shards", shard.calls
            )
            yield CounterMetricFamily(
                "roost_shard_call_seconds",
                "seconds this front's callers waited for shards (sum over calls)",
                shard.seconds,
            )
            yield CounterMetricFamily(
                "roost_shard_ray_calls",
                "Ray calls that carried them (a batch of one loop turn's calls is one)",
                shard.ray_calls,
            )
            yield CounterMetricFamily(
                "roost_shard_direct_calls",
                "calls that went over the direct path (--shard-transport direct)",
                shard.direct_calls,
            )
            yield CounterMetricFamily(
                "roost_shard_direct_connects",
                "connections the direct path opened (one per shard, again after a loss)",
                shard.direct_connects,
            )
        yield GaugeMetricFamily(
            "roost_user_feed_subscribers",
            "subscribers of the users' list feeds (GET /api/events)",
            a.user_logs.subscribers(),
        )
        replica = getattr(a, "replica", None)  # --replica on a single node (actors.replica)
        if replica is not None:
            r = replica.stats
            yield CounterMetricFamily(
                "roost_replica_syncs", "batches the replica confirmed (sync-and-wait)", r.syncs
            )
            yield CounterMetricFamily(
                "roost_replica_sync_seconds",
                "seconds spent waiting for the replica",
                r.sync_seconds,
            )
            yield CounterMetricFamily(
                "roost_replica_sync_failures",
                "syncs that failed (their batch got 503)",
                r.sync_failures,
            )
            yield CounterMetricFamily(
                "roost_replica_sync_retries",
                "syncs asked again: a concurrent sync made a newer TXID than was uploaded",
                r.sync_retries,
            )
            yield CounterMetricFamily(
                "roost_replica_restores", "files restored from the replica", r.restores
            )
            yield CounterMetricFamily(
                "roost_replica_kept_local",
                "activations that kept a local copy at least as new as the replica",
                r.kept_local,
            )
            yield CounterMetricFamily(
                "roost_replica_parked",
                "live sessions Litestream stopped watching after --replica-idle unwritten",
                r.parked,
            )
            yield CounterMetricFamily(
                "roost_replica_superseded",
                "changes not acknowledged because another writer claimed a newer epoch",
                r.superseded,
            )
