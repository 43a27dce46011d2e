"""The local canary's analysis: the chart's AnalysisTemplate queries, run verbatim (Argo's arguments filled in) by
a real Prometheus that scrapes two APIs' expositions labelled as the cluster labels a canary's and a stable pod's
series."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from mlops.canary_sizing import z_statistic
from mlops.models import load_models
from mlops.platform_config import load_platform
from standins.render import render
from standins.rollouts import analysis
from standins.rollouts.controller import metrics_service
from standins.rollouts.prometheus import Prometheus, Target
from tests.conftest import free_port
from tests.metrics_pod import Pod

ROOT = Path(__file__).resolve().parents[2]
RELEASE = load_models().get("card_fraud").release
#: The chart's queries at a minimum these tests can reach with a few hundred requests (the default is sized for
#: production traffic: tests/k8s/test_canary_sizing.py).
MIN_REQUESTS = 100


@pytest.fixture()
def cluster(tmp_path: Path) -> Iterator[tuple[Prometheus, Pod, Pod, list[analysis.Metric]]]:
    """Prometheus scraping a stable and a new pod; the chart's analysis metrics for this release."""
    objects = render(ROOT / load_platform().release.chart, {"analysis": {"minRequests": MIN_REQUESTS}},
                     release=RELEASE.name, namespace=RELEASE.namespace)  # fmt: skip
    (template,) = [o for o in objects if o["kind"] == "AnalysisTemplate"]
    stable, new = Pod("stablehash"), Pod("newhash001")
    prometheus = Prometheus(tmp_path / "prometheus", free_port())
    prometheus.start()
    labels = {"namespace": RELEASE.namespace, "service": metrics_service(objects)}
    prometheus.set_targets([Target(pod.url, {**labels, "pod": pod.hash, "rollouts_pod_template_hash": pod.hash})
                            for pod in (stable, new)])  # fmt: skip
    assert prometheus.wait_scraped([stable.url, new.url], since=time.time(), timeout_s=30)
    yield prometheus, stable, new, analysis.metrics_of(template)
    prometheus.stop()
    for pod in (stable, new):
        pod.stop()


def measured(
    prometheus: Prometheus,
    stable: Pod,
    new: Pod,
    metrics: list[analysis.Metric],
    at: list[float] | None = None,
) -> dict[str, float]:
    """Each metric's value once both pods' last counters are scraped, as the local canary measures (all at one
    time, appended to ``at`` when given)."""
    assert prometheus.wait_scraped([stable.url, new.url], since=time.time())
    args, now = {"new-hash": new.hash, "stable-hash": stable.hash}, time.time()
    if at is not None:
        at.append(now)
    return {m.name: analysis.value_of(prometheus.query(analysis.filled(m, args), at=now)) for m in metrics}


def seen(prometheus: Prometheus, pod: Pod, at: float) -> tuple[float, float]:
    """The positive and all decisions of a pod over the analysis window ending ``at``, as Prometheus counts them:
    increase() extrapolates a window's count to its edges, so these are what the chart's queries compute on."""
    window = load_platform_chart_values()["analysis"]["window"]
    return tuple(  # type: ignore[return-value]
        analysis.value_of(prometheus.query(
            f'sum(increase(predictions_total{{rollouts_pod_template_hash="{pod.hash}"{which}}}[{window}]))', at=at))
        for which in (',decision="positive"', "")
    )  # fmt: skip


def load_platform_chart_values() -> dict[str, Any]:
    import yaml

    return yaml.safe_load((ROOT / load_platform().release.chart / "values.yaml").read_text())


