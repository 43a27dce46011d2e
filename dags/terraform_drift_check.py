"""
### Terraform drift check

Learns, every day and without anyone running commands, whether the infrastructure has drifted from the
Terraform code in `terraform/`, and what drifted. It never changes anything: each stack gets a
`terraform plan -refresh-only -lock=false` (no apply, no state lock), in a pod with the Terraform image.

| Task | Runs | Does |
|---|---|---|
| `stack_arguments` | worker | one set of arguments per stack of the run's `stacks` (by default, `platform.yaml`) |
| `check_stack` | pod per stack | `terraform init`, the refresh-only plan, `terraform show -json`: drifted resources and attributes, sensitive values redacted |
| `report` | worker | applies the allowlist of accepted drift, writes the markdown report (task log and `<data root>/reports/terraform-drift/`), alerts on drift or error |

A stack whose check fails (Terraform exit code 1: a broken configuration, an unreachable backend) fails its
task and is reported as an **error**, never as in sync or as drift; the run then fails after the report.
Drift is decided from the plan's `resource_drift`: a failing `check` block alone is listed, not alerted.

**Settings**: stacks, schedule, image, allowlist and report folder in `plugins/mlops/platform.yaml`
(`terraform_drift`); Airflow Variables `terraform_backend_config` (backend settings shared by the stacks, a
JSON object), `mlops_data_root` and `mlops_pod_runtime`; alerts go to the connection `mlops_alerts` (a
Slack-style webhook or an SMTP server; without it they are logged at WARNING).
"""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from typing import Any

# Airflow's DAG processor imports the airflow modules a DAG file names once, before it forks the process that parses
# the file ([dag_processor] parsing_pre_import_modules). Named here, the Kubernetes provider's pod operator (with its
# two Kubernetes clients: about 2 s of CPU) is imported once, not in every parse; the operators import it anyway.
import airflow.providers.cncf.kubernetes.operators.pod  # noqa: F401
import pendulum
from airflow.sdk import CronTriggerTimetable, Param, dag, task
from airflow.sdk.exceptions import AirflowFailException

from mlops.operators import TerraformDriftOperator
from mlops.platform_config import load_platform

log = logging.getLogger(__name__)
DRIFT = load_platform().terraform_drift
STACK_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]*$"


@dag(
    schedule=CronTriggerTimetable(DRIFT.schedule, timezone="UTC"),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=2),
    tags=["terraform", "drift", "infrastructure"],
    doc_md=__doc__,
    default_args={
        "owner": "platform",
        "retries": 1,
        "retry_delay": timedelta(minutes=5),
    },
    params={
        "stacks": Param(
            [stack.model_dump() for stack in DRIFT.stacks],
            type="array",
            minItems=1,
            title="Stacks",
            description="The Terraform stacks to check: name, folder and the stack's own backend settings",
            items={
                "type": "object",
                "required": ["name", "dir"],
                "additionalProperties": False,
                "properties": {
                    "name": {"type": "string", "pattern": STACK_NAME_PATTERN},
                    "dir": {"type": "string", "minLength": 1},
                    "backend_config": {"type": "object", "additionalProperties": {"type": "string"}},
                },
            },
        ),
    },
)
def terraform_drift_check() -> None:
    # Long on purpose: the DAG's three small tasks are defined where they are wired, as in Airflow's examples.
    @task
    def stack_arguments(params: dict[str, Any] | None = None) -> list[list[str]]:
        """The check's arguments for each stack; names must be unique, since the report is keyed by them."""
        stacks = (params or {})["stacks"]
        names = [stack["name"] for stack in stacks]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise AirflowFailException(f"stack names must be unique; repeated: {duplicates}")
        return [
            [
                "--stack",
                s["name"],
                "--dir",
                s["dir"],
                "--backend-config",
                json.dumps(s.get("backend_config", {})),
            ]
            for s in stacks
        ]

    check_stack = TerraformDriftOperator.partial(
        task_id="check_stack",
        map_index_template="{{ task.arguments[1] }}",
    ).expand(arguments=stack_arguments())

    @task(trigger_rule="all_done")
    def report(results: Any, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Aggregate the stacks, write the report, alert on drift or error; fail the run if a check failed.

        ``results`` is the mapped checks' XComArg when wired and their list of results at run time.
        """
        from airflow.sdk import Variable, get_current_context

        from mlops.drift.report import apply_allowlist, load_allowlist, render_markdown
        from mlops.notifiers import AlertNotifier
        from mlops.platform_config import load_platform

        platform = load_platform()
        allowlist = load_allowlist(platform.drift_allowlist_file)
        by_stack = {result["stack"]: result for result in (results or []) if isinstance(result, dict)}
        summary = []
        for stack in (params or {})["stacks"]:
            result = by_stack.get(stack["name"])
            if result is None:
                # No result means the check failed (Terraform exit code 1, a crash, a timeout): an error.
                summary.append({"stack": stack["name"], "status": "error", "drift": [], "failed_checks": []})
            else:
                summary.append(apply_allowlist(result, allowlist))
        task_context = get_current_context()
        run_id = task_context["run_id"]
        title = f"Terraform drift check {run_id}"
        markdown = render_markdown(summary, title)
        log.info("drift report:\n%s", markdown)

        data_root = str(Variable.get("mlops_data_root", default=".local/data")).rstrip("/")
        target = write_report(data_root, DRIFT.report_prefix, run_id, markdown)
        log.info("report written to %s", target)

        drifted = [s["stack"] for s in summary if s["status"] == "drift"]
        errored = [s["stack"] for s in summary if s["status"] == "error"]
        if drifted or errored:
            problems = [f"drift in {', '.join(drifted)}"] * bool(drifted) + [
                f"errors in {', '.join(errored)}"
            ] * bool(errored)
            AlertNotifier(
                title=f"Terraform drift check: {'; '.join(problems)}",
                message=f"{markdown}\nReport: {target}",
            ).notify(task_context)
        if errored:
            raise AirflowFailException(f"the drift check failed for {errored}: see their task logs")
        return {"report": target, "drifted": drifted, "stacks": [s["stack"] for s in summary]}

    report(check_stack.output)


def write_report(data_root: str, prefix: str, run_id: str, markdown: str) -> str:
    """Write the report under the data root (a folder or ``s3://``), named after the run; return where."""
    import re

    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", run_id) + ".md"
    if data_root.startswith("s3://"):
        import boto3

        bucket, _, key_prefix = data_root.removeprefix("s3://").partition("/")
        key = "/".join(part for part in (key_prefix, prefix, name) if part)
        boto3.client("s3").put_object(
            Bucket=bucket, Key=key, Body=markdown.encode(), ContentType="text/markdown"
        )
        return f"s3://{bucket}/{key}"
    from pathlib import Path

    from contract import replacing

    target = Path(data_root) / prefix / name
    with replacing(target) as partial:  # a reader never sees half a report
        partial.write_text(markdown)
    return str(target)


terraform_drift_check()
