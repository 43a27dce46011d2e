"""The train stage's ``distributed: dask``: xgboost.dask on a LocalCluster of 2 workers against the single-node fit
on the same prepared data, the model through the train stage and MLflow, and the cluster path's DaskCluster built
from the platform settings (validated, never applied: no Kubernetes cluster runs here)."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import average_precision_score

from contract import DASK_CLUSTER_ENV, DASK_SCHEDULER_ENV, PASS
from ml import distributed
from ml.distributed import IN_KUBERNETES_ENV, cluster_spec, fit_on_dask, row_ranges
from ml.prepare import prepare
from ml.schema import to_model_input
from ml.storage import read_manifest, read_published_table
from ml.train import Fit, TrainResult, booster_params, fit_model, refit_rounds
from mlops.dask_cluster import dask_cluster
from mlops.platform_config import load_platform
from tests.conftest import free_port
from tests.helpers import dask_operator_chart, register_evaluated, train_arguments, train_config

KUBERNETES_VERSION = "1.33.0"
#: Small enough for 2 cores, with positives enough (5%) for a validation average precision that is not noise.
SOURCE = "synthetic://card-transactions?rows=20000&seed=5&fraud_rate=0.05"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("prepared-dask") / "interval"
    prepare(SOURCE, "is_fraud", str(out), time_column="timestamp", drop_columns=["transaction_id"])
    return str(out)


@contextmanager
def s3_copy(folder: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``folder`` uploaded to moto's S3 server, and the environment (inherited by the local workers) to reach it."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    try:
        client = boto3.client("s3")
        client.create_bucket(Bucket="lake")
        for path in Path(folder).iterdir():
            client.upload_file(str(path), "lake", f"prepared/{path.name}")
        yield "s3://lake/prepared"
    finally:
        server.stop()


def outside_kubernetes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The embedded defaults' cluster (a LocalCluster), wherever the tests run."""
    for name in (DASK_SCHEDULER_ENV, IN_KUBERNETES_ENV):
        monkeypatch.delenv(name, raising=False)


def single_node(prepared: str, config: Any) -> tuple[Fit, dict[str, pd.DataFrame], dict[str, Any]]:
    manifest = read_manifest(prepared)
    splits = {name: read_published_table(prepared, f"{name}.parquet") for name in ("train", "validation")}
    fit = fit_model(
        config, splits["train"], splits["validation"], features=manifest["features"],
        categorical=manifest["categorical"], target=manifest["target"], device="cpu",
    )  # fmt: skip
    return fit, splits, manifest


def on_dask(prepared_uri: str, manifest: dict[str, Any], config: Any) -> Fit:
    return Fit(
        **fit_on_dask(
            prepared_uri, manifest, config, "cpu", booster_params=booster_params, refit_rounds=refit_rounds
        )
    )


