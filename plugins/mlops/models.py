"""The models the platform trains and releases: one file each, ``dags/models/<key>.yaml``.

A model file says everything that belongs to one model and to no other: its registered name and owners, the
table it learns from, when it retrains, what differs from the platform's training defaults, its quality gate and
its release (Helm release, namespace, values, approval, alert connection, local port). The platform settings
(``platform.yaml``) keep what all models share and the defaults a model file overrides key by key. The files live
beside the DAGs because they are read where the DAGs are parsed and travel with them (the DAG bundle, git-sync),
versioned with the code that reads them.

Each file loads into a frozen, typed :class:`Model`: an unknown key, a value of the wrong type or a reference
that does not exist fails with the file and the key's path (``dags/models/x.yaml: release.local_port: ...``). What two
files must not share (a registered model, a Helm release, a local port, a source asset) is checked across them:
the later file, by name, is the one refused. A broken file never hides the others: :func:`load_models` returns
the good ones and the problems of the broken ones, and the training DAG file shows the problems as an import
error.

    python -m mlops.models check        # validate every model file (make models-check)
    python -m mlops.models list         # one line per model (--json: each model's settings)
    python -m mlops.models mlflow-auth  # MLflow's users and each model's grants (ml/mlflow_auth.py)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mlops import canary_sizing
from mlops.platform_config import (
    Approval,
    Monitoring,
    Platform,
    QualityGate,
    Retraining,
    Training,
    load_platform,
    problems,
    project_dir,
    yaml_loader,
)

#: Where the model files are: ``dags/models/`` beside the DAG files; ``MLOPS_MODELS_DIR`` names another folder.
MODELS_DIR = Path(__file__).resolve().parents[2] / "dags" / "models"
MODELS_DIR_ENV = "MLOPS_MODELS_DIR"
#: A model's key is its file's name: lower-case words joined by underscores (it names the model's DAGs).
KEY = re.compile(r"^[a-z][a-z0-9_]{0,40}$")
#: A Kubernetes object name (DNS-1123 label); a Helm release name is at most 53 characters long.
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
#: A registered model name safe in a URI (``models:/<name>/<version>``) and an asset name (MLflow's rule is looser).
REGISTERED_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class ModelError(ValueError):
    """A model file breaks its schema, or clashes with another; the message names the file and the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class Dataset(_Section):
    """The table the model learns from: the form's defaults for a run's data."""

    uri: str = Field(min_length=1)
    target: str = Field(min_length=1)
    #: The target's positive value when it is not 0/1 or true/false (``>50K``).
    positive_label: str | None = None
    #: Split by time on this column; none: a stratified random split (and ``retraining.trigger: manual``).
    time_column: str | None = None
    #: The table as an Airflow asset: what ``prepare`` reads, and what ``retraining.trigger: asset`` listens to.
    asset: str = Field(min_length=1)
    drop_columns: tuple[str, ...] = ()
    keep_columns: tuple[str, ...] = ()
    features: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _columns_agree(self) -> Self:
        named = {
            "drop_columns": self.drop_columns,
            "keep_columns": self.keep_columns,
            "features": self.features,
        }
        for where, columns in named.items():
            for column in (self.target, self.time_column):
                if column and column in columns:
                    raise ValueError(f"{where} names {column!r}, which is the target or the time column")
        both = set(self.drop_columns) & (set(self.keep_columns) | set(self.features))
        if both:
            raise ValueError(f"columns both dropped and kept: {sorted(both)}")
        return self


class ModelRelease(_Section):
    """The model's own release of the inference API: its Helm release, and its local one on the embedded
    defaults."""

    name: str = Field(pattern=DNS_LABEL, max_length=53)
    namespace: str = Field(pattern=DNS_LABEL, max_length=63)
    #: Values of the chart for this model (replicas, analysis thresholds, ...), over the chart's defaults.
    values: dict[str, Any] = {}
    #: Values files, relative to the repository root (the ML stage image carries the same paths).
    values_files: tuple[str, ...] = ()
    approval: Approval
    #: The Airflow connection alerts about this model's releases go through (none: the platform's default).
    alert_connection: str | None = None
    #: The loopback port the local release serves the model on (the embedded defaults).
    local_port: int = Field(ge=1024, le=65535)