def test_the_charts_queries_measure_the_new_pod_against_the_stable_one(cluster) -> None:
    prometheus, stable, new, metrics = cluster
    stable.serve(ok=449, client_errors=1, positives=9)
    # The new model: 190 answers, 10 errors (5xx), 40 client errors (422), 9 of its 190 answers positive; 5 of its
    # 240 requests slow (0.2 s), the rest under 5 ms.
    new.serve(ok=185, errors=10, client_errors=40, positives=9)
    new.serve(ok=5, latency=0.2)
    at: list[float] = []
    values = measured(prometheus, stable, new, metrics, at)
    assert values["success-rate"] == pytest.approx(230 / 240, rel=1e-6)
    assert values["client-errors"] == pytest.approx(40 / 240 - 1 / 450, rel=1e-6)
    (x1, n1), (x2, n2) = seen(prometheus, new, at[0]), seen(prometheus, stable, at[0])
    assert values["positive-share-shift"] == pytest.approx(z_statistic(x1, n1, x2, n2), rel=1e-6)
    assert (x1 / n1, x2 / n2) == pytest.approx((9 / 190, 9 / 449), rel=1e-6)
    # histogram_quantile: rank 0.99 * 240 = 237.6 falls in the (0.1, 0.25] bucket holding ranks 236-240, so
    # 0.1 + 0.15 * (237.6 - 235) / 5; the stable pod's p99 is within the first bucket, under the floor.
    p99 = 0.1 + 0.15 * 2.6 / 5
    assert values["latency-p99"] == pytest.approx(p99, rel=1e-6)
    assert values["latency-p99-vs-stable"] == pytest.approx(p99 / 0.025, rel=1e-6)
    phases = {m.name: m.phase(values[m.name]) for m in metrics}
    assert phases == {"success-rate": "Failed", "latency-p99": "Successful", "latency-p99-vs-stable": "Failed",
                      "client-errors": "Failed", "positive-share-shift": "Successful"}  # fmt: skip


@pytest.mark.parametrize(
    ("new_positives", "stable_positives", "phase"),
    [(4, 8, "Successful"), (0, 0, "Successful"), (15, 8, "Failed"), (0, 24, "Failed")],
    ids=["a share like the stable's", "nothing flagged", "3x the share", "flags nothing"],
)
def test_the_positive_share_is_a_two_proportion_test_of_the_same_window(cluster, new_positives, stable_positives,
                                                                         phase) -> None:  # fmt: skip
    """The chart's z statistic, as Prometheus computes it from the pods' counters, is the textbook one (the one
    the sizing simulates); two pods that flag nothing score 0, not NaN."""
    prometheus, stable, new, metrics = cluster
    stable.serve(ok=400, positives=stable_positives)
    new.serve(ok=200, positives=new_positives)
    (test,) = [m for m in metrics if m.name == "positive-share-shift"]
    at: list[float] = []
    value = measured(prometheus, stable, new, [test], at)[test.name]
    (x1, n1), (x2, n2) = seen(prometheus, new, at[0]), seen(prometheus, stable, at[0])
    assert value == pytest.approx(z_statistic(x1, n1, x2, n2), abs=1e-9)
    assert (x1 / n1, x2 / n2) == pytest.approx((new_positives / 200, stable_positives / 400), abs=1e-9)
    assert test.phase(value) == phase


