"""Train the XGBoost model on a Dask cluster with ``xgboost.dask`` (the train stage's ``distributed: dask``).

The workers read the prepared Parquet splits where ``ml.prepare`` published them (a folder, or S3 in the
cluster), each its share of the row groups. The rows are encoded as the single-node fit encodes them (the
``TabularEncoder`` fitted on the categories of the training split, which the cluster finds), the rounds are
early-stopped on the validation split and, with ``refit``, the model is refit on training + validation rows for
``refit_rounds``, with the single-node fit's parameters (``booster_params``). The result is what
``ml.train.fit_model`` returns: the encoder and an ``XGBClassifier`` around the trained booster, so the model is
logged, evaluated, registered and served exactly as a single-node one is.

The cluster:

- ``$MLOPS_DASK_SCHEDULER`` set: the running Dask scheduler at that address;
- in a Kubernetes pod given ``$MLOPS_DASK_CLUSTER`` (the DAG builds it from the platform settings: the workers on
  the GPU preset, one GPU each): a ``DaskCluster`` of the Dask Kubernetes operator (``k8s/dask-operator/``) with
  those pods, deleted when the training ends;
- elsewhere (the embedded defaults, whose local pod runtime runs the stage outside Kubernetes): a ``LocalCluster``
  of 2 worker processes (one when XGBoost trains on the GPU: a GPU per worker).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import secrets
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import pandas as pd

from contract import DASK_CLUSTER_ENV, DASK_SCHEDULER_ENV
from ml.boosting import as_classifier
from ml.features import TabularEncoder
from ml.splits import filesystem, row_groups, split_path

log = logging.getLogger(__name__)

#: ``ml.train.booster_params`` and ``ml.train.refit_rounds``, which the train stage hands in (it imports this
#: module, so this module does not import it).
BoosterParams = Callable[[Any, np.ndarray, str], dict[str, Any]]
RefitRounds = Callable[[int, int, int], int]

#: The validation set's name in ``xgboost.dask.train``'s evaluation log, and the metric it stops on
#: (``booster_params``' ``eval_metric``).
VALIDATION, METRIC = "validation", "aucpr"
#: Worker processes of the embedded defaults' LocalCluster.
LOCAL_WORKERS = 2
#: Set in every container Kubernetes runs: the train stage runs in the cluster.
IN_KUBERNETES_ENV = "KUBERNETES_SERVICE_HOST"
#: The commands of the DaskCluster's containers, whatever the image's entrypoint (Dask's own command line).
DASK_COMMAND = ["python", "-m", "dask"]


def fit_on_dask(
    prepared_uri: str,
    manifest: dict[str, Any],
    config: Any,
    device: str,
    *,
    booster_params: BoosterParams,
    refit_rounds: RefitRounds,
) -> dict[str, Any]:
    """Fit ``config`` on the splits at ``prepared_uri`` on a Dask cluster (the module's docstring says which).

    Args:
        prepared_uri: A folder published by ``ml.prepare`` (a path or ``s3://``), which the workers read.
        manifest: Its manifest (features, categorical columns, target).
        config: The ``ml.train.TrainConfig`` of the run.
        device: Where XGBoost trains (``cpu`` or ``cuda``), on each worker.
        booster_params: ``ml.train.booster_params``.
        refit_rounds: ``ml.train.refit_rounds``.

    Returns:
        The fields of ``ml.train.Fit``: the pipeline (``TabularEncoder`` + ``XGBClassifier``), the validation
        average precision of each round, the best iteration, the early-stopped model's validation scores and,
        when refit, the refit's rounds.
    """
    with dask_client(device) as client:
        return _fit(client, prepared_uri, manifest, config, device, booster_params, refit_rounds)


def _fit(
    client: Any,
    prepared_uri: str,
    manifest: dict[str, Any],
    config: Any,
    device: str,
    booster_params: BoosterParams,
    refit_rounds: RefitRounds,
) -> dict[str, Any]:
    from sklearn.pipeline import Pipeline

    features, categorical = manifest["features"], manifest["categorical"]
    train, validation = (read_split(client, prepared_uri, name) for name in ("train", "validation"))
    matrices = Matrices(client, manifest, fitted_encoder(client, [train], features, categorical))
    booster, history, scores, labels = matrices.early_stopped(
        train, validation, config, device, booster_params
    )
    best = int(booster.best_iteration)
    params = booster_params(config, labels["train"], device)
    stopped = matrices.classifier(booster, params, config, n_estimators=config.n_estimators,
                                  early_stopping_rounds=config.early_stopping_rounds)  # fmt: skip
    fit = {
        "pipeline": Pipeline([("encode", matrices.encoder), ("model", stopped)]),
        "history": history,
        "best_iteration": best,
        "validation_scores": scores,
        "refit_rounds": None,
    }
    if not config.refit:
        return fit
    rounds = refit_rounds(best + 1, len(labels["train"]), len(labels["validation"]))
    both = Matrices(client, manifest, fitted_encoder(client, [train, validation], features, categorical))
    final, params_both = both.refit(train + validation, config, device, booster_params, rounds)
    refit = both.classifier(final, params_both, config, n_estimators=rounds)
    return {**fit, "pipeline": Pipeline([("encode", both.encoder), ("model", refit)]), "refit_rounds": rounds}


class Matrices:
    """XGBoost's matrices of pieces of the splits, encoded by ``encoder`` on the workers that hold them."""

    def __init__(self, client: Any, manifest: dict[str, Any], encoder: TabularEncoder) -> None:
        self.client, self.encoder, self.target = client, encoder, manifest["target"]
        self.types = ["c" if name in manifest["categorical"] else "q" for name in manifest["features"]]

    def encoded(self, pieces: list[Any]) -> tuple[Any, Any]:
        """The features of ``pieces`` as one float32 Dask array (the single-node fit's matrix), and the labels."""
        import dask
        import dask.array as da

        width = len(self.encoder.features)
        matrix = da.concatenate([
            da.from_delayed(dask.delayed(self.encoder.transform)(piece), shape=(np.nan, width), dtype=np.float32)
            for piece in pieces
        ])  # fmt: skip
        labels = da.concatenate([
            da.from_delayed(dask.delayed(labels_of)(piece, self.target), shape=(np.nan,), dtype=np.int8)
            for piece in pieces
        ])  # fmt: skip
        return matrix, labels

    def matrix(self, x: Any, y: Any, **kwargs: Any) -> Any:
        """XGBoost's matrix of ``x`` and ``y``, its categorical columns marked as the single-node fit's are."""
        from xgboost import dask as dxgb

        return dxgb.DaskQuantileDMatrix(
            self.client, x, y, feature_types=self.types, enable_categorical=True, **kwargs
        )

    def early_stopped(
        self, train: list[Any], validation: list[Any], config: Any, device: str, booster_params: BoosterParams
    ) -> tuple[Any, list[float], np.ndarray, dict[str, np.ndarray]]:
        """The booster early-stopped on ``validation``, its validation average precision by round, its scores of
        the validation rows (at its best round, in their order) and the labels of both splits."""
        from xgboost import dask as dxgb

        x_train, y_train, x_validation, y_validation = self.client.persist(
            [*self.encoded(train), *self.encoded(validation)]
        )
        labels = {"train": y_train.compute(), "validation": y_validation.compute()}
        log.info(
            "xgboost.dask: %d training rows on %d workers", len(labels["train"]), len(self.client.nthreads())
        )
        d_train = self.matrix(x_train, y_train)
        output = dxgb.train(
            self.client, {**booster_params(config, labels["train"], device), "seed": config.seed}, d_train,
            num_boost_round=config.n_estimators, evals=[(self.matrix(x_validation, y_validation, ref=d_train),
            VALIDATION)], early_stopping_rounds=config.early_stopping_rounds, verbose_eval=False,
        )  # fmt: skip
        booster = output["booster"]
        history = [float(v) for v in output["history"][VALIDATION][METRIC]]
        rounds = (0, int(booster.best_iteration) + 1)
        scores = dxgb.predict(self.client, booster, x_validation, iteration_range=rounds).compute()
        return booster, history, np.asarray(scores), labels

    def refit(
        self, pieces: list[Any], config: Any, device: str, booster_params: BoosterParams, rounds: int
    ) -> tuple[Any, dict[str, Any]]:
        """The booster fitted on ``pieces`` for ``rounds`` rounds, and its parameters."""
        from xgboost import dask as dxgb

        x, y = self.client.persist(list(self.encoded(pieces)))
        params = booster_params(config, y.compute(), device)
        output = dxgb.train(
            self.client, {**params, "seed": config.seed}, self.matrix(x, y), num_boost_round=rounds
        )
        return output["booster"], params

    def classifier(self, booster: Any, params: dict[str, Any], config: Any, **fit: Any) -> Any:
        """An ``XGBClassifier`` holding ``booster``, as the single-node fit makes its own."""
        return as_classifier(booster, params, self.types, config.seed, **fit)


def labels_of(frame: pd.DataFrame, target: str) -> np.ndarray:
    """The labels of a piece: 0 or 1, as ``prepare`` publishes them."""
    return frame[target].to_numpy(dtype=np.int8)


def categories_of(frame: pd.DataFrame, columns: Sequence[str]) -> dict[str, set[str]]:
    """The categories present in each of ``columns``, as ``TabularEncoder`` names them (strings)."""
    return {column: set(map(str, frame[column].dropna().unique())) for column in columns}


def fitted_encoder(
    client: Any, splits: Sequence[list[Any]], features: Sequence[str], categorical: Sequence[str]
) -> TabularEncoder:
    """The ``TabularEncoder`` the single-node fit would fit on the rows of ``splits``: what it learns of them is
    each categorical column's categories, which the workers find; it is fitted on a row per category."""
    import dask

    found = client.compute(
        [dask.delayed(categories_of)(piece, categorical) for pieces in splits for piece in pieces], sync=True
    )
    values = {column: set().union(*(part[column] for part in found)) for column in categorical}
    categories = pd.DataFrame({column: pd.Series(sorted(v), dtype=object) for column, v in values.items()})
    encoder = TabularEncoder(features=list(features), categorical=list(categorical))
    return encoder.fit(categories.reindex(columns=list(features)))


def read_split(client: Any, prepared_uri: str, name: str) -> list[Any]:
    """The published split ``name`` read into the workers' memory, in pieces spread evenly among them (xgboost.dask
    trains each worker on the pieces it holds): a row group a piece, or slices of them when the file has fewer
    row groups than there are workers. The pieces are in the file's order."""
    import dask

    groups = row_groups(prepared_uri, name)
    reads = []
    for piece, worker in zip(
        row_ranges(groups, len(client.nthreads())), itertools.cycle(sorted(client.nthreads()))
    ):
        with dask.annotate(workers=[worker], allow_other_workers=True):
            reads.append(dask.delayed(read_piece, pure=True)(prepared_uri, name, piece))
    return list(client.persist(reads))


def row_ranges(groups: Sequence[int], workers: int) -> list[tuple[int, int, int]]:
    """Pieces ``(row group, first row, rows)`` of a file whose row groups hold ``groups`` rows: each row group
    whole, or cut in equal slices when there are fewer row groups than ``workers``."""
    slices = -(-workers // len(groups))
    return [
        (group, start, min(step, rows - start))
        for group, rows in enumerate(groups)
        for step in [max(1, -(-rows // slices))]
        for start in range(0, rows, step)
    ]


def read_piece(prepared_uri: str, name: str, piece: tuple[int, int, int]) -> pd.DataFrame:
    """Rows ``start`` to ``start + length`` of row group ``group`` of the split, as ``pd.read_parquet`` reads
    them (on a worker)."""
    import pyarrow.parquet as pq

    group, start, length = piece
    source = filesystem(prepared_uri).open_input_file(split_path(prepared_uri, name))
    with pq.ParquetFile(source) as parquet:
        return parquet.read_row_group(group).slice(start, length).to_pandas()


@contextmanager
def dask_client(device: str) -> Iterator[Any]:
    """A ``distributed.Client`` of the cluster to train on (the module's docstring says which), closed after."""
    from distributed import Client, LocalCluster

    address = os.environ.get(DASK_SCHEDULER_ENV)
    if address:
        log.info("training on the Dask scheduler at %s (%s)", address, DASK_SCHEDULER_ENV)
        with Client(address) as client:
            yield client
        return
    settings = os.environ.get(DASK_CLUSTER_ENV)
    if settings and os.environ.get(IN_KUBERNETES_ENV):
        with kube_cluster(json.loads(settings)) as client:
            yield client
        return
    workers = LOCAL_WORKERS if device == "cpu" else 1
    threads = max(1, (os.cpu_count() or 1) // workers)
    log.info("training on a local Dask cluster: %d worker process(es) of %d thread(s)", workers, threads)
    with (
        LocalCluster(n_workers=workers, threads_per_worker=threads, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        yield client


@contextmanager
def kube_cluster(settings: dict[str, Any]) -> Iterator[Any]:
    """A client of a new DaskCluster (``settings``: ``$MLOPS_DASK_CLUSTER``) in the pod's namespace, which the
    Dask Kubernetes operator runs; the cluster is deleted when the block ends (and by the operator once idle, if
    this pod dies first)."""
    from dask_kubernetes.operator import KubeCluster
    from distributed import Client

    spec = cluster_spec(settings, f"ml-train-{secrets.token_hex(4)}")
    log.info("creating DaskCluster %s: %d workers", spec["metadata"]["name"], settings["workers"])
    with (
        KubeCluster(custom_cluster_spec=spec, shutdown_on_close=True, quiet=True) as cluster,
        Client(cluster) as client,
    ):
        # The GPU node group scales from zero: the workers' nodes may take minutes to join.
        client.wait_for_workers(settings["workers"], timeout=settings["wait_seconds"])
        yield client


def cluster_spec(settings: dict[str, Any], name: str) -> dict[str, Any]:
    """The ``DaskCluster`` resource (``kubernetes.dask.org/v1``) for ``settings`` (``$MLOPS_DASK_CLUSTER``): the
    operator's own template (``make_cluster_spec``: the ports, probes and the scheduler's Service), with each
    role's pod and container from ``settings`` (image, resources, scheduling, security) and Dask's commands."""
    from dask_kubernetes.operator import make_cluster_spec

    spec = make_cluster_spec(
        name,
        n_workers=settings["workers"],
        worker_command="worker",
        idle_timeout=settings["idle_timeout_seconds"],
    )
    spec["metadata"]["labels"] = dict(settings.get("labels", {}))
    for role in ("worker", "scheduler"):
        part, wanted = spec["spec"][role], settings[role]
        template = part["spec"]["containers"][0]
        # The template's arguments start with the Dask command (`worker`, `dask-scheduler`): Dask's own command
        # line takes it; a worker's scratch space is the writable /tmp of a read-only root file system.
        options = template["args"][1:] + (["--local-directory", "/tmp"] if role == "worker" else [])
        container = {
            **template,
            **wanted["container"],
            "command": [*DASK_COMMAND, role],
            "args": options,
            "env": [{"name": key, "value": value} for key, value in wanted.get("env", {}).items()],
        }
        part["spec"] = {**wanted["pod"], "containers": [container]}
    return spec