class Model(_Section):
    """One model file, with the platform's defaults filled in where it says nothing."""

    key: str = Field(pattern=KEY.pattern)
    #: The file, as it is named in messages (relative to the models' folder's parent).
    file: str
    registered_model: str = Field(pattern=REGISTERED_NAME, max_length=200)
    description: str = Field(min_length=1)
    owners: tuple[str, ...] = Field(min_length=1)
    dataset: Dataset
    retraining: Retraining
    monitoring: Monitoring
    training: Training
    quality_gate: QualityGate
    release: ModelRelease

    @model_validator(mode="after")
    def _a_schedule_needs_time(self) -> Self:
        if self.dataset.time_column is None and self.retraining.trigger != "manual":
            raise ValueError(
                f"retraining.trigger {self.retraining.trigger!r} needs dataset.time_column: without one every run "
                "sees the whole table, so a schedule would retrain on the same rows (use trigger: manual)"
            )
        return self

    @property
    def training_dag_id(self) -> str:
        return f"train_{self.key}"

    @property
    def scoring_dag_id(self) -> str:
        return f"score_{self.key}"

    @property
    def monitoring_dag_id(self) -> str:
        return f"monitor_{self.key}"

    def pool(self, platform: Platform) -> str:
        """The one-slot pool of this model's release steps: one per Helm release, so two models release side by
        side while each model's releases stay one at a time."""
        return f"{platform.release.pool}.{self.release.namespace}.{self.release.name}"


#: The sections a model file may override key by key over the platform's (the rest are the model's own).
DEFAULTS = ("retraining", "monitoring", "training", "quality_gate")


def _merged(defaults: dict[str, Any], overrides: Any) -> Any:
    """``overrides`` over ``defaults``, key by key, nested mappings too (anything else replaces)."""
    if not isinstance(overrides, dict):
        return overrides
    merged = dict(defaults)
    for key, value in overrides.items():
        merged[key] = _merged(defaults[key], value) if isinstance(defaults.get(key), dict) else value
    return merged


def parse_model(raw: object, key: str, file: str, platform: Platform | None = None) -> Model:
    """Validate a parsed model file over the platform's defaults.

    Raises:
        ModelError: naming the file and each offending key (``release.local_port``) with its problem.
    """
    platform = platform or load_platform()
    if not isinstance(raw, dict):
        raise ModelError(f"{file}: a model file is a mapping of sections, got {type(raw).__name__}")
    if not KEY.match(key):
        raise ModelError(
            f"{file}: the file's name must be lower-case words joined by underscores ({KEY.pattern})"
        )
    document = dict(raw)
    for section in DEFAULTS:
        document[section] = _merged(getattr(platform, section).model_dump(), document.get(section, {}))
    release = document.get("release")
    if isinstance(release, dict):
        document["release"] = {
            **release,
            "approval": _merged(platform.release.approval.model_dump(), release.get("approval", {})),
        }
    try:
        model = Model.model_validate({**document, "key": key, "file": file})
    except ValidationError as err:
        raise ModelError(f"{file}: {problems(err)}") from None
    _check_chart_values(model, platform)
    return model


@cache
def _chart(chart_dir: Path) -> tuple[dict[str, Any], Any] | None:
    """The chart's default values and a validator of its values schema (None where the chart is not on this
    machine: a scheduler without the project; the release stage's Helm checks the values there)."""
    values, schema = chart_dir / "values.yaml", chart_dir / "values.schema.json"
    if not (values.is_file() and schema.is_file()):
        return None
    from jsonschema import Draft7Validator  # the chart's schema is draft-07, as Helm reads it

    return yaml.load(values.read_text(), Loader=yaml_loader()), Draft7Validator(
        json.loads(schema.read_text())
    )


def _check_chart_values(model: Model, platform: Platform) -> None:
    """A model's chart values must pass the chart's values schema over its defaults (a typo in a value's name
    fails here, naming the file and the key, not at the release), and its canary's positive-share test must be
    sized as its values say (``mlops.canary_sizing``)."""
    chart = _chart(project_dir() / platform.release.chart)
    if chart is None:
        return
    defaults, validator = chart
    merged = _merged(defaults, model.release.values)
    errors = sorted(validator.iter_errors(merged), key=lambda e: list(e.path))
    if errors:
        found = "; ".join(
            f"release.values{''.join(f'.{part}' for part in error.path)}: {error.message}" for error in errors
        )
        raise ModelError(f"{model.file}: {found} (the chart's values.schema.json)")
    try:
        canary_sizing.check(merged, "release.values")
    except ValueError as err:
        raise ModelError(f"{model.file}: {err}") from None


@dataclass(frozen=True)
class Models:
    """The folder's models that loaded, and the problem of each file that did not (by file)."""

    models: tuple[Model, ...]
    broken: dict[str, str]

    def __iter__(self) -> Any:
        return iter(self.models)

    def get(self, key: str) -> Model:
        for model in self.models:
            if model.key == key:
                return model
        known = [m.key for m in self.models]
        raise KeyError(f"no model {key!r}; the model files define {known}" + self._and_broken())

    def _and_broken(self) -> str:
        return f" (and these files are broken: {sorted(self.broken)})" if self.broken else ""


