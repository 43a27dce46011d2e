"""
### Training pipeline of a model

Every model file (`dags/models/<key>.yaml`) gets its DAGs from this file: its training pipeline `train_<key>`
(below) and the batch scoring of its champion `score_<key>` (`plugins/mlops/scoring.py`). The model's identity (its registered model,
its Helm release, its aliases and champion asset) comes from its file, never from the form. Prepares a table with a binary target, trains a classifier (on a GPU node when one is there), evaluates it
against the current champion and, when it passes the quality gate, registers it in MLflow with the alias
`challenger` and releases it: a Helm upgrade of the inference API starts an Argo Rollouts canary analysed
against Prometheus, and `champion` moves to the new version only if the canary ends Healthy.

| Task | Runs | Does |
|---|---|---|
| `prepare` | pod, CPU | reads the run's windows of the table (training: the weeks before the interval; evaluation: the interval), validates them, writes train / validation / test Parquet |
| `tuning_plan` | worker | when the form's tuning switch is on: one argument list per tuning worker (none when it is off: the tuning tasks are skipped) |
| `tune` | pods, GPU, mapped | N workers pull trials of the run's Optuna study (TPE, median pruner) until the budget's trials or minutes are spent; each trial a nested MLflow run |
| `tune_best` | pod, CPU | the study's best trial: its hyperparameters replace the form's in `train`. Re-running the tuning resumes the study |
| `train` | pod, GPU | XGBoost (`hist`, CUDA when visible), early-stopped then refit on training + validation rows, or the RandomForest baseline; logs the run to MLflow. With `distributed: dask`, XGBoost trains with `xgboost.dask` on a Dask cluster (the Dask Kubernetes operator's in the cluster, a local one on the embedded defaults) |
| `evaluate` | pod, CPU | test-set metrics, threshold chosen on validation, comparison with `champion`, drift, plots, model card; decides whether this run will be released (only the newest interval, never a backfill) |
| `gate` | worker | continues only on a `pass` decision; a missing or malformed evaluation fails the run |
| `register` | pod, CPU | one model version per DAG run, tagged with its interval and release plan; alias `challenger` if it will be released (a run not to be released registers for the record without having to beat `champion`) |
| `release_gate` | worker | continues to the release only for the newest interval (never for a backfill); the log says why not |
| `approve` | UI | only with `release.approval.required` (production): a person approves or rejects the release in Airflow's Required actions, seeing the model card's summary; no answer in time rejects. A rejection is recorded on the version and releases nothing |
| `deploy` | pod, Helm | `helm upgrade --install` of the inference API chart with the new model version (the image is CI/CD's); refuses to start if `champion` moved since evaluation, or while the API's SLOs have spent their error budget (the form can override; the version records it) |
| `watch_rollout` | triggerer | waits for the Rollout: Healthy, Degraded (aborted by analysis), slow (alert), or paused by an inconclusive analysis (needs a person: alert, nothing promoted or rolled back) |
| `promote` | pod, CPU | tags the version with the verdict (promoted, aborted, refused) and figures, logs the canary's report chart (traffic and each metric per step against its threshold) to the version's run; on Healthy, moves `champion` by compare-and-set; otherwise takes `challenger` off the version |
| `announce_champion` | worker | when `champion` moved: an event on the `<model>@champion` asset (model, version, metrics) |
| `needs_rollback` | worker | continues when something was released and not promoted (aborted, refused, or `promote` failed) |
| `rollback` | pod, Helm | Helm rollback to the revision that serves `champion` (else the one before this release) |
| `alert` | worker | fails the run with what failed (the metric, the refusal), and the notifier sends it (connection `mlops_alerts`) |

**Each interval trains on its own data.** A scheduled run for a week is evaluated on that week and trains on
the weeks before it; a run triggered without a logical date covers the latest complete week.
**Backfills never release.** A backfill or a run for an old interval registers its version for the record and
skips the release. The release tasks share a one-slot pool (one release step at a time across all runs, backfills
included); with `max_active_runs=1` for every other run, one run's release at a time.
**Re-runs are safe.** Prepared data is published under the run's own folder (its interval and run id) in a
folder named by its digest, never replaced: a retry that reads the same rows finds it, and what a model version
learnt from never changes. The MLflow run and the model version are keyed by the DAG run, so a retried or cleared
task never registers a second version. Deploying what is deployed, rolling back what is rolled back and promoting
what is champion change nothing.

**Settings** (Airflow Variables): `mlflow_tracking_uri`, `mlops_data_root` (a path or `s3://` prefix) and
`mlops_pod_runtime` (`local`, the default, or `kubernetes`). The model's table, schedule, gate and release live in
its model file; images, resource presets and the defaults a model file overrides in `plugins/mlops/platform.yaml`;
canary steps and analysis thresholds in the chart's `values.yaml` (a model file's `release.values` override them). With the `local` runtime the release runs on this machine: the same `helm` commands reach
the embedded stand-in (`standins/`), which keeps the history under the data root and runs the canary on loopback.
"""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

