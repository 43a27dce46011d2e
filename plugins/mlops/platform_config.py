"""Typed ``platform.yaml``: the one place that images, presets, stages, thresholds and the release are defined.

The file loads into frozen pydantic models that refuse unknown keys, so a typo or a value of the wrong type
fails at load time with a message naming the key, never later as a ``KeyError`` in a DAG or a pod.
``MLOPS_PLATFORM_FILE`` points at another file of the same shape (another environment's settings).
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path
from typing import Any, Literal, Self

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from contract import DEVICES, DISTRIBUTED_MODES, GATE_POLICIES, MODEL_TYPES

PLATFORM_FILE = Path(__file__).with_name("platform.yaml")
PLATFORM_FILE_ENV = "MLOPS_PLATFORM_FILE"
#: The project's folder on the worker (``contract/``, ``ml/``, ``standins/``, the chart): where the local pod
#: runtime runs pods, and what the paths of the settings (``release.chart``) are relative to.
PROJECT_ROOT = Path(__file__).resolve().parents[2]
PROJECT_DIR_ENV = "MLOPS_LOCAL_WORKDIR"


def project_dir() -> Path:
    return Path(os.environ.get(PROJECT_DIR_ENV) or PROJECT_ROOT)


class PlatformError(ValueError):
    """``platform.yaml`` breaks its schema; the message names the file, each key and its problem."""


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class Images(_Settings):
    ml_stage: str
    #: The chart's default image (repository:tag); the pipeline keeps the deployed one, CI/CD deploys images.
    inference_api: str
    terraform: str

    @property
    def inference_api_repository_tag(self) -> tuple[str, str]:
        repository, _, tag = self.inference_api.rpartition(":")
        return repository, tag


class Kubernetes(_Settings):
    namespace: str
    service_account: str
    run_as_user: int = Field(gt=0)
    run_as_group: int = Field(gt=0)
    #: How often a deferred pod's task comes back from the triggerer to copy the pod's new log lines.
    log_interval_seconds: int = Field(gt=0)


class Toleration(_Settings):
    key: str
    operator: Literal["Exists", "Equal"]
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"]
    value: str | None = None


class NodeGroup(_Settings):
    node_selector: dict[str, str]
    tolerations: tuple[Toleration, ...] = ()


class ResourcePreset(_Settings):
    requests: dict[str, str]
    limits: dict[str, str]
    #: How long a pod may wait to be scheduled (a node to come up), then to start (its image pulled), before
    #: the task fails with the scheduler's reasons.
    schedule_timeout_seconds: int = Field(gt=0)
    startup_timeout_seconds: int = Field(gt=0)
    node_group: str | None = None
    priority_class: str | None = None


class Stage(_Settings):
    preset: str
    timeout_minutes: int = Field(gt=0)
    #: A stage that calls the Kubernetes API runs as its own service account; the others as the default one.
    service_account: str | None = None
    #: The module under ``ml/`` the stage runs, when it is not the stage's name (two stages of one module).
    module: str | None = None
    #: A stage that trains round by round reports its progress every this many rounds (None: it does not).
    progress_every_rounds: int | None = Field(default=None, ge=1)


class Training(_Settings):
    """Defaults of the hyperparameters the DAG's form exposes (and what the benchmarks measure)."""

    model_type: str
    n_estimators: int = Field(ge=1)
    max_depth: int = Field(ge=1)
    learning_rate: float = Field(gt=0, le=1)
    early_stopping_rounds: int = Field(ge=1)
    scale_pos_weight: str
    device: str
    seed: int = Field(ge=0)
    min_child_weight: float = Field(ge=0)
    subsample: float = Field(gt=0, le=1)
    colsample_bytree: float = Field(gt=0, le=1)
    reg_alpha: float = Field(ge=0)
    reg_lambda: float = Field(ge=0)
    refit: bool
    distributed: str

    @field_validator("model_type", "device", "distributed")
    @classmethod
    def _offered_by_the_train_stage(cls, value: str, info: ValidationInfo) -> str:
        offered = {"model_type": MODEL_TYPES, "device": DEVICES, "distributed": DISTRIBUTED_MODES}
        choices = offered[str(info.field_name)]
        if value not in choices:
            raise ValueError(f"must be one of {choices}, got {value!r}")
        return value


