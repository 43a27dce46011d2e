"""The canary analysis of the chart's AnalysisTemplates, evaluated on the APIs' own metrics.

In the cluster, Argo Rollouts runs the templates' PromQL against Prometheus and their web metrics against the
MLflow registry. The local canary scrapes ``/metrics`` of the new model and of the stable one at the start and end
of each window and computes the same quantities the queries compute (``increase()`` ratios are ratios of counter
differences; ``histogram_quantile`` interpolates in the same buckets), and asks the registry the same question as
the web metric. The conditions, the minimum traffic and the URLs are read from the rendered templates: one source
for both. A measurement is Successful when its success condition holds, Failed when its failure condition holds,
and Inconclusive when neither does (as Argo decides; a window with too little traffic is NaN, which satisfies
neither).
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

SCORED_PATH = "/predict"
SUCCESSFUL, FAILED, INCONCLUSIVE = "Successful", "Failed", "Inconclusive"
#: The template argument that sets the fewest requests a measurement needs.
MIN_REQUESTS_ARG = "min-requests"


class AnalysisError(ValueError):
    """The template asks for something this analysis cannot judge."""


_NUMERIC = re.compile(r"^\s*result\[0\]\s*(>=|<=|>|<)\s*([0-9.eE+-]+)\s*$")
_TEXT = re.compile(r'^\s*result\s*(==|!=)\s*"([^"]*)"\s*$')
_OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
    "==": operator.eq,
    "!=": operator.ne,
}


@dataclass(frozen=True)
class Condition:
    """``result[0] <op> <number>`` (a Prometheus metric), or ``result <op> "<text>"`` (a web metric), the latter
    possibly several joined by ``||`` or ``&&`` (``alternatives``: the further texts, compared with the same op)."""

    text: str
    op: str
    operand: float | str
    alternatives: tuple[str, ...] = ()
    joiner: str = ""  # "||" or "&&" between the comparisons, when there are alternatives

    def holds(self, value: Any) -> bool:
        if isinstance(self.operand, float):
            # As in Argo Rollouts, NaN (no data, or too little traffic) satisfies no comparison.
            return (
                isinstance(value, float)
                and not math.isnan(value)
                and _OPERATORS[self.op](value, self.operand)
            )
        results = [_OPERATORS[self.op](str(value), operand) for operand in (self.operand, *self.alternatives)]
        return all(results) if self.joiner == "&&" else any(results)


@dataclass(frozen=True)
class Metric:
    """One metric of a template: its conditions, how many failures it tolerates, and where it reads from."""

    name: str
    success: Condition
    failure: Condition | None
    failure_limit: int
    min_requests: int = 0
    web: dict[str, Any] = field(
        default_factory=dict
    )  # the web provider's url and jsonPath; empty: Prometheus

    @property
    def condition(self) -> str:
        return self.success.text

    @property
    def threshold(self) -> float | str:
        return self.success.operand

    def phase(self, value: Any) -> str:
        """Successful, Failed or Inconclusive, as Argo evaluates a measurement."""
        if self.success.holds(value):
            return SUCCESSFUL
        if self.failure is None or self.failure.holds(value):
            return FAILED
        return INCONCLUSIVE


@dataclass(frozen=True)
class Scrape:
    """The counters of one ``/metrics`` exposition that the analysis needs."""

    requests: float
    errors: float  # 5xx
    client_errors: float  # 4xx
    buckets: tuple[tuple[float, float], ...]  # (upper bound, cumulative count), sorted by bound
    positives: float = 0.0
    decisions: float = 0.0


@dataclass(frozen=True)
class Window:
    """The new and the stable model's counters at the start and the end of one analysis window."""

    before: Scrape
    after: Scrape
    stable_before: Scrape | None = None
    stable_after: Scrape | None = None


def _condition(metric: str, text: Any, *, web: bool) -> Condition:
    if web:
        return _text_condition(metric, str(text))
    match = _NUMERIC.match(str(text))
    if match is None:
        raise AnalysisError(
            f"metric {metric!r}: condition {text!r} is not of the form 'result[0] <op> <number>'"
        )
    return Condition(
        text=f"result[0] {match.group(1)} {match.group(2)}", op=match.group(1), operand=float(match.group(2))
    )


def _text_condition(metric: str, text: str) -> Condition:
    """``result == "a"``, or comparisons of one operator joined by one of ``||`` and ``&&``."""
    joiner = next((j for j in ("||", "&&") if j in text), "")
    matches = [_TEXT.match(part) for part in (text.split(joiner) if joiner else [text])]
    ops = {m.group(1) for m in matches if m is not None}
    if any(m is None for m in matches) or len(ops) != 1:
        raise AnalysisError(
            f"metric {metric!r}: condition {text!r} is not of the form 'result == \"<text>\"' (or several, "
            "of one operator, joined by || or &&)"
        )
    operands = [m.group(2) for m in matches if m is not None]
    op = ops.pop()
    shown = f" {joiner} ".join(f'result {op} "{operand}"' for operand in operands)
    return Condition(text=shown, op=op, operand=operands[0], alternatives=tuple(operands[1:]), joiner=joiner)