# Airflow's DAG processor imports the airflow modules a DAG file names once, before it forks the process that parses
# the file ([dag_processor] parsing_pre_import_modules). Named here, the Kubernetes provider's pod operator (with its
# two Kubernetes clients: about 2 s of CPU) is imported once, not in every parse; the operators import it anyway.
import airflow.providers.cncf.kubernetes.operators.pod  # noqa: F401
import pendulum
from airflow.sdk import DAG, AssetOrTimeSchedule, CronDataIntervalTimetable, Param, dag, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException
from airflow.task.trigger_rule import TriggerRule

from contract import (
    APPROVAL_NOBODY,
    DASK_CLUSTER_ENV,
    DEVICES,
    DISTRIBUTED_MODES,
    ERROR_BUDGET_ENFORCE,
    ERROR_BUDGET_OFF,
    ERROR_BUDGET_OVERRIDE,
    FAIL,
    GATE_POLICIES,
    LOCAL_RELEASE_PORT_ENV,
    MAX_WINDOW_DAYS,
    MODEL_TYPES,
    PASS,
    TUNING_STORAGE_ENV,
)
from mlops.approval import MACROS as APPROVAL_MACROS
from mlops.approval import approval_task
from mlops.assets import champion_asset, decay_asset, prepared_asset, source_asset, weekly_partitions_of
from mlops.dask_cluster import dask_cluster
from mlops.intervals import RELEASE_CHOICES, macros
from mlops.keys import MACROS
from mlops.models import Model, ModelError, load_models, models_dir
from mlops.monitor_dag import DATA_ROOT, PREDICTIONS_URI, monitoring_dag
from mlops.notifiers import alerts
from mlops.operators import MLStageOperator, param_arguments
from mlops.platform_config import load_platform
from mlops.rollout import RolloutWatchOperator
from mlops.scoring import scoring_dag

log = logging.getLogger(__name__)
PLATFORM = load_platform()
TRAINING, TUNING, REGISTRY, RELEASE = PLATFORM.training, PLATFORM.tuning, PLATFORM.registry, PLATFORM.release
#: The model files beside this file (``MLOPS_MODELS_DIR``: another folder), read again when one changes.
MODELS = load_models(models_dir(Path(__file__).parent / "models"))


def schedule_of(model: Model) -> Any:
    """The model's schedule: its retraining cron (or its decay, announced by its monitoring DAG), the weeks of its
    source asset's partitions, or none."""
    retraining = model.retraining
    if retraining.trigger == "cron":  # each interval, or sooner when monitoring finds the champion decayed
        return AssetOrTimeSchedule(
            timetable=CronDataIntervalTimetable(retraining.schedule, timezone=retraining.timezone),
            assets=decay_asset(model.registered_model),
        )
    if retraining.trigger == "asset":
        return weekly_partitions_of(source_asset(model.dataset.asset), retraining.timezone)
    return None


# -- The form: the run's parameters, validated by the UI ----------------------------------------------------


def form(model: Model) -> dict[str, Param]:
    """The form of the model's DAG: its file's data, windows, training and gate as defaults; its identity (the
    registered model, the release) is not a field: a run can never register or release another model."""
    dataset, retraining, training, gate = model.dataset, model.retraining, model.training, model.quality_gate
    return in_sections(_fields(dataset, retraining, training, gate), SECTIONS)