class Dask(_Settings):
    """The Dask cluster the train stage creates in the cluster for ``distributed: dask``."""

    workers: int = Field(ge=1)
    worker_preset: str
    scheduler_preset: str
    #: The operator deletes a cluster whose scheduler stayed idle this long.
    idle_timeout_seconds: int = Field(gt=0)


class Tuning(_Settings):
    """The tune stage: the form's budget defaults, and where its workers share the study."""

    trials: int = Field(ge=1)
    minutes: int = Field(ge=1)
    workers: int = Field(ge=1)
    #: The Secret (key ``url``) holding the SQLAlchemy URL of the study's database in the cluster.
    storage_secret: str
    #: The folder under the data root of the journal file the embedded defaults keep studies in.
    local_dir: str


class Retraining(_Settings):
    #: ``cron``: a run per interval of ``schedule``; ``asset``: a run per week of the source asset's daily
    #: partitions; ``manual``: runs only when triggered (``schedule`` still cuts the intervals a run covers).
    trigger: Literal["cron", "asset", "manual"]
    schedule: str
    timezone: str

    @field_validator("schedule")
    @classmethod
    def _a_cron_expression(cls, value: str) -> str:
        from croniter import croniter

        if not croniter.is_valid(value):
            raise ValueError(f"{value!r} is not a cron expression (minute hour day month weekday)")
        return value

    training_days: int = Field(ge=1)
    evaluation_days: int = Field(ge=0)
    min_training_rows: int = Field(ge=1)
    min_evaluation_rows: int = Field(ge=1)
    min_evaluation_positives: int = Field(ge=1)
    psi_warning: float = Field(gt=0)
    history_intervals: int = Field(ge=2)


class Labels(_Settings):
    """Where a model's labels land, and their id and arrival columns (``ml.monitor``)."""

    uri: str = Field(min_length=1)
    id_column: str = Field(min_length=1)
    arrived_column: str = Field(min_length=1)


class Monitoring(_Settings):
    """The monitoring DAG of a model (``ml.monitor``): when it runs and what decay is."""

    schedule: str
    timezone: str
    label_delay_days: int = Field(ge=0)
    min_labelled_positives: int = Field(ge=1)
    psi_threshold: float = Field(gt=0)
    labels: Labels | None = None

    @field_validator("schedule")
    @classmethod
    def _a_cron_expression(cls, value: str) -> str:
        return Retraining._a_cron_expression(value)


class QualityGate(_Settings):
    """The evaluate stage's gate (``ml.evaluate``, ``ml.compare.Rule``)."""

    min_average_precision: float = Field(ge=0, le=1)
    policy: str
    min_improvement: float = Field(ge=-1, le=1)
    margin: float = Field(ge=0, le=1)
    confidence: float = Field(ge=0.5, lt=1)
    resamples: int = Field(ge=100, le=100_000)

    @field_validator("policy")
    @classmethod
    def _a_policy_of_the_gate(cls, value: str) -> str:
        if value not in GATE_POLICIES:
            raise ValueError(f"must be one of {GATE_POLICIES}, got {value!r}")
        return value


class RegistryCredentials(_Settings):
    """Where the pipeline's MLflow credentials come from: a Secret in the cluster, a connection locally."""

    secret: str
    connection_id: str


class Registry(_Settings):
    candidate_alias: str
    production_alias: str
    credentials: RegistryCredentials


class LocalRelease(_Settings):
    """The embedded default's release: the stand-ins for Helm and Argo Rollouts on this machine."""

    state_dir: str
    pause_seconds: float = Field(gt=0)
    requests_per_second: float = Field(gt=0)
    max_window_requests: int = Field(gt=0)


class Approval(_Settings):
    """A person's approval before each release (``plugins/mlops/approval.py``)."""

    required: bool
    timeout_hours: float = Field(gt=0)
    approvers: tuple[str, ...] = ()


