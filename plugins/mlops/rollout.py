"""Watching a release's rollout until it is Healthy or Degraded, and telling "slow" from "broken".

Helm's ``--wait`` cannot judge an Argo Rollout (a canary pauses for minutes by design), so the pipeline watches
the workload itself. The verdict is one of:

- ``Healthy``: the new pod template is the stable one and serves all traffic;
- ``Degraded``: the rollout aborted (an analysis metric failed, or the progress deadline passed): act now;
- ``Refused``: the deploy step did not start the release (the champion moved since evaluation);
- ``Inconclusive``: an analysis could not judge (too little traffic) and Argo Rollouts paused the rollout: it
  needs a person, so the task fails and alerts, and nothing is promoted or rolled back;
- the deadline passed while the rollout was still progressing: slow, not broken. The task fails with that
  message (and its notifier alerts), nothing is rolled back;
- the workload no longer runs the deployed model (someone rolled back or deployed again meanwhile): the task
  fails, because no verdict about this model can be read any more.

With the ``kubernetes`` pod runtime the wait is deferred to the triggerer, which polls the Rollout (or
Deployment) through the Kubernetes connection and collects the AnalysisRuns' measurements. With the ``local``
runtime the local rollouts controller's result file for the revision is polled (``standins/rollouts``; the file
names are the contract's); a controller that died before the verdict fails the watch at once, with its last
words (the end of its log), instead of at the deadline.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException
from airflow.triggers.base import BaseTrigger, TriggerEvent

from contract import (
    DEGRADED,
    HEALTHY,
    INCONCLUSIVE,
    INCONCLUSIVE_PAUSE,
    LOCAL_CONTROLLER_LOG,
    LOCAL_PID_FILE,
    LOCAL_STATUS_FILE,
    MODEL_ANNOTATION,
    PROGRESSING,
    REFUSED,
    SLOW,
    SUPERSEDED,
    local_controller_pid,
    local_result_path,
)
from mlops.operators import local_releases_dir, pod_runtime

if TYPE_CHECKING:
    from airflow.sdk import Context

#: How much of a dead local controller's log the watch's failure quotes.
LAST_WORDS_LINES = 15


def interpret(kind: str, workload: dict[str, Any], model_uri: str) -> tuple[str, str]:
    """Read a Rollout's or Deployment's state for the template serving ``model_uri``: (phase, message)."""
    template = workload.get("spec", {}).get("template", {})
    serving = template.get("metadata", {}).get("annotations", {}).get(MODEL_ANNOTATION)
    if serving != model_uri:
        return (
            SUPERSEDED,
            f"{kind} now runs {serving!r}, not {model_uri!r} (rolled back or replaced meanwhile)",
        )
    status = workload.get("status") or {}
    generation = str(workload.get("metadata", {}).get("generation", ""))
    if kind == "Rollout":
        if status.get("abort") or status.get("phase") == DEGRADED:
            return DEGRADED, str(status.get("message") or "the rollout was aborted")
        if inconclusive(status):
            return INCONCLUSIVE, str(status.get("message") or "an analysis run was inconclusive")
        observed = str(status.get("observedGeneration", ""))
        if (
            status.get("phase") == HEALTHY
            and observed == generation
            and status.get("stableRS") == status.get("currentPodHash")
        ):
            return HEALTHY, "the new template is stable and serves all traffic"
        step = status.get("currentStepIndex")
        return (
            PROGRESSING,
            f"{status.get('phase', 'Progressing')} at step {step}: {status.get('message', '')}".strip(),
        )
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Progressing" and condition.get("reason") == "ProgressDeadlineExceeded":
            return DEGRADED, str(condition.get("message") or "progress deadline exceeded")
    wanted = int(workload.get("spec", {}).get("replicas", 1))
    if (
        int(status.get("observedGeneration", 0)) >= int(generation or 0)
        and int(status.get("updatedReplicas", 0)) == wanted
        and int(status.get("availableReplicas", 0)) == wanted
        and int(status.get("replicas", 0)) == wanted
    ):
        return HEALTHY, f"all {wanted} replicas run the new template"
    return PROGRESSING, f"{status.get('updatedReplicas', 0)}/{wanted} replicas updated"


def inconclusive(status: dict[str, Any]) -> bool:
    """Whether Argo Rollouts paused the rollout because an analysis run was inconclusive."""
    return any(c.get("reason") == INCONCLUSIVE_PAUSE for c in status.get("pauseConditions") or [])


def analysis_measurements(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Flatten AnalysisRuns' measurements into the verdict's list (``step`` numbers the measurements)."""
    measurements = []
    for run in sorted(runs, key=lambda r: r.get("metadata", {}).get("creationTimestamp", "")):
        conditions = {
            m["name"]: m.get("successCondition", "") for m in run.get("spec", {}).get("metrics", [])
        }
        for result in run.get("status", {}).get("metricResults", []):
            for index, measurement in enumerate(result.get("measurements", [])):
                raw = str(measurement.get("value", "")).strip("[]")
                try:
                    value: float | str | None = float(raw.split(",")[0])
                except ValueError:
                    value = raw.strip('"') or None  # a web metric's answer (a version number), or nothing
                measurements.append(
                    {
                        "step": index,
                        "metric": result["name"],
                        "value": value,
                        "condition": conditions.get(result["name"], ""),
                        "phase": measurement.get("phase", ""),
                    }
                )
    return measurements


