"""Helpers shared by tests."""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx
import yaml

from ml.compare import Rule
from ml.evaluate import Evaluation, evaluate
from ml.register import register
from ml.train import TrainConfig, TrainResult
from mlops.platform_config import load_platform

CHAMPION = load_platform().registry.production_alias
CHALLENGER = load_platform().registry.candidate_alias
#: The shipped card-fraud model's file: what the tests' own model files start from.
CARD_FRAUD_FILE = Path(__file__).resolve().parents[1] / "dags" / "models" / "card_fraud.yaml"


def tests_canary() -> dict[str, Any]:
    """The chart's analysis values the tests release with: a positive-share test sized (``mlops.canary_sizing``) to
    stop a tenfold share at a 2 % base rate with ``alpha`` 0.001 over the chart's measurements. The tests check how a
    canary runs, not how it is sized (tests/k8s/test_canary_sizing.py): the chart's own sizing makes every local
    canary thousands of requests, and its ``alpha`` of 0.05 would stop one healthy canary in twenty-odd; this one
    needs about 150 requests per model and measurement, and stops one in a thousand."""
    from mlops.canary_sizing import measurements, size

    chart = Path(__file__).resolve().parents[1] / load_platform().release.chart
    inputs = {"baseRate": 0.02, "detectableRatio": 10, "alpha": 0.001, "power": 0.8}
    sizing = size(inputs["baseRate"], inputs["detectableRatio"], inputs["alpha"], inputs["power"],
                  measurements(yaml.safe_load((chart / "values.yaml").read_text())))  # fmt: skip
    return {"minRequests": sizing.min_requests, "positiveShare": {**inputs, "maxZ": sizing.max_z}}


def write_platform(path: Path, base: Path, **local: Any) -> Path:
    """The platform settings of ``base`` with ``release.local`` settings changed, written to ``path``."""
    raw = yaml.safe_load(base.read_text())
    raw["release"]["local"].update(local)
    path.write_text(yaml.safe_dump(raw))
    return path


