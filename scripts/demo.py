"""Run every model's training DAG end to end on the embedded defaults and print what happened.

Each DAG ends with a canary release of the new model against the model's champion. On a fresh machine a model
on a schedule has no champion yet, so the demo first runs its DAG for the week before the newest complete week,
released by hand (``release: always``: a run for an old week would only register its model) as the first
champion; then it runs the DAG for the newest complete week: that week's model, trained on its own window of the
data, goes through the chart's canary steps on loopback and becomes the champion. A model that retrains only
when triggered (no time column) gets one run: its first release, or a canary against its champion. At the end,
where each model serves.

Expects the environment that ``make demo`` sets: AIRFLOW_HOME with a migrated database, the MLflow server
running, and the Airflow Variables (``AIRFLOW_VAR_*``) that point the pipeline at it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from functools import cache
from pathlib import Path
from typing import Any, TextIO

import pendulum

from mlops.intervals import latest_complete
from mlops.models import Model, load_models
from mlops.monitor_dag import DATA_ROOT
from mlops.platform_config import load_platform

STAGE_TASKS = (
    "prepare",
    "tuning_plan",
    "tune",
    "tune_best",
    "train",
    "evaluate",
    "gate",
    "register",
    "release_gate",
)
RELEASE_TASKS = (
    "deploy",
    "watch_rollout",
    "promote",
    "announce_champion",
    "needs_rollback",
    "rollback",
    "alert",
)


#: Lines of the log shown when a task fails.
FAILED_TAIL_LINES = 30


def run_dag(dag_id: str, conf: dict[str, Any], dags_folder: Path, interval_end: Any, log_file: Path) -> Any:
    """Run the DAG for the interval that ends at ``interval_end`` (its logical date, as ``dag.test`` infers it);
    None: now, without a logical date, as a run the scheduler starts on an asset event (a new run each time).
    Airflow's log lines (and the stage pods') go to ``log_file``; the terminal gets a line per task as it starts
    and ends, and the end of the log when one fails."""
    # run_after too, so that the run id (and the run key of its MLflow run and version) is the interval's: a second
    # `make demo` re-runs the same runs and registers nothing new.
    run_after = interval_end if interval_end is not None else pendulum.now("UTC")
    with quiet(log_file) as terminal:
        dag = dag_bag(dags_folder).dags[dag_id]
        progress = Progress(terminal, dag_id, dag_run_id(interval_end, run_after), log_file)
        progress.start()
        try:
            return dag.test(logical_date=interval_end, run_after=run_after, run_conf=conf)
        finally:
            progress.stop()


@cache
def dag_bag(dags_folder: Path) -> Any:
    """The DAG folder, parsed once for all the demo's runs."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(str(dags_folder))
    if bag.import_errors:
        raise SystemExit(f"DAG import errors: {bag.import_errors}")
    return bag


def dag_run_id(logical_date: Any, run_after: Any) -> str:
    """The run id ``dag.test`` gives its run for that logical date and run-after, by Airflow's own rule."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.types import DagRunType

    return DagRun.generate_run_id(run_type=DagRunType.MANUAL, logical_date=logical_date, run_after=run_after)


@contextmanager
def quiet(log_file: Path) -> Iterator[TextIO]:
    """Send this process's stdout and stderr (and so its subprocesses', the local pods') to ``log_file``; yield the
    terminal's stdout."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    terminal = os.fdopen(os.dup(1), "w", buffering=1)
    # At the descriptors, not by swapping sys.stdout: Airflow's loggers keep the stream they first wrote to (a
    # swapped one would be closed under them by the second run), and the stage pods inherit the descriptors.
    with log_file.open("a", buffering=1) as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield terminal
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            terminal.close()


#: A task still running after this long gets a line saying so; a shorter one only its end line.
RUNNING_LINE_AFTER_S = 1.0