def test_the_comparisons_need_the_minimum_of_the_stable_model_too(cluster) -> None:
    prometheus, stable, new, metrics = cluster
    stable.serve(ok=MIN_REQUESTS // 3, positives=1)
    new.serve(ok=3 * MIN_REQUESTS, positives=3)
    values = measured(prometheus, stable, new, metrics)
    assert values["success-rate"] == 1.0
    assert math.isnan(values["positive-share-shift"]) and math.isnan(values["latency-p99-vs-stable"])


def test_a_pod_that_answers_only_5xx_fails_the_success_rate_instead_of_giving_no_data(cluster) -> None:
    """Without the chart's "or vector(0)", a model with no answer but 5xx has no series to divide: NaN, which Argo
    takes for too little traffic (a pause for a person) instead of a failure."""
    prometheus, stable, new, metrics = cluster
    stable.serve(ok=100)
    new.serve(errors=120)
    assert measured(prometheus, stable, new, metrics)["success-rate"] == 0.0


def test_fewer_requests_than_the_minimum_make_every_metric_inconclusive(cluster) -> None:
    prometheus, stable, new, metrics = cluster
    minimum = metrics[0].min_requests
    stable.serve(ok=500)
    new.serve(ok=minimum // 2)  # well short: increase() extrapolates a window's count to its edges
    values = measured(prometheus, stable, new, metrics)
    assert all(math.isnan(value) for value in values.values())
    assert {m.phase(values[m.name]) for m in metrics} == {"Inconclusive"}


def test_conditions_minimum_traffic_and_arguments_are_read_from_the_template() -> None:
    template = {"spec": {"args": [{"name": "new-hash"}, {"name": "min-requests", "value": "50"}], "metrics": [
        {"name": "success-rate", "successCondition": "result[0] >= 0.99", "failureCondition": "result[0] < 0.99",
         "failureLimit": 1, "provider": {"prometheus": {"query": 'up{h="{{args.new-hash}}"} >= {{ args.min-requests }}'}}},
        {"name": "latency-p99", "successCondition": "result[0] <= 0.25", "provider": {"prometheus": {"query": "x"}}},
    ]}}  # fmt: skip
    rate, p99 = analysis.metrics_of(template)
    assert (rate.threshold, rate.failure_limit, p99.failure_limit, rate.min_requests) == (0.99, 1, 0, 50)
    assert rate.phase(0.995) == "Successful" and rate.phase(0.98) == "Failed"
    # NaN satisfies neither condition: Inconclusive with a failure condition, Failed without one (as in Argo).
    assert rate.phase(math.nan) == "Inconclusive" and p99.phase(math.nan) == "Failed"
    assert p99.phase(0.25) == "Successful" and p99.phase(0.2501) == "Failed"
    assert analysis.filled(rate, {"new-hash": "abc"}) == 'up{h="abc"} >= 50'
    with pytest.raises(analysis.AnalysisError, match="no value for the argument"):
        analysis.filled(rate, {})
    assert math.isnan(analysis.value_of([])) and analysis.value_of([{"value": [0, "0.5"]}]) == 0.5


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
            {"name": "error-budget", "successCondition": "result[0] >= 1", "provider": {"datadog": {}}},
            "cannot evaluate metric 'error-budget'",
        ),
        (
            {
                "name": "success-rate",
                "successCondition": "len(result) > 0",
                "provider": {"prometheus": {"query": "x"}},
            },
            "is not of the form",
        ),
    ],
)
def test_what_the_local_analysis_cannot_judge_is_refused_by_name(metric, message) -> None:
    with pytest.raises(analysis.AnalysisError, match=message):
        analysis.metrics_of({"spec": {"metrics": [metric]}})


def test_the_rollouts_arguments_are_filled_as_argo_fills_them_and_others_refused() -> None:
    """A value as given, a pod template hash of the new (Latest) or the stable pods; an argument the local canary
    cannot fill aborts the rollout with its name instead of querying with an empty value."""
    from standins.rollouts import strategies
    from standins.rollouts.state import Aborted

    new, stable = (
        cast(Any, SimpleNamespace(template_hash="n1")),
        cast(Any, SimpleNamespace(template_hash="s1")),
    )
    spec = strategies.Analysis(args=[
        {"name": "new-hash", "valueFrom": {"podTemplateHashValue": "Latest"}},
        {"name": "stable-hash", "valueFrom": {"podTemplateHashValue": "Stable"}},
        {"name": "min-requests", "value": "80"},
    ])  # fmt: skip
    assert spec.arguments(new, stable) == {"new-hash": "n1", "stable-hash": "s1", "min-requests": "80"}
    field = strategies.Analysis(
        args=[{"name": "ns", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}]
    )
    with pytest.raises(Aborted, match="analysis argument 'ns'"):
        field.arguments(new, stable)