def _fields(dataset: Any, retraining: Any, training: Any, gate: Any) -> dict[str, Param]:
    # Long on purpose: the form's fields, one Param each with its label and description, read as the UI shows them.
    return {
        "dataset_uri": Param(
            dataset.uri,
            type="string",
            minLength=1,
            title="Dataset",
            examples=[
                "synthetic://card-transactions?rows_per_day=3000&seed=42",
                "s3://my-bucket/transactions/",
                "s3://my-bucket/transactions/dt={date}/part.parquet",
                "data/transactions.csv",
            ],
            description="CSV or Parquet table (a path or s3://bucket/key), a folder of dt=YYYY-MM-DD partitions, a URI "
            "with a {date} placeholder (one table per day), or synthetic://card-transactions?rows_per_day=N&seed=S; "
            "{data_root} stands for the data root (the Variable mlops_data_root)",
        ),
        "target_column": Param(
            dataset.target,
            type="string",
            minLength=1,
            title="Target column (binary)",
            description="The column to predict: two values (0/1, true/false, or two labels, the positive one named below)",
        ),
        "positive_label": Param(
            dataset.positive_label,
            type=["null", "string"],
            title="Positive label",
            description="The target's value that is the positive class when the target is not 0/1 or true/false "
            "(for example >50K); empty otherwise",
        ),
        "time_column": Param(
            dataset.time_column,
            type=["null", "string"],
            title="Time column",
            description="Split by time on this column (train earlier, test later); empty for a stratified split",
        ),
        "training_window_days": Param(
            retraining.training_days,
            type="integer",
            minimum=1,
            maximum=MAX_WINDOW_DAYS,
            title="Training window (days)",
            description="The model learns from these days before the evaluation window (their latest part validates it)",
        ),
        "evaluation_window_days": Param(
            retraining.evaluation_days,
            type="integer",
            minimum=0,
            maximum=MAX_WINDOW_DAYS,
            title="Evaluation window (days)",
            description="0: the run's data interval. A run triggered without a logical date covers the latest "
            "complete interval of the schedule",
        ),
        "drop_columns": Param(
            list(dataset.drop_columns),
            type="array",
            items={"type": "string"},
            title="Columns to drop",
            description="Columns to leave out of the features. Row identifiers, counters of time, columns that copy "
            "the target and constant columns are left out without being named here (the leakage guard; the "
            "manifest and the model card say which and why)",
        ),
        "keep_columns": Param(
            list(dataset.keep_columns),
            type="array",
            items={"type": "string"},
            title="Columns to keep",
            description="Columns to learn from even if the leakage guard would leave them out (an amount it took for "
            "an identifier, say). Its finding is kept with them: on the version (mlops.leakage_flags) and, loudly, in "
            "the model card",
        ),
        "features": Param(
            list(dataset.features),
            type="array",
            items={"type": "string"},
            title="Features (all when empty)",
            description="Learn from exactly these columns, each kept whatever the leakage guard finds (its findings "
            "recorded as for Columns to keep); empty: every column but the target and the time column, screened by "
            "the guard",
        ),
        "model_type": Param(
            training.model_type,
            enum=list(MODEL_TYPES),
            title="Model",
            description="XGBoost's gradient-boosted trees, or a random forest as a baseline to compare with",
            values_display={
                "xgboost": "XGBoost (gradient boosting)",
                "random_forest": "Random forest (baseline)",
            },
        ),
        "n_estimators": Param(
            training.n_estimators,
            type="integer",
            minimum=1,
            maximum=5000,
            title="Max boosting rounds",
            description="Most trees XGBoost adds (early stopping usually ends sooner); the random forest's tree count",
        ),
        "max_depth": Param(
            training.max_depth,
            type="integer",
            minimum=1,
            maximum=16,
            title="Max tree depth",
            description="Deeper trees learn more interactions between features, and overfit sooner",
        ),
        "learning_rate": Param(
            training.learning_rate,
            type="number",
            exclusiveMinimum=0,
            maximum=1,
            title="Learning rate",
            description="How much each new tree corrects the previous ones; lower needs more rounds and generalises better",
        ),
        "early_stopping_rounds": Param(
            training.early_stopping_rounds,
            type="integer",
            minimum=1,
            maximum=500,
            title="Early stopping rounds",
            description="Stop when the validation average precision has not improved for this many rounds",
        ),
        "scale_pos_weight": Param(
            training.scale_pos_weight,
            type="string",
            pattern=r"^(sqrt|auto|none|[0-9]*\.?[0-9]+)$",
            title="Positive class weight",
            description="sqrt or auto (of the negative/positive ratio), none, or a number",
        ),
        "min_child_weight": Param(
            training.min_child_weight,
            type="number",
            minimum=0,
            title="Min child weight",
            description="Smallest sum of row weights (hessian) in a leaf; larger is more conservative",
        ),
        "subsample": Param(
            training.subsample,
            type="number",
            exclusiveMinimum=0,
            maximum=1,
            title="Row subsample per tree",
            description="Share of the training rows each tree sees (below 1: less overfitting)",
        ),
        "colsample_bytree": Param(
            training.colsample_bytree,
            type="number",
            exclusiveMinimum=0,
            maximum=1,
            title="Column subsample per tree",
            description="Share of the features each tree sees",
        ),
        "reg_alpha": Param(
            training.reg_alpha,
            type="number",
            minimum=0,
            title="L1 regularisation",
            description="L1 penalty on the leaves' weights (drives small ones to zero)",
        ),
        "reg_lambda": Param(
            training.reg_lambda,
            type="number",
            minimum=0,
            title="L2 regularisation",
            description="L2 penalty on the leaves' weights (shrinks them)",
        ),
        "refit": Param(
            training.refit,
            type="boolean",
            title="Refit on training + validation rows",
            description="After early stopping chose the round count, train the served model again on training and "
            "validation rows (rounds scaled to the larger set); the threshold stays chosen on the early-stopped "
            "model's validation scores",
        ),
        "device": Param(
            training.device,
            enum=list(DEVICES),
            title="Training device",
            description="Where XGBoost trains: a GPU when the train pod sees one (auto), or forced",
            values_display={"auto": "Auto (the GPU when there is one)", "cpu": "CPU", "cuda": "GPU (CUDA)"},
        ),
        "distributed": Param(
            training.distributed,
            enum=list(DISTRIBUTED_MODES),
            title="Distributed training",
            values_display={"none": "No: in the train pod", "dask": "Dask cluster (xgboost.dask)"},
            description="dask: XGBoost trains with xgboost.dask on a Dask cluster that reads the splits from storage "
            "(in the cluster, one the Dask Kubernetes operator runs, its workers on the GPU preset; on the embedded "
            "defaults, local worker processes); the same model is logged, evaluated and served. none: in the train pod",
        ),
        "tuning": Param(
            False,
            type="boolean",
            title="Tune hyperparameters",
            description="Search learning rate, depth, min child weight, subsampling, L1/L2 and the positive weight "
            "with Optuna before training (XGBoost only); the best trial's values replace the form's. Off: train "
            "with the form's values",
        ),
        "tuning_trials": Param(
            TUNING.trials,
            type="integer",
            minimum=1,
            maximum=1000,
            title="Tuning budget: trials",
            description="Trials in the whole study, across all workers (finished or pruned)",
        ),
        "tuning_minutes": Param(
            TUNING.minutes,
            type="integer",
            minimum=1,
            maximum=PLATFORM.stage("tune").timeout_minutes - 1,
            title="Tuning budget: minutes",
            description="Each worker starts no trial after this long",
        ),
        "tuning_workers": Param(
            TUNING.workers,
            type="integer",
            minimum=1,
            maximum=32,
            title="Tuning workers",
            description="Parallel tuning pods (each on the GPU preset) sharing the study",
        ),
        "min_average_precision": Param(
            gate.min_average_precision,
            type="number",
            minimum=0,
            maximum=1,
            title="Minimum average precision",
            description="The test-set PR-AUC a model needs to be registered",
        ),
        "policy": Param(
            gate.policy,
            enum=list(GATE_POLICIES),
            title="Policy against the champion",
            values_display={
                "superior": "Superior: release only when measurably better",
                "non-inferior": "Non-inferior: release unless measurably worse by more than the margin",
            },
            description="Both models score the same test rows; the difference in average precision gets a confidence "
            "interval (a paired bootstrap), and the policy reads its lower bound, never the point estimate",
        ),
        "min_improvement": Param(
            gate.min_improvement,
            type="number",
            minimum=-1,
            maximum=1,
            title="Minimum improvement over champion",
            description="Superior: the interval's lower bound must be above this gain in average precision",
        ),
        "margin": Param(
            gate.margin,
            type="number",
            minimum=0,
            maximum=1,
            title="Non-inferiority margin",
            description="Non-inferior: the interval's lower bound must be above minus this (a loss in average "
            "precision the release accepts for fresher data)",
        ),
        "confidence": Param(
            gate.confidence,
            type="number",
            minimum=0.5,
            exclusiveMaximum=1,
            title="Confidence of the interval",
            description="0.95: a 95 % interval; higher asks for more evidence either way",
        ),
        "accept_incomparable_champion": Param(
            False,
            type="boolean",
            title="Accept an incomparable champion",
            description="For a deliberate change of inputs: a champion that cannot score this run's test rows (it was "
            "trained on other columns) does not fail the gate. Recorded on the version and in the model card",
        ),
        "seed": Param(
            training.seed,
            type="integer",
            minimum=0,
            title="Random seed",
            description="Seeds the split, the sampling and the training: the same seed and data give the same model",
        ),
        "release_despite_spent_error_budget": Param(
            False,
            type="boolean",
            title="Release despite a spent error budget",
            description="The error-budget policy refuses a release while the inference API's availability or latency "
            "SLO has spent its error budget (or the budget cannot be read). On: release anyway, for a fix the service "
            "needs; recorded on the version with the budgets and who triggered the run",
        ),
        "release": Param(
            "auto",
            enum=list(RELEASE_CHOICES),
            title="Release",
            values_display={
                "auto": "Auto (the newest interval only)",
                "always": "Always",
                "never": "Never (register only)",
            },
            description="auto: only a run for the newest interval releases (backfills and old intervals register "
            "for the record); always or never: force or forbid the release of this run (a backfill never releases)",
        ),
    }


