"""The canary's positive-share test, sized in advance (``mlops.canary_sizing``): the chart's values follow from its
inputs, and simulated canaries behave as sized. The z statistic simulated here is the chart's PromQL, as a real
Prometheus computes it (tests/standins/test_analysis.py compares the two)."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from mlops.canary_sizing import check, measurements, seconds, size, z_statistic

CHART = Path(__file__).resolve().parents[2] / "k8s" / "helm" / "inference-api"
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
ANALYSIS = VALUES["analysis"]
SHARE = ANALYSIS["positiveShare"]
RUNS = 20_000


def test_the_charts_threshold_and_minimum_follow_from_its_inputs() -> None:
    check(VALUES, "values.yaml")
    assert measurements(VALUES) == 16  # a measurement a minute over three 5-minute pauses, and the first
    assert (
        size(SHARE["baseRate"], SHARE["detectableRatio"], SHARE["alpha"], SHARE["power"], 16).min_requests
        == (ANALYSIS["minRequests"])
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"analysis": {"minRequests": 50}}, "needs maxZ 2.955 and analysis.minRequests 691, not 2.955 and 50"),
        ({"analysis": {"positiveShare": {"baseRate": 0.005}}}, "--base-rate 0.005"),
        # Two more 5-minute pauses: 26 measurements, so a stricter threshold per measurement.
        ({"canary": {"steps": [*VALUES["canary"]["steps"][:-1], {"setWeight": 80}, {"pause": {"duration": "10m"}},
                               {"setWeight": 100}]}}, "over the canary's 26 measurements"),
        ({"analysis": {"positiveShare": {"detectableRatio": 1}}}, "must be shares strictly between 0 and 1, and differ"),
    ],
)  # fmt: skip
def test_values_that_do_not_follow_from_the_inputs_are_refused_with_the_right_ones(change, message) -> None:
    values = copy.deepcopy(VALUES)
    for section, fields in change.items():
        for key, value in fields.items():
            if isinstance(value, dict):
                values[section][key].update(value)
            else:
                values[section][key] = value
    with pytest.raises(ValueError, match=re.escape(message)):
        check(values, "values.yaml")


def test_durations_and_manual_pauses_count_as_argo_counts_them() -> None:
    assert (seconds("5m"), seconds("30s"), seconds("1h"), seconds("250ms"), seconds(90)) == (
        300,
        30,
        3600,
        0.25,
        90,
    )
    with pytest.raises(ValueError, match="not a duration"):
        seconds("five minutes")
    manual = {"analysis": {"startingStep": 1, "interval": "1m"},
              "canary": {"steps": [{"setWeight": 10}, {"pause": {}}, {"setWeight": 100}]}}  # fmt: skip
    assert measurements(manual) == 61  # a person's hour


def test_one_measurement_at_the_minimum_detects_the_sized_change_with_the_sized_power() -> None:
    rng = np.random.default_rng(7)
    n, base = ANALYSIS["minRequests"], SHARE["baseRate"]
    shifted = rng.binomial(n, base * SHARE["detectableRatio"], RUNS)
    detected = z_statistic(shifted, n, rng.binomial(n, base, RUNS), n) > SHARE["maxZ"]
    assert detected.mean() == pytest.approx(SHARE["power"], abs=0.03)


def canaries(positive_share: float, rng: np.random.Generator) -> np.ndarray:
    """Simulated rollouts as Argo measures them in the cluster: the canary's steps (10, 30, 60 % for 5 minutes
    each), a measurement a minute over the last 2 minutes (``analysis.window``), at the least traffic that gives the
    new model ``minRequests`` per window at 10 %; whether each rollout was stopped."""
    per_minute = ANALYSIS["minRequests"] / 2 / 0.10
    weights = [w for w in (10, 30, 60) for _ in range(5)]
    new = np.array([round(per_minute * w / 100) for w in weights])
    stable = np.array([round(per_minute * (100 - w) / 100) for w in weights])
    new_positives = rng.binomial(new, positive_share, (RUNS, len(weights)))
    stable_positives = rng.binomial(stable, SHARE["baseRate"], (RUNS, len(weights)))
    stopped = np.zeros(RUNS, dtype=bool)
    for end in range(2, len(weights) + 1):  # each measurement: the two minutes before it
        window = slice(end - 2, end)
        z = z_statistic(new_positives[:, window].sum(1), new[window].sum(), stable_positives[:, window].sum(1),
                        stable[window].sum())  # fmt: skip
        stopped |= z > SHARE["maxZ"]
    return stopped


def test_an_unchanged_model_passes_at_least_95_percent_of_canaries() -> None:
    assert 1 - canaries(SHARE["baseRate"], np.random.default_rng(1)).mean() >= 0.95


def test_a_model_with_three_times_the_positive_share_is_stopped_at_least_95_percent_of_the_time() -> None:
    assert (
        SHARE["detectableRatio"] == 3 and SHARE["baseRate"] == 0.02
    )  # what the issue asks the chart to catch
    assert canaries(3 * SHARE["baseRate"], np.random.default_rng(2)).mean() >= 0.95


def test_an_unchanged_model_is_not_stopped_for_flagging_nothing() -> None:
    assert z_statistic(np.array([0]), 700, np.array([0]), 6300)[0] == 0
