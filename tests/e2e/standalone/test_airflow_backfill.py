"""Retraining over time with a real scheduler: an operator backfills three past weeks, then re-runs one.

Runs on the session's ``airflow standalone`` (scheduler, LocalExecutor, SQLite; stage pods in the local pod
runtime against the session's real MLflow). The newest week's run that releases is the one a data scientist
triggers from the form in ``test_airflow_ui.py``, after this module.
"""

from __future__ import annotations

import json
from typing import Any

import pendulum
import pytest
from mlflow import MlflowClient

from contract import INTERVAL_TAG, RELEASE_REASON_TAG, RELEASE_SKIPPED, RELEASE_TAG, STARTED_BY_TAG
from mlops.intervals import latest_complete
from mlops.models import load_models
from mlops.platform_config import load_platform
from tests.e2e.conftest import DAG_ID, MODEL_KEY

pytestmark = [pytest.mark.e2e, pytest.mark.scheduler]
PLATFORM = load_platform()
MODEL = load_models().get(MODEL_KEY)
CONF = {
    "dataset_uri": "synthetic://card-transactions?rows_per_day=300&seed=11&fraud_rate=0.02",
    "training_window_days": 14,
    "n_estimators": 30,
    "min_average_precision": 0.05,
}
NEWEST = latest_complete(MODEL.retraining.schedule, MODEL.retraining.timezone, pendulum.now("UTC"))
#: The three weeks before the newest, oldest first (their logical dates are their starts).
WEEKS = [NEWEST.start.subtract(weeks=k) for k in (3, 2, 1)]
RELEASE_TASKS = (
    "deploy",
    "watch_rollout",
    "promote",
    "needs_rollback",
    "rollback",
    "alert",
    "announce_champion",
)


def versions() -> list[Any]:
    found = MlflowClient().search_model_versions(f"name = '{MODEL.registered_model}'")
    return sorted(found, key=lambda v: int(v.version))


def finished(runs: list[dict[str, Any]]) -> bool:
    return all(r["state"] in ("success", "failed") for r in runs)


@pytest.fixture(scope="module")
def backfilled(standalone) -> dict[str, Any]:
    """``airflow backfill create`` over three past weeks, as an operator runs it, until every run ends."""
    before = {r["run_id"] for r in standalone.runs()}
    standalone.cli(
        "backfill", "create", "--dag-id", DAG_ID, "--dag-run-conf", json.dumps(CONF),
        "--from-date", WEEKS[0].isoformat(), "--to-date", WEEKS[-1].isoformat(),
    )  # fmt: skip
    mine = lambda: [r for r in standalone.runs() if r["run_id"] not in before]  # noqa: E731
    standalone.wait(lambda: len(mine()) == len(WEEKS) and finished(mine()), "the backfill")
    return {"runs": mine(), "versions": versions()}


def manifest(standalone, run: dict[str, Any]) -> dict[str, Any]:
    start = pendulum.parse(run["data_interval_start"]).strftime("%Y%m%dT%H%M%S")
    (path,) = (standalone.data_root / "prepared" / DAG_ID).glob(f"{start}_*/*/*/manifest.json")  # run, digest
    return dict(json.loads(path.read_text()))


def test_each_backfilled_week_trains_on_its_own_window_and_registers_without_releasing(
    standalone, backfilled
) -> None:
    runs = backfilled["runs"]
    assert [r["run_type"] for r in runs] == ["backfill"] * len(WEEKS)
    assert [pendulum.parse(r["data_interval_start"]) for r in runs] == WEEKS
    assert {r["state"] for r in runs} == {"success"}, runs
    manifests = [manifest(standalone, r) for r in runs]
    assert len({m["windows"]["evaluation"][0] for m in manifests}) == len(WEEKS)
    assert len({m["digest"] for m in manifests}) == len(WEEKS)
    for run, m in zip(runs, manifests, strict=True):
        # Windows are whole UTC days: the week that starts on Monday 03:00 is judged from Monday 00:00.
        day = pendulum.parse(run["data_interval_start"]).start_of("day")
        assert pendulum.parse(m["windows"]["evaluation"][0]) == day
        assert pendulum.parse(m["windows"]["training"][1]) == pendulum.parse(m["windows"]["evaluation"][0])
        states = standalone.task_states(run["run_id"])
        assert states["register"] == "success" and states["release_gate"] == "success"
        assert {states[t] for t in RELEASE_TASKS} == {"skipped"}, states
    registered = backfilled["versions"]
    assert len(registered) == len(WEEKS)
    assert {v.tags[RELEASE_TAG] for v in registered} == {RELEASE_SKIPPED}
    tagged = sorted(v.tags[INTERVAL_TAG].split("/")[0] for v in registered)
    assert tagged == [m["windows"]["interval"][0] for m in manifests]
    assert all("a backfill run" in v.tags[RELEASE_REASON_TAG] and not v.aliases for v in registered)
    assert {v.tags[STARTED_BY_TAG] for v in registered} == {"a backfill"}


def test_a_backfill_deploys_nothing(standalone, backfilled) -> None:
    from standins.release_store import ReleaseStore

    store = ReleaseStore(standalone.data_root / PLATFORM.release.local.state_dir, MODEL.release.name)
    assert store.history() == []


def test_clearing_and_re_running_a_week_registers_nothing_new(standalone, backfilled) -> None:
    week = WEEKS[1]
    (run_id,) = [r["run_id"] for r in backfilled["runs"] if pendulum.parse(r["data_interval_start"]) == week]
    standalone.cli("tasks", "clear", DAG_ID, "--start-date", week.isoformat(), "--end-date", week.isoformat(),
                   "--yes")  # fmt: skip
    assert standalone.task_states(run_id)["register"] is None
    rerun = lambda: next(r for r in standalone.runs() if r["run_id"] == run_id)  # noqa: E731
    standalone.wait(lambda: standalone.task_states(run_id)["register"] is not None and finished([rerun()]),
                    "the cleared week")  # fmt: skip
    assert rerun()["state"] == "success" and standalone.task_states(run_id)["register"] == "success"
    assert [v.version for v in versions()] == [v.version for v in backfilled["versions"]]
