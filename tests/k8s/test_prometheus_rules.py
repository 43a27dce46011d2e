"""The chart's alert and recording rules, run by Prometheus' own ``promtool`` (Debian's ``prometheus`` package,
which ``make test`` installs): ``promtool check rules`` on the rendered PrometheusRule, and ``promtool test rules``
on series shaped as real incidents. Each burn-rate alert pages on a fast burn and on a slow one and resolves once
the burn stops, a blip does not page, the API-down alert fires on a target that answers nothing or is gone, and the
drift alert on a mean score that moved against the week before.

Each incident is shaped against the rules as rendered from the chart's values: its share of failing (or slow)
requests sits between the thresholds it must and must not cross, read from the rendered rules. The unit tests
leave the annotations out (promtool compares them as text, and their figures round differently across Prometheus
versions); ``promtool check rules`` parses their templates, and ``test_chart.py`` holds their content.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.k8s.test_chart import kinds, render

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
NAMESPACE, SERVICE = "ml-serving", "inference-api-metrics"
TARGET = f'namespace="{NAMESPACE}",service="{SERVICE}"'
SCORING = f'{TARGET},path="/predict",method="POST"'
#: The SLOs' burn-rate alerts, and the two series their recording rules divide (how they split the requests).
SLOS = {
    "InferenceApiAvailabilityBudgetBurn": (
        f'http_requests_total{{{SCORING},status="500"}}', f'http_requests_total{{{SCORING},status="200"}}', "split"
    ),
    "InferenceApiLatencyBudgetBurn": (
        f'http_request_duration_seconds_bucket{{{SCORING},le="0.25"}}',
        f"http_request_duration_seconds_count{{{SCORING}}}",
        "complement",
    ),
}  # fmt: skip
REQUESTS_PER_MINUTE = 1000


def rendered_rules() -> dict[str, Any]:
    (rule,) = kinds(render())["PrometheusRule"]
    return {"groups": rule["spec"]["groups"]}


def alert(name: str, burn: str = "") -> dict[str, Any]:
    (found,) = [r for group in rendered_rules()["groups"] for r in group["rules"]
                if r.get("alert") == name and r.get("labels", {}).get("burn", "") == burn]  # fmt: skip
    return found


def threshold(rule: dict[str, Any]) -> float:
    (value,) = set(re.findall(r"> ([0-9.]+)", rule["expr"]))
    return float(value)


def firing(name: str, burn: str = "", **labels: str) -> dict[str, Any]:
    """An alert of the rule ``name`` (and ``burn``), as promtool lists it: the rule's labels and the query's."""
    return {"exp_labels": {**labels, **alert(name, burn)["labels"]}}


def requests(slo: str, phases: list[tuple[int, float]]) -> list[dict[str, str]]:
    """Scoring requests at a steady rate, a sample a minute, through phases of (minutes, share of bad requests):
    for availability the 500s and the 200s as two counters; for latency the requests within the objective (the
    histogram's bucket) and all of them."""
    first_series, second_series, shape = SLOS[slo]
    first, second = [0.0], [0.0]
    for minutes, share in phases:
        for _ in range(minutes):
            bad = round(REQUESTS_PER_MINUTE * share)
            if shape == "split":  # the 500s, and the rest as 200s
                first.append(first[-1] + bad)
                second.append(second[-1] + REQUESTS_PER_MINUTE - bad)
            else:  # the requests within the objective (the bucket), and the count of all
                first.append(first[-1] + REQUESTS_PER_MINUTE - bad)
                second.append(second[-1] + REQUESTS_PER_MINUTE)
    return [
        {"series": first_series, "values": samples(first)},
        {"series": second_series, "values": samples(second)},
    ]


def samples(values: list[float]) -> str:
    return " ".join(f"{v:g}" for v in values)


def promtool_test(
    tmp_path: Path, series: list[dict[str, str]], checks: list[dict[str, Any]], *, interval: str = "1m",
    evaluation_interval: str = "1m",
) -> None:  # fmt: skip
    rules = copy.deepcopy(rendered_rules())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules))
    tests = tmp_path / "tests.yaml"
    tests.write_text(yaml.safe_dump({
        "rule_files": [str(tmp_path / "rules.yaml")],
        "evaluation_interval": evaluation_interval,
        "tests": [{"interval": interval, "input_series": series, "alert_rule_test": checks}],
    }, sort_keys=False))  # fmt: skip
    run = subprocess.run([PROMTOOL, "test", "rules", str(tests)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_rendered_rules_pass_promtools_check(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(rendered_rules()))
    run = subprocess.run([PROMTOOL, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert re.search(r"SUCCESS: \d+ rules found", run.stdout), run.stdout


@pytest.mark.parametrize("slo", SLOS)
def test_a_fast_burn_pages_at_once_and_each_alert_resolves_once_its_short_window_is_clean(
    tmp_path: Path, slo: str
) -> None:
    share = min(1.0, 10 * threshold(alert(slo, "fast")))
    series = requests(slo, [(60, 0.0), (20, share), (60, 0.0)])
    target = {"namespace": NAMESPACE, "service": SERVICE}
    checks = [
        {"eval_time": "79m", "alertname": slo, "exp_alerts": [firing(slo, "fast", **target),
                                                              firing(slo, "slow", **target)]},
        # Five clean minutes end the fast page; the slow one lasts until its 30 minutes are clean.
        {"eval_time": "87m", "alertname": slo, "exp_alerts": [firing(slo, "slow", **target)]},
        {"eval_time": "115m", "alertname": slo, "exp_alerts": []},
    ]  # fmt: skip
    promtool_test(tmp_path, series, checks)


@pytest.mark.parametrize("slo", SLOS)
def test_a_slow_burn_pages_through_the_slow_alert_only(tmp_path: Path, slo: str) -> None:
    slow, fast = threshold(alert(slo, "slow")), threshold(alert(slo, "fast"))
    share = (slow * fast) ** 0.5  # between the two thresholds
    series = requests(slo, [(60, 0.0), (180, share)])
    target = {"namespace": NAMESPACE, "service": SERVICE}
    checks = [
        {"eval_time": "100m", "alertname": slo, "exp_alerts": []},  # the 6-hour window is not there yet
        {"eval_time": "230m", "alertname": slo, "exp_alerts": [firing(slo, "slow", **target)]},
    ]
    promtool_test(tmp_path, series, checks)


@pytest.mark.parametrize("slo", SLOS)
def test_a_blip_pages_nobody(tmp_path: Path, slo: str) -> None:
    """Three minutes at five times the fast threshold, after an hour of clean traffic."""
    share = min(1.0, 5 * threshold(alert(slo, "fast")))
    series = requests(slo, [(60, 0.0), (3, share), (60, 0.0)])
    checks = [{"eval_time": f"{t}m", "alertname": slo, "exp_alerts": []} for t in (61, 63, 66, 90)]
    promtool_test(tmp_path, series, checks)


def test_the_api_down_alert_fires_after_five_minutes_on_a_target_that_answers_nothing_or_is_gone(
    tmp_path: Path,
) -> None:
    name = "InferenceApiDown"
    down = [{"series": f'up{{{TARGET},pod="a"}}', "values": "1x10 0x20"}]
    checks = [
        {"eval_time": "10m", "alertname": name, "exp_alerts": []},
        {"eval_time": "13m", "alertname": name, "exp_alerts": []},  # pending: not yet 5 minutes
        {"eval_time": "17m", "alertname": name, "exp_alerts": [firing(name)]},
    ]
    (tmp_path / "down").mkdir()
    promtool_test(tmp_path / "down", down, checks)
    gone = [{"series": 'up{namespace="another",service="other",pod="b"}', "values": "1x20"}]
    checks = [
        {"eval_time": "3m", "alertname": name, "exp_alerts": []},
        {
            "eval_time": "7m",
            "alertname": name,
            "exp_alerts": [firing(name, namespace=NAMESPACE, service=SERVICE)],
        },
    ]
    (tmp_path / "gone").mkdir()
    promtool_test(tmp_path / "gone", gone, checks)


def test_a_dropped_record_row_alerts_at_once_and_failed_writes_once_they_persist(tmp_path: Path) -> None:
    name = "InferenceApiPredictionRecordsLost"
    dropped = f'prediction_records_dropped_total{{{TARGET},pod="a",reason="buffer_full"}}'
    errors = f'prediction_record_write_errors_total{{{TARGET},pod="a"}}'
    series = [
        # 500 rows dropped at minute 20; one failed write at minute 40 (written again the next time); from minute
        # 60 a write fails every minute (storage is down).
        {"series": dropped, "values": "0x19 500x60"},
        {"series": errors, "values": "0x39 1x20 1+1x20"},
    ]
    checks = [
        {"eval_time": "15m", "alertname": name, "exp_alerts": []},
        {"eval_time": "21m", "alertname": name, "exp_alerts": [firing(name)]},
        {"eval_time": "35m", "alertname": name, "exp_alerts": []},  # the drop left the 10-minute window
        {"eval_time": "45m", "alertname": name, "exp_alerts": []},  # one failed write: its rows were kept
        {"eval_time": "64m", "alertname": name, "exp_alerts": [firing(name)]},
    ]
    promtool_test(tmp_path, series, checks)


@pytest.mark.parametrize("moved", [True, False], ids=["moved", "steady"])
def test_the_drift_alert_fires_an_hour_after_the_mean_score_moved_against_last_week(
    tmp_path: Path, moved: bool
) -> None:
    name = "InferenceApiPredictionDrift"
    limit = threshold(alert(name))
    week = 7 * 24 * 6  # samples of ten minutes
    before, after = 0.1, (0.1 + 3 * limit if moved else 0.1)
    per_sample = 600  # scores a sample
    count = samples([per_sample * i for i in range(week + 25)])
    total = [per_sample * before * i for i in range(week + 1)]
    total += [total[-1] + per_sample * after * i for i in range(1, 25)]
    series = [
        {"series": f'prediction_score_count{{{TARGET},pod="a"}}', "values": count},
        {"series": f'prediction_score_sum{{{TARGET},pod="a"}}', "values": samples(total)},
    ]
    expected = [firing(name)] if moved else []
    checks = [
        {"eval_time": f"{week * 10 + 30}m", "alertname": name, "exp_alerts": []},  # pending at most
        {"eval_time": f"{week * 10 + 230}m", "alertname": name, "exp_alerts": expected},
    ]
    promtool_test(tmp_path, series, checks, interval="10m", evaluation_interval="10m")
