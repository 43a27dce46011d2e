"""The production feedback loop on the embedded defaults: a champion serves, its labels come back, monitoring finds it
decayed, and retraining starts.

1. The card-fraud model's champion (``make demo``'s; made first if there is none) serves a day of traffic from the
   synthetic stream, each transaction sent with its id (``X-Request-ID``): the inference API records every row.
   That day, the stream's fraud pattern turns around (its ``pattern_turns_on`` option: fraudsters who adapted; the
   transactions look as before, so no drift shows, only the labels).
2. The day's labels land where the model file says (``monitoring.labels``), keyed by transaction id.
3. The model's monitoring DAG runs for the interval that judges that day (``label_delay_days`` later): it joins the
   recorded rows with the labels, logs the version's live figures on its MLflow run, finds the champion decayed and
   announces it on the model's decay asset.
4. The training DAG runs on that event (a scheduler starts it on the asset; here the demo starts it as the scheduler
   would, without a logical date) and says what it decided.

Expects the environment ``make demo-loop`` sets (the same as ``make demo``'s).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pendulum

from mlops.models import Model, load_models
from mlops.monitor_dag import DATA_ROOT, PREDICTIONS_DIR
from mlops.platform_config import load_platform
from scripts.demo import banner, demo_model, has_champion, run_dag, synthetic_conf

#: The model the loop runs on: it has labels (``monitoring.labels``) and a synthetic stream whose pattern can turn.
MODEL = "card_fraud"
#: The day's transactions the champion scores: enough frauds (0.5 %) for the monitoring's minimum of labelled ones.
TRAFFIC_ROWS = 20_000
#: Rows a request carries (each with its transaction id in the request's X-Request-ID).
BATCH = 500
#: How long a release just made may take to load its model.
READY_WITHIN_S = 120
#: How long the API may take to write what it scored (it writes every ``SERVE_RECORD_FLUSH_SECONDS``, 10 s).
RECORDED_WITHIN_S = 60


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows-per-day", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--log-file", type=Path, default=Path(".local/demo-loop.log"))
    args = parser.parse_args()
    model = load_models().get(MODEL)
    if model.monitoring.labels is None:
        raise SystemExit(f"{model.file} names no monitoring.labels: the loop has nothing to join")
    dags_folder = Path(os.environ.get("AIRFLOW__CORE__DAGS_FOLDER", "dags"))
    data_root = Path(os.environ["AIRFLOW_VAR_MLOPS_DATA_ROOT"])
    tracking_uri = os.environ["AIRFLOW_VAR_MLFLOW_TRACKING_URI"]
    os.environ.setdefault("MLFLOW_TRACKING_URI", tracking_uri)
    log_file = args.log_file.resolve()
    log_file.unlink(missing_ok=True)
    print(f"Airflow's and the stages' log lines go to {log_file}; a line per task here.")
    conf = synthetic_conf(model, args.rows_per_day, args.seed)
    started = time.perf_counter()
    endpoint = serving(model, data_root)
    if endpoint is None and has_champion(model.registered_model):
        raise SystemExit(f"{model.registered_model} has a champion, but its local release does not serve (make "
                         "release-down stopped it): `make clean`, then `make demo-loop`, starts over")  # fmt: skip
    if endpoint is None:
        banner(f"{model.registered_model}: no champion serves yet: `make demo`'s runs first")
        if demo_model(model, conf, dags_folder, tracking_uri, log_file) != 0:
            sys.exit(1)
        endpoint = serving(model, data_root, wait_s=READY_WITHIN_S)
    if endpoint is None:
        raise SystemExit(f"{model.registered_model}'s local release serves nothing")
    today = pendulum.now("UTC").date()
    day = serve_a_turned_day(model, endpoint, conf, today, data_root)
    publish_labels(model, day, today, data_root)
    if not judge_today(model, dags_folder, tracking_uri, log_file):
        sys.exit(1)
    banner(
        f"4. The decay starts {model.training_dag_id} (its schedule: its cron, or its model's decay asset)"
    )
    print(f"  {model.registered_model}/decayed got an event: a scheduler starts {model.training_dag_id} on it; the "
          "demo starts it the same way (no logical date: the newest complete week)")  # fmt: skip
    from scripts.demo import summarise

    training_started = time.perf_counter()
    retraining = run_dag(model.training_dag_id, conf, dags_folder, None, log_file)
    failed = summarise(retraining, tracking_uri, time.perf_counter() - training_started)
    print(f"\nThe loop took {time.perf_counter() - started:.0f} s.")
    sys.exit(failed)


def serve_a_turned_day(
    model: Model, endpoint: str, conf: dict[str, Any], today: Any, data_root: Path
) -> pd.DataFrame:
    """Step 1: the champion scores a day of the stream whose pattern turns today; wait until the API recorded it."""
    banner(f"1. A day of traffic to the champion at {endpoint}; today the fraud pattern turns around")
    stream = traffic_stream(conf.get("dataset_uri", model.dataset.uri), today)
    day = traffic(stream, pd.Timestamp(today.isoformat(), tz="UTC"))
    sent = pd.Timestamp.now(tz="UTC")
    scores = send(endpoint, day, model)
    print(f"  {len(day):,} transactions scored ({len(scores):,} answers), "
          f"{int(day[model.dataset.target].sum())} of them fraud")  # fmt: skip
    folder = data_root / PREDICTIONS_DIR / model.registered_model
    recorded = wait_recorded(folder, set(day["transaction_id"].astype(str)), sent)
    print(f"  the API recorded their {recorded:,} rows under {folder}")
    if recorded < len(day):
        raise SystemExit(f"the API recorded {recorded:,} of the {len(day):,} rows it scored in "
                         f"{RECORDED_WITHIN_S} s: was its release made before the prediction record existed? "
                         "(make release-down, then make demo)")  # fmt: skip
    return day


def publish_labels(model: Model, day: pd.DataFrame, today: Any, data_root: Path) -> None:
    """Step 2: the day's labels land where the model file says, keyed by transaction id."""
    labels = model.monitoring.labels
    assert labels is not None
    banner("2. Their labels come back")
    landed = Path(labels.uri.replace(DATA_ROOT, str(data_root)))
    landed.mkdir(parents=True, exist_ok=True)
    published = landed / f"labels-{today.isoformat()}.parquet"
    pd.DataFrame({
        labels.id_column: day["transaction_id"].astype(str),
        model.dataset.target: day[model.dataset.target].astype(int),
        labels.arrived_column: pd.Timestamp.now(tz="UTC"),
    }).to_parquet(published)  # fmt: skip
    print(f"  {len(day):,} labels in {published}")


