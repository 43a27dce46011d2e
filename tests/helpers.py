"""Helpers shared by tests."""

from __future__ import annotations

from typing import Any

from ml.train import TrainConfig
from mlops.platform_config import load_platform

CHAMPION = load_platform().registry.production_alias
CHALLENGER = load_platform().registry.candidate_alias


def train_config(**overrides: Any) -> TrainConfig:
    """The pipeline's default training config (from the platform settings) with some fields changed."""
    return TrainConfig(**{**load_platform().training.model_dump(), **overrides})
