"""What Airflow and the pods agree on, defined once: the standard library only, carried by every image.

The orchestrator side (``dags/``, ``plugins/``), the pods (``ml/``, the drift check) and the embedded stand-ins
(``standins/``) import these names; none of them writes one of these values itself.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

# -- A pod's result and exit code ---------------------------------------------------------------------------

#: Environment variable naming the folder a pod writes its result to; the local pod runtime points it elsewhere.
XCOM_DIR_ENV = "ML_XCOM_DIR"
XCOM_RESULT_FILE = "return.json"
#: A stage's exit code says whether trying again can help: 0 is success; EXIT_INVALID_INPUT is a deterministic
#: rejection of its input (validation, not found, access denied, malformed arguments): the task fails at once;
#: anything else is retryable: a crash (1), a kill, or EXIT_TRANSIENT, a service the stage needs (storage, the
#: model registry, the Kubernetes API) that stayed unavailable through the stage's own retries (throttling,
#: 5xx, timeouts, connection resets). The value is sysexits.h's EX_TEMPFAIL.
EXIT_INVALID_INPUT = 2
EXIT_TRANSIENT = 75
#: Prefix of the one line a stage prints to stderr when it rejects its input; the local runtime surfaces it.
ERROR_PREFIX = "ERROR: "


#: A temporary file of ``replacing`` left this long belongs to a writer that was killed.
ABANDONED_PARTIAL_SECONDS = 600


@contextmanager
def replacing(target: Path) -> Iterator[Path]:
    """A temporary path beside ``target`` to write to: it becomes ``target`` in one rename if the block succeeds,
    and is removed if it fails. A reader never sees half a file (results, reports, tables, release records)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    # A name of this writer's own: two writers of one file each rename a whole file of theirs. What a killed
    # writer left is removed once it is surely not being written any more.
    for leftover in target.parent.glob(f".{target.name}.*.partial"):
        with suppress(FileNotFoundError):
            if time.time() - leftover.stat().st_mtime > ABANDONED_PARTIAL_SECONDS:
                leftover.unlink()
    partial = target.with_name(f".{target.name}.{os.getpid()}-{secrets.token_hex(4)}.partial")
    try:
        yield partial
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)


def write_json(target: Path, payload: Any) -> Path:
    """Write ``payload`` as JSON, atomically (``replacing``)."""
    with replacing(target) as partial:
        partial.write_text(json.dumps(payload, indent=1, default=str))
    return target


#: Where a stage run by hand (outside a pod and the local pod runtime) writes its result, under its working folder.
HAND_RUN_XCOM_DIR = Path(".local") / "results"


def xcom_dir() -> Path:
    """Where a stage writes its result: the folder its pod (the XCom sidecar's mount) or the local pod runtime
    names in ``XCOM_DIR_ENV``, or else, for a stage run by hand, ``HAND_RUN_XCOM_DIR``."""
    named = os.environ.get(XCOM_DIR_ENV)
    return Path(named) if named else HAND_RUN_XCOM_DIR


def write_xcom_result(result: dict[str, Any]) -> Path:
    """Write a pod's result where the XCom sidecar (or the local pod runtime) reads it; return the file."""
    return write_json(xcom_dir() / XCOM_RESULT_FILE, result)


#: Environment variable of the tune stage: the SQLAlchemy URL of the database its workers share a study in (from a
#: Secret in the cluster); without it, a journal file under the data root (the embedded defaults).
TUNING_STORAGE_ENV = "MLOPS_TUNING_STORAGE"

#: The Terraform drift check's backend settings shared by every stack (bucket, region, ...), as a JSON object.
BACKEND_CONFIG_ENV = "TF_DRIFT_BACKEND_CONFIG"

# -- Keys that make every task idempotent -------------------------------------------------------------------


def run_key(dag_id: str, run_id: str) -> str:
    """The key of a DAG run in MLflow: one MLflow run and at most one model version per key."""
    return f"{dag_id}/{run_id}"


# -- Training ----------------------------------------------------------------------------------------------

#: What the train stage can fit and where; the DAG's form offers exactly these.
MODEL_TYPES = ("xgboost", "random_forest")
DEVICES = ("auto", "cpu", "cuda")
#: How the quality gate judges a candidate against the champion (``ml.compare.Rule``); the form offers these.
GATE_POLICIES = ("superior", "non-inferior")
#: Where XGBoost trains: in the train stage's own process, or with ``xgboost.dask`` on a Dask cluster.
DISTRIBUTED_MODES = ("none", "dask")
#: Environment variable of the train stage: the address of a running Dask scheduler (``tcp://host:8786``) to train
#: on with ``distributed: dask``, in place of the cluster the stage would start itself.
DASK_SCHEDULER_ENV = "MLOPS_DASK_SCHEDULER"
#: Environment variable of the train stage: the Dask cluster it asks the Dask Kubernetes operator for in the cluster
#: (a JSON object: workers, pod specs of the workers and the scheduler), from the platform settings.
DASK_CLUSTER_ENV = "MLOPS_DASK_CLUSTER"

