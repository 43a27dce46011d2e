"""The local canary's analysis: what the chart's PromQL computes, computed from scrapes of /metrics."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any, cast

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from standins.rollouts import analysis

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5)


def scrape(
    ok: int,
    errors: int,
    latencies: list[float],
    other_path: int = 0,
    *,
    client_errors: int = 0,
    positives: int = 0,
    negatives: int = 0,
) -> analysis.Scrape:
    """An exposition written by prometheus_client with the API's metric names, parsed back."""
    registry = CollectorRegistry()
    requests = Counter("http_requests", "", ["method", "path", "status"], registry=registry)
    duration = Histogram(
        "http_request_duration_seconds", "", ["method", "path"], buckets=BUCKETS, registry=registry
    )
    decisions = Counter("predictions", "", ["decision"], registry=registry)
    requests.labels("POST", "/predict", "200").inc(ok)
    requests.labels("POST", "/predict", "500").inc(errors)
    requests.labels("POST", "/predict", "422").inc(client_errors)
    requests.labels("GET", "/health", "200").inc(other_path)  # not scored traffic: ignored
    decisions.labels("positive").inc(positives)
    decisions.labels("negative").inc(negatives)
    for latency in latencies:
        duration.labels("POST", "/predict").observe(latency)
    duration.labels("GET", "/health").observe(9.0)
    return analysis.parse(generate_latest(registry).decode())


def window(
    before: analysis.Scrape,
    after: analysis.Scrape,
    stable_before: analysis.Scrape | None = None,
    stable_after: analysis.Scrape | None = None,
) -> analysis.Window:
    return analysis.Window(before, after, stable_before, stable_after)


EMPTY = scrape(0, 0, [])


def test_success_rate_is_the_share_of_non_5xx_in_the_window() -> None:
    measured = window(scrape(100, 0, [], other_path=50), scrape(290, 10, [], other_path=80))
    assert analysis.success_rate(measured) == pytest.approx(190 / 200)
    assert analysis.requests_in(measured) == 200


def test_p99_interpolates_inside_the_bucket_like_histogram_quantile() -> None:
    # 100 requests in the window: 98 under 5 ms, 2 between 0.1 and 0.25 s. The 99th is the first of those two:
    # rank 99 in bucket (0.1, 0.25] holding ranks 99-100, so 0.1 + 0.15 * (99 - 98) / 2 = 0.175 (as Prometheus).
    after = scrape(100, 0, [0.001] * 98 + [0.2, 0.2])
    assert analysis.latency_p99(window(EMPTY, after)) == pytest.approx(0.175)


def test_only_the_windows_increase_counts() -> None:
    before = scrape(100, 0, [0.4] * 100)  # a slow past
    after = scrape(200, 0, [0.4] * 100 + [0.001] * 100)  # a fast window
    assert analysis.latency_p99(window(before, after)) == pytest.approx(0.005 * 0.99)


def test_a_rank_above_the_last_finite_bucket_answers_that_bucket_and_no_data_is_nan() -> None:
    assert analysis.latency_p99(window(EMPTY, scrape(10, 0, [3.0] * 10))) == 0.5
    assert math.isnan(analysis.latency_p99(window(EMPTY, EMPTY)))
    assert math.isnan(analysis.success_rate(window(EMPTY, EMPTY)))


def test_client_errors_and_decisions_are_compared_with_the_stable_model_on_the_same_window() -> None:
    # The new model answers 422 to 40 of 50 requests; the stable to 1 of 450.
    new = window(EMPTY, scrape(10, 0, [], client_errors=40, positives=9, negatives=1),
                 stable_before=EMPTY, stable_after=scrape(449, 0, [], client_errors=1, positives=9, negatives=440))  # fmt: skip
    assert analysis.client_errors(new) == pytest.approx(40 / 50 - 1 / 450)
    assert analysis.positive_share_shift(new) == pytest.approx(abs(9 / 10 - 9 / 449))
    assert math.isnan(
        analysis.client_errors(window(EMPTY, scrape(10, 0, [])))
    )  # no stable: nothing to compare