def set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``raw["a"]["b"]`` for ``"a.b"``, making the mappings on the way (a model file's ``retraining: {}``)."""
    *parents, last = dotted.split(".")
    node = raw
    for part in parents:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[last] = value


def copy_models(folder: Path, every: dict[str, Any] | None = None, **changes: dict[str, Any]) -> Path:
    """The shipped model files in ``folder``, each model's raw file updated with ``every`` and ``changes[<key>]``
    (nested keys as dotted paths)."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in CARD_FRAUD_FILE.parent.glob("*.yaml"):
        raw = yaml.safe_load(path.read_text())
        for dotted, value in {**(every or {}), **changes.get(path.stem, {})}.items():
            set_dotted(raw, dotted, value)
        (folder / path.name).write_text(yaml.safe_dump(raw))
    return folder


def write_model(folder: Path, key: str, registered_model: str, port: int, **changes: Any) -> Path:
    """A model file of the tests in ``folder`` (its models folder): the card-fraud model's file under another key,
    registered model, Helm release (``<registered model>-api``), local port and source asset, with ``changes``
    (dotted keys: ``{"release.approval": {...}}``) on top. Returns the folder."""
    import yaml

    raw = yaml.safe_load(CARD_FRAUD_FILE.read_text())
    raw["registered_model"] = registered_model
    raw["release"].update(name=f"{registered_model}-api", local_port=port)
    raw["dataset"]["asset"] = f"{registered_model}-source"
    for dotted, value in changes.items():
        set_dotted(raw, dotted, value)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{key}.yaml").write_text(yaml.safe_dump(raw))
    return folder


def train_config(**overrides: Any) -> TrainConfig:
    """The pipeline's default training config (from the platform settings) with some fields changed."""
    return TrainConfig(**{**load_platform().training.model_dump(), **overrides})


def train_arguments(**overrides: Any) -> list[str]:
    """The train stage's hyperparameter flags for ``train_config(**overrides)``, as the DAG passes them."""
    return [
        part
        for name, value in asdict(train_config(**overrides)).items()
        for part in (f"--{name.replace('_', '-')}", str(value))
    ]


#: A progress line of the train stage's fits (``ml.train.progress_callback``): the phase, the round of the rounds,
#: the validation average precision and the best so far (the refit has no validation set), the seconds elapsed.
PROGRESS_LINE = re.compile(
    r"(?P<phase>train|refit): round (?P<round>\d+)/(?P<rounds>\d+), (?:validation average precision "
    r"(?P<value>\d\.\d{4}) \(best (?P<best>\d\.\d{4}) at round (?P<best_round>\d+)\), )?"
    r"(?P<elapsed>\d+\.\d) s elapsed"
)


def progress_lines(log: str, phase: str) -> list[dict[str, str]]:
    """The fields of the progress lines of ``phase`` (``train`` or ``refit``) in a stage's log."""
    return [line.groupdict() for line in PROGRESS_LINE.finditer(log) if line["phase"] == phase]


def every_and_last(every: int, rounds: int) -> list[int]:
    """The rounds a fit of ``rounds`` rounds reports its progress at: every ``every`` rounds, and the last."""
    return [*range(every, rounds + 1, every), *([rounds] if rounds % every else [])]


def register_evaluated(
    prepared: str, trained: TrainResult, name: str, run_key: str
) -> tuple[Evaluation, str]:
    """Evaluate a trained model against ``name``'s champion (no gate) and register it as ``name``'s challenger."""
    evaluation = evaluate(prepared, trained.model_uri, trained.run_id, registered_model_name=name,
                          min_average_precision=0.0, rule=Rule("superior", -1.0, 0.0), champion_alias=CHAMPION)  # fmt: skip
    return evaluation, register(asdict(evaluation), run_key=run_key, alias=CHALLENGER).version


def register_champion(prepared: str, trained: TrainResult, name: str, run_key: str) -> tuple[Evaluation, str]:
    """``register_evaluated``, then as ``ml.promote`` leaves a version its canary promoted: the verdict, then the
    production alias."""
    from contract import CANARY_PROMOTED, CANARY_VERDICT_TAG
    from ml import tracking

    evaluation, version = register_evaluated(prepared, trained, name, run_key)
    tracking.client().set_model_version_tag(name, version, CANARY_VERDICT_TAG, CANARY_PROMOTED)
    tracking.client().set_registered_model_alias(name, CHAMPION, version)
    return evaluation, version


def split_records(prepared: str, rows: int | None = None) -> tuple[dict[str, Any], Any, list[dict[str, Any]]]:
    """A prepared folder's manifest, its test split (the first ``rows``) and that split's rows as the API's records
    (the model's features, None for a missing value)."""
    from ml.schema import to_model_input
    from ml.storage import read_manifest, read_published_table

    manifest = read_manifest(prepared)
    test = read_published_table(prepared, "test.parquet")
    test = (test if rows is None else test.head(rows)).reset_index(drop=True)
    frame = to_model_input(test[manifest["features"]], manifest["categorical"])
    records = [{k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()}
               for r in frame.to_dict("records")]  # fmt: skip
    return manifest, test, records


def artifact_folder(model_id: str, basetemp: Path) -> Path:
    """Where the session's MLflow server (``tests/conftest.py``) keeps a logged model's files on disk."""
    import mlflow

    location = mlflow.get_logged_model(
        model_id
    ).artifact_location  # mlflow-artifacts:/<experiment>/models/...
    return basetemp / "mlflow" / "artifacts" / location.split(":/", 1)[1].lstrip("/")


def wait_until_answering(
    url: str, process: subprocess.Popen[bytes], log: Path, timeout_s: float = 60
) -> None:
    """Wait for a server we started to answer 200 on ``url``; fail with the end of its log if it exits first or
    does not answer in time."""
    deadline = time.monotonic() + timeout_s
    while True:
        assert process.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)


def dask_operator_chart() -> Path:
    """The Dask Kubernetes operator's chart, as the installed dask-kubernetes ships it (the version the Makefile
    installs in the cluster)."""
    import dask_kubernetes

    return (
        Path(dask_kubernetes.__file__).parent
        / "operator"
        / "deployment"
        / "helm"
        / "dask-kubernetes-operator"
    )