class Progress(threading.Thread):
    """Prints a line per task of the run as it ends (state, duration; not the skipped ones), and before that as it
    runs if it takes a while, from Airflow's database."""

    def __init__(self, terminal: TextIO, dag_id: str, run_id: str, log_file: Path) -> None:
        super().__init__(daemon=True)
        self.terminal, self.dag_id, self.run_id, self.log_file = terminal, dag_id, run_id, log_file
        self.seen: dict[str, str] = {}
        self.stopping = threading.Event()
        #: Task instances a re-run of the same run (a second `make demo`) has not reset yet are not this run's.
        self.since = pendulum.now()

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=10)
        with suppress(Exception):  # the last changes; a busy database must not hide the run's own outcome
            self.report()

    def run(self) -> None:
        while not self.stopping.wait(0.5):
            try:
                self.report()
            except Exception:  # a busy database (SQLite): the next look gets it
                continue

    def report(self) -> None:
        from airflow.models.taskinstance import TaskInstance
        from airflow.utils.session import create_session

        with create_session() as session:
            rows = (
                session.query(TaskInstance)
                .filter(TaskInstance.dag_id == self.dag_id, TaskInstance.run_id == self.run_id)
                .all()
            )
            changes = [
                (
                    ti.task_id,
                    ti.map_index,
                    str(getattr(ti.state, "value", ti.state)),
                    ti.start_date,
                    ti.end_date,
                )
                for ti in rows
            ]
        for task_id, map_index, state, start, end in sorted(changes, key=lambda c: (c[3] is None, c[3] or 0)):
            name = task_id if map_index < 0 else f"{task_id}[{map_index}]"
            # Skipped tasks (tuning off, no rollback needed) are what a run does not do: the summary says so.
            if state in ("None", "scheduled", "queued", "skipped") or self.seen.get(name) == state:
                continue
            if end is not None and end < self.since:
                continue  # an earlier attempt's outcome, about to be cleared
            running_s = (pendulum.now() - start).total_seconds() if start else None
            if state == "running" and running_s is not None and running_s < RUNNING_LINE_AFTER_S:
                continue  # a short task gets its end line only
            self.seen[name] = state
            took = f" {(end - start).total_seconds():6.1f} s" if start and end else ""
            self.terminal.write(f"  {pendulum.now():%H:%M:%S}  {name:<20} {state}{took}\n")
            if state == "failed":
                self.terminal.write(tail(self.log_file, FAILED_TAIL_LINES))


def tail(path: Path, lines: int) -> str:
    """The last lines of the log, indented, with where the rest is."""
    last = path.read_text(errors="replace").splitlines()[-lines:]
    return "".join(f"      | {line}\n" for line in last) + f"      (the whole log: {path})\n"


def summarise(dag_run: Any, tracking_uri: str, took_s: float | None = None) -> int:
    """What the run did, section by section; 1 when it did not succeed. The tasks were shown as they ended: here
    only the DAG run's outcome, and the tasks that neither succeeded nor were skipped."""
    from mlflow import MlflowClient

    from contract import run_key
    from ml import tracking

    took = f" in {took_s:.0f}s" if took_s is not None else ""
    print(f"\n== Run ==\n  {dag_run.state}{took} ({dag_run.run_id})")
    instances = {ti.task_id: ti for ti in dag_run.get_task_instances()}
    for task_id in (*STAGE_TASKS, *RELEASE_TASKS):
        state = getattr(instances.get(task_id), "state", None)
        if state not in ("success", "skipped"):
            print(f"  {task_id:<17} {state}")
    summarise_data(instances)

    client = MlflowClient(tracking_uri)
    dag_run_key = run_key(dag_run.dag_id, dag_run.run_id)
    run = tracking.find_keyed_run(dag_run.dag_id, dag_run_key)
    if run is None:
        print("\nNo MLflow run was recorded for this DAG run.")
        return 1
    print("\n== MLflow run ==")
    print(f"  {tracking_uri}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id} "
          f"({run.data.params.get('model_type')}, trained on {run.data.params.get('device_used')})")  # fmt: skip
    print_metrics(run.data.metrics)
    print("\n== Decision ==")
    evaluation = json.loads(Path(client.download_artifacts(run.info.run_id, "evaluation.json")).read_text())
    print(f"  {evaluation['decision'].upper()}")
    for reason in evaluation["reasons"]:
        print(f"  - {reason}")
    if (compared := evaluation.get("comparison")) and not compared["passes"]:
        print(
            f"  The champion stays: the model's rule ({evaluation['rule']['policy']}) reads the interval, and this "
            "week's evidence does not say what the rule requires (the plot: plots/champion_comparison.png)."
        )
    print("\n== Registry ==")
    name = evaluation["registered_model_name"]
    version = tracking.find_keyed_version(name, dag_run_key)
    if version is None:
        print("  nothing registered by this run")
        return 0 if dag_run.state == "success" else 1
    aliases = ", ".join(sorted(client.get_model_version(name, version.version).aliases)) or "none"
    print(f"  {name} version {version.version} (aliases: {aliases})")
    print(f"  {tracking_uri}/#/models/{name}/versions/{version.version}")
    summarise_release(dag_run)
    return 0 if dag_run.state == "success" else 1