#: The form's sections, in the order the UI shows them, and the fields in each.
SECTIONS = {
    "Data": ("dataset_uri", "target_column", "positive_label", "time_column", "training_window_days",
             "evaluation_window_days", "drop_columns", "keep_columns", "features"),
    "Model": ("model_type", "n_estimators", "max_depth", "learning_rate", "early_stopping_rounds", "scale_pos_weight",
              "min_child_weight", "subsample", "colsample_bytree", "reg_alpha", "reg_lambda", "refit", "device",
              "distributed", "seed"),
    "Tuning": ("tuning", "tuning_trials", "tuning_minutes", "tuning_workers"),
    "Quality gate": ("min_average_precision", "policy", "min_improvement", "margin", "confidence",
                     "accept_incomparable_champion"),
    "Release": ("release", "release_despite_spent_error_budget"),
}  # fmt: skip


def in_sections(form: dict[str, Param], sections: dict[str, tuple[str, ...]]) -> dict[str, Param]:
    """The form's fields in their sections' order, each carrying its section for the UI; every field in one."""
    placed = [name for names in sections.values() for name in names]
    if sorted(placed) != sorted(form):
        raise ValueError(f"the form's sections must hold each field once: {sorted(set(form) ^ set(placed))}")
    for section, names in sections.items():
        for name in names:
            form[name].schema["section"] = section
    return {name: form[name] for name in placed}


