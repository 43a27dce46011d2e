"""The ML stage operator: a KubernetesPodOperator whose pod can also run on the worker, unchanged.

``MLStageOperator(stage="train", arguments=[...])`` builds the whole pod from ``platform.yaml``: image,
command ``python -m ml.train``, the stage's resource preset (GPU request, node selector and tolerations for
the GPU preset), a restricted security context and the deadline. Where it runs is one setting, the Airflow
Variable ``mlops_pod_runtime``:

- ``kubernetes``: the provider's own ``execute`` creates the pod in the cluster of the Kubernetes connection
  and defers the wait to the triggerer; the XCom sidecar returns ``/airflow/xcom/return.json``.
- ``local`` (the default): the same pod object is built by the provider's ``build_pod_request_obj``, and its
  container's command, arguments and environment run as a subprocess on the worker, output streamed into the
  task log, the pod's ``activeDeadlineSeconds`` enforced, and the result read from the same ``return.json``.
  What a pod would find in the cluster comes from the embedded stand-ins (``standins/``): ``standins/bin`` is
  first on its ``PATH`` (so ``helm`` is the local one) and ``$MLOPS_LOCAL_RELEASES`` names where local releases
  are kept (``release.local.state_dir`` under the Variable ``mlops_data_root``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.providers.cncf.kubernetes.utils.xcom_sidecar import PodDefaults
from airflow.sdk import Connection, Variable
from airflow.sdk.exceptions import (
    AirflowException,
    AirflowFailException,
    AirflowNotFoundException,
    AirflowSkipException,
)
from kubernetes.client import Configuration
from kubernetes.client import models as k8s
from kubernetes.client.exceptions import ApiException

from contract import (
    BACKEND_CONFIG_ENV,
    ERROR_PREFIX,
    EXIT_INVALID_INPUT,
    EXIT_TRANSIENT,
    LOCAL_RELEASES_ENV,
    PLUGINS_FOLDER_ENV,
    XCOM_DIR_ENV,
    XCOM_RESULT_FILE,
)
from mlops.platform_config import PLATFORM_FILE_ENV, load_platform, project_dir

if TYPE_CHECKING:
    from airflow.sdk import Context

Model = TypeVar("Model")
RUNTIME_VARIABLE = "mlops_pod_runtime"
RUNTIMES = ("local", "kubernetes")
DATA_ROOT_VARIABLE = "mlops_data_root"
#: Worker variables the local runtime hands to the stage, standing in for what a pod gets from its
#: service account (cloud credentials) and its image (locale); and the worker's OpenMP settings, since a local
#: stage shares the worker's cores (XGBoost's threads are OpenMP's).
LOCAL_PASSTHROUGH_PREFIXES = ("AWS_", "LANG", "LC_", "TZ", "OMP_")
#: The folder this package is imported from: Airflow's plugins folder.
PLUGINS_FOLDER = Path(__file__).resolve().parents[1]
#: The stand-ins' commands (``helm``), relative to the local workdir: first on a local pod's PATH.
LOCAL_TOOLS = "standins/bin"
#: MLflow's client reads its credentials from these variables; the keys of the platform's credentials Secret.
MLFLOW_CREDENTIALS = {"MLFLOW_TRACKING_USERNAME": "username", "MLFLOW_TRACKING_PASSWORD": "password"}


def param_arguments(*names: str) -> list[str]:
    """Pass DAG params to a stage's CLI by one rule: ``max_depth`` becomes ``--max-depth {{ params.max_depth }}``."""
    return [part for name in names for part in (f"--{name.replace('_', '-')}", f"{{{{ params.{name} }}}}")]


def pod_runtime() -> str:
    runtime = str(Variable.get(RUNTIME_VARIABLE, default="local"))
    if runtime not in RUNTIMES:
        raise AirflowFailException(f"Variable {RUNTIME_VARIABLE}={runtime!r} must be one of {RUNTIMES}")
    return runtime


def local_workdir() -> Path:
    """The folder the local runtime runs pods in: what the image's working directory holds."""
    return project_dir()