def judge_today(model: Model, dags_folder: Path, tracking_uri: str, log_file: Path) -> bool:
    """Step 3: the monitoring run for the interval that judges today's predictions; whether it found decay."""
    monitoring = model.monitoring
    judged_end = next_tick(monitoring.schedule, monitoring.timezone) + pd.Timedelta(
        days=monitoring.label_delay_days
    )
    banner(f"3. {model.monitoring_dag_id} for the interval ending {judged_end:%Y-%m-%d %H:%M}: it judges today's "
           f"predictions ({monitoring.label_delay_days} days of labels later)")  # fmt: skip
    monitor_run = run_dag(model.monitoring_dag_id, {}, dags_folder, pendulum.instance(judged_end), log_file)
    judgement = xcom(monitor_run, "monitor")
    if monitor_run.state != "success" or not judgement:
        print(f"  the monitoring run did not succeed ({monitor_run.state})")
        return False
    print_judgement(judgement, tracking_uri)
    if not judgement["decayed"]:
        print("  not decayed: nothing starts retraining")
    return bool(judgement["decayed"])


def serving(model: Model, data_root: Path, wait_s: float = 0) -> str | None:
    """The local release's endpoint of the model, if it serves (and answers within ``wait_s``: a release just made
    is still loading its model)."""
    from standins.rollouts import read_status

    status = read_status(data_root / load_platform().release.local.state_dir / model.release.name) or {}
    endpoint = status.get("endpoint")
    deadline = time.monotonic() + wait_s
    while endpoint:
        try:
            if httpx.get(f"{endpoint}/ready", timeout=5).status_code == 200:
                return str(endpoint)
        except httpx.HTTPError:  # stopped since (make release-down), or not up yet
            pass
        if time.monotonic() > deadline:
            break
        time.sleep(1)
    return None


