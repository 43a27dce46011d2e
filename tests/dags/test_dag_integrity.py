"""Every DAG file imports cleanly, stays thin at parse time, and carries the metadata operators rely on."""

from __future__ import annotations

import copy
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pendulum
import pytest

ROOT = Path(__file__).resolve().parents[2]
DAG_FILES = sorted((ROOT / "dags").glob("*.py"))
MODELS_DIR = ROOT / "dags" / "models"
#: The shipped card-fraud model's training DAG: the tests of one model's DAG use it.
TRAINING = "train_card_fraud"


@pytest.fixture(scope="module")
def dagbag() -> Any:
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(str(ROOT / "dags"))


def test_every_dag_file_imports_without_errors(dagbag) -> None:
    assert DAG_FILES, "no DAG files found"
    assert dagbag.import_errors == {}
    assert {Path(dag.fileloc).name for dag in dagbag.dags.values()} == {f.name for f in DAG_FILES}


def test_parsing_queries_no_database_and_looks_up_no_connection_or_variable(monkeypatch) -> None:
    from airflow import settings
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk import BaseHook, Connection, Variable
    from sqlalchemy import event

    lookups: list[str] = []

    def forbidden(kind: str):
        def record(*args: Any, **kwargs: Any) -> None:
            lookups.append(f"{kind}{args}")
            raise AssertionError(f"{kind} looked up while parsing")

        return record

    monkeypatch.setattr(Variable, "get", staticmethod(forbidden("Variable.get")))
    monkeypatch.setattr(Connection, "get", classmethod(forbidden("Connection.get")))
    monkeypatch.setattr(BaseHook, "get_connection", classmethod(forbidden("BaseHook.get_connection")))
    if settings.engine is None:
        settings.configure_orm()
    queries: list[str] = []

    def on_query(conn, cursor, statement, *args):
        queries.append(statement)

    event.listen(settings.engine, "before_cursor_execute", on_query)
    try:
        bag = DagBag(str(ROOT / "dags"))
    finally:
        event.remove(settings.engine, "before_cursor_execute", on_query)
    assert bag.import_errors == {}
    assert lookups == []
    assert queries == []


def test_dags_have_owner_retries_tags_and_docs(dagbag) -> None:
    for dag_id, dag in dagbag.dags.items():
        assert dag.tags, f"{dag_id} has no tags"
        assert dag.doc_md, f"{dag_id} has no doc_md"
        assert dag.catchup is False, f"{dag_id} must not catch up by default"
        for task in dag.tasks:
            assert task.owner not in ("", "airflow"), f"{dag_id}.{task.task_id} has no owner"
            assert task.retries >= 1, f"{dag_id}.{task.task_id} has no retries"


def models() -> Any:
    from mlops.models import load_models

    return load_models(MODELS_DIR)


def test_every_model_file_has_its_training_and_scoring_dags(dagbag) -> None:
    shipped = models()
    assert shipped.broken == {} and len(shipped.models) >= 2
    training = {dag_id for dag_id in dagbag.dags if dag_id.startswith("train_")}
    scoring = {dag_id for dag_id in dagbag.dags if dag_id.startswith("score_")}
    assert training == {m.training_dag_id for m in shipped}
    assert scoring == {m.scoring_dag_id for m in shipped}