# -- The stages: pods of the ML stage image, and the decisions taken on the worker ---------------------------

RUN_KEY = "{{ mlops_run_key(dag.dag_id, run_id) }}"
PREPARED_URI = "{{ ti.xcom_pull(task_ids='prepare')['prepared_uri'] }}"
#: The run's own folder; prepare publishes under it by content (a folder named by the data's digest, never replaced).
OUTPUT_URI = "{{ var.value.mlops_data_root }}/prepared/{{ dag.dag_id }}/{{ mlops_output_key(dag_run) }}"
#: Where the embedded defaults keep the tuning studies (without a database: platform.yaml's tuning).
TUNING_DIR = f"{{{{ var.value.mlops_data_root }}}}/{TUNING.local_dir}/{{{{ dag.dag_id }}}}"
#: The study's database URL, from the Secret of the platform settings (the worker's environment locally).
TUNING_SECRET_ENV = {TUNING_STORAGE_ENV: (TUNING.storage_secret, "url")}
REGISTERED_VERSION = "{{ ti.xcom_pull(task_ids='register')['version'] }}"
#: The error-budget policy of the deploy step (ml/release/budget.py): the platform's gate, the form's override.
ERROR_BUDGET_POLICY = (
    f"{{{{ '{ERROR_BUDGET_OVERRIDE}' if params.release_despite_spent_error_budget else '{ERROR_BUDGET_ENFORCE}' }}}}"
    if RELEASE.error_budget_gate
    else ERROR_BUDGET_OFF
)
#: The run's table: the form's, with ``{data_root}`` standing for the data root (Variable mlops_data_root).
SOURCE = f"{{{{ params.dataset_uri | replace('{DATA_ROOT}', var.value.mlops_data_root) }}}}"


def release_arguments(model: Model) -> list[str]:
    """The model's release: the same `helm` commands in the cluster and in the local runtime. The API records
    what it scores under the data root, unless the model's values say where (or ``""``: nowhere)."""
    release = model.release
    serve = {"recordUri": PREDICTIONS_URI, **release.values.get("serve", {})}
    return [
        "--release", release.name,
        "--namespace", release.namespace,
        "--chart", RELEASE.chart,
        *[part for path in release.values_files for part in ("--values", path)],
        "--values-json", json.dumps({**release.values, "serve": serve}, sort_keys=True),
    ]  # fmt: skip


def release_env(model: Model) -> dict[str, str]:
    """What the release stage's environment says of the model's local release (the embedded defaults' stand-in
    serves it on its own port; the cluster's helm ignores it)."""
    return {LOCAL_RELEASE_PORT_ENV: str(model.release.local_port)}


def prepare_stage(model: Model) -> MLStageOperator:
    """Read the run's windows of the model's table; the event on the prepared asset says what was read."""
    return MLStageOperator(
        stage="prepare",
        inlets=[source_asset(model.dataset.asset)],
        outlets=[prepared_asset(model.training_dag_id)],
        event_extra=("prepared_uri", "source", "windows", "inputs", "rows", "positives", "digest"),
        arguments=[
            "--source", SOURCE,
            "--target", "{{ params.target_column }}",
            "--time-column", "{{ params.time_column or '' }}",
            "--drop-columns", "{{ params.drop_columns | join(',') }}",
            "--keep-columns", "{{ params.keep_columns | join(',') }}",
            "--features", "{{ params.features | join(',') }}",
            "--positive-label", "{{ params.positive_label or '' }}",
            "--output", OUTPUT_URI, "--by-content",
            "--interval-start", "{{ mlops_interval(dag_run).start.isoformat() }}",
            "--interval-end", "{{ mlops_interval(dag_run).end.isoformat() }}",
            *param_arguments("seed", "training_window_days", "evaluation_window_days"),
            "--min-training-rows", str(model.retraining.min_training_rows),
            "--min-evaluation-rows", str(model.retraining.min_evaluation_rows),
            "--min-evaluation-positives", str(model.retraining.min_evaluation_positives),
        ],
    )  # fmt: skip