class RolloutTrigger(BaseTrigger):
    """Poll the workload in the cluster until it settles or ``deadline`` (a UNIX time) passes."""

    def __init__(
        self,
        *,
        kind: str,
        name: str,
        namespace: str,
        model_uri: str,
        deadline: float,
        poll_seconds: float,
        kubernetes_conn_id: str | None,
    ) -> None:
        super().__init__()
        self.kind, self.name, self.namespace, self.model_uri = kind, name, namespace, model_uri
        self.deadline, self.poll_seconds, self.kubernetes_conn_id = deadline, poll_seconds, kubernetes_conn_id

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "kind": self.kind,
                "name": self.name,
                "namespace": self.namespace,
                "model_uri": self.model_uri,
                "deadline": self.deadline,
                "poll_seconds": self.poll_seconds,
                "kubernetes_conn_id": self.kubernetes_conn_id,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from airflow.providers.cncf.kubernetes.hooks.kubernetes import AsyncKubernetesHook
        from kubernetes_asyncio import client as async_client

        hook = AsyncKubernetesHook(conn_id=self.kubernetes_conn_id)
        while True:
            async with hook.get_conn() as api:
                custom = async_client.CustomObjectsApi(api)
                if self.kind == "Rollout":
                    workload = await custom.get_namespaced_custom_object(
                        "argoproj.io", "v1alpha1", self.namespace, "rollouts", self.name
                    )
                else:
                    deployment = await async_client.AppsV1Api(api).read_namespaced_deployment(
                        self.name, self.namespace
                    )
                    workload = api.sanitize_for_serialization(deployment)
                phase, message = interpret(self.kind, workload, self.model_uri)
                if phase != PROGRESSING:
                    measurements = []
                    pod_hash = (workload.get("status") or {}).get("currentPodHash")
                    if self.kind == "Rollout" and pod_hash:
                        runs = await custom.list_namespaced_custom_object(
                            "argoproj.io", "v1alpha1", self.namespace, "analysisruns",
                            label_selector=f"rollouts-pod-template-hash={pod_hash}",
                        )  # fmt: skip
                        measurements = analysis_measurements(runs.get("items", []))
                    steps = (
                        ((workload.get("spec") or {}).get("strategy") or {})
                        .get("canary", {})
                        .get("steps", [])
                    )
                    yield TriggerEvent(
                        {"phase": phase, "message": message, "measurements": measurements, "steps": steps}
                    )
                    return
            if time.time() > self.deadline:
                yield TriggerEvent({"phase": SLOW, "message": message, "measurements": []})
                return
            await asyncio.sleep(self.poll_seconds)


