"""Data tests of the synthetic card-transactions generator."""

from __future__ import annotations

import pandas as pd
import pytest

from ml.errors import StageError
from ml.synthetic import TARGET, TIME_COLUMN, generate, generate_from_uri


def test_same_seed_same_table_and_other_seed_other_table() -> None:
    first, again, other = generate(5_000, seed=3), generate(5_000, seed=3), generate(5_000, seed=4)
    pd.testing.assert_frame_equal(first, again)
    assert not first["amount"].equals(other["amount"])


@pytest.mark.parametrize("rate", [0.002, 0.005, 0.01])
def test_fraud_rate_is_what_was_asked(rate: float) -> None:
    frame = generate(400_000, seed=1, fraud_rate=rate)
    assert frame[TARGET].mean() == pytest.approx(rate, rel=0.15)


def test_columns_cover_numeric_categorical_and_time() -> None:
    frame = generate(1_000)
    assert pd.api.types.is_datetime64_any_dtype(frame[TIME_COLUMN])
    assert frame[TIME_COLUMN].is_monotonic_increasing
    categorical = [c for c in frame.columns if isinstance(frame[c].dtype, pd.CategoricalDtype)]
    assert categorical == ["merchant_category", "channel", "country"]
    assert set(frame[TARGET].unique()) <= {0, 1}


def test_fraud_is_learnable_from_the_features() -> None:
    frame = generate(200_000, seed=2)
    ratio = frame["amount"] / frame["avg_amount_30d"]
    high, low = frame[ratio > ratio.quantile(0.95)], frame[ratio < ratio.median()]
    assert high[TARGET].mean() > 5 * low[TARGET].mean()


def test_a_turned_pattern_keeps_the_transactions_and_the_fraud_rate_and_moves_the_frauds() -> None:
    """From ``pattern_turns_on`` the frauds are where they were rarest: the same rows otherwise, the days before
    unchanged. A stand-in for fraudsters who adapted: no feature drifts, only the labels show it."""
    stream = "synthetic://card-transactions?rows_per_day=20000&seed=3&start=2026-03-01"
    start, end = pd.Timestamp("2026-03-01", tz="UTC"), pd.Timestamp("2026-03-06", tz="UTC")
    before = generate_from_uri(stream, start=start, end=end)
    turned = generate_from_uri(f"{stream}&pattern_turns_on=2026-03-04", start=start, end=end)
    on = turned[TIME_COLUMN] >= pd.Timestamp("2026-03-04", tz="UTC")
    pd.testing.assert_frame_equal(before.drop(columns=TARGET), turned.drop(columns=TARGET))
    pd.testing.assert_series_equal(before[TARGET][~on], turned[TARGET][~on])
    assert turned[TARGET][on].mean() == pytest.approx(before[TARGET][on].mean(), rel=0.3)
    ratio = turned["amount"] / turned["avg_amount_30d"]
    high = ratio > ratio.quantile(0.95)
    assert before[TARGET][on & high].mean() > 5 * before[TARGET][on].mean()
    assert turned[TARGET][on & high].mean() < before[TARGET][on].mean() / 5
    with pytest.raises(StageError, match="is not a date"):
        generate_from_uri(f"{stream}&pattern_turns_on=soon", start=start, end=end)


def test_uri_options_are_parsed_and_unknown_ones_refused() -> None:
    assert len(generate_from_uri("synthetic://card-transactions?rows=123&seed=5")) == 123
    with pytest.raises(StageError, match=r"unknown option\(s\) \['colour'\]"):
        generate_from_uri("synthetic://card-transactions?rows=10&colour=red")
    with pytest.raises(StageError, match="fraud_rate must be between"):
        generate(10, fraud_rate=0.5)


def test_a_table_written_as_it_is_generated_is_the_same_table_in_row_groups(tmp_path, monkeypatch) -> None:
    import pyarrow.parquet as pq

    from ml import synthetic

    monkeypatch.setattr(synthetic, "ROWS_PER_GROUP", 5000)
    synthetic.main(["--rows", "30000", "--seed", "3", "--output", str(tmp_path / "t.parquet")])
    written = pq.ParquetFile(tmp_path / "t.parquet")
    assert (
        written.num_row_groups > 1
        and max(written.metadata.row_group(i).num_rows for i in range(written.num_row_groups)) <= 5000
    )
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "t.parquet"), synthetic.generate(30_000, seed=3))
    assert [p.name for p in tmp_path.iterdir()] == ["t.parquet"]  # no partial file left
