"""platform.yaml loads into typed settings; a mistake fails at load with the key's path and the problem."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
import yaml

from mlops.platform_config import (
    PLATFORM_FILE,
    PLATFORM_FILE_ENV,
    PlatformError,
    load_platform,
    parse_platform,
)

RAW = yaml.safe_load(PLATFORM_FILE.read_text())


def changed(path: str, value: Any) -> dict[str, Any]:
    raw = copy.deepcopy(RAW)
    *parents, key = path.split(".")
    node = raw
    for part in parents:
        node = node[part]
    node[key] = value
    return raw


def test_the_committed_file_loads_into_typed_settings() -> None:
    platform = load_platform()
    assert platform.release.local.pause_seconds == RAW["release"]["local"]["pause_seconds"]
    assert platform.stage("train").preset == RAW["stages"]["train"]["preset"]
    assert platform.node_group_of(platform.preset("gpu")) is platform.node_groups["gpu"]


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("release.namespace", "x", "release.namespace: Extra inputs are not permitted"),
        ("release.local.state_dir", 8, "release.local.state_dir: Input should be a valid string"),
        (
            "retraining.schedule",
            "weekly",
            "retraining.schedule: Value error, 'weekly' is not a cron expression",
        ),
        ("release.local.pause_seconds", 0, "release.local.pause_seconds: Input should be greater than 0"),
        ("training.device", "tpu", "training.device: Value error, must be one of ('auto', 'cpu', 'cuda')"),
        (
            "quality_gate.min_average_precision",
            1.5,
            "quality_gate.min_average_precision: Input should be less",
        ),
        ("stages.train.preset", "gpu-huge", "stages.train.preset 'gpu-huge' is not one of resource_presets"),
        ("resource_presets.gpu.node_group", "tpu", "resource_presets.gpu.node_group 'tpu' is not one of"),
    ],
)
def test_a_mistake_names_the_key_and_the_problem(path: str, value: Any, message: str) -> None:
    with pytest.raises(PlatformError, match=rf"^platform\.yaml: .*{re.escape(message)}"):
        parse_platform(changed(path, value))


def test_a_missing_section_is_named() -> None:
    raw = copy.deepcopy(RAW)
    del raw["registry"]
    with pytest.raises(PlatformError, match="registry: Field required"):
        parse_platform(raw)


def test_another_environments_file_is_chosen_by_the_environment(tmp_path, monkeypatch) -> None:
    other = tmp_path / "platform.yaml"
    other.write_text(yaml.safe_dump(changed("release.chart", "charts/inference-api-staging")))
    monkeypatch.setenv(PLATFORM_FILE_ENV, str(other))
    assert load_platform().release.chart == "charts/inference-api-staging"
    monkeypatch.delenv(PLATFORM_FILE_ENV)
    assert load_platform().release.chart == RAW["release"]["chart"]
    monkeypatch.setenv(PLATFORM_FILE_ENV, str(tmp_path / "missing.yaml"))
    with pytest.raises(FileNotFoundError):
        load_platform()
