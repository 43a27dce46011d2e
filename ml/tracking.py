"""MLflow helpers shared by the stages: runs keyed by the orchestrator's run, and model scoring.

Every stage of one DAG run logs into one MLflow run, found by the tag ``mlops.run_key`` (``<dag_id>/<run_id>``),
so a retried or cleared task reuses its run instead of scattering attempts across new ones.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import numpy as np

from contract import END_REASON_TAG, RUN_KEY_TAG, SUPERSEDED_TAG
from ml import faults
from ml.errors import StageError

log = logging.getLogger(__name__)


def client() -> Any:
    from mlflow import MlflowClient

    return MlflowClient()


#: What a stage accepts as a model: ``models:/<name or model id>[/<version> | @<alias>]`` or ``runs:/<run>/<path>``.
MODEL_URI = re.compile(r"models:/[^/@\s][^/@]*(/\d+|@[A-Za-z0-9_-]+)?|runs:/[0-9a-f]{32}/[\w./-]+")


def model_uri(value: str) -> str:
    """An argparse ``type=`` for a model URI, refused before any call to the registry when it is malformed."""
    if not MODEL_URI.fullmatch(value):
        raise StageError(
            f"{value!r} is not a model URI: use models:/<name>/<version>, models:/<name>@<alias>, "
            "models:/<model id> or runs:/<run id>/<path>"
        )
    return value


def quoted(value: str) -> str:
    if "'" in value or "\\" in value:
        raise StageError(f"run key {value!r} must not contain quotes or backslashes")
    return f"'{value}'"


def experiment_id(name: str) -> str:
    """Return the id of the named experiment, creating it if needed (safe against a concurrent create)."""
    from mlflow.exceptions import MlflowException

    mlflow_client = client()
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is not None:
        return str(experiment.experiment_id)
    try:
        return str(mlflow_client.create_experiment(name))
    except MlflowException:
        experiment = mlflow_client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return str(experiment.experiment_id)


def find_keyed_run(experiment: str, run_key: str) -> Any | None:
    """Return the live MLflow run tagged with ``run_key`` in ``experiment``, or None."""
    runs = client().search_runs(
        [experiment_id(experiment)],
        filter_string=f"tags.`{RUN_KEY_TAG}` = {quoted(run_key)}",
        max_results=1,
        order_by=["attributes.start_time DESC"],
    )
    return runs[0] if runs else None


def alias_version(name: str, alias: str) -> Any | None:
    """The version ``name@alias`` points at, or None when the registered model or the alias does not exist.

    Behind MLflow's basic-auth app an alias of a registered model that does not exist is refused (403
    ``PERMISSION_DENIED``: the permission check finds no model to check) rather than not found: that answer is
    told from a real refusal by asking for the model itself, which is not found (404) when it does not exist.
    """
    from mlflow.exceptions import MlflowException

    mlflow_client = client()
    try:
        return mlflow_client.get_model_version_by_alias(name, alias)
    except MlflowException as err:
        if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        if err.error_code == "PERMISSION_DENIED" and not registered(name):
            return None
        raise


def registered(name: str) -> bool:
    """Whether the registered model exists (a refusal to read it is raised, not taken for an answer)."""
    from mlflow.exceptions import MlflowException

    try:
        client().get_registered_model(name)
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise
    return True


def find_keyed_version(name: str, run_key: str) -> Any | None:
    """Return the version of registered model ``name`` that the run ``run_key`` registered, or None."""
    from mlflow.exceptions import MlflowException

    try:
        versions = client().search_model_versions(
            f"name = {quoted(name)} and tags.`{RUN_KEY_TAG}` = {quoted(run_key)}"
        )
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    return versions[0] if versions else None


def create_keyed_run(experiment: str, run_key: str, run_name: str) -> Any:
    return client().create_run(experiment_id(experiment), run_name=run_name, tags={RUN_KEY_TAG: run_key})


def keyed_run(experiment: str, run_key: str, run_name: str) -> Any:
    """The run keyed ``run_key``, created if there is none; safe when several pods (tuning workers) ask at once:
    of runs created concurrently the first created is kept, and a later one is deleted by its creator."""
    run = find_keyed_run(experiment, run_key)
    if run is not None:
        return run
    mine = create_keyed_run(experiment, run_key, run_name)
    runs = client().search_runs(
        [experiment_id(experiment)],
        filter_string=f"tags.`{RUN_KEY_TAG}` = {quoted(run_key)}",
        max_results=50,
        order_by=["attributes.start_time ASC"],
    )
    first = min(runs, key=lambda r: (r.info.start_time, r.info.run_id), default=mine)
    if first.info.run_id != mine.info.run_id:
        client().delete_run(mine.info.run_id)
    return first


def supersede(run: Any, reason: str) -> None:
    """Take a run out of its key so that a new run can carry it; the old run stays for the record, ended."""
    mlflow_client = client()
    old_key = run.data.tags.get(RUN_KEY_TAG, "")
    mlflow_client.set_tag(run.info.run_id, RUN_KEY_TAG, f"{old_key}#superseded-{int(time.time())}")
    mlflow_client.set_tag(run.info.run_id, SUPERSEDED_TAG, reason)
    end_abandoned(run, f"superseded: {reason}")
    log.info("superseded MLflow run %s: %s", run.info.run_id, reason)


def end_abandoned(run: Any, reason: str) -> None:
    """End a run that an attempt left RUNNING when it died (SIGKILL, out of memory, a lost node) as KILLED,
    with the reason, and mark the logged models it left PENDING as FAILED. Called by ``supersede``: only one
    attempt of a stage works on its keyed run at a time, so the run a new train attempt replaces has no live
    owner."""
    fail_pending_models(run.info.run_id, run.info.experiment_id)
    if run.info.status == "RUNNING":
        mlflow_client = client()
        mlflow_client.set_tag(run.info.run_id, END_REASON_TAG, reason[:5000])
        mlflow_client.set_terminated(run.info.run_id, "KILLED")
        log.warning("ended MLflow run %s as KILLED: %s", run.info.run_id, reason)


def fail_pending_models(run_id: str, experiment: str) -> list[str]:
    """Mark the logged models of ``run_id`` still PENDING (their upload never finished) as FAILED."""
    models = client().search_logged_models(
        experiment_ids=[experiment], filter_string=f"source_run_id = {quoted(run_id)}"
    )
    pending = [model for model in models if str(model.status) == "PENDING"]
    for model in pending:
        client().finalize_logged_model(model.model_id, "FAILED")
        log.warning(
            "logged model %s of run %s never finished uploading: marked FAILED", model.model_id, run_id
        )
    return [model.model_id for model in pending]


@contextmanager
def active_run(run_id: str) -> Iterator[Any]:
    """``mlflow.start_run(run_id=...)`` that ends the run by what ended the block: FINISHED, or FAILED with the
    error as ``END_REASON_TAG`` and the logged models the block left PENDING marked FAILED, so nothing looks in
    progress after the stage is gone. (A stopped stage ends its run as KILLED: ``runtime.run_stage``.)"""
    import mlflow

    run = mlflow.start_run(run_id=run_id)
    try:
        yield run
    except BaseException as err:
        end_active_run(
            "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED", f"{type(err).__name__}: {err}"
        )
        raise
    mlflow.end_run("FINISHED")


def end_active_run(status: str, reason: str) -> None:
    """End the active run (if any) as ``status`` with the reason, its PENDING logged models FAILED, trying the
    server once with a short timeout: a stopped pod has seconds to go, and the server may be why it failed."""
    import mlflow

    run = mlflow.active_run()
    if run is None:
        return
    quick = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
    saved = {key: os.environ.get(key) for key in quick}
    os.environ.update(quick)
    try:
        try:
            fail_pending_models(run.info.run_id, run.info.experiment_id)
            client().set_tag(run.info.run_id, END_REASON_TAG, reason[:5000])
        finally:
            mlflow.end_run(status)  # leaves the fluent API's stack first, then tells the server
        log.warning("ended MLflow run %s as %s: %s", run.info.run_id, status, reason)
    except Exception as err:  # the server is away: the next attempt ends the run (end_abandoned)
        log.warning("could not end MLflow run %s as %s: %s", run.info.run_id, status, err)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def log_metric_series(run_id: str, key: str, values: list[float], first_step: int = 0) -> None:
    """Log one value per step, from ``first_step`` on, in batches (one HTTP call per 1,000 points instead of one
    per point)."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric(key, float(v), now, step) for step, v in enumerate(values, start=first_step)]
    mlflow_client = client()
    for start in range(0, len(metrics), 1000):
        mlflow_client.log_batch(run_id, metrics=metrics[start : start + 1000])