def metrics_of(template: dict[str, Any]) -> list[Metric]:
    """Read the metrics, conditions and minimum traffic of a rendered AnalysisTemplate; refuse what this analysis
    cannot judge."""
    args = {a["name"]: a.get("value") for a in template.get("spec", {}).get("args", [])}
    min_requests = int(float(args.get(MIN_REQUESTS_ARG) or 0))
    metrics = []
    for spec in template.get("spec", {}).get("metrics", []):
        name = spec["name"]
        web = spec.get("provider", {}).get("web") or {}
        if not web and name not in MEASURES:
            raise AnalysisError(
                f"the local canary cannot evaluate metric {name!r}; it knows {sorted(MEASURES)} and web metrics"
            )
        metrics.append(
            Metric(
                name=name,
                success=_condition(name, spec.get("successCondition", ""), web=bool(web)),
                failure=_condition(name, spec["failureCondition"], web=bool(web))
                if spec.get("failureCondition")
                else None,
                failure_limit=int(spec.get("failureLimit", 0)),
                min_requests=0 if web else min_requests,
                web=web,
            )
        )
    return metrics


def parse(exposition: str) -> Scrape:
    """Extract the scoring endpoint's request, error and latency-bucket counters, and the decisions."""
    requests = errors = client_errors = positives = decisions = 0.0
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == "predictions_total":
                decisions += sample.value
                positives += sample.value if sample.labels.get("decision") == "positive" else 0.0
                continue
            if sample.labels.get("path") != SCORED_PATH:
                continue
            if sample.name == "http_requests_total":
                requests += sample.value
                status = sample.labels.get("status", "")
                errors += sample.value if status.startswith("5") else 0.0
                client_errors += sample.value if status.startswith("4") else 0.0
            elif sample.name == "http_request_duration_seconds_bucket":
                bound = float(sample.labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + sample.value
    return Scrape(requests, errors, client_errors, tuple(sorted(buckets.items())), positives, decisions)


def _share(part: float, whole: float) -> float:
    return part / whole if whole > 0 else math.nan


def success_rate(window: Window) -> float:
    """Share of requests in the window that did not end in a 5xx (NaN without requests)."""
    before, after = window.before, window.after
    total = after.requests - before.requests
    return _share(total - (after.errors - before.errors), total)


def latency_p99(window: Window) -> float:
    return histogram_quantile(0.99, _increase(window.before.buckets, window.after.buckets))


def client_errors(window: Window) -> float:
    """The new model's share of 4xx answers minus the stable's, over the same window (NaN without both)."""
    if window.stable_before is None or window.stable_after is None:
        return math.nan
    new = _share(
        window.after.client_errors - window.before.client_errors,
        window.after.requests - window.before.requests,
    )
    old = _share(
        window.stable_after.client_errors - window.stable_before.client_errors,
        window.stable_after.requests - window.stable_before.requests,
    )
    return new - old


def positive_share_shift(window: Window) -> float:
    """How far the new model's share of positive decisions is from the stable's (NaN without both)."""
    if window.stable_before is None or window.stable_after is None:
        return math.nan
    new = _share(
        window.after.positives - window.before.positives, window.after.decisions - window.before.decisions
    )
    old = _share(
        window.stable_after.positives - window.stable_before.positives,
        window.stable_after.decisions - window.stable_before.decisions,
    )
    return abs(new - old)


def requests_in(window: Window) -> int:
    return int(window.after.requests - window.before.requests)


def measure(metric: Metric, window: Window) -> float:
    """The metric's value over the window; NaN when the new model got fewer requests than the template asks."""
    if requests_in(window) < metric.min_requests:
        return math.nan
    return MEASURES[metric.name](window)


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


def json_path(document: Any, path: str) -> Any:
    """The value at a web metric's ``{$.a.b}`` path (the dotted subset of JSONPath the chart uses)."""
    value = document
    for key in path.strip("{}").removeprefix("$").strip(".").split("."):
        if not isinstance(value, dict) or key not in value:
            raise AnalysisError(f"no {path} in the answer")
        value = value[key]
    return value


MEASURES: dict[str, Callable[[Window], float]] = {
    "success-rate": success_rate,
    "latency-p99": latency_p99,
    "client-errors": client_errors,
    "positive-share-shift": positive_share_shift,
}
