"""The error-budget policy against the chart's own rendered objects and a real Prometheus (Debian's, as the local
releases run it) that loads the chart's rendered PrometheusRule and scrapes a pod's counters labelled as the
cluster labels the release's series: the figures are the chart's recording rules' own."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from contract import LOCAL_RELEASES_ENV
from ml.errors import TransientError
from ml.release import budget
from mlops.models import load_models
from mlops.platform_config import load_platform
from standins.render import render
from standins.rollouts.controller import metrics_service
from standins.rollouts.prometheus import Prometheus, Target
from tests.conftest import free_port
from tests.metrics_pod import Pod

#: The card-fraud model's release (its model file).
RELEASE = load_models().get("card_fraud").release
CHART = Path(__file__).resolve().parents[3] / load_platform().release.chart
SLO = yaml.safe_load((CHART / "values.yaml").read_text())["monitoring"]["slo"]
ERRORS = budget.record_name("errors", SLO["windowDays"])
SLOW = budget.record_name("slow", SLO["windowDays"])


class Monitored:
    """A real Prometheus with the deployed chart's rules, scraping one pod of the release (or of another)."""

    def __init__(self, folder: Path) -> None:
        self.prometheus = Prometheus(folder, free_port())
        self.prometheus.start()
        self.address = self.prometheus.url
        self.pod: Pod | None = None

    def serve(self, *batches: dict[str, Any], rules: bool = True, service: str = "") -> None:
        """Load the chart's rules (unless not ``rules``), let a pod answer each batch (``Pod.serve``'s counts) and
        wait until the recording rules have evaluated what Prometheus scraped of them."""
        _, objects = deployed(self)
        if rules:
            (rule,) = [o for o in objects if o["kind"] == "PrometheusRule"]
            self.prometheus.set_rules(rule["spec"]["groups"])
        self.pod = Pod("abc123")
        labels = {
            "namespace": RELEASE.namespace,
            "service": service or metrics_service(objects),
            "pod": "p-0",
        }
        self.prometheus.set_targets([Target(self.pod.url, labels)])
        assert self.prometheus.wait_scraped(
            [self.pod.url], since=time.time(), timeout_s=30
        )  # the zeros first
        for counts in batches:
            self.pod.serve(**counts)
        assert self.prometheus.wait_scraped([self.pod.url], since=time.time())
        time.sleep(2.5)  # two rule evaluations (every second) after that scrape

    def stop(self) -> None:
        self.prometheus.stop()
        if self.pod is not None:
            self.pod.stop()


@pytest.fixture()
def prometheus(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Monitored]:
    monkeypatch.delenv(LOCAL_RELEASES_ENV, raising=False)  # in the cluster: Prometheus is asked
    monkeypatch.setattr(budget, "READ_ATTEMPTS", 2)
    monitored = Monitored(tmp_path / "prometheus")
    yield monitored
    monitored.stop()