class LiveSeries:
    """A metric series logged while it grows (a learning curve as the model trains), each step once.

    ``send`` hands the values not yet logged to a thread of its own as one batch and returns at once; while a
    batch is on its way, the values of the next ``send`` wait for the one after. ``finish`` waits for it and logs
    the rest. A batch that fails for a while (the server restarting, after the client's own retries) goes again
    with the next one rather than stopping hours of training; any other failure, or one at ``finish``, is raised
    there, like the stage's other logging.
    """

    def __init__(self, run_id: str, key: str) -> None:
        self.run_id, self.key = run_id, key
        #: How many values, from the first, are on the run.
        self.logged = 0
        self._sending: tuple[int, Future[None]] | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"log-{key}")

    def send(self, values: Sequence[float]) -> None:
        if self._sending is not None:
            if not self._sending[1].done():
                return
            self._settle()
        if len(values) > self.logged:
            batch = list(values[self.logged :])
            future = self._thread.submit(log_metric_series, self.run_id, self.key, batch, self.logged)
            self._sending = (self.logged + len(batch), future)

    def finish(self, values: Sequence[float]) -> None:
        try:
            if self._sending is not None:
                self._settle()
            if len(values) > self.logged:
                log_metric_series(self.run_id, self.key, list(values[self.logged :]), self.logged)
                self.logged = len(values)
        finally:
            self._thread.shutdown()

    def _settle(self) -> None:
        """Wait for the batch on its way; a transient failure leaves its values to the next batch."""
        assert self._sending is not None
        (end, future), self._sending = self._sending, None
        try:
            future.result()
        except Exception as err:
            if faults.classify(err) != faults.TRANSIENT:
                raise
            log.warning("%s from step %d not logged yet, sent again with the next batch: %s",
                        self.key, self.logged, err)  # fmt: skip
            return
        self.logged = end