def test_on_a_local_cluster_of_2_workers_reading_s3_the_validation_ap_is_the_single_nodes_within_001(
    prepared: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    outside_kubernetes(monkeypatch)
    config = train_config(n_estimators=300, early_stopping_rounds=30, refit=False, distributed="dask")
    single, splits, manifest = single_node(prepared, config)
    with s3_copy(prepared, monkeypatch) as uri:
        dask = on_dask(uri, manifest, config)
    validation = splits["validation"]
    labels = validation[manifest["target"]]
    single_ap = average_precision_score(labels, single.validation_scores)
    dask_ap = average_precision_score(labels, dask.validation_scores)
    assert abs(dask_ap - single_ap) <= 0.01, (single_ap, dask_ap)
    assert dask_ap > 10 * labels.mean()  # it learnt: far above a constant score
    # The early-stopped model: its curve ends patience rounds after its best round (or at the last round).
    assert len(dask.history) in (dask.best_iteration + 1 + config.early_stopping_rounds, config.n_estimators)
    assert dask.refit_rounds is None
    # The served pipeline is the single-node kind, and it predicts what the booster predicted on the cluster.
    encoder, model = dask.pipeline.named_steps["encode"], dask.pipeline.named_steps["model"]
    assert type(model) is type(single.pipeline.named_steps["model"])
    assert encoder.categories_ == single.pipeline.named_steps["encode"].categories_
    assert model.n_classes_ == 2 and model.best_iteration == dask.best_iteration
    scores = dask.pipeline.predict_proba(validation[manifest["features"]])[:, 1]
    np.testing.assert_allclose(scores, dask.validation_scores, rtol=0, atol=1e-6)


def test_the_refit_learns_from_validation_rows_too_for_the_rounds_early_stopping_chose_scaled(
    prepared: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    outside_kubernetes(monkeypatch)
    config = train_config(n_estimators=80, early_stopping_rounds=15, refit=True, distributed="dask")
    single, splits, manifest = single_node(prepared, config)
    dask = on_dask(prepared, manifest, config)
    rows = {name: len(frame) for name, frame in splits.items()}
    assert dask.refit_rounds == refit_rounds(dask.best_iteration + 1, rows["train"], rows["validation"])
    model = dask.pipeline.named_steps["model"]
    assert model.get_booster().num_boosted_rounds() == dask.refit_rounds
    # Encoded with the categories of both splits, as the single-node refit's encoder.
    assert (
        dask.pipeline.named_steps["encode"].categories_ == single.pipeline.named_steps["encode"].categories_
    )
    validation = splits["validation"]
    refit_scores = dask.pipeline.predict_proba(validation[manifest["features"]])[:, 1]
    assert not np.allclose(refit_scores, dask.validation_scores)  # the early-stopped model's are kept


@pytest.mark.long
def test_the_train_stage_logs_a_model_that_loads_and_scores_with_distributed_dask(
    mlflow_server: str, prepared: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow
    from mlflow import MlflowClient

    from ml.train import main

    outside_kubernetes(monkeypatch)
    arguments = train_arguments(n_estimators=60, early_stopping_rounds=10, distributed="dask")
    assert arguments[arguments.index("--distributed") + 1] == "dask"
    result = main(
        ["--prepared-uri", prepared, "--experiment", "stages-dask", "--run-key", "dag/dask", *arguments]
    )
    run = MlflowClient().get_run(result["run_id"])
    assert run.data.params["distributed"] == "dask"
    assert len(MlflowClient().get_metric_history(result["run_id"], "val_average_precision_by_round")) > 1
    test, manifest = read_published_table(prepared, "test.parquet"), read_manifest(prepared)
    rows = to_model_input(test[manifest["features"]], manifest["categorical"])
    scores = np.asarray(mlflow.pyfunc.load_model(result["model_uri"]).predict(rows))[:, 1]
    assert average_precision_score(test[manifest["target"]], scores) > 10 * test[manifest["target"]].mean()
    # Evaluated and registered as a single-node model is.
    evaluation, version = register_evaluated(prepared, TrainResult(**result), "dask-model", "dag/dask")
    assert evaluation.decision == PASS and version == "1"


def test_pieces_cover_each_row_once_a_row_group_each_or_slices_when_workers_outnumber_row_groups() -> None:
    assert row_ranges([14000], 2) == [(0, 0, 7000), (0, 7000, 7000)]
    assert row_ranges([5, 5, 5], 2) == [(0, 0, 5), (1, 0, 5), (2, 0, 5)]
    assert row_ranges([10, 7], 4) == [(0, 0, 5), (0, 5, 5), (1, 0, 4), (1, 4, 3)]
    assert row_ranges([1], 3) == [(0, 0, 1)]


def daskcluster_schema() -> dict[str, Any]:
    """The DaskCluster CRD's schema, as the operator's chart of the installed dask-kubernetes installs it."""
    chart = dask_operator_chart()
    crd = chart / "crds" / "daskcluster.yaml"
    return dict(yaml.safe_load(crd.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"])


def test_the_daskcluster_is_built_from_the_platform_presets_and_valid_but_not_applied_no_cluster_here() -> (
    None
):
    platform = load_platform()
    settings = json.loads(json.dumps(dask_cluster(platform)))  # as the DAG passes it
    spec = cluster_spec(settings, "ml-train-0123abcd")
    jsonschema.validate(spec, daskcluster_schema())
    assert spec["apiVersion"] == "kubernetes.dask.org/v1" and spec["kind"] == "DaskCluster"
    assert spec["spec"]["worker"]["replicas"] == platform.dask.workers
    assert spec["spec"]["idleTimeout"] == platform.dask.idle_timeout_seconds
    for role, preset_name in (
        ("worker", platform.dask.worker_preset),
        ("scheduler", platform.dask.scheduler_preset),
    ):
        pod = spec["spec"][role]["spec"]
        kubernetes_validate.validate(
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": role}, "spec": pod}, KUBERNETES_VERSION,
            strict=True,
        )  # fmt: skip
        (container,) = pod["containers"]
        assert container["command"] == ["python", "-m", "dask", role]
        assert container["image"] == platform.images.ml_stage
        preset = platform.preset(preset_name)
        assert container["resources"] == {"requests": preset.requests, "limits": preset.limits}
        group = platform.node_group_of(preset)
        assert pod.get("nodeSelector") == (group.node_selector if group else None)
        # The namespace's "restricted" Pod Security Standard, and no Kubernetes API token.
        assert pod["automountServiceAccountToken"] is False
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
    worker = spec["spec"]["worker"]["spec"]
    assert worker["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"  # one GPU each
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in worker["tolerations"]


def test_in_a_pod_the_stage_asks_the_operator_for_its_cluster_and_waits_for_the_workers_elsewhere_a_local_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The choice of cluster, with stand-ins for the clusters (no Kubernetes here)."""
    import dask_kubernetes.operator
    import distributed as dask_distributed

    settings = dask_cluster(load_platform())
    seen: dict[str, Any] = {}

    class Cluster:
        def __init__(self, **kwargs: Any) -> None:
            seen[type(self).__name__] = kwargs

        def __enter__(self) -> Cluster:
            return self

        def __exit__(self, *exc: object) -> None:
            seen["closed"] = True

    class KubeCluster(Cluster):
        pass

    class LocalCluster(Cluster):
        pass

    class Client(Cluster):
        def __init__(self, cluster: Any) -> None:
            seen["client_of"] = cluster

        def wait_for_workers(self, n: int, timeout: float) -> None:
            seen["waited"] = (n, timeout)

    monkeypatch.setattr(dask_kubernetes.operator, "KubeCluster", KubeCluster)
    monkeypatch.setattr(dask_distributed, "LocalCluster", LocalCluster)
    monkeypatch.setattr(dask_distributed, "Client", Client)
    monkeypatch.delenv(DASK_SCHEDULER_ENV, raising=False)
    monkeypatch.setenv(DASK_CLUSTER_ENV, json.dumps(settings))
    monkeypatch.delenv(IN_KUBERNETES_ENV, raising=False)
    with distributed.dask_client("cpu"):  # the local pod runtime: the DAG's settings, but no Kubernetes
        assert isinstance(seen["client_of"], LocalCluster) and "KubeCluster" not in seen
    assert seen["LocalCluster"]["n_workers"] == 2
    monkeypatch.setenv(IN_KUBERNETES_ENV, "10.0.0.1")
    with distributed.dask_client("cuda"):
        assert isinstance(seen["client_of"], KubeCluster)
    spec = seen["KubeCluster"]["custom_cluster_spec"]
    assert (
        spec["metadata"]["name"].startswith("ml-train-") and seen["KubeCluster"]["shutdown_on_close"] is True
    )
    assert spec["spec"]["worker"]["replicas"] == settings["workers"]
    assert seen["waited"] == (settings["workers"], settings["wait_seconds"]) and seen["closed"]
    monkeypatch.setenv(DASK_SCHEDULER_ENV, "tcp://scheduler:8786")  # a running scheduler comes first
    with distributed.dask_client("cpu"):
        assert seen["client_of"] == "tcp://scheduler:8786"