@task
def tuning_plan(
    prepared: Any, *, experiment: str, run_key: str, storage_dir: str, params: Any = None, ti: Any = None
) -> list[list[str]]:
    """The tuning workers' arguments, one list per worker: none when the form's switch is off (the mapped
    ``tune`` and ``tune_best`` are then skipped, and ``train`` uses the form's values). The training settings
    the study starts from go to XCom ``form``."""
    form = {name: params[name] for name in type(TRAINING).model_fields}
    ti.xcom_push(key="form", value=form)
    if not params["tuning"]:
        log.info("tuning is off: train uses the form's hyperparameters")
        return []
    if params["model_type"] != "xgboost":
        raise AirflowFailException(
            f"tuning searches XGBoost's hyperparameters; the form trains {params['model_type']}"
        )
    common = [
        "--prepared-uri", prepared["prepared_uri"], "--experiment", experiment, "--run-key", run_key,
        "--storage-dir", storage_dir, "--form", json.dumps(form),
        "--trials", str(params["tuning_trials"]), "--minutes", str(params["tuning_minutes"]),
    ]  # fmt: skip
    workers = params["tuning_workers"]
    log.info("tuning: %d trials within %d minutes on %d workers", params["tuning_trials"],
             params["tuning_minutes"], workers)  # fmt: skip
    return [["worker", *common, "--worker", str(i)] for i in range(workers)]


def tune_stage(plan: Any) -> Any:
    """The tuning workers: one pod per argument list of the plan (on the GPU preset)."""
    return MLStageOperator.partial(task_id="tune", stage="tune", secret_env=TUNING_SECRET_ENV).expand(
        arguments=plan
    )


def tune_best_stage() -> MLStageOperator:
    return MLStageOperator(
        stage="tune_best",
        secret_env=TUNING_SECRET_ENV,
        arguments=[
            "best",
            "--prepared-uri", PREPARED_URI,
            "--experiment", "{{ dag.dag_id }}",
            "--run-key", RUN_KEY,
            "--storage-dir", TUNING_DIR,
            "--form", "{{ ti.xcom_pull(task_ids='tuning_plan', key='form') | tojson }}",
        ],
    )  # fmt: skip


def train_stage() -> MLStageOperator:
    return MLStageOperator(
        stage="train",
        # Runs when tuning was skipped (off) too; never after a failed tuning.
        trigger_rule=TriggerRule.NONE_FAILED,
        arguments=[
            "--prepared-uri", PREPARED_URI,
            "--experiment", "{{ dag.dag_id }}",
            "--run-key", RUN_KEY,
            *param_arguments(*type(TRAINING).model_fields),
            "--tuned", "{{ ti.xcom_pull(task_ids='tune_best') | tojson }}",
            "--progress-every", str(PLATFORM.stage("train").progress_every_rounds or 0),
        ],
        # The Dask cluster it creates in the cluster with `distributed: dask` (the form's choice).
        env_vars={DASK_CLUSTER_ENV: json.dumps(dask_cluster(PLATFORM))},
    )  # fmt: skip


def evaluate_stage(model: Model) -> MLStageOperator:
    return MLStageOperator(
        stage="evaluate",
        arguments=[
            "--prepared-uri", PREPARED_URI,
            "--model-uri", "{{ ti.xcom_pull(task_ids='train')['model_uri'] }}",
            "--run-id", "{{ ti.xcom_pull(task_ids='train')['run_id'] }}",
            "--registered-model-name", model.registered_model,
            *param_arguments("min_average_precision", "policy", "min_improvement", "margin", "confidence",
                             "accept_incomparable_champion"),
            "--resamples", str(model.quality_gate.resamples),
            "--champion-alias", REGISTRY.production_alias,
            "--psi-warning", str(model.retraining.psi_warning),
            "--history-intervals", str(model.retraining.history_intervals),
            "--release-plan", "{{ mlops_release_plan(dag_run, params) | tojson }}",
        ],
    )  # fmt: skip


def register_stage() -> MLStageOperator:
    return MLStageOperator(
        stage="register",
        arguments=[
            "--evaluation", "{{ ti.xcom_pull(task_ids='evaluate') | tojson }}",
            "--run-key", RUN_KEY,
            "--alias", REGISTRY.candidate_alias,
        ],
    )  # fmt: skip


def deploy_stage(model: Model) -> MLStageOperator:
    """`helm upgrade` of the model's release with the registered version (the image stays CI/CD's)."""
    return MLStageOperator(
        stage="release",
        task_id="deploy",
        pool=model.pool(PLATFORM),
        env_vars=release_env(model),
        arguments=[
            "deploy", *release_arguments(model),
            "--model-name", model.registered_model,
            "--model-version", REGISTERED_VERSION,
            "--champion-alias", REGISTRY.production_alias,
            "--error-budget", ERROR_BUDGET_POLICY,
            "--requested-by", "{{ dag_run.triggering_user_name or '' }}",
            *(["--approval", "{{ mlops_approval_answer(ti.xcom_pull(task_ids='approve')) }}"]
              if model.release.approval.required else []),
        ],
    )  # fmt: skip


