"""The canary analysis of the chart's AnalysisTemplates, as Argo Rollouts runs it.

A Prometheus metric's query runs verbatim, the template's arguments filled in as Argo fills them (``new-hash``,
``stable-hash`` of the pods, ``min-requests`` from the template), against the release's Prometheus
(``prometheus``), which scrapes the APIs with the cluster's labels and loads the chart's rules. A web metric asks
its URL (the MLflow registry) the same question Argo asks. The conditions, the arguments and the URLs are read from
the rendered templates: one source for both worlds. A measurement is Successful when its success condition holds,
Failed when its failure condition holds, and Inconclusive when neither does (as Argo decides; the queries give NaN
for a window with too little traffic, which satisfies neither).
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

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
    query: str = ""  # the Prometheus provider's query, its ``{{args.*}}`` not yet filled in
    args: dict[str, str] = field(default_factory=dict)  # the template's arguments that have a value

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
    """Read the metrics, conditions, queries and arguments of a rendered AnalysisTemplate; refuse what this
    analysis cannot run."""
    args = {
        a["name"]: str(a["value"])
        for a in template.get("spec", {}).get("args", [])
        if a.get("value") is not None
    }
    min_requests = int(float(args.get(MIN_REQUESTS_ARG) or 0))
    metrics = []
    for spec in template.get("spec", {}).get("metrics", []):
        name = spec["name"]
        provider = spec.get("provider", {})
        web, query = provider.get("web") or {}, (provider.get("prometheus") or {}).get("query", "")
        if not web and not query:
            raise AnalysisError(
                f"the local canary cannot evaluate metric {name!r}: it runs Prometheus queries and web metrics"
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
                query=query,
                args=args,
            )
        )
    return metrics


_ARG = re.compile(r"\{\{\s*args\.([A-Za-z0-9_-]+)\s*\}\}")


def filled(metric: Metric, args: dict[str, str]) -> str:
    """The metric's query with its arguments filled in: the template's own values, then ``args`` (the ones Argo
    takes from the Rollout: the pods' template hashes)."""
    values = {**metric.args, **args}
    missing = sorted({name for name in _ARG.findall(metric.query) if name not in values})
    if missing:
        raise AnalysisError(f"metric {metric.name!r}: no value for the argument(s) {', '.join(missing)}")
    return _ARG.sub(lambda match: values[match.group(1)], metric.query)


def value_of(result: list[dict[str, Any]]) -> float:
    """``result[0]`` of an instant query's vector, as Argo reads it: the first sample's value (NaN when the vector is
    empty: no data)."""
    if not result:
        return math.nan
    return float(result[0]["value"][1])


def json_path(document: Any, path: str) -> Any:
    """The value at a web metric's ``{$.a.b}`` path (the dotted subset of JSONPath the chart uses)."""
    value = document
    for key in path.strip("{}").removeprefix("$").strip(".").split("."):
        if not isinstance(value, dict) or key not in value:
            raise AnalysisError(f"no {path} in the answer")
        value = value[key]
    return value
