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
#: Every image a pod runs: the cluster images and the Terraform drift check's.
POD_IMAGES = [*CLUSTER_IMAGES, ROOT / "docker" / "terraform-drift.Dockerfile"]


def test_there_are_images_for_the_api_the_stages_and_compose_airflow() -> None:
    assert {p.name for p in DOCKERFILES} == {
        "inference-api.Dockerfile",
        "ml-stage.Dockerfile",
        "airflow.Dockerfile",
        "terraform-drift.Dockerfile",
    }


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_lints_clean(dockerfile: Path) -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run(
        [str(hadolint), "--failure-threshold", "info", str(dockerfile)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", POD_IMAGES, ids=lambda p: p.name)
def test_images_run_as_the_user_the_pods_require(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    uid = int(re.search(r"ARG APP_UID=(\d+)", text).group(1))  # type: ignore[union-attr]
    assert uid == load_platform().kubernetes.run_as_user == load_platform().kubernetes.run_as_group
    runtime = text[text.index("AS runtime") :]
    assert "USER ${APP_UID}:${APP_UID}" in runtime
    assert not re.search(r"apt-get install|build-essential|gcc", runtime), "no compilers in the runtime stage"


def test_images_install_the_project_dependencies_alone() -> None:
    """The inference API: the project's dependencies; the ML stage image adds Dask (the train stage's)."""
    serving, stages = CLUSTER_IMAGES
    assert "uv sync --frozen --no-default-groups --no-install-project" in serving.read_text()
    assert (
        "uv sync --frozen --no-default-groups --group distributed --no-install-project" in stages.read_text()
    )


def test_the_compose_airflow_image_installs_the_locked_airflow_group_on_the_locked_airflow() -> None:
    text = (ROOT / "docker" / "airflow.Dockerfile").read_text()
    assert "uv export --frozen --no-default-groups --group airflow" in text
    base = re.search(r"ARG AIRFLOW_VERSION=(\S+)", text).group(1)  # type: ignore[union-attr]
    pinned = re.search(r'"apache-airflow==([^"]+)"', (ROOT / "pyproject.toml").read_text()).group(1)  # type: ignore[union-attr]
    assert base == pinned


def test_the_release_stage_image_carries_helm_and_the_chart() -> None:
    """The ML stage image runs ``python -m ml.release``: Helm at the Makefile's version, and the chart."""
    text = (ROOT / "docker" / "ml-stage.Dockerfile").read_text()
    helm = re.search(r"FROM alpine/helm:(\S+) AS helm", text).group(1)  # type: ignore[union-attr]
    makefile = re.search(r"^HELM_VERSION := v(\S+)", (ROOT / "Makefile").read_text(), re.M).group(1)  # type: ignore[union-attr]
    assert helm == makefile
    assert f"COPY k8s/helm/ /app/{Path(load_platform().release.chart).parent}/" in text


def test_the_terraform_image_runs_the_drift_check_at_the_tested_terraform_version() -> None:
    text = (ROOT / "docker" / "terraform-drift.Dockerfile").read_text()
    assert re.search(r"FROM hashicorp/terraform:1\.(1[0-9])\.\d+ AS terraform", text), "terraform >= 1.10"
    assert load_platform().images.terraform.split("/")[-1].startswith("terraform-drift:")
    assert 'CMD ["mlops.drift.check"' in text


def test_the_terraform_image_carries_what_the_cluster_stacks_providers_run() -> None:
    """Refreshing the cluster stack runs its Helm provider's exec (``aws eks get-token``): the image installs that
    command, pinned."""
    commands = re.findall(r'command\s+= "([^"]+)"', (ROOT / "terraform" / "cluster" / "main.tf").read_text())
    assert commands == ["aws"]
    text = (ROOT / "docker" / "terraform-drift.Dockerfile").read_text()
    version = re.search(r"^ARG AWSCLI_VERSION=(\d+\.\d+\.\d+)$", text, re.M)
    assert version and 'RUN pip install --no-cache-dir "awscli==${AWSCLI_VERSION}"' in text
    assert text.index("awscli") < text.index("USER ${APP_UID}")


def test_the_build_context_holds_what_the_dockerfiles_copy() -> None:
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for dockerfile in DOCKERFILES:
        for source in re.findall(r"^COPY (?!--from)(\S+)", dockerfile.read_text(), re.M):
            assert any(source.rstrip("/").startswith(path) for path in allowed), (
                f"{dockerfile.name}: {source}"
            )