def watch_stage(model: Model, deployment: Any) -> RolloutWatchOperator:
    """Wait for the rollout's verdict. A slow rollout fails with "slow, not broken": each retry alerts and
    waits again, and the last failure alerts once more. A Degraded rollout is a verdict, not a failure."""
    return RolloutWatchOperator(
        task_id="watch_rollout",
        pool=model.pool(PLATFORM),
        deployment=deployment,
        timeout=timedelta(minutes=RELEASE.watch_timeout_minutes),
        poll_seconds=RELEASE.poll_seconds,
        on_retry_callback=alerts(
            model,
            title=f"Rollout of {model.registered_model} is slow",
            message="{{ dag.dag_id }} {{ run_id }}: {{ exception }} Waiting again.",
        ),
        on_failure_callback=alerts(
            model,
            title=f"Rollout of {model.registered_model} needs attention",
            message="{{ dag.dag_id }} {{ run_id }}: watch_rollout failed ({{ exception }}).",
        ),
    )


def promote_stage(model: Model) -> MLStageOperator:
    return MLStageOperator(
        stage="promote",
        pool=model.pool(PLATFORM),
        arguments=[
            "--name", model.registered_model,
            "--version", REGISTERED_VERSION,
            "--alias", REGISTRY.production_alias,
            "--verdict", "{{ ti.xcom_pull(task_ids='watch_rollout') | tojson }}",
        ],
    )  # fmt: skip


def rollback_stage(model: Model) -> MLStageOperator:
    """`helm rollback` to the revision that serves the champion (promote says which version that is; when
    promote failed, the revision before this release)."""
    return MLStageOperator(
        stage="release",
        task_id="rollback",
        pool=model.pool(PLATFORM),
        env_vars=release_env(model),
        arguments=[
            "rollback", *release_arguments(model),
            "--revision", "{{ ti.xcom_pull(task_ids='deploy')['revision'] }}",
            "--model-name", model.registered_model,
            "--to-model-version", "{{ (ti.xcom_pull(task_ids='promote') or {}).get('champion') or '' }}",
        ],
    )  # fmt: skip


@task.short_circuit
def gate(evaluation: Any) -> bool:
    """Continue to registration only on a pass; fail closed on a missing or malformed evaluation."""
    if not isinstance(evaluation, dict) or "decision" not in evaluation:
        raise AirflowFailException(
            f"no usable evaluation result ({evaluation!r}): nothing will be registered"
        )
    reasons = "; ".join(evaluation.get("reasons", []))
    if evaluation["decision"] == PASS:
        log.info("PASS: %s", reasons)
        return True
    if evaluation["decision"] == FAIL:
        log.info("FAIL: %s. Nothing is registered.", reasons)
        return False
    raise AirflowFailException(f"unknown decision {evaluation['decision']!r}: nothing will be registered")


@task.short_circuit
def release_gate(registration: Any) -> bool:
    """Continue to the release only if the run's release plan says so (the newest interval; never a backfill)."""
    plan = registration["release"]
    log.info("%s: %s", "releasing" if plan["release"] else "not releasing", plan["reason"])
    return bool(plan["release"])


@task
def announce_champion(
    promotion: Any, evaluation: Any, *, outlets: Any = None, outlet_events: Any = None
) -> None:
    """Announce a new champion on the model's champion asset (the task's outlet), so that DAGs scheduled on it
    (batch scoring) run on it."""
    if not promotion["promoted"]:
        raise AirflowSkipException(f"{promotion['alias']} did not move: nothing to announce")
    outlet_events[outlets[0]].extra = {
        "model_name": promotion["name"],
        "version": promotion["version"],
        "model_uri": f"models:/{promotion['name']}/{promotion['version']}",
        "previous_version": promotion["previous_champion"],
        "metrics": {k: v for k, v in evaluation["metrics"].items() if k != "threshold"},
        "threshold": evaluation["metrics"]["threshold"],
    }


@task.short_circuit(trigger_rule=TriggerRule.ALL_DONE, ignore_downstream_trigger_rules=False)
def needs_rollback(deployment: Any, verdict: Any, promotion: Any) -> bool:
    """Roll back when this run released something that did not become champion: the canary aborted, the
    promotion was refused, or promote failed. Not when the watch failed (slow, or paused for a person)."""
    if not deployment or deployment.get("refused") or not verdict:
        return False
    return promotion is None or promotion["verdict"] != "promoted"


