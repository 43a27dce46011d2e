"""Register a model that passed evaluation as a new version and point the candidate alias at it.

A version the pipeline will not release (a backfill, an old interval: the release plan in the evaluation says
so, ``ml.plan``) is registered for the record, tagged with its interval and the reason, and the candidate alias
stays where it is.
Registration is keyed by the orchestrator's run (tag ``mlops.run_key`` on the model version): running it again
for the same DAG run finds the version it made and only re-asserts the alias, so retries and cleared tasks
never create a second version. It refuses (non-zero exit, nothing written) anything but a ``pass`` decision.

    python -m ml.register --evaluation "$(cat evaluation.json)" --run-key train_card_fraud/manual__1
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from contract import (
    CHAMPION_AT_EVALUATION_TAG,
    CHAMPION_COMPARISON_TAG,
    INCOMPARABLE_CHAMPION_ACCEPTED_TAG,
    INTERVAL_TAG,
    LEAKAGE_FLAGS_TAG,
    MODEL_ID_TAG,
    PASS,
    RELEASE_PLANNED,
    RELEASE_REASON_TAG,
    RELEASE_SKIPPED,
    RELEASE_TAG,
    RUN_KEY_TAG,
    STARTED_BY_TAG,
    TEST_METRIC_TAG_PREFIX,
    THRESHOLD_TAG,
)
from ml import tracking
from ml.errors import StageError
from ml.evaluate import described
from ml.plan import UNPLANNED, checked
from ml.runtime import ArgumentParser, json_object

log = logging.getLogger(__name__)

REQUIRED_FIELDS = (
    "decision",
    "model_uri",
    "model_id",
    "run_id",
    "registered_model_name",
    "metrics",
    "champion",
)


@dataclass
class Registration:
    """The register stage's XCom result."""

    name: str
    version: str
    alias: str | None  # None: not to be released, so the candidate alias was left alone
    model_uri: str
    run_id: str
    newly_registered: bool
    release: dict[str, Any]


def _check(evaluation: dict[str, Any]) -> None:
    missing = [key for key in REQUIRED_FIELDS if key not in evaluation]
    if missing:
        raise StageError(f"the evaluation result is incomplete: missing {missing}; refusing to register")
    if evaluation["decision"] != PASS:
        raise StageError(
            f"the evaluation decided {evaluation['decision']!r}, not {PASS!r}; refusing to register "
            f"({'; '.join(evaluation.get('reasons', []))})"
        )


def _await_ready(name: str, version: str, timeout_s: float = 300) -> None:
    mlflow_client = tracking.client()
    deadline = time.monotonic() + timeout_s
    while (status := mlflow_client.get_model_version(name, version).status) == "PENDING_REGISTRATION":
        if time.monotonic() > deadline:
            raise TimeoutError(f"model version {name} v{version} still pending after {timeout_s}s")
        time.sleep(1)
    if status != "READY":
        raise StageError(f"model version {name} v{version} ended in status {status}")


def register(evaluation: dict[str, Any], *, run_key: str, alias: str) -> Registration:
    """Create (once per ``run_key``) the model version for a passing evaluation and set ``alias`` on it.

    The evaluation's release plan is recorded on the version, and a version that will not be released does not
    take ``alias``.
    """
    _check(evaluation)
    plan = checked(evaluation.get("release_plan", UNPLANNED))
    name = evaluation["registered_model_name"]
    version = tracking.find_keyed_version(name, run_key)
    if version is not None:
        if version.tags.get(MODEL_ID_TAG) != evaluation["model_id"]:
            raise StageError(
                f"{run_key} already registered {name} v{version.version} from model "
                f"{version.tags.get(MODEL_ID_TAG)}, but this evaluation is of {evaluation['model_id']}; "
                "one DAG run registers one version: trigger a new run to register another model"
            )
        log.info("%s already registered %s v%s: not registering again", run_key, name, version.version)
        newly_registered = False
    else:
        version = _create_version(name, evaluation, run_key)
        newly_registered = True

    number = str(version.version)
    _record_plan(name, number, alias, plan)
    return Registration(
        name=name,
        version=number,
        alias=alias if plan["release"] else None,
        model_uri=f"models:/{name}@{alias}" if plan["release"] else f"models:/{name}/{number}",
        run_id=evaluation["run_id"],
        newly_registered=newly_registered,
        release=plan,
    )


