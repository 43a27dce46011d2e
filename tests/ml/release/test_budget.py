"""The error-budget policy against the chart's own rendered objects and a stand-in for Prometheus's query API.

No Prometheus server runs here: ``PrometheusQueryStandIn`` is a loopback HTTP server that answers
``GET /api/v1/query`` as Prometheus's HTTP API does (``{"status": "success", "data": {"resultType": "vector",
"result": [...]}}``), with the series a test gives it, and records the queries it was asked."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from contract import LOCAL_RELEASES_ENV
from ml.errors import TransientError
from ml.release import budget
from mlops.models import load_models
from mlops.platform_config import load_platform
from standins.render import render

#: The card-fraud model's release (its model file).
RELEASE = load_models().get("card_fraud").release
CHART = Path(__file__).resolve().parents[3] / load_platform().release.chart
SLO = yaml.safe_load((CHART / "values.yaml").read_text())["monitoring"]["slo"]
ERRORS = budget.record_name("errors", SLO["windowDays"])
SLOW = budget.record_name("slow", SLO["windowDays"])


class PrometheusQueryStandIn:
    """A stand-in for Prometheus's instant-query API on loopback (named so: no Prometheus runs here)."""

    def __init__(self) -> None:
        self.series: dict[str, list[dict[str, Any]]] = {}
        self.status = 200
        self.queries: list[str] = []
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urlsplit(self.path)
                query = parse_qs(url.query)["query"][0]
                stand_in.queries.append(query)
                name = query.split("{", 1)[0]
                body: dict[str, Any] = (
                    {
                        "status": "success",
                        "data": {"resultType": "vector", "result": stand_in.series.get(name, [])},
                    }
                    if stand_in.status == 200
                    else {"status": "error", "errorType": "unavailable", "error": "stand-in told to fail"}
                )
                payload = json.dumps(body).encode()
                self.send_response(stand_in.status if url.path == "/api/v1/query" else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"http://127.0.0.1:{self.server.server_address[1]}"

    def answer(self, name: str, value: str, service: str = f"{RELEASE.name}-metrics") -> None:
        self.series[name] = [
            {"metric": {"namespace": RELEASE.namespace, "service": service}, "value": [1.7e9, value]}
        ]


@pytest.fixture()
def prometheus(monkeypatch: pytest.MonkeyPatch) -> Iterator[PrometheusQueryStandIn]:
    monkeypatch.delenv(LOCAL_RELEASES_ENV, raising=False)  # in the cluster: Prometheus is asked
    monkeypatch.setattr(budget, "READ_ATTEMPTS", 2)
    stand_in = PrometheusQueryStandIn()
    thread = threading.Thread(target=stand_in.server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield stand_in
    stand_in.server.shutdown()


def deployed(
    prometheus: PrometheusQueryStandIn, **values: Any
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A deployed revision's user values (pointing the analysis at the stand-in) and its rendered objects."""
    user = {"model": {"uri": "models:/m/1"}, "analysis": {"prometheusAddress": prometheus.address}, **values}
    return user, render(CHART, user, release=RELEASE.name, namespace=RELEASE.namespace)


def check(
    prometheus: PrometheusQueryStandIn, policy: str = budget.ENFORCE, **values: Any
) -> budget.BudgetCheck:
    user, objects = deployed(prometheus, **values)
    return budget.check(
        CHART, RELEASE.name, RELEASE.namespace, user, objects, policy=policy, requested_by="ana"
    )


def test_a_spent_availability_budget_refuses_the_release_with_the_figures(prometheus) -> None:
    prometheus.answer(ERRORS, "0.0025")  # 2.5x what 99.9 % allows
    prometheus.answer(SLOW, "0.004")  # 40 % of what 99 % allows
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
    # The release's own series, in its namespace, from the recording rules the chart deploys.
    assert prometheus.queries == [
        f'{ERRORS}{{namespace="{RELEASE.namespace}"}}',
        f'{SLOW}{{namespace="{RELEASE.namespace}"}}',
    ]


def test_budgets_left_let_the_release_go_and_no_requests_spend_nothing(prometheus) -> None:
    prometheus.answer(ERRORS, "0.0004")
    prometheus.answer(SLOW, "NaN")  # no requests in the window: Prometheus's 0/0
    found = check(prometheus)
    assert not found.blocked and not found.refuses
    availability, latency = found.budgets
    assert availability.remaining == pytest.approx(0.6) and latency.remaining == 1.0
    assert "latency: no requests over 30 days, budget untouched" in found.figures()


def test_the_override_releases_and_the_record_says_who_and_what_was_spent(prometheus) -> None:
    prometheus.answer(ERRORS, "0.01")
    prometheus.answer(SLOW, "0.02")
    found = check(prometheus, policy=budget.OVERRIDE)
    assert not found.refuses and found.overridden
    record = json.loads(json.dumps(found.record(), allow_nan=False))  # what the version's tag keeps
    assert record["spent"] == ["availability", "latency"] and record["overridden"] is True
    assert record["requested_by"] == "ana" and record["policy"] == budget.OVERRIDE
    assert record["budgets"][0]["remaining"] == pytest.approx(-9.0)


@pytest.mark.parametrize(
    ("series", "expected"),
    [
        ({}, "0 series"),  # the rules were never loaded by Prometheus
        ({"service": "another-release-metrics"}, "0 series"),  # another release's series are not this one's
    ],
)
def test_a_budget_that_cannot_be_read_is_refused_not_passed(prometheus, series, expected) -> None:
    if series:
        prometheus.answer(ERRORS, "0.0", **series)
        prometheus.answer(SLOW, "0.0", **series)
    found = check(prometheus)
    assert found.refuses and not found.budgets
    assert expected in found.unreadable and "the error budget cannot be read" in found.reason()


def test_without_the_charts_monitoring_there_is_no_budget_to_read(prometheus) -> None:
    found = check(prometheus, monitoring={"enabled": False})
    assert found.refuses and "monitoring.enabled is false" in found.unreadable
    assert prometheus.queries == []


def test_a_prometheus_that_stays_unavailable_is_a_transient_failure_not_a_verdict(prometheus) -> None:
    prometheus.status = 503
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
