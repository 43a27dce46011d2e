"""Typed access to ``platform.yaml``, the one place that images, presets, stages and thresholds are defined."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

PLATFORM_FILE = Path(__file__).with_name("platform.yaml")


@dataclass(frozen=True)
class Stage:
    name: str
    preset: str
    timeout_minutes: int
    #: A stage that calls the Kubernetes API runs as its own service account; the others as the default one.
    service_account: str | None = None


@dataclass(frozen=True)
class Platform:
    raw: dict[str, Any]

    @property
    def ml_stage_image(self) -> str:
        return str(self.raw["images"]["ml_stage"])

    @property
    def inference_api_image(self) -> tuple[str, str]:
        """(repository, tag) of the inference API image."""
        repository, _, tag = str(self.raw["images"]["inference_api"]).rpartition(":")
        return repository, tag

    @property
    def release(self) -> dict[str, Any]:
        return dict(self.raw["release"])

    @property
    def kubernetes(self) -> dict[str, Any]:
        return dict(self.raw["kubernetes"])

    @property
    def quality_gate(self) -> dict[str, float]:
        return {key: float(value) for key, value in self.raw["quality_gate"].items()}

    @property
    def training(self) -> dict[str, Any]:
        """Defaults of the training hyperparameters the DAG's form exposes."""
        return dict(self.raw["training"])

    @property
    def registry(self) -> dict[str, str]:
        return {key: str(value) for key, value in self.raw["registry"].items()}

    def stage(self, name: str) -> Stage:
        try:
            spec = self.raw["stages"][name]
        except KeyError:
            raise KeyError(
                f"unknown stage {name!r}; platform.yaml defines {sorted(self.raw['stages'])}"
            ) from None
        return Stage(
            name=name,
            preset=spec["preset"],
            timeout_minutes=int(spec["timeout_minutes"]),
            service_account=spec.get("service_account"),
        )

    def preset(self, name: str) -> dict[str, Any]:
        try:
            return dict(self.raw["resource_presets"][name])
        except KeyError:
            presets = sorted(self.raw["resource_presets"])
            raise KeyError(f"unknown resource preset {name!r}; platform.yaml defines {presets}") from None

    def node_group(self, name: str) -> dict[str, Any]:
        return dict(self.raw["node_groups"][name])

    @property
    def terraform_image(self) -> str:
        return str(self.raw["images"]["terraform"])

    @property
    def terraform_drift(self) -> dict[str, Any]:
        """Schedule, pod settings, allowlist and stacks of the Terraform drift check."""
        return dict(self.raw["terraform_drift"])

    @property
    def drift_allowlist_file(self) -> Path:
        return PLATFORM_FILE.parent / str(self.raw["terraform_drift"]["allowlist"])


@cache
def load_platform(path: Path = PLATFORM_FILE) -> Platform:
    """Read the platform settings once per process."""
    return Platform(yaml.safe_load(path.read_text()))
