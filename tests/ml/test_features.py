"""Code tests of the encoder that turns tables into model matrices."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ml.features import TabularEncoder


@pytest.fixture()
def train() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "amount": [1.0, 2.5, None, 4.0],
            "channel": pd.Categorical(["web", "pos", "web", "atm"]),
            "store": [7, 7, 12, 3],
            "count": [1, 2, 3, 4],
        }
    )


def test_columns_come_out_in_feature_order_as_float32(train) -> None:
    encoder = TabularEncoder(features=["count", "channel", "amount"], categorical=["channel"]).fit(train)
    matrix = encoder.transform(train)
    assert matrix.dtype == np.float32 and matrix.shape == (4, 3)
    np.testing.assert_array_equal(matrix[:, 0], [1, 2, 3, 4])
    np.testing.assert_array_equal(matrix[:, 1], [2, 1, 2, 0])  # atm, pos, web
    assert np.isnan(matrix[2, 2])
    assert list(encoder.get_feature_names_out()) == ["count", "channel", "amount"]


def test_strings_from_a_client_match_categories_learnt_from_categoricals_and_numbers(train) -> None:
    encoder = TabularEncoder(features=["channel", "store"], categorical=["channel", "store"]).fit(train)
    request = pd.DataFrame({"channel": ["pos", "phone", None], "store": ["12", "7", "99"]})
    matrix = encoder.transform(request)
    learnt = encoder.transform(train)  # rows 2 and 0 of train hold the stores 12 and 7
    assert (matrix[0, 1], matrix[1, 1]) == (learnt[2, 1], learnt[0, 1])
    assert np.isnan(matrix[2, 1])  # store 99 was never seen
    assert matrix[0, 0] == learnt[1, 0] and np.isnan(matrix[1, 0]) and np.isnan(matrix[2, 0])


def test_categorical_input_with_other_categories_is_remapped(train) -> None:
    encoder = TabularEncoder(features=["channel"], categorical=["channel"]).fit(train)
    other = pd.DataFrame(
        {"channel": pd.Categorical(["atm", "kiosk", "web"], categories=["web", "kiosk", "atm"])}
    )
    np.testing.assert_array_equal(encoder.transform(other)[:, 0], [0, np.nan, 2])


def test_a_missing_column_is_named(train) -> None:
    encoder = TabularEncoder(features=["amount", "channel"], categorical=["channel"]).fit(train)
    with pytest.raises(ValueError, match=r"columns \['channel'\] are missing"):
        encoder.transform(train.drop(columns="channel"))