#: The test metrics the summary shows, in its order: (row, this model's metric, the champion's on the same rows).
TEST_METRICS = [(name, f"test_{name}", f"champion_test_{name}")
                for name in ("average_precision", "roc_auc", "precision", "recall", "f1")]  # fmt: skip
TEST_METRICS.append(("decision threshold", "decision_threshold", "champion_test_threshold"))


def print_metrics(metrics: dict[str, float]) -> None:
    """The new model's test metrics, beside the champion's on the same rows when there was one."""
    champion = any(theirs in metrics for _, _, theirs in TEST_METRICS)
    print(f"\n== Test metrics ==\n  {'':<20} {'this model':>10}" + (f" {'champion':>10}" if champion else ""))
    for row, ours, theirs in TEST_METRICS:
        if ours in metrics:
            line = f"  {row:<20} {metrics[ours]:>10.4f}"
            print(line + (f" {metrics[theirs]:>10.4f}" if theirs in metrics else ""))


def summarise_data(instances: dict[str, Any]) -> None:
    """The windows the run read and what each split holds."""
    prepared = instances["prepare"].xcom_pull(task_ids="prepare") if "prepare" in instances else None
    if not prepared:
        return
    print("\n== Data ==")
    windows = prepared.get("windows") or {}
    for name in ("training", "evaluation"):
        if name in windows:
            print(f"  {name + ' window':<19} {windows[name][0][:16]} to {windows[name][1][:16]}")
    print(f"  rows {prepared['rows']}, positives {prepared['positives']}")
    registration = instances["register"].xcom_pull(task_ids="register") if "register" in instances else None
    if registration:
        plan = registration["release"]
        if plan.get("started_by"):
            print(f"  started by {plan['started_by']}")
        print(f"  release plan: {'release' if plan['release'] else 'no release'}: {plan['reason']}")


def print_budgets(checked: dict[str, Any]) -> None:
    """The error budgets the deploy step read before releasing (none on a first release)."""
    if checked.get("budgets"):
        left = ", ".join(budget_left(b["slo"], b["remaining"]) for b in checked["budgets"])
        overridden = " (overridden)" if checked["overridden"] else ""
        print(f"  error budgets ({checked['source']}): {left}{overridden}")


def budget_left(slo: str, remaining: float) -> str:
    """What is left of an SLO's error budget: a share of it, or, once it is spent, how many times over."""
    if remaining > 0:
        return f"{slo} {remaining:.0%} left"
    used = 1 - remaining
    return f"{slo} spent, {used:,.0f}x" if used >= 10 else f"{slo} spent, {used:.1f}x"