def local_releases_dir() -> str | None:
    """Where the local runtime's ``helm`` keeps releases: ``release.local.state_dir`` under the data root
    (None without a data root: the stand-in then refuses to keep a release and says why)."""
    data_root = Variable.get(DATA_ROOT_VARIABLE, default=None)
    if not data_root:
        return None
    return f"{str(data_root).rstrip('/')}/{load_platform().release.local.state_dir}"


def stand_in_environment() -> dict[str, str]:
    """What a local pod finds in place of the cluster: the stand-ins' ``helm``, where it keeps releases, and
    the plugins folder whose platform settings the stand-ins read (the pod itself does not import it)."""
    env = {
        "PATH": os.pathsep.join(
            [str(local_workdir() / LOCAL_TOOLS), str(Path(sys.executable).parent), os.environ.get("PATH", "")]
        ),
        PLUGINS_FOLDER_ENV: str(PLUGINS_FOLDER),
    }
    releases = local_releases_dir()
    if releases:
        env[LOCAL_RELEASES_ENV] = releases
    if PLATFORM_FILE_ENV in os.environ:  # the stand-ins read the worker's platform settings
        env[PLATFORM_FILE_ENV] = os.environ[PLATFORM_FILE_ENV]
    return env


#: One client configuration shared by the pod's model objects: each would otherwise build its own, which was a
#: third of the training DAG's parse time.
_MODEL_CONFIGURATION = Configuration()


def model(kind: Callable[..., Model], **fields: Any) -> Model:
    """A Kubernetes model object (``V1Toleration``, ...) without a client configuration of its own."""
    return kind(local_vars_configuration=_MODEL_CONFIGURATION, **fields)


def _restricted_security_context() -> k8s.V1SecurityContext:
    """What the Kubernetes "restricted" Pod Security Standard requires of every container."""
    return model(
        k8s.V1SecurityContext,
        allow_privilege_escalation=False,
        capabilities=model(k8s.V1Capabilities, drop=["ALL"]),
        read_only_root_filesystem=True,
        run_as_non_root=True,
        seccomp_profile=model(k8s.V1SeccompProfile, type="RuntimeDefault"),
    )


#: Every stage container's environment: the root filesystem is read-only, so caches go to the writable /tmp
#: volume; output is not buffered, so the task log follows it.
POD_ENV = {"HOME": "/tmp", "PYTHONUNBUFFERED": "1"}
#: The writable /tmp of a pod whose root filesystem is read-only.
SCRATCH = "tmp"


def pod_parts(preset_name: str) -> dict[str, Any]:
    """What every pod of the platform on ``preset_name`` has, as the pod operator's keyword arguments (Kubernetes
    models): the preset's resources, node group and priority class, the non-root security of the pods' namespace
    and the scratch volume. The stage pods and the train stage's Dask cluster are built from it."""
    platform = load_platform()
    resources, cluster = platform.preset(preset_name), platform.kubernetes
    node_group = platform.node_group_of(resources)
    return {
        "container_resources": model(
            k8s.V1ResourceRequirements, requests=dict(resources.requests), limits=dict(resources.limits)
        ),
        "node_selector": dict(node_group.node_selector) if node_group else None,
        "priority_class_name": resources.priority_class,
        "tolerations": [
            model(k8s.V1Toleration, **t.model_dump(exclude_none=True))
            for t in (node_group.tolerations if node_group else ())
        ],
        "security_context": model(
            k8s.V1PodSecurityContext,
            run_as_non_root=True,
            run_as_user=cluster.run_as_user,
            run_as_group=cluster.run_as_group,
            fs_group=cluster.run_as_group,
            seccomp_profile=model(k8s.V1SeccompProfile, type="RuntimeDefault"),
        ),
        "container_security_context": _restricted_security_context(),
        "volumes": [
            model(k8s.V1Volume, name=SCRATCH, empty_dir=model(k8s.V1EmptyDirVolumeSource, size_limit="16Gi"))
        ],
        "volume_mounts": [model(k8s.V1VolumeMount, name=SCRATCH, mount_path="/tmp")],
    }


def _secret_env(name: str, secret: str, key: str) -> k8s.V1EnvVar:
    """An environment variable read from an optional Secret's key."""
    return model(
        k8s.V1EnvVar,
        name=name,
        value_from=model(
            k8s.V1EnvVarSource,
            secret_key_ref=model(k8s.V1SecretKeySelector, name=secret, key=key, optional=True),
        ),
    )


