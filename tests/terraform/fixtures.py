"""Fixture stacks deployed with the real terraform binary, offline, each in a folder of its own."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STACKS = Path(__file__).with_name("stacks")
PROVIDER = Path(__file__).with_name("fixture_provider") / "terraform_provider_world.py"
#: The tools venv that `make` builds for the test provider (the `tf` framework pins an older protobuf).
PROVIDER_PYTHON = ROOT / ".tools" / "fixture-provider" / "bin" / "python"
#: What the world stack's sensitive variable holds: it must never reach a report or a log.
API_TOKEN = "tok-4f9a1c-never-in-a-report"


@pytest.fixture(scope="session")
def terraform_cli_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Terraform CLI configuration that installs the test provider from a local mirror and nothing else."""
    if shutil.which("terraform") is None:
        raise RuntimeError("terraform is not on PATH: the drift tests need the real binary")
    if not PROVIDER_PYTHON.exists():
        raise RuntimeError(f"{PROVIDER_PYTHON} is missing: `make test` (or `make test-tools`) builds it")
    mirror = tmp_path_factory.mktemp("provider-mirror")
    package = mirror / "example.test" / "fixtures" / "world" / "1.0.0" / "linux_amd64"
    package.mkdir(parents=True)
    executable = package / "terraform-provider-world"
    executable.write_text(f'#!/bin/sh\nexec "{PROVIDER_PYTHON}" "{PROVIDER}" "$@"\n')
    executable.chmod(0o755)
    config = mirror / "terraform.rc"
    config.write_text(
        "provider_installation {\n"
        f'  filesystem_mirror {{\n    path    = "{mirror}"\n    include = ["example.test/*/*"]\n  }}\n'
        '  direct {\n    exclude = ["example.test/*/*"]\n  }\n'
        "}\n"
    )
    return config


@pytest.fixture()
def terraform_env(terraform_cli_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The worker's Terraform settings for one test; returns the folder of the fake world."""
    world = tmp_path / "world"
    monkeypatch.setenv("TF_CLI_CONFIG_FILE", str(terraform_cli_config))
    monkeypatch.setenv("TF_VAR_world_root", str(world))
    monkeypatch.setenv("TF_VAR_api_token", API_TOKEN)
    monkeypatch.setenv("CHECKPOINT_DISABLE", "1")
    return world


def terraform(stack: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["terraform", *args, "-no-color"], cwd=stack, capture_output=True, text=True, env=os.environ.copy()
    )


@pytest.fixture()
def deploy(terraform_env: Path, tmp_path: Path) -> Callable[[str], Path]:
    """Copy a fixture stack to its own folder and apply it (local backend): the 'deployed' infrastructure."""

    def deploy_stack(name: str) -> Path:
        stack = tmp_path / "stacks" / name
        shutil.copytree(STACKS / name, stack)
        for args in (("init", "-input=false"), ("apply", "-auto-approve", "-input=false")):
            result = terraform(stack, *args)
            assert result.returncode == 0, result.stdout + result.stderr
        return stack

    return deploy_stack


def edit_world(world: Path, name: str, **changes: object) -> None:
    """Change an object of the fake world behind Terraform's back."""
    path = world / f"{name}.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