#: The longest training or evaluation window, in days: ten years (the form's bound and the stage's).
MAX_WINDOW_DAYS = 3660

# -- The quality gate ---------------------------------------------------------------------------------------

#: The evaluate stage's decisions; the gate continues on PASS, registers nothing on FAIL, fails on anything else.
PASS = "pass"
FAIL = "fail"

# -- MLflow tags (runs and model versions) ------------------------------------------------------------------

#: The DAG run an MLflow run or model version belongs to (``run_key``).
RUN_KEY_TAG = "mlops.run_key"
#: Set on a run taken out of its key by a new attempt with other inputs.
SUPERSEDED_TAG = "mlops.superseded_by_retry"
#: Why a run ended KILLED or FAILED (a stopped task, the stage's error, an attempt that died and was found so).
END_REASON_TAG = "mlops.end_reason"
#: The train stage's inputs (config and data digest) and its result, so a retry reuses the model.
TRAIN_FINGERPRINT_TAG = "mlops.train_fingerprint"
TRAIN_RESULT_TAG = "mlops.train_result"
#: The prepared data a run learnt from (a folder published by ``ml.prepare``) and its digest.
PREPARED_URI_TAG = "mlops.prepared_uri"
DATA_DIGEST_TAG = "mlops.data_digest"
#: The features a version learnt from although the leakage guard found something (JSON: column -> finding):
#: near copies of the label and columns that follow the time, which it keeps, and columns kept as the run asked.
LEAKAGE_FLAGS_TAG = "mlops.leakage_flags"
#: The evaluation's decision (run) and the decision threshold chosen on validation (run and version).
DECISION_TAG = "mlops.decision"
THRESHOLD_TAG = "mlops.decision_threshold"
#: The logged model a version was registered from.
MODEL_ID_TAG = "mlops.model_id"
#: Prefix of the test metrics copied onto a version (``mlops.test_<metric>``).
TEST_METRIC_TAG_PREFIX = "mlops.test_"
#: The champion version the candidate was compared with ("none" without one): promotion's compare-and-set.
CHAMPION_AT_EVALUATION_TAG = "mlops.champion_version_at_evaluation"
#: Where the production alias pointed ("none" for nowhere) when promote moved it to this version: written just
#: before the move, so that a promote retried after a crash tells its own move from a person's.
PREVIOUS_CHAMPION_TAG = "mlops.previous_champion"
#: The gate passed a version although the champion could not score its test rows, because the run said so:
#: why the champion could not (the run's parameter ``accept_incomparable_champion``).
INCOMPARABLE_CHAMPION_ACCEPTED_TAG = "mlops.incomparable_champion_accepted"
#: The gate's comparison with the champion: the difference in average precision with its interval, the policy and
#: its verdict (``+0.018 AP, 95 % interval -0.004 to +0.041 (resampling days); non-inferior: ...``).
CHAMPION_COMPARISON_TAG = "mlops.champion_comparison"
#: The canary's verdict on a version, its message, its release revision and its figures.
CANARY_VERDICT_TAG = "mlops.canary_verdict"
CANARY_MESSAGE_TAG = "mlops.canary_message"
CANARY_REVISION_TAG = "mlops.canary_revision"
CANARY_MEASUREMENT_TAG_PREFIX = "mlops.canary."
#: The verdict on a version whose canary succeeded (it became the champion): the inference API serves the
#: production alias only with this verdict (ml.promote writes it, ml.serve.model checks it).
CANARY_PROMOTED = "promoted"
#: The verdicts on a version whose release failed: its canary was aborted, or the release was refused before it
#: started. The candidate alias stays on such a version until the next release moves it (the pipeline's MLflow
#: account may move aliases, not delete them), so no alias serves it (ml.serve.model checks).
CANARY_ABORTED = "aborted"
CANARY_REFUSED = "refused"
CANARY_FAILED = (CANARY_ABORTED, CANARY_REFUSED)
#: The data interval a run or version covers (``<start>/<end>``, ISO-8601) and the evaluation window it was
#: judged on: what the performance-over-time plot lines up.
INTERVAL_TAG = "mlops.interval"
EVALUATION_WINDOW_TAG = "mlops.evaluation_window"
#: The registered model a run was evaluated for (its history is that model's).
REGISTERED_MODEL_TAG = "mlops.registered_model"
#: Whether the pipeline planned to release a version (RELEASE_PLANNED) or registered it for the record only
#: (RELEASE_SKIPPED: a backfill, an old interval, a form that said never), and why.
RELEASE_TAG = "mlops.release"
RELEASE_REASON_TAG = "mlops.release_reason"
RELEASE_PLANNED = "planned"
RELEASE_SKIPPED = "skipped"
#: What started the run that registered a version, in words (its schedule, a backfill, a person, a decayed
#: champion's asset event with the monitoring's reasons): ``mlops.intervals.started_by``.
STARTED_BY_TAG = "mlops.started_by"
#: The deploy step's error-budget policies (``ml/release/budget.py``): refuse a release while an SLO's error budget
#: is spent (or unreadable), release anyway and record it (the form's override), or read no budget.
ERROR_BUDGET_ENFORCE, ERROR_BUDGET_OVERRIDE, ERROR_BUDGET_OFF = "enforce", "override", "off"
#: A person's answers to a release's approval (the DAG's ``approve`` task; ``deploy`` reads them), and the answer
#: as the version records it (JSON: the answer, who gave it and when, the comment; "nobody" on a timeout).
APPROVE, REJECT = "Approve", "Reject"
APPROVAL_TAG = "mlops.approval"
#: Who the recorded answer names when nobody answered in time (the timeout's Reject): not a person's decision.
APPROVAL_NOBODY = "nobody"
#: The error budgets read before a version's release (JSON: the policy, each SLO's figures, whether a spent or
#: unreadable budget was overridden, and by whom): the release decision's record.
ERROR_BUDGET_TAG = "mlops.error_budget"