def traffic_stream(uri: str, day: Any) -> str:
    """The model's stream at production's volume (``TRAFFIC_ROWS`` a day), its fraud pattern turned from ``day``."""
    from urllib.parse import parse_qsl, urlencode, urlsplit

    parts = urlsplit(uri)
    query = {
        **dict(parse_qsl(parts.query)),
        "rows_per_day": str(TRAFFIC_ROWS),
        "pattern_turns_on": day.isoformat(),
    }
    return parts._replace(query=urlencode(query)).geturl()


def traffic(stream: str, day: pd.Timestamp) -> pd.DataFrame:
    """A day of the stream, with its ids and labels."""
    from ml.synthetic import generate_from_uri

    return generate_from_uri(stream, start=day, end=day + pd.Timedelta(days=1))


def send(endpoint: str, day: pd.DataFrame, model: Model) -> Any:
    """Score the day's transactions with the API, a batch at a time, each batch's ids in its X-Request-ID."""
    import numpy as np

    with httpx.Client(base_url=endpoint, timeout=30) as client:
        features = [i["name"] for i in client.get(f"/v2/models/{model.registered_model}").json()["inputs"]]
        scores = []
        for start in range(0, len(day), BATCH):
            rows = day[features].iloc[start : start + BATCH].to_json(orient="records")  # NaN as null
            ids = ",".join(day["transaction_id"].iloc[start : start + BATCH].astype(str))
            answer = client.post("/predict", content=f'{{"instances": {rows}}}',
                                 headers={"X-Request-ID": ids, "Content-Type": "application/json"})  # fmt: skip
            answer.raise_for_status()
            scores += [p["probability"] for p in answer.json()["predictions"]]
    return np.array(scores)


def wait_recorded(folder: Path, ids: set[str], since: pd.Timestamp) -> int:
    """Wait until the API has written the rows of ``ids`` it scored ``since`` under ``folder``; how many of them it
    wrote. Other rows there (the canary's replays, an earlier run's) do not count: counting every row once let the
    monitoring run before a third of the day was written."""
    import pyarrow.parquet as pq

    deadline = time.monotonic() + RECORDED_WITHIN_S
    while True:
        files = sorted(folder.glob("date=*/*.parquet"))
        table = pq.read_table(files, columns=["id", "time"]).to_pandas() if files else pd.DataFrame()
        written = len(ids.intersection(table["id"][table["time"] >= since])) if len(table) else 0
        if written >= len(ids) or time.monotonic() > deadline:
            return written
        time.sleep(1)


def next_tick(schedule: str, timezone: str) -> pd.Timestamp:
    """The schedule's next time after now: the end of the interval now lies in."""
    from croniter import croniter

    now = datetime.now(pendulum.timezone(timezone))
    return pd.Timestamp(croniter(schedule, now).get_next(datetime))


def xcom(dag_run: Any, task_id: str) -> Any:
    instances = {ti.task_id: ti for ti in dag_run.get_task_instances()}
    return instances[task_id].xcom_pull(task_ids=task_id) if task_id in instances else None


def print_judgement(judgement: dict[str, Any], tracking_uri: str) -> None:
    """The monitoring run's figures of each version, and its verdict on the champion."""
    from ml import tracking

    print(f"\n== Live quality (predictions {judgement['window'][0][:16]} to {judgement['window'][1][:16]}, labels "
          f"until {judgement['labels_until'][:16]}) ==")  # fmt: skip
    for figures in judgement["versions"]:
        ap = figures["average_precision"]
        print(f"  v{figures['version']}: {figures['predictions']:,} predictions, {figures['labelled']:,} labelled "
              f"({figures['labelled_positives']} fraud); live AP {'n/a' if ap is None else f'{ap:.3f}'}, "
              f"precision {figures['precision']}, recall {figures['recall']}, score PSI {figures['score_psi']}")  # fmt: skip
        run_id = tracking.client().get_model_version(judgement["registered_model"], figures["version"]).run_id
        run = tracking.client().get_run(run_id)
        print(
            f"  {tracking_uri}/#/experiments/{run.info.experiment_id}/runs/{run_id} (plots/live_quality.png)"
        )
    print(f"\n== Verdict on the champion v{judgement['champion']} ==\n  {judgement['status'].upper()}")
    for reason in judgement["reasons"]:
        print(f"  - {reason}")


if __name__ == "__main__":
    main()