def summarise_release(dag_run: Any) -> None:
    """The release: revision, each canary step with its analysis figures, the verdict and the promotion."""
    results = {ti.task_id: ti.xcom_pull(task_ids=ti.task_id) for ti in dag_run.get_task_instances()
               if ti.task_id in RELEASE_TASKS and ti.state == "success"}  # fmt: skip
    deployment = results.get("deploy")
    if not deployment:
        return
    print("\n== Release ==")
    print_budgets(deployment.get("error_budget") or {})
    if deployment.get("refused"):
        print(f"  not released: {deployment['refused']}")
        return
    previous = deployment["previous_revision"]
    print(
        f"  helm release {deployment['release']} revision {deployment['revision']} serves "
        f"{deployment['model_uri']}"
        + (f" (replacing revision {previous})" if previous else " (first release)")
    )
    verdict = results.get("watch_rollout")
    if not verdict:
        return
    from standins.rollouts import read_status

    state_dir = Path(os.environ["AIRFLOW_VAR_MLOPS_DATA_ROOT"]) / load_platform().release.local.state_dir
    status = read_status(state_dir / deployment["release"]) or {}
    if verdict["measurements"] and status.get("steps"):
        steps = [f"{s['setWeight']}%" if "setWeight" in s else f"pause {s['pause'].get('duration', '')}".strip()
                 if "pause" in s else "champion check" for s in status["steps"]]  # fmt: skip
        print(f"  canary steps (the chart's): {' -> '.join(steps)}; analysis at each pause")
    if not verdict["measurements"]:
        print("  no canary: a first release has no stable model to compare against (as in Argo Rollouts)")
    else:
        print(f"  {'step':>4}  {'traffic':>7}  {'metric':<21} {'value':>8}  {'condition':<18} result")
        for m in verdict["measurements"]:
            value = m["value"]
            shown = "no data" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)
            requests = f" ({m['requests']} requests)" if m.get("requests") is not None else ""
            print(
                f"  {m['step']:>4}  {m.get('weight', '?'):>6}%  {m['metric']:<21} {shown:>8}  "
                f"{m['condition']:<18} {m['phase']}{requests}"
            )
    print(f"  verdict: {verdict['phase']}: {verdict['message']}")
    promotion = results.get("promote")
    if promotion and promotion["promoted"]:
        was = f"v{promotion['previous_champion']}" if promotion["previous_champion"] else "nothing"
        print(f"  {promotion['alias']}: {was} -> v{promotion['version']}")
    elif promotion and promotion["verdict"] != "promoted":
        print(
            f"  {promotion['verdict']}: {promotion['reason']}; {promotion['alias']} stays on v{promotion['champion']}"
        )
    rollback = results.get("rollback")
    if rollback:
        print(f"  rolled back to revision {rollback['restored_revision']} ({rollback['restored_model_uri']})")
    # What serves once the release's last revision has settled (the rollback's, when there was one): the local
    # controller restores the champion's server after `helm rollback` returns, as Argo Rollouts does.
    settled = settle(state_dir / deployment["release"], (rollback or deployment)["revision"])
    if settled:
        print(f"  serving {settled['stableModelUri']} at {settled['endpoint']}")


def settle(release_dir: Path, revision: int, timeout_s: float = 120) -> dict[str, Any] | None:
    """The release's status once ``revision``'s rollout has an outcome (None if it has none in time)."""
    from standins.rollouts import read_result, read_status

    deadline = time.monotonic() + timeout_s
    while read_result(release_dir, revision) is None:
        if time.monotonic() > deadline:
            print(f"  revision {revision} has no outcome after {timeout_s:.0f}s: see {release_dir}")
            return None
        time.sleep(0.5)
    return read_status(release_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows-per-day", type=int, default=3000,
                        help="daily rows of a model's synthetic stream (a synthetic:// dataset)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--conf", default="{}", help="extra DAG run conf as JSON (every model's runs)")
    parser.add_argument(
        "--model", action="append", default=[], help="only this model (its file's key; repeatable)"
    )
    parser.add_argument("--log-file", type=Path, default=Path(".local/demo.log"),
                        help="where Airflow's and the stages' log lines go (the terminal shows a line per task)")  # fmt: skip
    args = parser.parse_args()
    models = load_models()
    if models.broken:
        raise SystemExit("broken model files:\n" + "\n".join(models.broken.values()))
    chosen = [models.get(key) for key in args.model] or list(models)
    dags_folder = Path(os.environ.get("AIRFLOW__CORE__DAGS_FOLDER", "dags"))
    data_root = Path(os.environ["AIRFLOW_VAR_MLOPS_DATA_ROOT"])
    tracking_uri = os.environ["AIRFLOW_VAR_MLFLOW_TRACKING_URI"]
    os.environ.setdefault("MLFLOW_TRACKING_URI", tracking_uri)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # the summary's downloads, quietly
    log_file = args.log_file.resolve()
    log_file.unlink(missing_ok=True)
    print(f"Airflow's and the stages' log lines go to {log_file}; a line per task here.")
    print(f"Models (dags/models/): {', '.join(f'{m.key} ({m.registered_model})' for m in chosen)}")
    failed = 0
    for model in chosen:
        prepare_table(model, data_root)
        conf = {**synthetic_conf(model, args.rows_per_day, args.seed), **json.loads(args.conf)}
        failed |= demo_model(model, conf, dags_folder, tracking_uri, log_file)
    print_serving(chosen, data_root)
    sys.exit(failed)


def banner(text: str) -> None:
    print(f"\n{'=' * 4} {text} {'=' * max(4, 94 - len(text))}")


