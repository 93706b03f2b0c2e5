"""Cheap histograms for the hot paths; exported as Prometheus histograms at scrape time.

A :class:`Histogram` records one observation with a ``bisect`` and two additions (about 0.3 µs),
with no lock: every recorder lives on one event loop or in one single-threaded worker. The
Prometheus client library only sees the numbers when ``/metrics`` is scraped (``obs.metrics``).

Buckets are upper bounds in seconds, Prometheus ``le`` semantics: an observation equal to a
bound is counted in that bound's bucket. ``counts`` has one more cell than ``bounds``: the
``+Inf`` bucket. Counts are per bucket, not cumulative; :meth:`Histogram.cumulative` gives the
exported form.

The worker processes send their handler histograms to the manager as deltas
(``core.pipe.encode_stats``); :meth:`HistogramSet.drain` and :meth:`HistogramSet.merge` are the
two ends of that.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator

__all__ = [
    "CONFIRM_BUCKETS",
    "HANDLER_BUCKETS",
    "QUERY_BUCKETS",
    "QUERY_OUTCOMES",
    "Histogram",
    "HistogramSet",
    "Recorder",
    "quantile",
]

#: publish accepted -> broker confirm (seconds)
CONFIRM_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
#: query sent -> reply, timeout or error (seconds)
QUERY_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
#: one event route's run in a worker (seconds)
HANDLER_BUCKETS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
#: the outcome label of a query
QUERY_OUTCOMES: tuple[str, ...] = ("ok", "timeout", "error")


class Histogram:
    """Bucket counts and the sum of observations; see the module docstring."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        if list(bounds) != sorted(bounds) or len(set(bounds)) != len(bounds):
            raise ValueError(f"histogram bounds must be strictly increasing: {bounds}")
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, cumulative count)`` pairs, ending with ``("+Inf", total)``."""
        out: list[tuple[str, int]] = []
        total = 0
        for bound, n in zip((*map(_le, self.bounds), "+Inf"), self.counts, strict=True):
            total += n
            out.append((bound, total))
        return out

    def add(self, counts: list[int], total: float) -> None:
        """Add another histogram's per-bucket ``counts`` and ``total`` (same bounds)."""
        if len(counts) != len(self.counts):
            raise ValueError(f"{len(counts)} bucket counts for {len(self.counts)} buckets")
        for i, n in enumerate(counts):
            self.counts[i] += n
        self.sum += total

    def copy(self) -> Histogram:
        h = Histogram(self.bounds)
        h.counts = list(self.counts)
        h.sum = self.sum
        return h


def _le(bound: float) -> str:
    return repr(float(bound))


class HistogramSet:
    """Histograms keyed by a label tuple, created on first use (e.g. ``(route, outcome)``)."""

    __slots__ = ("bounds", "by_labels")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.by_labels: dict[tuple[str, ...], Histogram] = {}

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        self.get(labels).observe(value)

    def get(self, labels: tuple[str, ...]) -> Histogram:
        """The histogram of ``labels`` (created empty on first use; the object stays the same
        across :meth:`drain`, so a hot path may keep a reference to it)."""
        h = self.by_labels.get(labels)
        if h is None:
            h = self.by_labels[labels] = Histogram(self.bounds)
        return h

    def __bool__(self) -> bool:
        return any(any(h.counts) for h in self.by_labels.values())

    def __iter__(self) -> Iterator[tuple[tuple[str, ...], Histogram]]:
        return iter(list(self.by_labels.items()))

    def drain(self) -> list[tuple[list[str], list[int], float]]:
        """Return the histograms with observations as ``(labels, counts, sum)`` and reset them
        to zero in place."""
        out: list[tuple[list[str], list[int], float]] = []
        for k, h in self.by_labels.items():
            if any(h.counts):
                out.append((list(k), h.counts, h.sum))
                h.counts = [0] * len(h.counts)
                h.sum = 0.0
        return out

    def merge(self, labels: tuple[str, ...], counts: list[int], total: float) -> None:
        self.get(labels).add(counts, total)


class Recorder:
    """The hot-path histograms of one daemon (created only when metrics are on).

    * ``confirm``: a publish's acceptance to its broker confirm;
    * ``query[outcome]``: a query's send to its reply (``ok``), timeout or error;
    * ``handler[(route, outcome)]``: event-route run time, merged from the workers' reports.
    """

    __slots__ = ("confirm", "handler", "query")

    def __init__(self) -> None:
        self.confirm = Histogram(CONFIRM_BUCKETS)
        self.query = {outcome: Histogram(QUERY_BUCKETS) for outcome in QUERY_OUTCOMES}
        self.handler = HistogramSet(HANDLER_BUCKETS)


def quantile(q: float, bounds: tuple[float, ...], counts: list[int]) -> float | None:
    """Estimate the ``q`` quantile (0..1) from per-bucket counts, interpolating linearly
    inside the bucket (as Prometheus' ``histogram_quantile``); None without observations.

    Observations in the ``+Inf`` bucket are reported as the highest bound.
    """
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    lower = 0.0
    for i, n in enumerate(counts):
        if i == len(bounds):
            return bounds[-1] if bounds else None
        upper = bounds[i]
        if n and seen + n >= rank:
            return lower + (upper - lower) * max(rank - seen, 0.0) / n
        seen += n
        lower = upper
    return bounds[-1] if bounds else None  # pragma: no cover - the loop always returns