@pytest.mark.parametrize("key", [path.stem for path in sorted(MODELS_DIR.glob("*.yaml"))])
def test_training_pipeline_shape(dagbag, key: str) -> None:
    from mlops.platform_config import load_platform

    model = models().get(key)
    dag = dagbag.dags[model.training_dag_id]
    assert dag.max_active_runs == 1
    assert dag.get_task("prepare").downstream_task_ids == {"tuning_plan", "train"}
    assert dag.get_task("tuning_plan").downstream_task_ids == {"tune"}
    assert dag.get_task("tune").downstream_task_ids == {"tune_best"}
    assert dag.get_task("tune_best").downstream_task_ids == {"train"}
    # Train runs when tuning is off (skipped), never after a failed tuning.
    assert dag.get_task("train").trigger_rule == "none_failed"
    assert dag.get_task("train").downstream_task_ids == {"evaluate"}
    assert dag.get_task("evaluate").downstream_task_ids == {"gate", "announce_champion"}
    assert dag.get_task("gate").downstream_task_ids == {"register"}
    assert dag.get_task("register").downstream_task_ids == {"release_gate"}
    assert dag.get_task("release_gate").downstream_task_ids == {"deploy"}
    assert dag.get_task("deploy").downstream_task_ids == {"watch_rollout", "needs_rollback", "alert"}
    assert dag.get_task("watch_rollout").downstream_task_ids == {"promote", "needs_rollback", "alert"}
    assert dag.get_task("promote").downstream_task_ids == {"needs_rollback", "announce_champion", "alert"}
    platform = load_platform()
    champion = f"{model.registered_model}@{platform.registry.production_alias}"
    assert [a.name for a in dag.get_task("announce_champion").outlets] == [champion]
    assert [a.name for a in dag.get_task("prepare").inlets] == [model.dataset.asset]
    assert dag.get_task("rollback").upstream_task_ids == {"needs_rollback"}
    assert dag.get_task("alert").upstream_task_ids == {"deploy", "watch_rollout", "promote", "rollback"}
    # Whatever promote did (refused, failed), the rollback decision and the alert still run.
    assert {dag.get_task(t).trigger_rule for t in ("needs_rollback", "alert")} == {"all_done"}
    for task_id in (
        "prepare",
        "tune",
        "tune_best",
        "train",
        "evaluate",
        "register",
        "deploy",
        "promote",
        "rollback",
    ):
        task = dag.get_task(task_id)
        assert task.retry_exponential_backoff, f"{task_id} retries without backoff"
    release = model.pool(platform)
    assert {t.task_id for t in dag.tasks if t.pool == release} == {
        "deploy",
        "watch_rollout",
        "promote",
        "rollback",
    }


@pytest.mark.parametrize(
    ("param", "value", "message"),
    [
        ("model_type", "svm", "'svm' is not one of ['xgboost', 'random_forest']"),
        ("learning_rate", 0, "less than or equal to the minimum of 0"),
        ("n_estimators", 0, "0 is less than the minimum of 1"),
        ("min_average_precision", 1.5, "1.5 is greater than the maximum of 1"),
        ("dataset_uri", "", "should be non-empty"),
        ("scale_pos_weight", "lots", "does not match"),
        ("device", "tpu", "'tpu' is not one of"),
        ("training_window_days", 0, "0 is less than the minimum of 1"),
        ("evaluation_window_days", -1, "-1 is less than the minimum of 0"),
        ("release", "sometimes", "'sometimes' is not one of ['auto', 'always', 'never']"),
    ],
)
def test_the_form_refuses_invalid_values(dagbag, param: str, value: Any, message: str) -> None:
    from airflow.sdk.exceptions import ParamValidationError

    params = copy.deepcopy(dagbag.dags[TRAINING].params)
    with pytest.raises(ParamValidationError, match=message.replace("[", r"\[").replace("]", r"\]")):
        params[param] = value
        params.validate()


def test_the_form_defaults_are_valid_and_time_column_may_be_empty(dagbag) -> None:
    params = copy.deepcopy(dagbag.dags[TRAINING].params)
    params["time_column"] = None
    assert params.validate()["time_column"] is None


