"""The local canary's analysis: what the chart's PromQL computes, computed from two scrapes of /metrics."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from standins.rollouts import analysis

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5)


def scrape(ok: int, errors: int, latencies: list[float], other_path: int = 0) -> analysis.Scrape:
    """An exposition written by prometheus_client with the API's metric names, parsed back."""
    registry = CollectorRegistry()
    requests = Counter("http_requests", "", ["method", "path", "status"], registry=registry)
    duration = Histogram(
        "http_request_duration_seconds", "", ["method", "path"], buckets=BUCKETS, registry=registry
    )
    requests.labels("POST", "/predict", "200").inc(ok)
    requests.labels("POST", "/predict", "500").inc(errors)
    requests.labels("GET", "/health", "200").inc(other_path)  # not scored traffic: ignored
    for latency in latencies:
        duration.labels("POST", "/predict").observe(latency)
    duration.labels("GET", "/health").observe(9.0)
    return analysis.parse(generate_latest(registry).decode())


def test_success_rate_is_the_share_of_non_5xx_in_the_window() -> None:
    before, after = scrape(100, 0, [], other_path=50), scrape(290, 10, [], other_path=80)
    assert analysis.success_rate(before, after) == pytest.approx(190 / 200)
    assert analysis.requests_in(before, after) == 200


def test_p99_interpolates_inside_the_bucket_like_histogram_quantile() -> None:
    # 100 requests in the window: 98 under 5 ms, 2 between 0.1 and 0.25 s. The 99th is the first of those two:
    # rank 99 in bucket (0.1, 0.25] holding ranks 99-100, so 0.1 + 0.15 * (99 - 98) / 2 = 0.175 (as Prometheus).
    after = scrape(100, 0, [0.001] * 98 + [0.2, 0.2])
    assert analysis.latency_p99(scrape(0, 0, []), after) == pytest.approx(0.175)


def test_only_the_windows_increase_counts() -> None:
    before = scrape(100, 0, [0.4] * 100)  # a slow past
    after = scrape(200, 0, [0.4] * 100 + [0.001] * 100)  # a fast window
    assert analysis.latency_p99(before, after) == pytest.approx(0.005 * 0.99)


def test_a_rank_above_the_last_finite_bucket_answers_that_bucket_and_no_data_is_nan() -> None:
    assert analysis.latency_p99(scrape(0, 0, []), scrape(10, 0, [3.0] * 10)) == 0.5
    empty = scrape(0, 0, [])
    assert math.isnan(analysis.latency_p99(empty, empty)) and math.isnan(analysis.success_rate(empty, empty))


def test_conditions_read_from_the_template_and_nan_never_passes() -> None:
    template = {"spec": {"metrics": [
        {"name": "success-rate", "successCondition": "result[0] >= 0.99", "failureLimit": 1},
        {"name": "latency-p99", "successCondition": "result[0] <= 0.25"},
    ]}}  # fmt: skip
    rate, p99 = analysis.metrics_of(template)
    assert (rate.threshold, rate.failure_limit, p99.failure_limit) == (0.99, 1, 0)
    assert rate.passes(0.995) and not rate.passes(0.98) and not rate.passes(math.nan)
    assert p99.passes(0.25) and not p99.passes(0.2501)


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
