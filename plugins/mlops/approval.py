"""A person's approval before a release (``release.approval`` in platform.yaml; on for production).

The ``approve`` task is Airflow's human-in-the-loop operator: the run waits in the UI's "Required actions" with the
model card's summary (metrics against the champion, the data windows, drift, the version), and the approver picks
Approve or Reject, with a comment. Nobody answering within the setting's time picks the default, Reject. The answer
goes to ``deploy``, which refuses a rejected release before anything is installed: the version's verdict is
``refused`` with who rejected it and why (or that nobody answered), as for any refused release.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import Param

from contract import APPROVE, REJECT
from mlops.notifiers import AlertNotifier
from mlops.platform_config import Approval

if TYPE_CHECKING:
    from airflow.providers.standard.operators.hitl import HITLOperator

METRICS = (("average_precision", "Average precision (PR-AUC)"), ("roc_auc", "ROC-AUC"), ("precision", "Precision"),
           ("recall", "Recall"), ("f1", "F1"))  # fmt: skip


def summary(evaluation: Any, prepared: Any, registration: Any) -> str:
    """The model card's summary in Markdown: what an approver decides on."""
    metrics, champion = evaluation["metrics"], evaluation["champion"]
    theirs = champion.get("metrics") or {}
    rows = ["| Metric | Candidate | Champion |", "|---|---:|---:|"] + [
        f"| {label} | {metrics[key]:.4f} | " + (f"{theirs[key]:.4f}" if key in theirs else "-") + " |"
        for key, label in METRICS
    ]
    windows = prepared.get("windows") or {}
    data = "; ".join(f"{name} {start} to {end}" for name, (start, end) in windows.items())
    lines = [
        f"**{registration['name']} v{registration['version']}** (MLflow run `{evaluation['run_id']}`), "
        f"against champion {'v' + champion['version'] if champion.get('version') else '(none)'}.",
        "",
        *rows,
        "",
        f"Decision threshold {metrics['threshold']:.4f}; {evaluation['test_rows']} test rows, "
        f"{evaluation['test_positives']} positives.",
        "",
        "**Data**: " + (data or f"a stratified split of `{prepared.get('source', '?')}`"),
        "",
        "**The gate**: " + "; ".join(evaluation["reasons"]),
    ]
    if compared := evaluation.get("comparison"):
        lines += [
            "",
            f"**Against the champion**: {compared['described']}, from {compared['resamples']} paired resamples of "
            f"the test set's {compared['units']} {compared['unit']}. {compared['verdict'].capitalize()}: "
            f"**{'pass' if compared['passes'] else 'fail'}**.",
        ]
    if evaluation.get("drifted"):
        lines += ["", f"**Drift** (PSI over the warning level): {', '.join(evaluation['drifted'])}"]
    if evaluation.get("incomparable_champion_accepted"):
        lines += [
            "",
            f"**Champion not comparable, accepted by the run**: {evaluation['incomparable_champion_accepted']}",
        ]
    lines += ["", f"The release plan: {registration['release']['reason']}."]
    return "\n".join(lines)


def answer_json(result: Any) -> str:
    """The approval task's result as ``deploy``'s ``--approval`` argument (its time as ISO-8601 text)."""
    return json.dumps(
        result, default=lambda value: value.isoformat() if hasattr(value, "isoformat") else str(value)
    )


#: The macros of the approval's templates.
MACROS = {"mlops_approval_summary": summary, "mlops_approval_answer": answer_json}


def _duration(hours: float) -> str:
    seconds = round(hours * 3600)
    if seconds < 120:
        return f"{seconds} seconds"
    return f"{seconds / 60:g} minutes" if seconds < 7200 else f"{hours:g} hours"


def approval_task(settings: Approval, model_name: str, alert_connection: str | None = None) -> HITLOperator:
    """The ``approve`` task of a model's release: Approve or Reject (the default, taken on timeout), with a
    comment; the approvers are alerted through the model's alert connection (else the platform's)."""
    from airflow.providers.standard.operators.hitl import HITLOperator  # only with approvals on: parse time

    return HITLOperator(
        task_id="approve",
        subject="Release {{ ti.xcom_pull(task_ids='register')['name'] }} "
        "v{{ ti.xcom_pull(task_ids='register')['version'] }} to production?",
        body="{{ mlops_approval_summary(ti.xcom_pull(task_ids='evaluate'), ti.xcom_pull(task_ids='prepare'), "
        "ti.xcom_pull(task_ids='register')) }}",
        options=[APPROVE, REJECT],
        defaults=[REJECT],
        params={
            "comment": Param(
                "",
                type="string",
                maxLength=1000,
                title="Comment",
                description="Why (recorded on the version with the answer)",
            )
        },
        assigned_users=[{"id": user, "name": user} for user in settings.approvers] or None,
        response_timeout=timedelta(hours=settings.timeout_hours),
        notifiers=[
            AlertNotifier(
                title=f"Release of {model_name} awaits approval",
                message="{{ dag.dag_id }} {{ run_id }}: approve or reject it in Airflow's Required actions "
                f"within {_duration(settings.timeout_hours)} (no answer rejects it).",
                **({"conn_id": alert_connection} if alert_connection else {}),
            )
        ],
    )
