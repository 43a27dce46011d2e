"""The error-budget policy: no release while the inference API's SLOs have spent their error budgets.

The objectives are the chart's (``monitoring.slo`` of the release's deployed values); what the service spent of
them is read where it is measured:

- in the cluster, from Prometheus (``analysis.prometheusAddress``, the one the canary analysis queries): the
  chart's recording rules of the bad-request ratios over the SLO window, ``inference_api:slo_<sli>:ratio_rate<N>d``,
  for this release's series;
- on the embedded defaults, from the same recording rules on the local release's own Prometheus (which scrapes
  its APIs since the release's controller started: that history stands in for the window).

A budget is spent when the bad-request ratio reached what the objective allows (``1 - objective``). A budget that
cannot be read (no recording rules deployed, Prometheus without the series) is not a budget that is left: the
release is refused with the reason, as when one is spent. The form's override releases anyway, and the version
records that it did.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from contract import (
    ERROR_BUDGET_ENFORCE,
    ERROR_BUDGET_OFF,
    ERROR_BUDGET_OVERRIDE,
    LOCAL_RELEASES_ENV,
    LOCAL_STATUS_FILE,
)
from ml import faults
from ml.errors import StageError, TransientError
from ml.release import chart

log = logging.getLogger(__name__)

#: What the deploy stage does with the budgets: refuse a release while one is spent, release anyway (and
#: record it: the form's override), or not read them (the platform's ``release.error_budget_gate`` off).
ENFORCE, OVERRIDE, OFF = ERROR_BUDGET_ENFORCE, ERROR_BUDGET_OVERRIDE, ERROR_BUDGET_OFF
POLICIES = (ENFORCE, OVERRIDE, OFF)
#: The service level indicators of the chart's recording rules: (SLI, its objective in ``monitoring.slo``).
SLIS = (("errors", "availability"), ("slow", "latency"))
READ_ATTEMPTS = 4
TIMEOUT_SECONDS = 10


class BudgetUnreadable(Exception):
    """The budgets cannot be read from what is deployed: the release cannot be judged against them."""


def record_name(sli: str, window_days: int) -> str:
    """The recording rule of an SLI's bad-request ratio over the SLO window (the chart's prometheusrule.yaml)."""
    return f"inference_api:slo_{sli}:ratio_rate{window_days}d"


@dataclass(frozen=True)
class Budget:
    """One SLO's error budget over its window: the share of bad requests against what the objective allows."""

    slo: str  # availability or latency
    objective: float
    bad_ratio: float  # NaN: no requests in the window
    window: str

    @property
    def allowed(self) -> float:
        return 1.0 - self.objective

    @property
    def remaining(self) -> float:
        """Share of the budget left: 1 untouched, 0 spent, negative overspent (1 without requests)."""
        return 1.0 if math.isnan(self.bad_ratio) else 1.0 - self.bad_ratio / self.allowed

    @property
    def spent(self) -> bool:
        return self.remaining <= 0.0

    def describe(self) -> str:
        what = "failed (5xx)" if self.slo == "availability" else "were slower than the objective"
        if math.isnan(self.bad_ratio):
            return f"{self.slo}: no requests {self.window}, budget untouched"
        used = 1.0 - self.remaining
        return (
            f"{self.slo}: {self.bad_ratio:.3%} of requests {what} {self.window} against {self.allowed:.3%} allowed "
            f"(objective {self.objective:.3%}): "
            + (f"{used:.0%} of the budget used" if used <= 10 else f"{used:,.0f}x the budget used")
            + (", SPENT" if self.spent else "")
        )


@dataclass(frozen=True)
class BudgetCheck:
    """What the deploy stage found, and whether it refuses the release."""

    policy: str
    source: str
    budgets: list[Budget] = field(default_factory=list)
    unreadable: str = ""  # why the budgets could not be read
    requested_by: str = ""

    @property
    def spent(self) -> list[Budget]:
        return [b for b in self.budgets if b.spent]

    @property
    def blocked(self) -> bool:
        """A budget is spent, or none could be read: the policy's case for refusing."""
        return bool(self.spent or self.unreadable)

    @property
    def refuses(self) -> bool:
        return self.blocked and self.policy == ENFORCE

    @property
    def overridden(self) -> bool:
        return self.blocked and self.policy == OVERRIDE

    def figures(self) -> str:
        return (
            self.unreadable
            or "; ".join(b.describe() for b in self.budgets)
            or "first release: no budget spent"
        )

    def reason(self) -> str:
        """Why the release is refused (or would have been, when overridden)."""
        cause = (
            f"the error budget cannot be read ({self.unreadable})"
            if self.unreadable
            else f"the error budget is spent ({self.figures()})"
        )
        return (
            f"{cause}; the error-budget policy stops releases until the service is stable again (the form's "
            "'Release despite a spent error budget' overrides it, recorded on the version)"
        )

    def record(self) -> dict[str, Any]:
        """The check as the version's tag and the deploy result keep it (JSON-ready: NaN as None)."""
        budgets = [
            {
                **asdict(b),
                "bad_ratio": None if math.isnan(b.bad_ratio) else b.bad_ratio,
                "remaining": b.remaining,
            }
            for b in self.budgets
        ]
        return {
            "policy": self.policy,
            "source": self.source,
            "budgets": budgets,
            "unreadable": self.unreadable,
            "spent": [b.slo for b in self.spent],
            "overridden": self.overridden,
            "requested_by": self.requested_by,
        }