def deployed(prometheus: Monitored, **values: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A deployed revision's user values (pointing the analysis at this Prometheus) and its rendered objects."""
    user = {"model": {"uri": "models:/m/1"}, "analysis": {"prometheusAddress": prometheus.address}, **values}
    return user, render(CHART, user, release=RELEASE.name, namespace=RELEASE.namespace)


def check(prometheus: Monitored, policy: str = budget.ENFORCE, **values: Any) -> budget.BudgetCheck:
    user, objects = deployed(prometheus, **values)
    return budget.check(
        CHART, RELEASE.name, RELEASE.namespace, user, objects, policy=policy, requested_by="ana"
    )


#: Above the SLO's latency objective (its bucket's bound), and well under it.
SLOW_S, FAST_S = 2 * SLO["latencySeconds"], SLO["latencySeconds"] / 100


def test_a_spent_availability_budget_refuses_the_release_with_the_figures(prometheus) -> None:
    # 10,000 requests: 25 failed (0.25 %, 2.5x what 99.9 % allows), 40 slow (0.4 %, 40 % of what 99 % allows).
    prometheus.serve(
        {"ok": 9935, "latency": FAST_S}, {"ok": 40, "latency": SLOW_S}, {"errors": 25, "latency": FAST_S}
    )
    found = check(prometheus)

    assert found.refuses and [b.slo for b in found.spent] == ["availability"]
    reason = found.reason()
    assert "the error budget is spent" in reason
    assert "availability: 0.250% of requests failed (5xx) over 30 days against 0.100% allowed" in reason
    assert "250% of the budget used, SPENT" in reason
    assert (
        "latency: 0.400% of requests were slower than the objective" in reason
        and "40% of the budget used" in reason
    )


def test_budgets_left_let_the_release_go_and_no_requests_spend_nothing(prometheus) -> None:
    # 10,000 answers, 4 of them 5xx; none timed (the latency SLO's 0/0: NaN, no requests to judge).
    prometheus.serve({"ok": 9996, "errors": 4, "latency": None})
    found = check(prometheus)
    assert not found.blocked and not found.refuses
    availability, latency = found.budgets
    assert availability.remaining == pytest.approx(0.6) and latency.remaining == 1.0
    assert "latency: no requests over 30 days, budget untouched" in found.figures()


def test_the_override_releases_and_the_record_says_who_and_what_was_spent(prometheus) -> None:
    # 1 % failed, 2 % slow: both spent.
    prometheus.serve(
        {"ok": 970, "latency": FAST_S}, {"ok": 20, "latency": SLOW_S}, {"errors": 10, "latency": FAST_S}
    )
    found = check(prometheus, policy=budget.OVERRIDE)
    assert not found.refuses and found.overridden
    record = json.loads(json.dumps(found.record(), allow_nan=False))  # what the version's tag keeps
    assert record["spent"] == ["availability", "latency"] and record["overridden"] is True
    assert record["requested_by"] == "ana" and record["policy"] == budget.OVERRIDE
    assert record["budgets"][0]["remaining"] == pytest.approx(-9.0)


@pytest.mark.parametrize(
    ("series", "expected"),
    [
        ({"rules": False}, "0 series"),  # the rules were never loaded by Prometheus
        ({"service": "another-release-metrics"}, "0 series"),  # another release's series are not this one's
    ],
)
def test_a_budget_that_cannot_be_read_is_refused_not_passed(prometheus, series, expected) -> None:
    prometheus.serve({"ok": 100, "latency": FAST_S}, **series)
    found = check(prometheus)
    assert found.refuses and not found.budgets
    assert expected in found.unreadable and "the error budget cannot be read" in found.reason()


def test_without_the_charts_monitoring_there_is_no_budget_to_read(prometheus) -> None:
    found = check(prometheus, monitoring={"enabled": False})
    assert found.refuses and "monitoring.enabled is false" in found.unreadable


def test_a_prometheus_that_stays_unavailable_is_a_transient_failure_not_a_verdict(prometheus) -> None:
    prometheus.prometheus.stop()  # nothing answers at its address any more
    with pytest.raises(TransientError, match="still failing after 2 attempts"):
        check(prometheus)


def test_a_first_release_has_spent_nothing_and_off_is_refused_as_a_policy_name(prometheus) -> None:
    first = budget.check(CHART, RELEASE.name, RELEASE.namespace, {}, [], policy=budget.ENFORCE)
    assert not first.blocked and first.figures() == "first release: no budget spent"
    with pytest.raises(Exception, match="not one of"):
        budget.check(CHART, RELEASE.name, RELEASE.namespace, {}, [], policy="sometimes")


def test_the_chart_records_what_the_policy_reads_for_every_window_length(prometheus) -> None:
    """The record names the policy queries are the ones the chart renders, whatever the SLO window."""
    _, objects = deployed(prometheus, monitoring={"slo": {"windowDays": 28}})
    recorded = {
        rule.get("record")
        for obj in objects
        if obj["kind"] == "PrometheusRule"
        for group in obj["spec"]["groups"]
        for rule in group["rules"]
    }
    assert {budget.record_name(sli, 28) for sli, _ in budget.SLIS} <= recorded
