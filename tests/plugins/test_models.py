"""Model files load into typed models over the platform's defaults; a mistake or a clash names the file and key."""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlops.models import MODELS_DIR, ModelError, load_models, parse_model
from mlops.platform_config import load_platform
from tests.helpers import set_dotted

ROOT = Path(__file__).resolve().parents[2]
CARD = yaml.safe_load((MODELS_DIR / "card_fraud.yaml").read_text())


def changed(path: str, value: Any, raw: dict[str, Any] = CARD) -> dict[str, Any]:
    raw = copy.deepcopy(raw)
    set_dotted(raw, path, value)
    return raw


def test_the_shipped_model_files_load_with_the_platforms_defaults_where_they_say_nothing() -> None:
    loaded = load_models(MODELS_DIR)
    assert loaded.broken == {}
    assert [m.key for m in loaded] == ["adult_income", "card_fraud"]
    card, platform = loaded.get("card_fraud"), load_platform()
    assert card.training == platform.training  # `training: {}`
    assert card.retraining == platform.retraining
    assert card.quality_gate.min_improvement == platform.quality_gate.min_improvement
    assert card.release.approval == platform.release.approval
    adult = loaded.get("adult_income")
    assert (adult.retraining.trigger, adult.dataset.time_column) == ("manual", None)
    assert adult.quality_gate.min_average_precision == 0.6  # its own, over the platform's
    assert adult.training_dag_id == "train_adult_income" and adult.scoring_dag_id == "score_adult_income"


def test_a_model_overrides_the_defaults_key_by_key() -> None:
    model = parse_model(changed("training", {"max_depth": 8}), "card_fraud", "models/card_fraud.yaml")
    defaults = load_platform().training
    assert model.training.max_depth == 8
    assert model.training.model_dump() == {**defaults.model_dump(), "max_depth": 8}
    approval = parse_model(
        changed("release.approval", {"approvers": ["risk"]}), "card_fraud", "f.yaml"
    ).release
    assert approval.approval.approvers == ("risk",) and approval.approval.required is False


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("registered_modle", "x", "registered_modle: Extra inputs are not permitted"),
        ("release.local_port", "eighty", "release.local_port: Input should be a valid integer"),
        ("release.local_port", 80, "release.local_port: Input should be greater than or equal to 1024"),
        ("release.name", "Inference_API", "release.name: String should match pattern"),
        ("training.max_depth", 0, "training.max_depth: Input should be greater than or equal to 1"),
        ("training.device", "tpu", "training.device: Value error, must be one of"),
        (
            "retraining.schedule",
            "weekly",
            "retraining.schedule: Value error, 'weekly' is not a cron expression",
        ),
        ("retraining.trigger", "hourly", "retraining.trigger: Input should be 'cron', 'asset' or 'manual'"),
        ("quality_gate.min_average_precision", 2, "quality_gate.min_average_precision: Input should be less"),
        ("owners", [], "owners: Tuple should have at least 1 item"),
        ("dataset.time_column", None, "retraining.trigger 'cron' needs dataset.time_column"),
        ("dataset.drop_columns", ["is_fraud"], "drop_columns names 'is_fraud', which is the target"),
        (
            "release.values",
            {"workload": {"replicas": "two"}},
            "release.values.workload.replicas: 'two' is not",
        ),
        ("release.values", {"replicaCount": 2}, "release.values: Additional properties are not allowed"),
    ],
)
def test_a_mistake_names_the_file_the_key_and_the_problem(path: str, value: Any, message: str) -> None:
    with pytest.raises(ModelError, match=rf"^models/card_fraud\.yaml: .*{re.escape(message)}"):
        parse_model(changed(path, value), "card_fraud", "models/card_fraud.yaml")


def test_a_file_that_is_not_a_mapping_or_badly_named_is_refused() -> None:
    with pytest.raises(ModelError, match="a model file is a mapping of sections, got list"):
        parse_model(["x"], "card_fraud", "models/card_fraud.yaml")
    with pytest.raises(ModelError, match="lower-case words joined by underscores"):
        parse_model(CARD, "Card-Fraud", "models/Card-Fraud.yaml")


def named(folder: Path, name: str) -> str:
    """How messages name a model file: its folder's parent, its folder and its name (``dags/models/x.yaml``)."""
    return f"{folder.parent.name}/{folder.name}/{name}"


def write(folder: Path, name: str, raw: Any) -> Path:
    path = folder / name
    path.write_text(raw if isinstance(raw, str) else yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize(
    ("path", "value", "what"),
    [
        ("release.name", "other-api", "registered model 'card-fraud-detector'"),
        ("registered_model", "other-model", "Helm release 'inference-api'"),
    ],
)
def test_what_two_models_must_not_share_breaks_the_later_file_only(tmp_path, path, value, what) -> None:
    write(tmp_path, "a_first.yaml", CARD)
    # The second differs in one identity but shares the rest: the first clash found is named.
    write(tmp_path, "b_second.yaml", changed(path, value))
    loaded = load_models(tmp_path)
    assert [m.key for m in loaded] == ["a_first"]
    assert list(loaded.broken) == [named(tmp_path, "b_second.yaml")]
    assert (
        f"{what} is already {named(tmp_path, 'a_first.yaml')}'s"
        in loaded.broken[named(tmp_path, "b_second.yaml")]
    )


def test_unreadable_yaml_is_named_and_the_folder_is_read_again_when_a_file_changes(tmp_path) -> None:
    write(tmp_path, "card_fraud.yaml", CARD)
    broken = write(tmp_path, "other.yaml", "registered_model: [unclosed\n")
    loaded = load_models(tmp_path)
    assert [m.key for m in loaded] == ["card_fraud"]
    assert "other.yaml: not a readable YAML file" in loaded.broken[named(tmp_path, "other.yaml")]
    other = changed("registered_model", "other-model")
    other["release"] = {**other["release"], "name": "other-api", "local_port": 8100}
    other["dataset"] = {**other["dataset"], "asset": "other-transactions"}
    write(tmp_path, "other.yaml", other)
    os.utime(broken, (1, 1))  # a different stamp even within the file system's time resolution
    assert [m.key for m in load_models(tmp_path)] == ["card_fraud", "other"]


def test_models_check_exits_non_zero_and_names_each_broken_file(tmp_path) -> None:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'plugins'}"}
    command = [sys.executable, "-m", "mlops.models", "check", "--dir"]
    good = subprocess.run([*command, str(MODELS_DIR)], env=env, capture_output=True, text=True, check=False)
    assert good.returncode == 0, good.stderr
    assert "ok  dags/models/card_fraud.yaml: card-fraud-detector, DAG train_card_fraud" in good.stdout
    write(tmp_path, "card_fraud.yaml", changed("release.local_port", "eighty"))
    bad = subprocess.run([*command, str(tmp_path)], env=env, capture_output=True, text=True, check=False)
    assert bad.returncode == 1
    assert "BROKEN  " in bad.stderr and "card_fraud.yaml: release.local_port" in bad.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    none = subprocess.run([*command, str(empty)], env=env, capture_output=True, text=True, check=False)
    assert none.returncode == 1 and "no model files" in none.stderr
