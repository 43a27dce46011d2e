"""The canary's report chart that promote logs beside the version's evaluation plots."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from ml.promote import canary_report

STEPS = [
    {"setWeight": 10},
    {"pause": {"duration": "5m"}},
    {"setWeight": 30},
    {"pause": {}},
    {"setWeight": 100},
]


def measurement(metric: str, step: int, value: float, condition: str, phase: str = "Successful") -> dict:
    return {
        "metric": metric,
        "step": step,
        "value": value,
        "condition": condition,
        "phase": phase,
        "requests": 60,
    }


def test_the_report_shows_the_traffic_and_each_metric_against_its_threshold() -> None:
    verdict = {
        "phase": "Degraded",
        "model_uri": "models:/m/7",
        "steps": STEPS,
        "measurements": [
            measurement("success-rate", 1, 1.0, "result[0] >= 0.99"),
            measurement("success-rate", 3, 0.95, "result[0] >= 0.99", "Failed"),
            measurement("latency-p99", 1, 0.004, "result[0] <= 0.25"),
            {"metric": "champion-unchanged", "step": 4, "value": "7", "condition": 'result == "7"',
             "phase": "Successful"},
        ],
    }  # fmt: skip
    figure = canary_report(verdict)
    traffic, latency, success = figure.axes
    assert list(traffic.lines[0].get_ydata()) == [10, 10, 30, 30, 100]
    assert "models:/m/7: Degraded" in traffic.get_title()
    assert (latency.get_ylabel(), success.get_ylabel()) == ("latency-p99", "success-rate")
    assert list(success.lines[0].get_ydata()) == [0.99, 0.99]  # the threshold
    assert success.get_legend().get_texts()[0].get_text() == "result[0] >= 0.99"
    assert [tuple(p) for p in success.collections[0].get_offsets()] == [(1.0, 1.0), (3.0, 0.95)]
    plt.close(figure)


def test_nothing_measured_means_no_report() -> None:
    assert canary_report({"phase": "Refused", "steps": [], "measurements": []}) is None
