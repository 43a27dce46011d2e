"""The canary analysis of the chart's AnalysisTemplate, evaluated on the API's own metrics.

In the cluster, Argo Rollouts runs the template's PromQL against Prometheus. The local canary scrapes the new
model's ``/metrics`` at the start and end of each window and computes the same quantities the queries compute
(``rate()`` ratios are ratios of increases; ``histogram_quantile`` interpolates in the same buckets). The
thresholds are read from the rendered template's ``successCondition``s: one source for both.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

SCORED_PATH = "/predict"


class AnalysisError(ValueError):
    """The template asks for something this analysis cannot judge."""


_CONDITION = re.compile(r"^\s*result\[0\]\s*(>=|<=|>|<)\s*([0-9.eE+-]+)\s*$")
_OPERATORS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
}


@dataclass(frozen=True)
class Metric:
    """One metric of the template: its name, its condition, and how many failures it tolerates."""

    name: str
    condition: str
    op: str
    threshold: float
    failure_limit: int

    def passes(self, value: float) -> bool:
        # As in Argo Rollouts, NaN (no data) satisfies no comparison.
        return not math.isnan(value) and _OPERATORS[self.op](value, self.threshold)


@dataclass(frozen=True)
class Scrape:
    """The counters of one ``/metrics`` exposition that the analysis needs."""

    requests: float
    errors: float
    buckets: tuple[tuple[float, float], ...]  # (upper bound, cumulative count), sorted by bound


def metrics_of(template: dict[str, Any]) -> list[Metric]:
    """Read the metrics and thresholds of a rendered AnalysisTemplate; refuse what this analysis cannot judge."""
    metrics = []
    for spec in template.get("spec", {}).get("metrics", []):
        name = spec["name"]
        if name not in MEASURES:
            raise AnalysisError(
                f"the local canary cannot evaluate metric {name!r}; it knows {sorted(MEASURES)}"
            )
        match = _CONDITION.match(str(spec.get("successCondition", "")))
        if match is None:
            raise AnalysisError(
                f"metric {name!r}: successCondition {spec.get('successCondition')!r} is not of the form "
                "'result[0] <op> <number>'"
            )
        metrics.append(
            Metric(
                name=name,
                condition=f"result[0] {match.group(1)} {match.group(2)}",
                op=match.group(1),
                threshold=float(match.group(2)),
                failure_limit=int(spec.get("failureLimit", 0)),
            )
        )
    return metrics


def parse(exposition: str) -> Scrape:
    """Extract the scoring endpoint's request, error and latency-bucket counters from an exposition."""
    requests = errors = 0.0
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.labels.get("path") != SCORED_PATH:
                continue
            if sample.name == "http_requests_total":
                requests += sample.value
                if sample.labels.get("status", "").startswith("5"):
                    errors += sample.value
            elif sample.name == "http_request_duration_seconds_bucket":
                bound = float(sample.labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + sample.value
    return Scrape(requests=requests, errors=errors, buckets=tuple(sorted(buckets.items())))


def success_rate(before: Scrape, after: Scrape) -> float:
    """Share of requests in the window that did not end in a 5xx (NaN without requests)."""
    total = after.requests - before.requests
    return (total - (after.errors - before.errors)) / total if total > 0 else math.nan


def latency_p99(before: Scrape, after: Scrape) -> float:
    return histogram_quantile(0.99, _increase(before.buckets, after.buckets))


def requests_in(before: Scrape, after: Scrape) -> int:
    return int(after.requests - before.requests)


def _increase(
    before: tuple[tuple[float, float], ...], after: tuple[tuple[float, float], ...]
) -> list[tuple[float, float]]:
    earlier = dict(before)
    return [(bound, count - earlier.get(bound, 0.0)) for bound, count in after]


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus's ``histogram_quantile``: linear interpolation inside the bucket holding the rank."""
    if not buckets or buckets[-1][0] != math.inf:
        return math.nan
    total = buckets[-1][1]
    if total <= 0:
        return math.nan
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for index, (bound, count) in enumerate(buckets):
        if count >= rank:
            if bound == math.inf:
                # The rank falls above the highest finite bucket: Prometheus answers that bucket's bound.
                return buckets[index - 1][0] if index > 0 else math.nan
            if index == 0 and bound <= 0:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return math.nan


MEASURES: dict[str, Callable[[Scrape, Scrape], float]] = {
    "success-rate": success_rate,
    "latency-p99": latency_p99,
}