def failure_detail(lines: list[str]) -> str:
    """What a failed stage said: its last ``ERROR: `` line (the stage's contract), else the last lines."""
    errors = [line.removeprefix(ERROR_PREFIX) for line in lines if line.startswith(ERROR_PREFIX)]
    return errors[-1] if errors else "\n".join(lines[-5:])


def stage_failure(stage: str, exit_code: int | None, detail: str) -> AirflowException:
    """The task's error for a stage that exited ``exit_code``, one rule for the local runtime and the cluster:
    bad input (``EXIT_INVALID_INPUT``) fails the task without retries, anything else may be retried."""
    if exit_code == EXIT_INVALID_INPUT:
        return AirflowFailException(f"stage {stage} rejected its input: {detail}")
    if exit_code == EXIT_TRANSIENT:
        return AirflowException(f"stage {stage} found a service unavailable (will retry): {detail}")
    return AirflowException(f"stage {stage} failed with exit code {exit_code}: {detail}")


def _connection(conn_id: str) -> Connection | None:
    """The Airflow connection ``conn_id``, or None when there is none."""
    try:
        return Connection.get(conn_id)
    except AirflowNotFoundException:
        return None


class PlatformPodOperator(KubernetesPodOperator):
    """A pod built from the platform settings that runs in the cluster or, unchanged, on the worker.

    :param stage: Name of what the pod runs, in labels, the pod name and error messages.
    :param image: The container image.
    :param cmds: The container's command (``python`` is the worker's interpreter in the local runtime).
    :param arguments: The container's arguments (templated).
    :param env_vars: The container's environment (templated).
    :param preset: Resource preset in ``platform.yaml``.
    :param timeout_minutes: Deadline of the pod.
    :param service_account: Service account of the pod; the platform's default when not given.
    :param kubernetes_api: Mount the service account's token: the pod calls the Kubernetes API (Helm does).
    :param secret_env: Environment from Secrets, ``{name: (secret, key)}``, optional ones: a value the pod gets
        without it appearing in the pod's spec, a templated field or the task log.
    """

    ui_color = "#e8f4ea"
    #: Folders, relative to the local workdir, on the local runtime's PYTHONPATH: what the image puts there.
    local_pythonpath: tuple[str, ...] = (".",)
    #: Worker variables the local runtime hands to the pod's command.
    local_passthrough_prefixes: tuple[str, ...] = LOCAL_PASSTHROUGH_PREFIXES

    def __init__(
        self,
        *,
        stage: str,
        image: str,
        cmds: list[str],
        arguments: list[str],
        env_vars: dict[str, str],
        preset: str,
        timeout_minutes: int,
        service_account: str | None = None,
        kubernetes_api: bool = False,
        secret_env: dict[str, tuple[str, str]] | None = None,
        **kwargs: Any,
    ) -> None:
        # Long on purpose: one KubernetesPodOperator call that spells out the whole pod, field by field.
        platform = load_platform()
        resources = platform.preset(preset)
        cluster = platform.kubernetes
        kwargs.setdefault("task_id", stage)
        kwargs.setdefault("schedule_timeout_seconds", resources.schedule_timeout_seconds)
        kwargs.setdefault("startup_timeout_seconds", resources.startup_timeout_seconds)
        super().__init__(
            name=f"ml-{stage}".replace("_", "-"),
            namespace=cluster.namespace,
            service_account_name=service_account or cluster.service_account,
            # Only a pod with a service account of its own for the Kubernetes API gets the API token.
            automount_service_account_token=kubernetes_api,
            image=image,
            cmds=cmds,
            arguments=arguments,
            env_vars=[
                *(
                    model(k8s.V1EnvVar, name=name, value=value)
                    for name, value in {
                        XCOM_DIR_ENV: PodDefaults.XCOM_MOUNT_PATH,
                        **POD_ENV,
                        **env_vars,
                    }.items()
                ),
                *(_secret_env(name, secret, key) for name, (secret, key) in (secret_env or {}).items()),
            ],
            **pod_parts(preset),
            xcom_sidecar_container_security_context=_restricted_security_context(),
            labels={"app.kubernetes.io/part-of": "airflow-mlops", "app.kubernetes.io/component": stage},
            active_deadline_seconds=timeout_minutes * 60,
            termination_message_policy="FallbackToLogsOnError",
            on_finish_action="delete_succeeded_pod",
            get_logs=True,
            # While a pod waits for a node, its events ("0/5 nodes are available: Insufficient nvidia.com/gpu",
            # the autoscaler's "TriggeredScaleUp") go to the task log as they happen.
            log_events_on_startup=True,
            log_events_on_failure=True,
            logging_interval=cluster.log_interval_seconds,
            do_xcom_push=True,
            # In the cluster, waiting for the pod is the triggerer's job, not a worker slot's (training can
            # take hours). The local runtime ignores this: its subprocess is the work itself.
            deferrable=kwargs.pop("deferrable", True),
            **kwargs,
        )
        self.stage = stage
        self._process: subprocess.Popen[str] | None = None

    def execute(self, context: Context) -> Any:
        if pod_runtime() == "kubernetes":
            return super().execute(context)
        return self.execute_locally(context)

    def execute_locally(self, context: Context) -> Any:
        """Run the pod's container as a subprocess on the worker and return its XCom result."""
        # The local runtime talks to no cluster: without a connection id the provider builds the pod (and
        # its XCom sidecar) from its defaults instead of reading the Kubernetes connection.
        self.kubernetes_conn_id = None
        pod = self.build_pod_request_obj(context, dry_run=True)
        container = next(c for c in pod.spec.containers if c.name == self.base_container_name)
        command = [sys.executable if part == "python" else part for part in (container.command or [])]
        command += list(container.args or [])
        timeout = pod.spec.active_deadline_seconds
        with tempfile.TemporaryDirectory(prefix=f"{self.task_id}-") as xcom_dir:
            env = self._local_environment(container.env or [])
            env[XCOM_DIR_ENV] = xcom_dir
            self.log.info("local pod runtime: %s (deadline %ss)", " ".join(command), timeout)
            self._run(command, env, timeout)
            result_file = Path(xcom_dir) / XCOM_RESULT_FILE
            if not result_file.exists():
                raise AirflowException(f"stage {self.stage} exited 0 but wrote no result to {result_file}")
            return json.loads(result_file.read_text())

    def _local_environment(self, pod_env: list[k8s.V1EnvVar]) -> dict[str, str]:
        prefixes = self.local_passthrough_prefixes
        env = {key: value for key, value in os.environ.items() if key.startswith(prefixes)}
        env.update(stand_in_environment())
        workdir = local_workdir()
        env["PYTHONPATH"] = os.pathsep.join(str((workdir / part).resolve()) for part in self.local_pythonpath)
        for var in pod_env:
            if var.value_from is not None:
                # A pod reads these from a Secret or ConfigMap; locally they must be in the worker's environment.
                secret_ref = var.value_from.secret_key_ref
                if secret_ref is not None and secret_ref.optional:
                    value = self.local_secret(var.name)
                    if value is not None:
                        env[var.name] = value
                    continue
                if var.name not in os.environ:
                    raise AirflowFailException(
                        f"env var {var.name} comes from a Secret or ConfigMap in the pod; "
                        "the local pod runtime needs it set in the worker's environment"
                    )
                env[var.name] = os.environ[var.name]
            else:
                env[var.name] = var.value or ""
        return env

    def local_secret(self, name: str) -> str | None:
        """The local runtime's stand-in for a Secret: the worker's environment (what the pod would get)."""
        return os.environ.get(name)

    def _run(self, command: list[str], env: dict[str, str], timeout: int | None) -> None:
        process = subprocess.Popen(
            command,
            cwd=local_workdir(),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,  # its own process group, so a timeout or kill stops its children too
        )
        self._process = process
        timed_out = threading.Event()

        def stop() -> None:
            timed_out.set()
            self._kill()

        timer = threading.Timer(timeout, stop) if timeout else None
        if timer:
            timer.start()
        last_error: list[str] = []  # the stage's last error line, which may have left the tail
        tail: list[str] = []
        try:
            assert process.stdout is not None
            for line in process.stdout:
                line = line.rstrip()
                self.log.info("[%s] %s", self.stage, line)
                tail = [*tail[-19:], line]
                if line.startswith(ERROR_PREFIX):
                    last_error = [line]
            returncode = process.wait()
        finally:
            if timer:
                timer.cancel()
            self._process = None
        if timed_out.is_set():
            raise AirflowException(f"stage {self.stage} passed its deadline of {timeout}s and was stopped")
        if returncode != 0:
            raise stage_failure(self.stage, returncode, failure_detail([*last_error, *tail]))

    def _kill(self) -> None:
        process = self._process
        if process is not None and process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)

    def on_kill(self) -> None:
        if self._process is not None:
            self._kill()
            return
        super().on_kill()

    def cleanup(
        self,
        pod: k8s.V1Pod,
        remote_pod: k8s.V1Pod,
        xcom_result: dict[str, Any] | None = None,
        context: Context | None = None,
    ) -> None:
        """The provider's cleanup, with the stage's own error in place of its "Pod returned a failure": the
        exit-code contract (bad input is not retried) and the stage's message from the pod's termination
        message, or, for a pod that never started, the scheduler's reasons."""
        try:
            super().cleanup(pod, remote_pod, xcom_result=xcom_result, context=context)
        except (AirflowFailException, AirflowSkipException):
            raise
        except AirflowException as error:
            failure = self._failure_in_cluster(remote_pod or pod)
            if failure is None:
                raise
            raise failure from error

    def _failure_in_cluster(self, pod: k8s.V1Pod) -> AirflowException | None:
        try:
            pod = self.pod_manager.read_pod(pod)  # the state now, not the one the caller last saw
        except ApiException as error:
            self.log.warning("could not read pod %s to explain its failure: %s", pod.metadata.name, error)
        statuses = (pod.status.container_statuses if pod.status else None) or []
        status = next((c for c in statuses if c.name == self.base_container_name), None)
        ended = status.state.terminated if status and status.state else None
        if ended is not None:
            detail = failure_detail((ended.message or "").strip().splitlines())
            return stage_failure(
                self.stage, ended.exit_code, detail or f"{ended.reason}; see the pod's log above"
            )
        if pod.status is None or pod.status.phase != "Pending":
            return None
        return self._never_started(pod, status)

    def _never_started(self, pod: k8s.V1Pod, status: k8s.V1ContainerStatus | None) -> AirflowException:
        """The error for a pod still Pending at its timeout, with the reasons the cluster gave; the pod is
        deleted, so that it cannot start later with no task watching it (holding a GPU node up)."""
        name = pod.metadata.name
        scheduled = next((c for c in pod.status.conditions or () if c.type == "PodScheduled"), None)
        reasons: list[str] = []
        if scheduled is not None and scheduled.status != "True" and scheduled.message:
            reasons.append(scheduled.message)
        waiting = status.state.waiting if status and status.state else None
        if waiting is not None and waiting.reason:
            reasons.append(f"{waiting.reason}: {waiting.message}" if waiting.message else waiting.reason)
        try:
            events = self.pod_manager.read_pod_events(pod).items
        except ApiException as error:
            events = []
            self.log.warning("could not read the events of pod %s: %s", name, error)
        reasons += [  # the scheduler's warnings and what the node autoscaler did about them
            f"{e.reason}: {e.message}"
            for e in events
            if e.message
            and e.message not in reasons
            and (e.type == "Warning" or "ScaleUp" in (e.reason or ""))
        ]
        self.log.info("deleting pod %s, which never started", name)
        try:
            self.pod_manager.delete_pod(pod)
        except ApiException as error:
            self.log.warning("could not delete pod %s, which never started: %s", name, error)
        # At the timeout, or earlier when the provider saw it could not start (an image that cannot be pulled).
        if scheduled is not None and scheduled.status == "True":
            waited = f"was scheduled but did not start (its preset allows {self.startup_timeout_seconds}s)"
        else:
            waited = f"was not scheduled (its preset allows {self.schedule_timeout_seconds}s)"
        why = "; ".join(dict.fromkeys(reasons)) or "the cluster gave no reason (see the pod events above)"
        return AirflowException(f"stage {self.stage}: pod {name} {waited}: {why} (the pod was deleted)")


