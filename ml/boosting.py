"""The trained XGBoost booster as the model the pipeline logs, for the single-node fit and the Dask one alike."""

from __future__ import annotations

import os
from typing import Any


def as_classifier(
    booster: Any, params: dict[str, Any], feature_types: list[str], seed: int, **fit: Any
) -> Any:
    """An ``XGBClassifier`` holding ``booster`` (trained with ``params``), with the settings of the classifier
    the model was always logged as, so that it predicts (at its best round, when early-stopped), saves and loads
    as that one does."""
    from xgboost import XGBClassifier

    model = XGBClassifier(
        **params, feature_types=feature_types, enable_categorical=True, random_state=seed, n_jobs=os.cpu_count(),
        **fit,
    )  # fmt: skip
    model.load_model(bytearray(booster.save_raw("json")))
    return model
