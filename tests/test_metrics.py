"""GET /metrics in the Prometheus text format."""

from __future__ import annotations

import asyncio
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import append, new_session


async def _scrape(client: Any) -> dict[str, Any]:
    r = await client.get("/metrics")
    assert r.status == 200
    assert r.headers["Content-Type"].startswith("text/plain")
    samples: dict[str, Any] = {}
    for fam in text_string_to_metric_families(await r.text()):
        for s in fam.samples:
            samples.setdefault(s.name, []).append(s)
    return samples


def _value(samples: dict[str, Any], name: str, **labels: str) -> float:
    for s in samples[name]:
        if all(s.labels.get(k) == v for k, v in labels.items()):
            return float(s.value)
    raise AssertionError(f"no sample {name} {labels}")


async def _exercised(make_client: Any) -> tuple[Any, list[Any]]:
    """30 concurrent appends, one JSON chat, one open socket: (the socket, a scrape)."""
    client = await make_client(echo_words_per_second=0)
    await new_session(client)
    await asyncio.gather(*(append(client, "s1", f"m{i}") for i in range(30)))
    await client.post(
        "/api/sessions/s1/chat",
        json={"content": "hi there"},
        headers={"Accept": "application/json"},
    )
    ws = await client.ws_connect("/api/sessions/s1/ws")
    await ws.receive()
    return ws, await _scrape(client)


async def test_metrics_commit_histograms_count_batches(make_client: Any) -> None:
    """Commit and batch-size histograms count every commit and every batched op."""
    ws, samples = await _exercised(make_client)
    assert _value(samples, "roost_commit_batch_size_sum") >= 30
    commits = _value(samples, "roost_commit_batch_size_count")
    assert 1 <= commits < 30 + 10
    assert _value(samples, "roost_commit_seconds_count") == commits
    await ws.close()


async def test_metrics_request_latency_by_route_template(make_client: Any) -> None:
    """Request latency is counted per method, route template and status."""
    ws, samples = await _exercised(make_client)
    assert (
        _value(
            samples,
            "roost_request_seconds_count",
            method="POST",
            route="/api/sessions/{sid}/messages",
            status="201",
        )
        == 30
    )
    await ws.close()


async def test_metrics_actor_and_subscriber_gauges(make_client: Any) -> None:
    """Live actors, activations, subscribers and dropped subscribers are reported."""
    ws, samples = await _exercised(make_client)
    assert _value(samples, "roost_live_actors") == 1
    assert _value(samples, "roost_activations_total") == 1
    assert _value(samples, "roost_subscribers") == 1
    assert _value(samples, "roost_dropped_subscribers_total") == 0
    await ws.close()


async def test_metrics_stream_persist_lag_observed(make_client: Any) -> None:
    """A streamed reply records its persist lag."""
    ws, samples = await _exercised(make_client)
    assert _value(samples, "roost_stream_persist_lag_seconds_count") >= 1
    await ws.close()