def check(
    chart_dir: Path,
    release: str,
    namespace: str,
    values: dict[str, Any],
    objects: list[dict[str, Any]],
    *,
    policy: str,
    requested_by: str = "",
) -> BudgetCheck:
    """Read the deployed release's budgets (``values``: its user-supplied values; ``objects``: its rendered
    objects). A first release (nothing deployed) has spent nothing."""
    if policy not in POLICIES:
        raise StageError(f"error-budget policy {policy!r} is not one of {POLICIES}")
    local = os.environ.get(LOCAL_RELEASES_ENV)
    source = "the local release's Prometheus" if local else "Prometheus"
    if not objects:
        return BudgetCheck(policy, source, requested_by=requested_by)
    defaults = yaml.safe_load((chart_dir / "values.yaml").read_text()) or {}
    settings = chart.merge(defaults, values)
    try:
        address = (
            _local_prometheus(Path(local) / release)
            if local
            else str(settings.get("analysis", {}).get("prometheusAddress", ""))
        )
        budgets = _prometheus(address.rstrip("/"), namespace, settings, objects)
    except BudgetUnreadable as err:
        return BudgetCheck(policy, source, unreadable=str(err), requested_by=requested_by)
    return BudgetCheck(policy, source, budgets, requested_by=requested_by)


def _objectives(settings: dict[str, Any], objects: list[dict[str, Any]]) -> dict[str, Any]:
    """The deployed SLOs, once the deployed objects show their recording rules exist."""
    slo = settings.get("monitoring", {}).get("slo") or {}
    rule = chart.find(objects, "PrometheusRule")
    if rule is None:
        raise BudgetUnreadable(
            "the deployed release has no PrometheusRule, so no SLO recording rules (monitoring.enabled is false)"
        )
    recorded = {r.get("record") for g in rule["spec"].get("groups", []) for r in g.get("rules", [])}
    missing = [
        name for sli, _ in SLIS if (name := record_name(sli, int(slo.get("windowDays", 0)))) not in recorded
    ]
    if missing:
        raise BudgetUnreadable(f"the deployed PrometheusRule does not record {', '.join(missing)}")
    return slo


def _prometheus(
    address: str, namespace: str, settings: dict[str, Any], objects: list[dict[str, Any]]
) -> list[Budget]:
    """The recording rules' ratios over the SLO window, for this release's series (its namespace and one of its
    Services), from the Prometheus at ``address``."""
    import requests

    slo = _objectives(settings, objects)
    services = {o["metadata"]["name"] for o in objects if o.get("kind") == "Service"}
    days = int(slo["windowDays"])
    budgets = []
    for sli, objective in SLIS:
        query = f'{record_name(sli, days)}{{namespace="{namespace}"}}'

        def ask(query: str = query) -> dict[str, Any]:
            answer = requests.get(f"{address}/api/v1/query", params={"query": query}, timeout=TIMEOUT_SECONDS)
            if answer.status_code >= 500 or answer.status_code == 429:
                raise TransientError(f"Prometheus answered {answer.status_code}")
            body: dict[str, Any] = answer.json()
            if answer.status_code != 200 or body.get("status") != "success":
                raise BudgetUnreadable(
                    f"Prometheus at {address} refused {query}: {body.get('error') or answer.status_code}"
                )
            return body

        body = faults.retry(
            ask,
            what=f"Prometheus query {query}",
            transient=lambda err: faults.classify(err) == faults.TRANSIENT,
            attempts=READ_ATTEMPTS,
        )
        series = [s for s in body["data"]["result"] if s.get("metric", {}).get("service") in services]
        if len(series) != 1:
            raise BudgetUnreadable(
                f"Prometheus at {address} has {len(series)} series of {query} for the release's Services "
                f"{sorted(services)} (the rules not loaded, or the pods never scraped)"
            )
        budgets.append(
            Budget(objective, float(slo[objective]), float(series[0]["value"][1]), f"over {days} days")
        )
    return budgets


def _local_prometheus(release_dir: Path) -> str:
    """The local release's Prometheus, as its controller's status names it."""
    try:
        address = json.loads((release_dir / LOCAL_STATUS_FILE).read_text()).get("prometheus")
    except (OSError, ValueError) as err:
        raise BudgetUnreadable(f"the local release's status cannot be read: {err}") from err
    if not address:
        raise BudgetUnreadable(f"the local release {release_dir.name} runs no Prometheus")
    return str(address)