#: What two models must not share: (what, the value of a model).
UNIQUE = (
    ("registered model", lambda m: m.registered_model),
    ("Helm release", lambda m: m.release.name),
    ("local port", lambda m: m.release.local_port),
    ("source asset", lambda m: m.dataset.asset),
)


@cache
def _load(folder: Path, stamp: tuple[tuple[str, float, int], ...]) -> Models:
    platform = load_platform()
    models: list[Model] = []
    broken: dict[str, str] = {}
    taken: dict[tuple[str, Any], str] = {}
    for name, _, _ in stamp:
        path = folder / name
        file = f"{folder.parent.name}/{folder.name}/{name}"
        try:
            model = parse_model(yaml.load(path.read_text(), Loader=yaml_loader()), path.stem, file, platform)
            for what, value_of in UNIQUE:
                owner = taken.get((what, value_of(model)))
                if owner is not None:
                    raise ModelError(f"{file}: {what} {value_of(model)!r} is already {owner}'s")
        except ModelError as err:
            broken[file] = str(err)
            continue
        except (yaml.YAMLError, OSError) as err:
            broken[file] = f"{file}: not a readable YAML file: {err}"
            continue
        for what, value_of in UNIQUE:
            taken[(what, value_of(model))] = file
        models.append(model)
    return Models(tuple(models), broken)


def models_dir(default: Path = MODELS_DIR) -> Path:
    """The models' folder: ``MLOPS_MODELS_DIR`` when set, else ``default`` (the DAG files pass their own
    ``models/``: the plugins and the DAGs are not always in one repository on the scheduler's disk)."""
    return Path(os.environ.get(MODELS_DIR_ENV) or default).resolve()


def load_models(folder: Path | None = None) -> Models:
    """The models of the folder's ``*.yaml`` files, in the files' order by name; read again when a file changes
    (the DAG processor re-parses continuously, and a model file changes without its DAG file)."""
    folder = Path(folder).resolve() if folder else models_dir()
    files = sorted(folder.glob("*.yaml")) if folder.is_dir() else []
    stamp = tuple((p.name, p.stat().st_mtime, p.stat().st_size) for p in files)
    return _load(folder, stamp)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlops.models", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("check", "list", "mlflow-auth"))
    parser.add_argument(
        "--dir", type=Path, help=f"the models' folder (default: {MODELS_DIR_ENV}, else dags/models)"
    )
    parser.add_argument("--json", action="store_true", help="list: one JSON object per model")
    parser.add_argument(
        "--format", help="list: one line per model from this template of its settings ('{release[name]}')"
    )
    args = parser.parse_args(argv)
    loaded = load_models(args.dir)
    if args.command == "mlflow-auth":
        return mlflow_auth(loaded)
    for model in loaded:
        if args.json:
            print(json.dumps(model.model_dump(mode="json")))  # noqa: T201
        elif args.format:
            print(args.format.format(**model.model_dump(mode="json")))  # noqa: T201
        else:
            print(  # noqa: T201
                f"ok  {model.file}: {model.registered_model}, DAG {model.training_dag_id}, release "
                f"{model.release.namespace}/{model.release.name}, local port {model.release.local_port}"
            )
    for problem in loaded.broken.values():
        print(f"BROKEN  {problem}", file=sys.stderr)  # noqa: T201
    if not loaded.models and not loaded.broken:
        print(f"no model files in {args.dir or models_dir()}", file=sys.stderr)  # noqa: T201
        return 1
    return 1 if loaded.broken else 0


def mlflow_auth(loaded: Models) -> int:
    """MLflow's users, and the pipeline's grants on each model's experiment (its training DAG's) and registered
    model: ``python -m ml.mlflow_auth`` with every model's, what compose's one-shot and the embedded MLflow run on
    every start (a command of its own: the Airflow side reaches ``ml/`` through processes, never imports)."""
    if loaded.broken or not loaded.models:
        for problem in loaded.broken.values() or ["no model files"]:
            print(f"BROKEN  {problem}", file=sys.stderr)  # noqa: T201
        return 1
    arguments = [
        part for model in loaded
        for part in ("--experiment", model.training_dag_id, "--registered-model", model.registered_model)
    ]  # fmt: skip
    return subprocess.run([sys.executable, "-m", "ml.mlflow_auth", *arguments], check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