def _create_version(name: str, evaluation: dict[str, Any], run_key: str) -> Any:
    """Register the evaluated model as a new version of ``name``, tagged with its run key and test figures."""
    from mlflow.exceptions import MlflowException

    mlflow_client = tracking.client()
    try:
        mlflow_client.create_registered_model(name)
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    metrics = evaluation["metrics"]
    tags = {
        RUN_KEY_TAG: run_key,
        MODEL_ID_TAG: evaluation["model_id"],
        THRESHOLD_TAG: f"{metrics['threshold']:.6f}",
        CHAMPION_AT_EVALUATION_TAG: evaluation["champion"].get("version") or "none",
        **(
            {INCOMPARABLE_CHAMPION_ACCEPTED_TAG: evaluation["incomparable_champion_accepted"][:5000]}
            if evaluation.get("incomparable_champion_accepted")
            else {}
        ),
        **(
            {CHAMPION_COMPARISON_TAG: described(evaluation["comparison"])}
            if evaluation.get("comparison")
            else {}
        ),
        **(
            {LEAKAGE_FLAGS_TAG: json.dumps(evaluation["leakage_flags"])[:5000]}
            if evaluation.get("leakage_flags")
            else {}
        ),
        **{
            f"{TEST_METRIC_TAG_PREFIX}{key}": f"{value:.6f}"
            for key, value in metrics.items()
            if key != "threshold"
        },
    }
    version = mlflow_client.create_model_version(
        name=name,
        source=evaluation["model_uri"],
        run_id=evaluation["run_id"],
        tags=tags,
        model_id=evaluation["model_id"],
        description="; ".join(evaluation.get("reasons", [])),
    )
    _await_ready(name, str(version.version))
    log.info("registered %s v%s from %s", name, version.version, evaluation["model_uri"])
    return version


def _record_plan(name: str, version: str, alias: str, plan: dict[str, Any]) -> None:
    """Tag the version with its release plan and interval; point ``alias`` at it only if it will be released."""
    mlflow_client = tracking.client()
    tags = {
        RELEASE_TAG: RELEASE_PLANNED if plan["release"] else RELEASE_SKIPPED,
        RELEASE_REASON_TAG: plan["reason"],
        **({INTERVAL_TAG: "/".join(plan["interval"])} if plan.get("interval") else {}),
        **({STARTED_BY_TAG: plan["started_by"]} if plan.get("started_by") else {}),
    }
    for key, value in tags.items():
        mlflow_client.set_model_version_tag(name, version, key, value)
    if plan["release"]:
        mlflow_client.set_registered_model_alias(name, alias, version)
        log.info("alias %s@%s -> v%s", name, alias, version)
    else:
        log.info(
            "%s v%s is registered for the record and will not be released: %s", name, version, plan["reason"]
        )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = ArgumentParser(prog="python -m ml.register", doc=__doc__)
    parser.add_argument("--evaluation", required=True, help="the evaluate stage's JSON result")
    parser.add_argument(
        "--run-key", required=True, help="key of the orchestrator run, e.g. <dag_id>/<run_id>"
    )
    parser.add_argument("--alias", required=True, help="alias to point at the new version")
    args = parser.parse_args(argv)
    return asdict(
        register(
            json_object("--evaluation", "the evaluate stage's result")(args.evaluation),
            run_key=args.run_key,
            alias=args.alias,
        )
    )


if __name__ == "__main__":
    from ml.runtime import run_stage

    run_stage(main)