class MLStageOperator(PlatformPodOperator):
    """Run ``python -m ml.<stage> <arguments>`` as a pod built from the platform settings.

    :param stage: Name of the stage in ``platform.yaml`` and of the module under ``ml/``.
    :param arguments: The stage's CLI arguments (templated).
    :param env_vars: Extra environment for the stage (templated); the MLflow tracking URI is always set
        from the Airflow Variable ``mlflow_tracking_uri``.
    :param event_extra: Keys of the stage's result to put in the extra of the asset event of each of the
        task's outlets (what downstream DAGs and the asset view see of the run).
    :param secret_env: Environment from optional Secrets beyond MLflow's credentials, ``{name: (secret, key)}``.
    """

    def __init__(
        self,
        *,
        stage: str,
        arguments: list[str],
        env_vars: dict[str, str] | None = None,
        event_extra: tuple[str, ...] = (),
        secret_env: dict[str, tuple[str, str]] | None = None,
        **kwargs: Any,
    ) -> None:
        self.event_extra = event_extra
        platform = load_platform()
        spec = platform.stage(stage)
        #: The module under ``ml/`` the pod runs.
        self.module = spec.module or stage
        super().__init__(
            stage=stage,
            image=platform.images.ml_stage,
            cmds=["python", "-m", f"ml.{self.module}"],
            arguments=arguments,
            env_vars={
                "MLFLOW_TRACKING_URI": "{{ var.value.mlflow_tracking_uri }}",
                "MPLCONFIGDIR": "/tmp/matplotlib",
                **(env_vars or {}),
            },
            preset=spec.preset,
            timeout_minutes=spec.timeout_minutes,
            service_account=spec.service_account,
            kubernetes_api=spec.service_account is not None,
            secret_env={
                **{
                    name: (platform.registry.credentials.secret, key)
                    for name, key in MLFLOW_CREDENTIALS.items()
                },
                **(secret_env or {}),
            },
            **kwargs,
        )

    def execute(self, context: Context) -> Any:
        return self._announced(context, super().execute(context))

    def local_secret(self, name: str) -> str | None:
        """MLflow's credentials from the Airflow connection of the platform settings (whose password Airflow
        masks in task logs), else the worker's environment."""
        if name in MLFLOW_CREDENTIALS:
            connection = _connection(load_platform().registry.credentials.connection_id)
            if connection is not None:
                login, password = connection.login, connection.password
                return (login if MLFLOW_CREDENTIALS[name] == "username" else password) or None
        return super().local_secret(name)

    def trigger_reentry(self, context: Context, event: dict[str, Any]) -> Any:
        # In the cluster a deferred pod's result comes back here, not from execute().
        return self._announced(context, super().trigger_reentry(context, event))

    def _announced(self, context: Context, result: Any) -> Any:
        if self.event_extra and isinstance(result, dict):
            extra = {key: result[key] for key in self.event_extra if key in result}
            for outlet in self.outlets:
                context["outlet_events"][outlet].extra = extra
        return result