class RolloutWatchOperator(BaseOperator):
    """Wait for the rollout of a deployed revision and return its verdict (``Healthy`` or ``Degraded``).

    :param deployment: The deploy step's result (release, namespace, revision, model URI, workload).
    :param timeout: How long a rollout may keep progressing before it is reported as slow.
    :param poll_seconds: Time between two looks at the rollout.
    :param kubernetes_conn_id: Kubernetes runtime: the connection to the cluster.
    """

    template_fields = ("deployment",)
    ui_color = "#fdf0d5"

    def __init__(
        self,
        *,
        deployment: Any,
        timeout: timedelta,
        poll_seconds: float = 30,
        kubernetes_conn_id: str | None = "kubernetes_default",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.deployment = deployment
        self.watch_timeout = timeout
        self.poll_seconds = poll_seconds
        self.kubernetes_conn_id = kubernetes_conn_id

    def execute(self, context: Context) -> dict[str, Any]:
        deployment = self._deployment()
        if deployment.get("refused"):  # nothing was released: the refusal is the verdict
            return self._verdict({"phase": REFUSED, "message": deployment["refused"], "measurements": []})
        deadline = time.time() + self.watch_timeout.total_seconds()
        if pod_runtime() == "local":
            return self._verdict(self._watch_locally(deployment, deadline))
        self.defer(
            trigger=RolloutTrigger(
                kind=deployment["workload_kind"],
                name=deployment["workload_name"],
                namespace=deployment["namespace"],
                model_uri=deployment["model_uri"],
                deadline=deadline,
                poll_seconds=self.poll_seconds,
                kubernetes_conn_id=self.kubernetes_conn_id,
            ),
            method_name="execute_complete",
        )
        raise AssertionError("unreachable: defer() raises")  # pragma: no cover

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        return self._verdict(event)

    def _deployment(self) -> dict[str, Any]:
        deployment = self.deployment
        if isinstance(deployment, str):
            deployment = json.loads(deployment)
        missing = {"release", "namespace", "revision", "model_uri", "workload_kind", "workload_name"} - set(
            deployment or {}
        )
        if missing:
            raise AirflowFailException(f"the deploy result {deployment!r} lacks {sorted(missing)}")
        return {**deployment, "timeout": self.watch_timeout}

    def _watch_locally(self, deployment: dict[str, Any], deadline: float) -> dict[str, Any]:
        releases = local_releases_dir()
        if releases is None:
            raise AirflowFailException(
                "the local runtime keeps releases under the Variable mlops_data_root: set it"
            )
        release_dir = Path(releases) / deployment["release"]
        result_file = local_result_path(release_dir, int(deployment["revision"]))
        last_message = ""
        while not result_file.exists():
            if local_controller_pid(release_dir) is None and not result_file.exists():
                raise AirflowException(self._no_controller(release_dir, deployment))
            status = self._local_status(release_dir)
            if inconclusive(status) and status.get("observedRevision") == int(deployment["revision"]):
                return {"phase": INCONCLUSIVE, "message": status.get("message", ""),
                        "measurements": status.get("measurements", [])}  # fmt: skip
            if status.get("message") and status["message"] != last_message:
                last_message = status["message"]
                self.log.info("rollout: %s (%s)", last_message, status.get("phase"))
            if time.time() > deadline:
                return {"phase": SLOW, "message": last_message, "measurements": []}
            time.sleep(min(self.poll_seconds, 1.0))
        result = json.loads(result_file.read_text())
        if result.get("model_uri") != deployment["model_uri"]:
            return {
                "phase": SUPERSEDED,
                "message": f"revision {deployment['revision']} runs {result.get('model_uri')}",
            }
        return result

    def _local_status(self, release_dir: Path) -> dict[str, Any]:
        """The local Rollout's status; empty (with a warning) while it cannot be read."""
        status_file = release_dir / LOCAL_STATUS_FILE
        try:
            status = json.loads(status_file.read_text())
        except FileNotFoundError:
            return {}
        except ValueError as err:
            self.log.warning(
                "the local rollout status %s is unreadable (%s): reading it again", status_file, err
            )
            return {}
        return status if isinstance(status, dict) else {}

    @staticmethod
    def _no_controller(release_dir: Path, deployment: dict[str, Any]) -> str:
        """Why no verdict can come: the controller was stopped, or it died, with its last words."""
        release, revision = deployment["release"], deployment["revision"]
        log_file = release_dir / LOCAL_CONTROLLER_LOG
        try:
            lines = log_file.read_text(errors="replace").strip().splitlines()[-LAST_WORDS_LINES:]
        except FileNotFoundError:
            lines = []
        last_words = "\n".join(lines) or "(its log is empty)"
        if not (release_dir / LOCAL_PID_FILE).exists():
            return (
                f"no local rollouts controller is running for {release} (stopped with `make release-down`?): "
                f"clear the deploy task to start one, then this task. The end of {log_file}:\n{last_words}"
            )
        return (
            f"the local rollouts controller of {release} died before revision {revision} had a verdict (its "
            f"process is gone); its last words, from {log_file}:\n{last_words}\nThe stable API keeps serving. "
            "Clear the deploy task to start a new controller (it takes over the serving API), then this task."
        )

    def _verdict(self, event: dict[str, Any]) -> dict[str, Any]:
        deployment = self._deployment()
        phase, message = event["phase"], event.get("message", "")
        for measurement in event.get("measurements", []):
            self.log.info(
                "analysis step %s: %s = %s (%s, %s)",
                measurement["step"], measurement["metric"], measurement["value"], measurement["condition"],
                measurement["phase"],
            )  # fmt: skip
        if phase == SLOW:
            raise AirflowException(
                f"slow, not broken: revision {deployment['revision']} of {deployment['release']} is still "
                f"progressing after {deployment['timeout']} ({message}). Nothing was rolled back; look at the "
                "rollout, then promote or abort it by hand, and clear this task to watch again."
            )
        if phase == SUPERSEDED:
            raise AirflowFailException(f"no verdict for {deployment['model_uri']}: {message}")
        if phase == INCONCLUSIVE:
            raise AirflowFailException(
                f"needs a person: the rollout of revision {deployment['revision']} of {deployment['release']} is "
                f"paused because its analysis could not judge the model ({message}). Nothing was promoted or rolled "
                "back: promote the rollout or abort it (kubectl argo rollouts promote|abort), then clear this task."
            )
        self.log.info("verdict: %s: %s", phase, message)
        return {
            "phase": phase,
            "message": message,
            "revision": deployment["revision"],
            "model_uri": deployment["model_uri"],
            "measurements": event.get("measurements", []),
            # The canary's steps (its traffic weights), for promote's report.
            "steps": event.get("steps", []),
        }