class Release(_Settings):
    """What every model's release shares; each model's own release is in its model file (``mlops.models``)."""

    chart: str
    #: The prefix of the release pools: one one-slot pool per model's Helm release.
    pool: str
    watch_timeout_minutes: int = Field(gt=0)
    poll_seconds: float = Field(gt=0)
    error_budget_gate: bool
    #: The default of every model's ``release.approval`` (a model file overrides it key by key).
    approval: Approval
    local: LocalRelease


class Stack(_Settings):
    name: str
    dir: str
    backend_config: dict[str, str] = {}


class TerraformDrift(_Settings):
    schedule: str
    preset: str
    timeout_minutes: int = Field(gt=0)
    service_account: str
    allowlist: str
    report_prefix: str
    stacks: tuple[Stack, ...]


class Platform(_Settings):
    images: Images
    kubernetes: Kubernetes
    node_groups: dict[str, NodeGroup]
    resource_presets: dict[str, ResourcePreset]
    stages: dict[str, Stage]
    training: Training
    dask: Dask
    tuning: Tuning
    retraining: Retraining
    monitoring: Monitoring
    quality_gate: QualityGate
    registry: Registry
    release: Release
    terraform_drift: TerraformDrift

    @model_validator(mode="after")
    def _references_exist(self) -> Self:
        for name, preset in self.resource_presets.items():
            if preset.node_group is not None and preset.node_group not in self.node_groups:
                raise ValueError(
                    f"resource_presets.{name}.node_group {preset.node_group!r} is not one of "
                    f"node_groups {sorted(self.node_groups)}"
                )
        users = {f"stages.{name}": stage.preset for name, stage in self.stages.items()}
        users["terraform_drift"] = self.terraform_drift.preset
        users["dask.worker_preset"] = self.dask.worker_preset
        users["dask.scheduler_preset"] = self.dask.scheduler_preset
        tune = self.stages.get("tune")
        if tune is not None and self.tuning.minutes >= tune.timeout_minutes:
            raise ValueError(
                f"tuning.minutes ({self.tuning.minutes}) must stay under stages.tune.timeout_minutes "
                f"({tune.timeout_minutes}): the pod's deadline would stop its last trial"
            )
        for where, preset_name in users.items():
            if preset_name not in self.resource_presets:
                raise ValueError(
                    f"{where}.preset {preset_name!r} is not one of resource_presets {sorted(self.resource_presets)}"
                )
        return self

    def stage(self, name: str) -> Stage:
        try:
            return self.stages[name]
        except KeyError:
            raise KeyError(f"unknown stage {name!r}; platform.yaml defines {sorted(self.stages)}") from None

    def preset(self, name: str) -> ResourcePreset:
        try:
            return self.resource_presets[name]
        except KeyError:
            presets = sorted(self.resource_presets)
            raise KeyError(f"unknown resource preset {name!r}; platform.yaml defines {presets}") from None

    def node_group_of(self, preset: ResourcePreset) -> NodeGroup | None:
        return self.node_groups[preset.node_group] if preset.node_group else None

    @property
    def drift_allowlist_file(self) -> Path:
        return PLATFORM_FILE.parent / self.terraform_drift.allowlist


def parse_platform(raw: object, source: str = "platform.yaml") -> Platform:
    """Validate a parsed platform file.

    Raises:
        PlatformError: naming each offending key (``release.local.port``) and its problem.
    """
    try:
        return Platform.model_validate(raw)
    except ValidationError as err:
        raise PlatformError(f"{source}: {problems(err)}") from None


def problems(err: ValidationError) -> str:
    """Each problem of a validation as ``key.path: message``, joined: what a settings file's error says."""
    return "; ".join(
        f"{'.'.join(str(part) for part in error['loc']) or '(top level)'}: {error['msg']}"
        for error in err.errors()
    )


def yaml_loader() -> Any:
    """libyaml's safe loader when PyYAML has it: the settings files are read on every DAG parse, and it is ten
    times faster."""
    return getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@cache
def _load(path: Path) -> Platform:
    return parse_platform(yaml.load(path.read_text(), Loader=yaml_loader()), str(path))


def load_platform(path: Path | None = None) -> Platform:
    """Read the platform settings once per process (``MLOPS_PLATFORM_FILE``, else ``platform.yaml``)."""
    return _load(Path(path or os.environ.get(PLATFORM_FILE_ENV) or PLATFORM_FILE).resolve())
