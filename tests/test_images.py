"""The container images: lint clean with hadolint and agree with the platform settings."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from mlops.platform_config import load_platform

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = sorted((ROOT / "docker").glob("*.Dockerfile"))
#: The images that run in the cluster (stage pods, the inference API); airflow.Dockerfile is docker-compose's Airflow.
CLUSTER_IMAGES = [ROOT / "docker" / name for name in ("inference-api.Dockerfile", "ml-stage.Dockerfile")]


def test_there_are_images_for_the_api_the_stages_and_compose_airflow() -> None:
    assert {p.name for p in DOCKERFILES} == {
        "inference-api.Dockerfile",
        "ml-stage.Dockerfile",
        "airflow.Dockerfile",
    }


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_lints_clean(dockerfile: Path) -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run(
        [str(hadolint), "--failure-threshold", "info", str(dockerfile)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", CLUSTER_IMAGES, ids=lambda p: p.name)
def test_images_run_as_the_user_the_pods_require(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    uid = int(re.search(r"ARG APP_UID=(\d+)", text).group(1))  # type: ignore[union-attr]
    assert uid == load_platform().kubernetes["run_as_user"] == load_platform().kubernetes["run_as_group"]
    runtime = text[text.index("AS runtime") :]
    assert "USER ${APP_UID}:${APP_UID}" in runtime
    assert not re.search(r"apt-get install|build-essential|gcc", runtime), "no compilers in the runtime stage"


def test_images_install_the_project_dependencies_alone() -> None:
    for dockerfile in CLUSTER_IMAGES:
        assert "uv sync --frozen --no-default-groups --no-install-project" in dockerfile.read_text()


def test_the_compose_airflow_image_installs_the_locked_airflow_group_on_the_locked_airflow() -> None:
    text = (ROOT / "docker" / "airflow.Dockerfile").read_text()
    assert "uv export --frozen --no-default-groups --group airflow" in text
    base = re.search(r"ARG AIRFLOW_VERSION=(\S+)", text).group(1)  # type: ignore[union-attr]
    pinned = re.search(r'"apache-airflow==([^"]+)"', (ROOT / "pyproject.toml").read_text()).group(1)  # type: ignore[union-attr]
    assert base == pinned