@task(trigger_rule=TriggerRule.ALL_DONE)
def alert(deployment: Any, verdict: Any, promotion: Any, rolled_back: Any) -> None:
    """Fail the run with what went wrong, so that it shows red and the notifier sends it; skip when the release
    was promoted (or never got a verdict: the watch has alerted then)."""
    if not deployment or not verdict or (promotion and promotion["verdict"] == "promoted"):
        raise AirflowSkipException("nothing to alert about")
    approval = deployment.get("approval") or {}
    if (
        deployment.get("refused")
        and approval.get("approved") is False
        and approval.get("by") != APPROVAL_NOBODY
    ):
        raise AirflowSkipException(
            f"not released: {deployment['refused']} (a person's decision, not an alert)"
        )
    failed = [m for m in verdict.get("measurements", []) if m.get("phase") == "Failed"]
    figures = "; ".join(
        f"{m['metric']} = {m['value']} at step {m['step']} ({m['condition']})" for m in failed
    )
    if promotion is None:
        what = f"promote failed after a {verdict['phase']} rollout"
    else:
        what = f"{promotion['verdict']}: {promotion['reason'] or verdict['message']}"
    where = (
        f"Rolled back to revision {rolled_back['restored_revision']} ({rolled_back['restored_model_uri']})"
        if rolled_back
        else f"Nothing was released (revision {deployment['revision']} still serves production)"
        if deployment.get("refused")
        else "The rollback did not run: look at the release"
    )
    raise AirflowFailException(
        f"release of {verdict['model_uri']} {what}" + (f" [{figures}]" if figures else "")
        + f". {where}; {REGISTRY.production_alias} is "
        + (f"v{promotion['champion']}." if promotion and promotion.get("champion") else "unchanged.")
    )  # fmt: skip


# -- The wiring: one DAG per model file ------------------------------------------------------------------------


def training_dag(model: Model) -> DAG:
    """The training DAG of one model: its schedule, form, pools, release and champion from its file."""
    # Long on purpose: the DAG's settings, then its wiring, top to bottom as the graph shows it.

    @dag(
        dag_id=model.training_dag_id,
        schedule=schedule_of(model),
        start_date=pendulum.datetime(2026, 1, 5, tz="UTC"),
        catchup=False,
        max_active_runs=1,
        dagrun_timeout=timedelta(hours=8),
        tags=["ml", "training", f"model:{model.key}"],
        description=f"{model.registered_model}: {model.description}"[:200],
        doc_md=f"### {model.registered_model}\n\n{model.description}\n\nOwners: {', '.join(model.owners)}. "
        f"Model file: `{model.file}`.\n" + (__doc__ or ""),
        user_defined_macros={
            **MACROS,
            **APPROVAL_MACROS,
            **macros(model.retraining.schedule, model.retraining.timezone),
        },
        default_args={
            "owner": ", ".join(model.owners),
            "retries": 2,
            "retry_delay": timedelta(minutes=1),
            "retry_exponential_backoff": True,
            "max_retry_delay": timedelta(minutes=20),
        },
    )
    def pipeline() -> None:
        prepare, train, evaluate = prepare_stage(model), train_stage(), evaluate_stage(model)
        plan = tuning_plan(
            prepare.output, experiment="{{ dag.dag_id }}", run_key=RUN_KEY, storage_dir=TUNING_DIR
        )
        tune_stage(plan) >> tune_best_stage() >> train
        register, deploy = register_stage(), deploy_stage(model)
        promote, rollback = promote_stage(model), rollback_stage(model)
        watch_rollout = watch_stage(model, deploy.output)
        verdict = watch_rollout.output

        prepare >> train >> evaluate
        releasing = release_gate(register.output)
        gate(evaluate.output) >> register >> releasing
        if model.release.approval.required:  # a person approves first (production); rejected, deploy refuses
            approve = approval_task(
                model.release.approval, model.registered_model, model.release.alert_connection
            )
            releasing >> approve >> deploy
        else:
            releasing >> deploy
        deploy >> watch_rollout >> promote
        champion = champion_asset(model.registered_model, REGISTRY.production_alias)
        announce_champion.override(outlets=[champion])(promote.output, evaluate.output)
        # An aborted canary has already sent all traffic back to stable, so the rollback can wait for promote to
        # record the verdict; a refused promotion is rolled back to the champion's revision.
        needs_rollback(deploy.output, verdict, promote.output) >> rollback
        alert.override(
            on_failure_callback=alerts(
                model,
                title=f"Release of {model.registered_model} did not make it champion",
                message="{{ exception }}",
            )
        )(deploy.output, verdict, promote.output, rollback.output)

    built = pipeline()
    # The form, once the tasks are built: each task made at parse time deep-copies the DAG's params of that moment,
    # and copying some forty fields into each of its tasks was most of a model's parse time. A task sees the DAG's
    # params at run time all the same (Airflow merges the DAG's, the task's own and the run's conf).
    built.params = form(model)  # type: ignore[assignment]  # attrs converts the mapping into a ParamsDict
    return built


class BrokenModelFiles(DAG):
    """Stands for the model files that did not load: Airflow's DAG processor validates each DAG of a file on its
    own, and this one fails its validation with the files' problems, so that they show as the import error of
    this file (naming each model file and key) while every good model's DAG loads."""

    def validate(self) -> None:
        raise ModelError(self.description or "")


DAGS = {
    dag.dag_id: dag
    for model in MODELS
    for dag in (training_dag(model), scoring_dag(model), monitoring_dag(model))
}
if MODELS.broken:
    BROKEN = BrokenModelFiles(
        dag_id="broken_model_files", schedule=None, description=" | ".join(MODELS.broken.values())
    )