def demo_model(
    model: Model, conf: dict[str, Any], dags_folder: Path, tracking_uri: str, log_file: Path
) -> int:
    """The model's runs (see the module's docstring); 1 when one did not succeed."""
    dag_id, retraining = model.training_dag_id, model.retraining
    newest = latest_complete(retraining.schedule, retraining.timezone, pendulum.now("UTC"))
    banner(f"{model.registered_model} ({model.file}): DAG {dag_id}")
    on_schedule = retraining.trigger != "manual"
    if on_schedule and not has_champion(model.registered_model):
        print(f"No champion yet: a run for the week ending {newest.start:%Y-%m-%d %H:%M}, released by hand, makes "
              f"the first one (with {json.dumps(conf)})")  # fmt: skip
        started = time.perf_counter()
        first = run_dag(dag_id, {**conf, "release": "always"}, dags_folder, newest.start, log_file)
        if summarise(first, tracking_uri, time.perf_counter() - started) != 0:
            return 1
        then = (
            "Now a new model, canaried against that champion"
            if has_champion(model.registered_model)
            else "The first run made no champion (see its decision): the newest week's model is a first release too"
        )
        banner(f"{model.registered_model}: {then}")
    superseded = superseding_champion(model, dag_run_id(newest.end, newest.end))
    if superseded:
        print(f"The champion is {superseded}, from a run after this week's (make demo-loop's retraining): re-running "
              "this week would be refused (the champion moved since its evaluation), so it is not re-run")  # fmt: skip
        return 0
    what = "the newest complete week" if on_schedule else "the whole table (no time column)"
    print(
        f"Running {dag_id} for {what}, interval ending {newest.end:%Y-%m-%d %H:%M}, with {json.dumps(conf)}"
    )
    started = time.perf_counter()
    dag_run = run_dag(dag_id, conf, dags_folder, newest.end, log_file)
    return summarise(dag_run, tracking_uri, time.perf_counter() - started)


def synthetic_conf(model: Model, rows_per_day: int, seed: int) -> dict[str, Any]:
    """The demo's size of a model's synthetic stream (``--rows-per-day``); nothing for a model on a real table."""
    from urllib.parse import parse_qsl, urlencode, urlsplit

    parts = urlsplit(model.dataset.uri)
    if parts.scheme != "synthetic":
        return {}
    query = {**dict(parse_qsl(parts.query)), "rows_per_day": str(rows_per_day), "seed": str(seed)}
    return {"dataset_uri": parts._replace(query=urlencode(query)).geturl()}


#: Tables a shipped model reads under the data root (``{data_root}/<path>`` in its file), which the demo writes
#: there from what the repository holds, as a user would bring them: UCI Adult as Parquet with named columns.
DEMO_TABLES = ("tables/adult.parquet",)


def prepare_table(model: Model, data_root: Path) -> None:
    """Write the model's table under the data root the first time, when it is one of the demo's tables."""
    relative = model.dataset.uri.removeprefix(f"{DATA_ROOT}/")
    target = data_root / relative
    if relative not in DEMO_TABLES or target.exists():
        return
    from benchmarks.bench_quality import adult_table  # the one demo table: writes <folder>/adult.parquet

    target.parent.mkdir(parents=True, exist_ok=True)
    written = adult_table(target.parent)
    if written != target:
        raise SystemExit(f"the Adult table went to {written}, not {target}")
    print(f"{model.key}'s table from the repository: {target}")


def print_serving(models: list[Model], data_root: Path) -> None:
    """Where each model's local release serves its champion."""
    from standins.rollouts import read_status

    state_dir = data_root / load_platform().release.local.state_dir
    print("\n== Serving ==")
    for model in models:
        status = read_status(state_dir / model.release.name) or {}
        where = (f"{status['stableModelUri']} at {status['endpoint']}" if status.get("endpoint")
                 else "nothing (no release)")  # fmt: skip
        print(f"  {model.registered_model:<24} {where}")
    print("  (POST /predict; stop them all: make release-down)")


def superseding_champion(model: Model, run_id: str) -> str | None:
    """The champion (``vN``), if a later version than the one the run registered: a re-run would be refused."""
    from contract import run_key
    from ml import tracking

    mine = tracking.find_keyed_version(model.registered_model, run_key(model.training_dag_id, run_id))
    if mine is None or not has_champion(model.registered_model):
        return None
    alias = load_platform().registry.production_alias
    champion = tracking.client().get_model_version_by_alias(model.registered_model, alias).version
    return f"v{champion}" if int(champion) > int(mine.version) else None


def has_champion(model_name: str) -> bool:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        aliases = MlflowClient().get_registered_model(model_name).aliases
    except MlflowException:
        return False
    return load_platform().registry.production_alias in aliases


if __name__ == "__main__":
    main()