@pytest.mark.parametrize(
    "task_id",
    ["prepare", "tune_best", "train", "evaluate", "register", "promote", "deploy", "rollback", "monitor"],
)
def test_every_flag_the_dag_passes_is_one_the_stage_accepts(dagbag, task_id: str) -> None:
    import subprocess
    import sys

    task = dagbag.dags["monitor_card_fraud" if task_id == "monitor" else TRAINING].get_task(task_id)
    flags = {part for part in task.arguments if part.startswith("--")}
    # The release and tune stages' first argument is a subcommand, which has its own flags.
    subcommand = [task.arguments[0]] if task.module in ("release", "tune") else []
    usage = subprocess.run(
        [sys.executable, "-m", f"ml.{task.module}", *subcommand, "--help"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert {flag for flag in flags if flag not in usage} == set()


def test_a_decay_the_monitoring_dag_announces_starts_the_training_dag_between_its_intervals(dagbag) -> None:
    """The training DAG runs on its cron or on its model's decay asset, which only its monitoring DAG announces; the
    monitor stage judges against the quality gate's floor, with the model file's labels."""
    from airflow.sdk import AssetOrTimeSchedule, CronDataIntervalTimetable

    from mlops.assets import decay_asset

    model = models().get("card_fraud")
    training, monitoring = dagbag.dags[TRAINING], dagbag.dags[model.monitoring_dag_id]
    assert isinstance(training.timetable, AssetOrTimeSchedule)
    assert isinstance(training.timetable.timetable, CronDataIntervalTimetable)
    decayed = decay_asset(model.registered_model)
    assert training.timetable.asset_condition == decayed
    announcers = [t for d in dagbag.dags.values() for t in d.tasks if decayed in (t.outlets or [])]
    assert [(t.dag_id, t.task_id) for t in announcers] == [(monitoring.dag_id, "announce_decay")]
    arguments = monitoring.get_task("monitor").arguments
    value = {
        flag: arguments[arguments.index(flag) + 1]
        for flag in ("--labels", "--id-column", "--min-average-precision")
    }
    assert value == {
        "--labels": "{{ var.value.mlops_data_root }}/labels/card-fraud-detector",
        "--id-column": model.monitoring.labels.id_column,
        "--min-average-precision": str(model.quality_gate.min_average_precision),
    }
    # A decay alerts through the model's connection, with the runbook, when it is announced.
    from mlops.monitor_dag import RUNBOOK
    from mlops.notifiers import AlertNotifier

    (notifier,) = monitoring.get_task("announce_decay").on_success_callback
    assert isinstance(notifier, AlertNotifier) and RUNBOOK in notifier.message
    assert (ROOT / RUNBOOK).is_file()
    # A model without labels is watched for drift only.
    adult = models().get("adult_income")
    assert adult.monitoring.labels is None
    assert "--labels" not in dagbag.dags[adult.monitoring_dag_id].get_task("monitor").arguments


def test_train_reports_its_progress_as_often_as_the_platform_settings_say(dagbag) -> None:
    from mlops.platform_config import load_platform

    arguments = dagbag.dags[TRAINING].get_task("train").arguments
    every = load_platform().stage("train").progress_every_rounds
    assert every is not None and arguments[arguments.index("--progress-every") + 1] == str(every)


def test_train_gets_the_dask_cluster_of_the_platform_settings_for_distributed_dask(dagbag) -> None:
    import json

    from contract import DASK_CLUSTER_ENV
    from mlops.dask_cluster import dask_cluster
    from mlops.platform_config import load_platform

    task = dagbag.dags[TRAINING].get_task("train")
    env = {var.name: var.value for var in task.env_vars}
    assert json.loads(env[DASK_CLUSTER_ENV]) == dask_cluster(load_platform())
    assert "--distributed" in task.arguments


def test_form_choices_and_defaults_match_what_the_stages_accept(dagbag) -> None:
    from ml.train import DEVICES, DISTRIBUTED_MODES, MODEL_TYPES, TrainConfig
    from mlops.platform_config import load_platform

    params = dagbag.dags[TRAINING].params
    assert params.get_param("model_type").schema["enum"] == list(MODEL_TYPES)
    assert params.get_param("device").schema["enum"] == list(DEVICES)
    assert params.get_param("distributed").schema["enum"] == list(DISTRIBUTED_MODES)
    defaults = load_platform().training.model_dump()
    assert {name: params[name] for name in defaults} == defaults
    TrainConfig(**defaults)  # the defaults are a valid training config


def test_the_champion_consumer_reads_the_new_champion_from_the_event(dagbag) -> None:
    from types import SimpleNamespace

    from mlops.assets import champion_asset
    from mlops.platform_config import load_platform

    registry = load_platform().registry
    model = models().get("card_fraud")
    asset = champion_asset(model.registered_model, registry.production_alias)
    other = champion_asset(models().get("adult_income").registered_model, registry.production_alias)
    dag = dagbag.dags[model.scoring_dag_id]
    assert [a.name for a in dag.timetable.asset_condition.objects] == [asset.name]
    extra = {
        "model_uri": "models:/m/3",
        "version": "3",
        "threshold": 0.4,
        "metrics": {"average_precision": 0.6},
    }
    events = {asset: [SimpleNamespace(extra={**extra, "version": "2"}), SimpleNamespace(extra=extra)]}
    new_champion = dag.get_task("new_champion")
    assert new_champion.python_callable(*new_champion.op_args, triggering_asset_events=events) == extra
    with pytest.raises(ValueError, match="no event on"):
        new_champion.python_callable(*new_champion.op_args, triggering_asset_events={})
    # Another model's new champion is not this DAG's.
    with pytest.raises(ValueError, match="no event on"):
        new_champion.python_callable(
            *new_champion.op_args, triggering_asset_events={other: [SimpleNamespace(extra=extra)]}
        )


def test_with_the_asset_trigger_the_pipeline_runs_per_week_of_daily_partitions(tmp_path, monkeypatch) -> None:
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk import PartitionedAssetTimetable

    from mlops.models import MODELS_DIR_ENV
    from tests.helpers import copy_models

    monkeypatch.setenv(MODELS_DIR_ENV, str(copy_models(tmp_path, card_fraud={"retraining.trigger": "asset"})))
    bag = DagBag(str(ROOT / "dags"), safe_mode=False)
    assert bag.import_errors == {}
    timetable = bag.dags[TRAINING].timetable
    assert isinstance(timetable, PartitionedAssetTimetable)
    assert [a.name for a in [timetable.asset_condition]] == [models().get("card_fraud").dataset.asset]
    # A model that retrains only when triggered has no schedule.
    assert bag.dags["train_adult_income"].schedule is None


def test_with_approval_on_a_person_approves_between_the_release_gate_and_deploy(
    tmp_path, monkeypatch
) -> None:
    from airflow.dag_processing.dagbag import DagBag
    from airflow.providers.standard.operators.hitl import HITLOperator

    from contract import APPROVE, REJECT
    from mlops.models import MODELS_DIR_ENV
    from tests.helpers import copy_models

    approval = {"release.approval": {"required": True, "timeout_hours": 12, "approvers": ["risk-officer"]}}
    monkeypatch.setenv(MODELS_DIR_ENV, str(copy_models(tmp_path, card_fraud=approval)))
    bag = DagBag(str(ROOT / "dags"), safe_mode=False)
    assert bag.import_errors == {}
    # Approvals are the model's: the other model releases without one.
    assert "approve" not in bag.dags["train_adult_income"].task_ids
    dag = bag.dags[TRAINING]
    approve = dag.get_task("approve")
    assert isinstance(approve, HITLOperator)
    assert dag.get_task("release_gate").downstream_task_ids == {"approve"}
    assert approve.downstream_task_ids == {"deploy"} and dag.get_task("deploy").upstream_task_ids == {
        "approve"
    }
    # Approve or Reject; no answer within the setting's hours takes the default: Reject.
    assert (approve.options, approve.defaults, approve.response_timeout) == (
        [APPROVE, REJECT], [REJECT], timedelta(hours=12)
    )  # fmt: skip
    assert approve.assigned_users == [{"id": "risk-officer", "name": "risk-officer"}]
    assert "comment" in approve.params
    deploy = dag.get_task("deploy").arguments
    assert "approve" in deploy[deploy.index("--approval") + 1]
    assert {"mlops_approval_summary", "mlops_approval_answer"} <= set(dag.user_defined_macros)


def test_without_approval_there_is_no_approve_task(dagbag) -> None:
    dag = dagbag.dags[TRAINING]
    assert "approve" not in dag.task_ids and "--approval" not in dag.get_task("deploy").arguments


def test_the_approver_sees_metrics_against_the_champion_the_windows_and_the_gates_reasons() -> None:
    from dataclasses import asdict

    from ml.evaluate import ChampionComparison, Evaluation, Metrics
    from mlops.approval import answer_json, summary

    metrics = Metrics(
        average_precision=0.61, roc_auc=0.93, precision=0.5, recall=0.7, f1=0.58, threshold=0.41
    )
    champion = ChampionComparison("6", True, Metrics(0.55, 0.91, 0.45, 0.66, 0.53, 0.38))
    evaluation = asdict(Evaluation(
        decision="pass", reasons=["average precision 0.6100 >= 0.3", "improves on champion v6 by 0.0600"],
        metrics=metrics, champion=champion, run_id="abc123", model_uri="models:/m-1", model_id="m-1",
        registered_model_name="card-fraud-detector", min_average_precision=0.3, min_improvement=0.0,
        test_rows=21000, test_positives=84, drift={"amount": 0.31}, drifted=["amount"], release_plan={},
    ))  # fmt: skip
    prepared = {"windows": {"training": ["2026-01-05T00:00:00+00:00", "2026-03-02T00:00:00+00:00"],
                            "evaluation": ["2026-03-02T00:00:00+00:00", "2026-03-09T00:00:00+00:00"]}}  # fmt: skip
    registration = {
        "name": "card-fraud-detector",
        "version": "7",
        "release": {"reason": "the newest interval"},
    }
    text = summary(evaluation, prepared, registration)
    assert "**card-fraud-detector v7** (MLflow run `abc123`), against champion v6." in text
    assert "| Average precision (PR-AUC) | 0.6100 | 0.5500 |" in text
    assert "evaluation 2026-03-02T00:00:00+00:00 to 2026-03-09T00:00:00+00:00" in text
    assert (
        "improves on champion v6 by 0.0600" in text
        and "**Drift** (PSI over the warning level): amount" in text
    )
    assert "Against the champion" not in text  # no comparison recorded: no line
    compared = {**evaluation, "comparison": {
        "described": "+0.060 AP, 95 % interval +0.021 to +0.097 (resampling rows)", "resamples": 1000, "units": 21000,
        "unit": "rows", "verdict": "superior: lower bound +0.021 > required improvement +0.000", "passes": True,
    }}  # fmt: skip
    assert (
        "**Against the champion**: +0.060 AP, 95 % interval +0.021 to +0.097 (resampling rows), from 1000 paired "
        "resamples of the test set's 21000 rows. Superior: lower bound +0.021 > required improvement +0.000: "
        "**pass**." in summary(compared, prepared, registration)
    )
    first = {**evaluation, "champion": asdict(ChampionComparison(None, True))}
    assert "against champion (none)" in summary(first, {"source": "s3://b/t.csv"}, registration)
    assert "| ROC-AUC | 0.9300 | - |" in summary(first, {}, registration)
    when = pendulum.datetime(2026, 11, 27, 10, tz="UTC")
    assert json.loads(answer_json({"responded_at": when}))["responded_at"] == "2026-11-27T10:00:00+00:00"


def test_the_form_is_in_sections_and_explains_every_field(dagbag) -> None:
    """Data, Model, Tuning, Quality gate, Release, each field once and in its section's run; a description on every
    field, readable labels for every choice, examples for the dataset."""
    params = dagbag.dags[TRAINING].params
    sections = [params.get_param(name).schema.get("section") for name in params]
    runs = [section for i, section in enumerate(sections) if i == 0 or sections[i - 1] != section]
    assert runs == ["Data", "Model", "Tuning", "Quality gate", "Release"]
    for name in params:
        schema = params.get_param(name).schema
        assert len(params.get_param(name).description or "") > 20, f"{name} has no description"
        if "enum" in schema:
            assert set(schema["values_display"]) == set(schema["enum"]), name
    assert any(example.startswith("s3://") for example in params.get_param("dataset_uri").schema["examples"])


def test_a_field_left_out_of_the_sections_fails_the_dag_at_parse() -> None:
    from dags.model_dags import form, in_sections

    with pytest.raises(ValueError, match="each field once"):
        in_sections(dict(form(models().get("card_fraud"))), {"Data": ("dataset_uri",)})


#: The flags that carry a model's identity to its stages: (task, flag, the model's value).
IDENTITY = [
    ("evaluate", "--registered-model-name", lambda m: m.registered_model),
    ("deploy", "--model-name", lambda m: m.registered_model),
    ("deploy", "--release", lambda m: m.release.name),
    ("deploy", "--namespace", lambda m: m.release.namespace),
    ("promote", "--name", lambda m: m.registered_model),
    ("rollback", "--model-name", lambda m: m.registered_model),
    ("rollback", "--release", lambda m: m.release.name),
    ("rollback", "--namespace", lambda m: m.release.namespace),
]


def test_a_models_identity_is_its_files_and_no_run_can_change_it(dagbag) -> None:
    """A run of one model can never register, deploy, promote or roll back another's: every flag that names the
    registered model, the release or its namespace is the model file's literal value (no template a run's form or
    conf could fill), the form has no field for them, and each model's release steps have a pool of their own."""
    from mlops.platform_config import load_platform

    shipped = list(models())
    for model in shipped:
        dag = dagbag.dags[model.training_dag_id]
        for task_id, flag, value_of in IDENTITY:
            arguments = dag.get_task(task_id).arguments
            assert arguments[arguments.index(flag) + 1] == value_of(model), (model.key, task_id, flag)
        assert not {"registered_model_name", "release_name", "namespace"} & set(dag.params), model.key
        # The promotion moves this model's aliases; the champion asset is this model's.
        promote = dag.get_task("promote").arguments
        assert all("{{" not in promote[promote.index(flag) + 1] for flag in ("--name", "--alias"))
    pools = {model.pool(load_platform()) for model in shipped}
    assert len(pools) == len(shipped), "two models share a release pool: one would wait for the other"
    releases = {(m.release.namespace, m.release.name) for m in shipped}
    assert len(releases) == len(shipped)


def test_the_form_defaults_are_the_model_files(dagbag) -> None:
    for model in models():
        params = dagbag.dags[model.training_dag_id].params
        assert params["dataset_uri"] == model.dataset.uri
        assert (params["target_column"], params["positive_label"], params["time_column"]) == (
            model.dataset.target, model.dataset.positive_label, model.dataset.time_column
        )  # fmt: skip
        assert params["drop_columns"] == list(model.dataset.drop_columns)
        assert params["min_average_precision"] == model.quality_gate.min_average_precision
        assert params["training_window_days"] == model.retraining.training_days
        assert {name: params[name] for name in model.training.model_dump()} == model.training.model_dump()


def test_a_broken_model_file_is_an_import_error_naming_it_and_the_other_models_load(
    tmp_path, monkeypatch
) -> None:
    """Airflow's own DagBag: the broken file's problem (file and key) is the training DAG file's import error,
    and every other model's DAGs load."""
    from airflow.dag_processing.dagbag import DagBag

    from mlops.models import MODELS_DIR_ENV
    from tests.helpers import copy_models

    folder = copy_models(tmp_path / "models", adult_income={"release.local_port": "eighty"})
    monkeypatch.setenv(MODELS_DIR_ENV, str(folder))
    bag = DagBag(str(ROOT / "dags"), safe_mode=False)
    assert len(bag.import_errors) == 1 and next(iter(bag.import_errors)).endswith("dags/model_dags.py")
    error = next(iter(bag.import_errors.values()))
    assert "models/adult_income.yaml: release.local_port: Input should be a valid integer" in error
    assert {"train_card_fraud", "score_card_fraud"} <= set(bag.dags)
    assert not {"train_adult_income", "score_adult_income"} & set(bag.dags)
    # Two broken files: both named in the one error, the good model still loads.
    raw = (folder / "card_fraud.yaml").read_text()
    (folder / "zz_copy.yaml").write_text(raw)  # the same registered model, release, port and asset
    bag = DagBag(str(ROOT / "dags"), safe_mode=False)
    error = next(iter(bag.import_errors.values()))
    assert "adult_income.yaml: release.local_port" in error
    assert "models/zz_copy.yaml: registered model 'card-fraud-detector' is already" in error
    assert error.endswith("models/card_fraud.yaml's")
    assert "train_card_fraud" in bag.dags and "train_zz_copy" not in bag.dags


#: What a process that parses a DAG file, or runs one of its tasks, pays for most at import: the Kubernetes clients.
KUBERNETES_CLIENTS = frozenset({"kubernetes.client", "kubernetes_asyncio.client"})

PRELOADED_THEN_PARSED = """
import importlib, json, sys
from airflow.dag_processing.dagbag import DagBag
for module in sys.argv[2].split(","):
    importlib.import_module(module)
before = set(sys.modules)
bag = DagBag(sys.argv[1])
assert not bag.import_errors, bag.import_errors
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def _imported_by_parsing(dags: Path, preloaded: list[str]) -> set[str]:
    """The modules parsing ``dags`` (a DAG file, or the folder) imports in a fresh interpreter that has imported
    ``preloaded``."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", PRELOADED_THEN_PARSED, str(dags), ",".join(["airflow", *preloaded])],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return set(json.loads(done.stdout.splitlines()[-1]))


@pytest.mark.parametrize("dag_file", DAG_FILES, ids=lambda path: path.name)
def test_the_dag_processor_imports_the_kubernetes_clients_once_not_in_every_parse(dag_file: Path) -> None:
    """The DAG processor imports the airflow modules a file names before it forks each parse of it: the file must
    name what pulls in the Kubernetes clients, or every parse (every 30 s per file) pays about 2 s of CPU."""
    from airflow.utils.file import iter_airflow_imports

    imported = _imported_by_parsing(dag_file, list(iter_airflow_imports(str(dag_file))))
    assert not imported & KUBERNETES_CLIENTS, sorted(imported & KUBERNETES_CLIENTS)


def test_a_task_process_starts_with_what_its_dag_file_imports_from_the_schedulers_preload() -> None:
    """Compose's scheduler (and the embedded Airflow, which takes its settings) forks task processes from workers
    that preloaded modules: each must import, and together they must cover what parsing the DAG files for a task
    costs most (a task process parses its DAG file first)."""
    from standins.airflow_env import scheduler_env

    settings = scheduler_env()
    assert settings["AIRFLOW__SCHEDULER__MP_START_METHOD"] == "forkserver"
    preloaded = settings["AIRFLOW__SCHEDULER__MP_FORKSERVER_PRELOAD"].split(",")
    imported = _imported_by_parsing(ROOT / "dags", preloaded)  # a module that does not import fails here
    assert not imported & KUBERNETES_CLIENTS, sorted(imported & KUBERNETES_CLIENTS)
