"""Models that fail in production ways, for canaries that must be rolled back.

They keep the pipeline's shape (the fitted ``TabularEncoder`` then a classifier) so the inference API loads them
like any registered model; only the classifier misbehaves. The API servers import this module by name, so it
lives in an importable package of the tests.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin


class FaultyClassifier(ClassifierMixin, BaseEstimator):
    """A classifier that misbehaves as ``fault`` says: ``error`` fails every prediction (a 500), ``slow`` answers
    after ``delay_s``, ``high`` scores everything 0.95 (it flags every transaction), ``low`` scores everything 0.01."""

    def __init__(self, fault: str = "error", delay_s: float = 0.4) -> None:
        self.fault = fault
        self.delay_s = delay_s

    def fit(self, features: Any, labels: Any) -> FaultyClassifier:
        self.classes_ = np.array([0, 1])
        return self

    def predict_proba(self, features: Any) -> np.ndarray:
        if self.fault == "error":
            raise RuntimeError("injected fault: this model cannot score")
        if self.fault == "slow":
            time.sleep(self.delay_s)
        scores = np.full(len(features), 0.95 if self.fault == "high" else 0.01)
        return np.column_stack([1 - scores, scores])


TRUSTED_TYPES = ["ml.features.TabularEncoder", f"{__name__}.FaultyClassifier"]
