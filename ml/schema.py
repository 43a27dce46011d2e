"""The model's input contract: the types a client sends, which the logged signature declares."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd


def to_model_input(frame: pd.DataFrame, categorical: Sequence[str]) -> pd.DataFrame:
    """Type feature columns as the signature declares them: categories as strings, the rest as doubles.

    Doubles, not integers, because the model handles missing values and an integer column would make the
    signature reject a request that leaves one out.
    """
    converted = {}
    for column in frame.columns:
        values = frame[column]
        if column in categorical:
            converted[column] = values.astype(object).where(values.notna(), None)
        else:
            converted[column] = values.astype(np.float64)
    return pd.DataFrame(converted, index=frame.index)