# -- Rollouts -----------------------------------------------------------------------------------------------

#: Phases of a rollout as Argo Rollouts names them, and the watch's verdict for a rollout past its deadline.
HEALTHY = "Healthy"
DEGRADED = "Degraded"
PROGRESSING = "Progressing"
PAUSED = "Paused"
SUPERSEDED = "Superseded"
SLOW = "Slow"
#: The watch's verdicts beyond Argo's phases: the release was refused before it started (``champion`` moved
#: since evaluation), and a rollout paused by an inconclusive analysis (too little traffic): a person decides.
REFUSED = "Refused"
INCONCLUSIVE = "Inconclusive"
#: The pause condition Argo Rollouts sets on a rollout whose analysis run ended Inconclusive.
INCONCLUSIVE_PAUSE = "InconclusiveAnalysisRun"
#: Pod template annotation (set by the chart) naming the model the template serves.
MODEL_ANNOTATION = "mlops.airflow-mlops.io/model-uri"

# -- The local release (the embedded default's stand-in for Helm and Argo Rollouts) --------------------------

#: Environment variable naming the folder of local release histories; the local pod runtime sets it.
LOCAL_RELEASES_ENV = "MLOPS_LOCAL_RELEASES"
#: Environment variable of the release stage naming the loopback port its model's local release serves on (from
#: the model file); the local ``helm`` hands it to the release's controller, the cluster's ignores it.
LOCAL_RELEASE_PORT_ENV = "MLOPS_LOCAL_RELEASE_PORT"
#: The Airflow plugins folder (where the platform settings live), which the local pod runtime hands the stand-ins.
PLUGINS_FOLDER_ENV = "MLOPS_PLUGINS_FOLDER"
#: Files under ``<local releases>/<release>/``: the Rollout's status, each revision's final outcome
#: (``results/<revision>.json``) and the pid of the release's controller.
LOCAL_STATUS_FILE = "rollout.json"
LOCAL_RESULTS_DIR = "results"
LOCAL_PID_FILE = "controller.pid"


def local_result_path(release_dir: Path, revision: int) -> Path:
    """Where the local controller writes the final outcome of a revision's rollout."""
    return Path(release_dir) / LOCAL_RESULTS_DIR / f"{revision}.json"


#: The local controller's log beside its pid file: its last words are what the watch reports when it died.
LOCAL_CONTROLLER_LOG = "controller.log"
#: What the command line of a local controller (``python -m standins.rollouts run``) holds: tells a live
#: controller from a pid the system reused.
LOCAL_CONTROLLER_MODULE = "standins.rollouts"


def runs_module(pid: int, module: str) -> bool:
    """Whether process ``pid`` runs ``python -m <module>``, that module exactly (not one beneath it): tells a
    process of ours from a pid the system reused. A process that has exited (a zombie too) has an empty command
    line, so it does not count."""
    try:
        return f"\0-m\0{module}\0".encode() in Path(f"/proc/{int(pid)}/cmdline").read_bytes()
    except (OSError, ValueError):
        return False


def local_controller_pid(release_dir: Path) -> int | None:
    """The pid of the release's local controller if it is alive (and really is the controller), else None."""
    try:
        pid = int((Path(release_dir) / LOCAL_PID_FILE).read_text())
    except (OSError, ValueError):
        return None
    return pid if runs_module(pid, LOCAL_CONTROLLER_MODULE) else None
