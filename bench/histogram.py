"""Quantiles from a Prometheus histogram scraped twice (the difference is the phase's share).

`quantile` interpolates linearly inside the bucket that holds the rank, as PromQL's
histogram_quantile does: the result is only as fine as the bucket edges. The share of
observations at or under a bucket edge is exact.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

LATENCY = "ownersync_receipt_to_decision_seconds"
GC_PAUSE = "ownersync_gc_pause_seconds"

# (type label, le) -> cumulative count
Scrape = dict[tuple[str, float], float]


async def scrape(metrics_url: str, name: str = LATENCY, label: str = "type") -> Scrape:
    async with httpx.AsyncClient(timeout=10.0) as client:
        answer = await client.get(metrics_url)
        answer.raise_for_status()
    buckets: Scrape = {}
    for family in text_string_to_metric_families(answer.text):
        if family.name != name:
            continue
        for sample in family.samples:
            if sample.name == f"{name}_bucket":
                key = (sample.labels.get(label, ""), float(sample.labels["le"]))
                buckets[key] = sample.value
    return buckets


async def gc_pauses(metrics_url: str) -> Scrape:
    """The role's garbage collection pauses (label: the generation collected, "2" = full)."""
    return await scrape(metrics_url, GC_PAUSE, label="generation")


def pause_summary(before: Scrape, after: Scrape) -> dict[str, object]:
    """A phase's collection pauses: full collections, pauses over 10 ms, the longest's bucket."""
    every = Buckets.difference(before, after, ["0", "1", "2"])
    has_any = every.total > 0
    return {
        "full_collections": Buckets.difference(before, after, ["2"]).total,
        "collections": every.total,
        "over_10ms": every.total - every.counts[every.bounds.index(0.01)] if has_any else 0.0,
        "longest_at_most_ms": every.bucket_of(1.0)[1] * 1000 if has_any else None,
    }


@dataclass(frozen=True)
class Buckets:
    """Cumulative counts per upper bound, ascending, the last one +Inf."""

    bounds: tuple[float, ...]
    counts: tuple[float, ...]

    @classmethod
    def difference(
        cls, before: Mapping[tuple[str, float], float], after: Scrape, types: Iterable[str]
    ) -> Buckets:
        wanted = set(types)
        totals: dict[float, float] = {}
        for (kind, le), count in after.items():
            if kind in wanted:
                totals[le] = totals.get(le, 0.0) + count - before.get((kind, le), 0.0)
        bounds = tuple(sorted(totals))
        return cls(bounds, tuple(totals[b] for b in bounds))

    @property
    def total(self) -> float:
        return self.counts[-1] if self.counts else 0.0

    def quantile(self, q: float) -> float | None:
        """histogram_quantile(q): linear inside the bucket; the top finite edge past it."""
        if self.total <= 0:
            return None
        rank = q * self.total
        lower, below = 0.0, 0.0
        for bound, count in zip(self.bounds, self.counts, strict=True):
            if count >= rank:
                if math.isinf(bound):
                    return lower  # in the +Inf bucket: only "more than the top edge" is known
                if count == below:
                    return bound
                return lower + (bound - lower) * (rank - below) / (count - below)
            lower, below = bound, count
        return lower

    def bucket_of(self, q: float) -> tuple[float, float]:
        """The (lower, upper] edges of the bucket that holds quantile q."""
        rank = q * self.total
        lower = 0.0
        for bound, count in zip(self.bounds, self.counts, strict=True):
            if count >= rank:
                return lower, bound
            lower = bound
        return lower, math.inf

    def share_at_most(self, bound: float) -> tuple[float | None, bool]:
        """Share of observations <= bound, and whether it is exact (bound is a bucket edge)."""
        if self.total <= 0:
            return None, False
        if bound in self.bounds:
            return self.counts[self.bounds.index(bound)] / self.total, True
        # Not an edge: interpolate like quantile, and say so.
        lower, below = 0.0, 0.0
        for edge, count in zip(self.bounds, self.counts, strict=True):
            if edge >= bound:
                part = below + (count - below) * (bound - lower) / (edge - lower)
                return part / self.total, False
            lower, below = edge, count
        return 1.0, False


def exact_quantile(values: list[float], q: float) -> float | None:
    """Nearest-rank quantile of raw values (the benchmark's own measurements)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]