@contextmanager
def import_path_kept() -> Iterator[None]:
    """Put ``sys.path`` back as it was after the block. MLflow's model loaders (logging a model loads it too) put
    the model's code folder (its copy of this package: the encoder's module only) first on the path for good, and
    Python processes started afterwards inherit the path: the spawned workers of a Dask LocalCluster found no
    ``ml.distributed`` there and never ran a task. This process has the package already; what a model file names
    is imported from it."""
    path = list(sys.path)
    try:
        yield
    finally:
        sys.path[:] = path


def load_model(model_uri: str, *, pyfunc: bool = False) -> Any:
    """The model at ``model_uri``: its scikit-learn pipeline, or with ``pyfunc`` MLflow's pyfunc of it; the import
    path as it was (``import_path_kept``)."""
    import mlflow.pyfunc
    import mlflow.sklearn

    with import_path_kept():
        return (mlflow.pyfunc if pyfunc else mlflow.sklearn).load_model(model_uri)


def positive_scores(model: Any, features: Any) -> np.ndarray:
    """Return the positive-class probability from a pyfunc model that predicts probabilities."""
    predictions = model.predict(features)
    scores = np.asarray(getattr(predictions, "values", predictions), dtype=np.float64)
    if scores.ndim == 2:
        scores = scores[:, -1]
    return scores


#: Tag of a training run: which model it logged (refit or early-stopped), in a sentence for the model card.
SERVED_MODEL_TAG = "mlops.served_model"
#: Artifact of a training run whose model was refit: the early-stopped model's validation scores, in the
#: validation split's row order (the threshold is chosen on them, not on rows the refit model learnt from).
VALIDATION_SCORES_ARTIFACT = "validation/early_stopped_scores.parquet"


def log_validation_scores(run_id: str, scores: np.ndarray) -> None:
    import tempfile
    from pathlib import Path

    import pyarrow as pa
    import pyarrow.parquet as pq

    folder, name = VALIDATION_SCORES_ARTIFACT.rsplit("/", 1)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        pq.write_table(pa.table({"score": np.asarray(scores, dtype=np.float64)}), path)
        client().log_artifact(run_id, str(path), artifact_path=folder)


def early_stopped_validation_scores(run_id: str, rows: int) -> np.ndarray | None:
    """The validation scores a refit run kept (``log_validation_scores``), or None for a run that was not refit.

    Raises:
        StageError: the scores do not match the validation split (another split than the run trained on).
    """
    import mlflow
    import pyarrow.parquet as pq

    folder = VALIDATION_SCORES_ARTIFACT.rsplit("/", 1)[0]
    if not any(item.path == VALIDATION_SCORES_ARTIFACT for item in client().list_artifacts(run_id, folder)):
        return None
    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=VALIDATION_SCORES_ARTIFACT)
    scores = pq.read_table(path).column("score").to_numpy()
    if len(scores) != rows:
        raise StageError(
            f"run {run_id} kept {len(scores)} validation scores but the validation split has {rows} rows: "
            "the model was trained on other prepared data than this evaluation reads"
        )
    return np.asarray(scores, dtype=np.float64)