class TerraformDriftOperator(PlatformPodOperator):
    """Check one Terraform stack for drift: ``python -m mlops.drift.check <arguments>`` in the Terraform image.

    In the cluster the pod runs the image's ``terraform`` with the read-only service account of the drift
    check; in the local runtime, the ``terraform`` on the worker's PATH with the worker's ``TF_*`` and ``AWS_*``
    variables (what the image and the service account would provide). The shared backend settings come from
    the Airflow Variable ``terraform_backend_config``.
    """

    ui_color = "#ede4f7"
    # The check lives in plugins/ (how Airflow talks to Terraform); the image puts it on its PYTHONPATH.
    local_pythonpath = ("plugins", ".")
    local_passthrough_prefixes = (*LOCAL_PASSTHROUGH_PREFIXES, "TF_")

    def __init__(
        self, *, arguments: list[str], env_vars: dict[str, str] | None = None, **kwargs: Any
    ) -> None:
        platform = load_platform()
        drift = platform.terraform_drift
        super().__init__(
            stage="terraform_drift",
            image=platform.images.terraform,
            cmds=["python", "-m", "mlops.drift.check"],
            arguments=arguments,
            env_vars={
                BACKEND_CONFIG_ENV: "{{ var.value.get('terraform_backend_config', '{}') }}",
                **(env_vars or {}),
            },
            preset=drift.preset,
            timeout_minutes=drift.timeout_minutes,
            service_account=drift.service_account,
            **kwargs,
        )
