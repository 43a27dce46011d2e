"""The drift check DAG end to end: dag.test() in the local pod runtime, the real terraform on fixture stacks,
alerts to a real webhook on loopback."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pendulum
import pytest

from tests.terraform.fixtures import API_TOKEN, STACKS, edit_world

ROOT = Path(__file__).resolve().parents[2]
DAG_ID = "terraform_drift_check"
pytestmark = pytest.mark.e2e


@pytest.fixture()
def alerts(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """A webhook on loopback, configured as the alert connection; yields the texts it received."""
    received: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"])))["text"])
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    # A Slack incoming webhook, as the Slack provider's connection describes one.
    host = f"127.0.0.1:{server.server_address[1]}/services"
    conn = {"conn_type": "slackwebhook", "host": host, "schema": "http", "password": "T000/B000/drift"}
    monkeypatch.setenv("AIRFLOW_CONN_MLOPS_ALERTS", json.dumps(conn))
    yield received
    server.shutdown()
    server.server_close()


@pytest.fixture()
def dag(airflow_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("AIRFLOW_VAR_MLOPS_DATA_ROOT", str(tmp_path / "data-root"))
    monkeypatch.setenv("AIRFLOW_VAR_MLOPS_POD_RUNTIME", "local")
    monkeypatch.setenv("AIRFLOW_VAR_TERRAFORM_BACKEND_CONFIG", "{}")
    dag = DagBag(str(ROOT / "dags")).dags[DAG_ID]
    for task in dag.tasks:
        task.retries = 0  # dag.test() sleeps through retry delays; failures here must show at once
    return dag


def run(dag: Any, day: int, stacks: dict[str, Path]) -> Any:
    when = pendulum.datetime(2026, 4, day, tz="UTC")
    conf = {"stacks": [{"name": name, "dir": str(path)} for name, path in stacks.items()]}
    return dag.test(logical_date=when, run_after=when, run_conf=conf)


def states(dag_run: Any) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for ti in sorted(dag_run.get_task_instances(), key=lambda ti: ti.map_index):
        found.setdefault(ti.task_id, []).append(ti.state)
    return found


def report_file(dag_run: Any) -> Path:
    folder = Path(os.environ["AIRFLOW_VAR_MLOPS_DATA_ROOT"]) / "reports" / "terraform-drift"
    (path,) = folder.glob("*.md")
    return path


def test_two_stacks_one_drifted_reports_the_drift_and_alerts_once(
    dag, deploy, terraform_env, alerts, capfd
) -> None:
    stacks = {"network": deploy("in_sync"), "world": deploy("world")}
    edit_world(terraform_env, "bucket", size="large")
    edit_world(terraform_env, "credentials", secret="changed-by-hand-0x5ec")
    dag_run = run(dag, 1, stacks)
    assert dag_run.state == "success", states(dag_run)
    assert states(dag_run) == {
        "stack_arguments": ["success"],
        "check_stack": ["success", "success"],
        "report": ["success"],
    }
    report = report_file(dag_run).read_text()
    assert "| network | in sync | 0 | 0 | 0 |" in report
    assert "| world | **DRIFT** | 2 | 0 | 0 |" in report
    assert "- `world_object.bucket`: changed outside Terraform" in report
    assert '  - `size`: "small" -> "large"' in report
    assert "  - `secret`: (sensitive) -> (sensitive)" in report
    readme = (ROOT / "README.md").read_text()
    assert f"```markdown\n{report}```" in readme, "the README's sample report is no longer what a run writes"
    (alert,) = alerts
    assert "drift in world" in alert and "world_object.bucket" in alert
    logs = capfd.readouterr()
    for secret in (API_TOKEN, "changed-by-hand-0x5ec"):
        assert secret not in report and secret not in alert
        assert secret not in logs.out + logs.err


def test_a_broken_stack_fails_its_task_is_reported_as_an_error_and_alerts(
    dag, deploy, terraform_env, alerts, tmp_path
) -> None:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(STACKS / "broken", broken)
    dag_run = run(dag, 2, {"broken": broken, "network": deploy("in_sync")})
    assert dag_run.state == "failed"
    result = states(dag_run)
    assert result["check_stack"] == ["failed", "success"]
    assert result["report"] == ["failed"], "the report must fail the run after reporting the error"
    report = report_file(dag_run).read_text()
    assert "| broken | **ERROR** |" in report and "| network | in sync |" in report
    assert "DRIFT" not in report, "an error is never reported as drift"
    (alert,) = alerts
    assert "errors in broken" in alert and "drift in" not in alert


def test_no_drift_and_a_failing_check_block_send_no_alert(dag, deploy, alerts) -> None:
    dag_run = run(dag, 3, {"network": deploy("in_sync"), "release": deploy("failing_check")})
    assert dag_run.state == "success", states(dag_run)
    report = report_file(dag_run).read_text()
    assert "| release | in sync | 0 | 0 | 1 |" in report
    assert "- check.release_is_current: release 1.0.0 is out of date" in report
    assert alerts == []
