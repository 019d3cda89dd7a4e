"""Pure statistics and formatting helpers for ``scripts/bench.py``.

Nothing here does I/O: every function maps its arguments to a value, so each
can be unit-tested on its own.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

__all__ = [
    "Histogram",
    "diff_histogram",
    "format_table",
    "histogram_quantile",
    "latency_summary",
    "median",
    "parse_histograms",
    "percentile",
    "ratio",
]


def percentile(values: Sequence[float], q: float) -> float:
    """Return the ``q``-th percentile (0..100) of ``values`` by linear interpolation.

    Uses the "linear" (type 7) definition: rank ``q/100 * (n-1)`` in the sorted
    values, interpolated between neighbours. Raises ``ValueError`` when
    ``values`` is empty or ``q`` is outside 0..100.
    """
    if not values:
        raise ValueError("percentile of an empty sequence")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile q must be in 0..100, got {q}")
    ordered = sorted(values)
    rank = q / 100.0 * (len(ordered) - 1)
    lo = math.floor(rank)
    hi = math.ceil(rank)
    if lo == hi:
        return ordered[lo]
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (rank - lo)


def median(values: Sequence[float]) -> float:
    """Return the median of ``values`` (the 50th percentile); ``ValueError`` if empty."""
    return percentile(values, 50.0)


def latency_summary(seconds: Sequence[float], prefix: str = "") -> dict[str, float]:
    """Summarize latencies given in seconds as ``{prefix}p50 ms`` and ``{prefix}p99 ms``.

    Returns an empty dict when there are no samples.
    """
    if not seconds:
        return {}
    return {
        f"{prefix}p50 ms": percentile(seconds, 50.0) * 1000.0,
        f"{prefix}p99 ms": percentile(seconds, 99.0) * 1000.0,
    }


def ratio(roost: float | None, peer: float | None) -> float | None:
    """Return ``roost / peer``, or ``None`` when either is missing or the peer is 0."""
    if roost is None or peer is None or peer == 0:
        return None
    return roost / peer


@dataclass
class Histogram:
    """A Prometheus histogram: cumulative bucket counts by upper bound, sum and count.

    The ``+Inf`` bucket has the key ``math.inf``.
    """

    buckets: dict[float, float] = field(default_factory=dict)
    sum: float = 0.0
    count: float = 0.0


_SAMPLE_RE = re.compile(
    r"^(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)"
)
_LE_RE = re.compile(r'(?:^|,)\s*le="(?P<le>[^"]*)"')
_SUFFIXES = ("_bucket", "_sum", "_count")


def parse_histograms(text: str, prefix: str) -> dict[str, Histogram]:
    """Parse Prometheus text exposition; return the histograms whose family starts with ``prefix``.

    The result maps each family name (the sample name without ``_bucket``/``_sum``/
    ``_count``) to its ``Histogram``. Label sets other than ``le`` are summed
    together. Unparseable lines are ignored.
    """
    out: dict[str, Histogram] = {}
    for line in text.splitlines():
        m = _SAMPLE_RE.match(line)
        if m is None or not m["name"].startswith(prefix):
            continue
        suffix = next((s for s in _SUFFIXES if m["name"].endswith(s)), None)
        if suffix is None:
            continue
        try:
            value = float(m["value"])
        except ValueError:
            continue
        hist = out.setdefault(m["name"][: -len(suffix)], Histogram())
        if suffix == "_sum":
            hist.sum += value
        elif suffix == "_count":
            hist.count += value
        else:
            le_match = _LE_RE.search(m["labels"] or "")
            if le_match is not None:
                le = math.inf if le_match["le"] in ("+Inf", "Inf") else float(le_match["le"])
                hist.buckets[le] = hist.buckets.get(le, 0.0) + value
    return out


def diff_histogram(after: Histogram, before: Histogram | None) -> Histogram:
    """Return ``after - before`` bucket-wise: only the observations made in between."""
    if before is None:
        return after
    return Histogram(
        buckets={le: n - before.buckets.get(le, 0.0) for le, n in after.buckets.items()},
        sum=after.sum - before.sum,
        count=after.count - before.count,
    )


def histogram_quantile(buckets: Mapping[float, float], q: float) -> float | None:
    """Estimate the ``q`` quantile (0..1) from cumulative buckets, like PromQL's function.

    Interpolates linearly inside the bucket holding the rank; if that is the
    ``+Inf`` bucket, returns the highest finite bound. ``None`` when empty.
    """
    bounds = sorted(buckets)
    if not bounds:
        return None
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return prev_bound
            if count == prev_count:
                return bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / (count - prev_count)
        prev_bound, prev_count = bound, count
    return prev_bound


def _fmt(value: float | None) -> str:
    """Format a number for the table: 3 significant-ish digits, ``n/a`` for ``None``."""
    if value is None:
        return "n/a"
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 0.1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def format_table(header: Sequence[str], rows: Iterable[Sequence[str | float | None]]) -> str:
    """Render rows as a GitHub-flavoured Markdown table; numbers go through ``_fmt``."""
    cells = [list(header)] + [[c if isinstance(c, str) else _fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = []
    for n, row in enumerate(cells):
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
        if n == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)