def test_conditions_and_the_minimum_traffic_are_read_from_the_template() -> None:
    template = {"spec": {"args": [{"name": "new-hash"}, {"name": "min-requests", "value": "50"}], "metrics": [
        {"name": "success-rate", "successCondition": "result[0] >= 0.99", "failureCondition": "result[0] < 0.99",
         "failureLimit": 1},
        {"name": "latency-p99", "successCondition": "result[0] <= 0.25"},
    ]}}  # fmt: skip
    rate, p99 = analysis.metrics_of(template)
    assert (rate.threshold, rate.failure_limit, p99.failure_limit, rate.min_requests) == (0.99, 1, 0, 50)
    assert rate.phase(0.995) == "Successful" and rate.phase(0.98) == "Failed"
    # NaN satisfies neither condition: Inconclusive with a failure condition, Failed without one (as in Argo).
    assert rate.phase(math.nan) == "Inconclusive" and p99.phase(math.nan) == "Failed"
    assert p99.phase(0.25) == "Successful" and p99.phase(0.2501) == "Failed"
    few = window(EMPTY, scrape(49, 0, [0.001] * 49))  # one request short of the minimum: every metric is NaN
    assert math.isnan(analysis.measure(rate, few)) and math.isnan(analysis.measure(p99, few))
    assert analysis.measure(rate, window(EMPTY, scrape(50, 0, [0.001] * 50))) == 1.0


def test_a_web_metric_compares_the_answer_at_its_json_path() -> None:
    template = {"spec": {"metrics": [{
        "name": "champion-unchanged", "successCondition": 'result == "3"', "failureCondition": 'result != "3"',
        "provider": {"web": {"url": "http://mlflow/api", "jsonPath": "{$.model_version.version}"}},
    }]}}  # fmt: skip
    (check,) = analysis.metrics_of(template)
    assert analysis.json_path({"model_version": {"version": "3"}}, check.web["jsonPath"]) == "3"
    assert check.phase("3") == "Successful" and check.phase("4") == "Failed"


def test_the_champion_check_reads_this_machines_mlflow_with_the_controllers_account_only(
    mlflow_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The chart's web metric against the embedded MLflow (basic-auth app): the controller answers it with the
    account it runs with (the release stage's, the pipeline's), which goes to that MLflow and to no other URL."""
    from mlflow import MlflowClient

    from standins.rollouts import strategies

    client, name = MlflowClient(), "web-metric-model"
    client.create_registered_model(name)
    run = client.create_run(client.create_experiment(name))
    client.log_text(run.info.run_id, "flavors: {}\n", "model/MLmodel")
    client.create_model_version(name, f"{run.info.artifact_uri}/model", run.info.run_id)
    client.set_registered_model_alias(name, "champion", "1")
    url = f"{mlflow_server}/api/2.0/mlflow/registered-models/alias?name={name}&alias=champion"
    template = {"spec": {"metrics": [{
        "name": "champion-unchanged", "successCondition": 'result == "1"', "failureCondition": 'result != "1"',
        "provider": {"web": {"url": url, "jsonPath": "{$.model_version.version}"}},
    }]}}  # fmt: skip
    (check,) = analysis.metrics_of(template)
    here = cast(Any, SimpleNamespace(local_url=lambda url, revision: url))
    assert strategies._web_value(here, check, cast(Any, None)) == "1"
    assert (
        strategies._mlflow_account("http://elsewhere.example/api/2.0/mlflow/registered-models/alias") is None
    )
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
    assert "401" in str(strategies._web_value(here, check, cast(Any, None)))


@pytest.mark.parametrize(
    ("metric", "message"),
    [
        (
            {"name": "error-budget", "successCondition": "result[0] >= 1"},
            "cannot evaluate metric 'error-budget'",
        ),
        ({"name": "success-rate", "successCondition": "len(result) > 0"}, "is not of the form"),
    ],
)
def test_what_the_local_analysis_cannot_judge_is_refused_by_name(metric, message) -> None:
    with pytest.raises(analysis.AnalysisError, match=message):
        analysis.metrics_of({"spec": {"metrics": [metric]}})
