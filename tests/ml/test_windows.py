"""Data windows: a run reads, trains on and is evaluated on its own window of the source, whatever its layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from ml.errors import DataValidationError, StageError
from ml.prepare import prepare
from ml.sources import _time_filter, read_source
from ml.storage import read_manifest, read_published_table
from ml.synthetic import DRIFT_EPOCH, TIME_COLUMN, generate_range
from ml.windows import Minimums, Window, plan

STREAM = "synthetic://card-transactions?rows_per_day=400&seed=5"
EPOCH = pd.Timestamp(DRIFT_EPOCH, tz="UTC")


def week(n: int) -> pd.Timestamp:
    """The start of the stream's week ``n`` (week 1 starts at the drift epoch)."""
    return EPOCH + pd.Timedelta(weeks=n - 1)


def window(first_week: int, last_week: int) -> Window:
    return Window(week(first_week), week(last_week + 1))


def test_the_evaluation_window_is_the_interval_and_training_the_days_before_it() -> None:
    windows = plan("2026-03-02", "2026-03-09", training_days=56)
    assert windows.evaluation == windows.interval
    assert windows.training == Window(
        pd.Timestamp("2026-01-05", tz="UTC"), pd.Timestamp("2026-03-02", tz="UTC")
    )
    last_three = plan(
        "2026-03-01T00:00:00+00:00", "2026-03-31T00:00:00+00:00", training_days=7, evaluation_days=3
    )
    assert last_three.evaluation.start == pd.Timestamp("2026-03-28", tz="UTC")
    assert last_three.training.end == last_three.evaluation.start
    with pytest.raises(StageError, match="is empty: its start must be before its end"):
        plan("2026-03-09", "2026-03-02", training_days=56)
    with pytest.raises(StageError, match="'next week' is not an ISO-8601"):
        plan("next week", "2026-03-02", training_days=56)


def test_the_stream_gives_the_same_rows_for_a_range_whatever_range_they_are_read_in() -> None:
    start, middle, end = week(3) + pd.Timedelta(hours=5), week(4) + pd.Timedelta(hours=13), week(5)
    whole = read_source(STREAM, time_column=TIME_COLUMN, window=Window(start, end)).frame
    parts = [read_source(STREAM, time_column=TIME_COLUMN, window=w).frame
             for w in (Window(start, middle), Window(middle, end))]  # fmt: skip
    pd.testing.assert_frame_equal(whole, pd.concat(parts, ignore_index=True))
    assert whole[TIME_COLUMN].min() >= start and whole[TIME_COLUMN].max() < end
    assert whole["transaction_id"].is_unique
    other_seed = read_source(
        STREAM.replace("seed=5", "seed=6"), time_column=TIME_COLUMN, window=Window(start, end)
    )
    assert not whole["amount"].equals(other_seed.frame["amount"])


# Long (two fits on 168,000 rows, about 30 s of CPU): make test keeps its kin, the windows' planning and the splits
# prepare publishes by them.
@pytest.mark.long
def test_fraud_patterns_drift_so_a_retrained_model_beats_an_old_one_on_a_recent_week() -> None:
    """A model of weeks 1-8 against one of weeks 12-19, both scored on week 20 (a model test, real XGBoost)."""
    import xgboost as xgb
    from sklearn.metrics import average_precision_score

    def table(first: int, last: int) -> pd.DataFrame:
        return generate_range(week(first), week(last + 1), rows_per_day=3000, seed=42)

    features = ["amount", "merchant_category", "channel", "country", "card_present", "hour_of_day",
                "account_age_days", "distance_from_home_km", "txn_count_24h", "avg_amount_30d"]  # fmt: skip
    week_20 = table(20, 20)
    scores = {}
    for name, (first, last) in {"old": (1, 8), "recent": (12, 19)}.items():
        train = table(first, last)
        model = xgb.XGBClassifier(n_estimators=200, max_depth=5, learning_rate=0.1, enable_categorical=True)
        model.fit(train[features], train["is_fraud"])
        scores[name] = average_precision_score(
            week_20["is_fraud"], model.predict_proba(week_20[features])[:, 1]
        )
    assert scores["recent"] > scores["old"] + 0.08, scores


def test_prepare_splits_by_the_windows_and_records_them(tmp_path: Path) -> None:
    windows = plan(week(10).isoformat(), week(11).isoformat(), training_days=21)
    meta = prepare(STREAM, "is_fraud", str(tmp_path / "out"), time_column=TIME_COLUMN, windows=windows,
                   drop_columns=["transaction_id"])  # fmt: skip
    manifest = read_manifest(str(tmp_path / "out"))
    assert manifest["windows"] == windows.as_dict() == meta.windows
    test = read_published_table(str(tmp_path / "out"), "test.parquet")[TIME_COLUMN]
    assert test.min() >= week(10) and test.max() < week(11)
    train = read_published_table(str(tmp_path / "out"), "train.parquet")[TIME_COLUMN]
    validation = read_published_table(str(tmp_path / "out"), "validation.parquet")[TIME_COLUMN]
    assert train.min() >= week(7) and train.max() < validation.min() and validation.max() < week(10)
    assert manifest["rows"] == {
        "train": meta.rows["train"],
        "validation": meta.rows["validation"],
        "test": 7 * 400,
    }
    assert manifest["inputs"] == [f"{STREAM} {windows.whole}"]


@pytest.mark.parametrize(
    ("interval", "problem"),
    [
        ((week(1), week(2)), r"the training window \[2024-12-09 00:00, 2025-01-06 00:00\) has 0 rows"),
        (
            (week(-10), week(-9)),
            r"the source has no rows in the training window .* nor the evaluation window",
        ),
    ],
)
def test_a_window_without_enough_data_fails_naming_it(tmp_path: Path, interval, problem) -> None:
    windows = plan(interval[0].isoformat(), interval[1].isoformat(), training_days=28)
    with pytest.raises(DataValidationError, match=problem):
        prepare(STREAM, "is_fraud", str(tmp_path / "out"), time_column=TIME_COLUMN, windows=windows,
                minimums=Minimums(training_rows=100))  # fmt: skip
    assert not (tmp_path / "out").exists()


def test_an_evaluation_window_without_positives_or_rows_fails_with_the_counts(tmp_path: Path) -> None:
    source = tmp_path / "tx.parquet"
    frame = generate_range(week(1), week(5), rows_per_day=300, seed=1)
    frame.loc[frame[TIME_COLUMN] >= week(4), "is_fraud"] = 0
    frame.to_parquet(source)
    windows = plan(week(4).isoformat(), week(5).isoformat(), training_days=21)
    with pytest.raises(
        DataValidationError, match=r"the evaluation window \[.*\) has 2100 rows and 0 positives"
    ):
        prepare(str(source), "is_fraud", str(tmp_path / "out"), time_column=TIME_COLUMN, windows=windows)
    empty = plan(week(5).isoformat(), week(6).isoformat(), training_days=21)
    with pytest.raises(DataValidationError, match=r"the evaluation window \[.*\) has 0 rows and 0 positives"):
        prepare(str(source), "is_fraud", str(tmp_path / "out"), time_column=TIME_COLUMN, windows=empty)
    assert not (tmp_path / "out").exists()


def test_a_parquet_table_is_filtered_in_the_reader_and_a_csv_after_parsing(tmp_path: Path) -> None:
    frame = generate_range(week(1), week(9), rows_per_day=200, seed=2)
    frame.to_parquet(tmp_path / "tx.parquet", row_group_size=1000)
    frame.assign(**{TIME_COLUMN: frame[TIME_COLUMN].astype(str)}).to_csv(tmp_path / "tx.csv", index=False)
    wanted = window(3, 4)
    schema = pa.parquet.read_schema(tmp_path / "tx.parquet")
    assert _time_filter(schema, TIME_COLUMN, wanted) is not None
    parquet = read_source(str(tmp_path / "tx.parquet"), time_column=TIME_COLUMN, window=wanted).frame
    assert len(parquet) == 14 * 200 and parquet[TIME_COLUMN].between(wanted.start, wanted.end, "left").all()
    windows = plan(week(5).isoformat(), week(6).isoformat(), training_days=14)
    from_csv = prepare(str(tmp_path / "tx.csv"), "is_fraud", str(tmp_path / "csv"), time_column=TIME_COLUMN,
                       windows=windows)  # fmt: skip
    from_parquet = prepare(str(tmp_path / "tx.parquet"), "is_fraud", str(tmp_path / "pq"), time_column=TIME_COLUMN,
                           windows=windows)  # fmt: skip
    assert from_csv.rows == from_parquet.rows and from_csv.rows["test"] == 7 * 200


def test_times_without_a_zone_are_utc_and_the_log_says_so_once(tmp_path: Path, caplog) -> None:
    frame = generate_range(week(1), week(5), rows_per_day=200, seed=6)
    frame.assign(**{TIME_COLUMN: frame[TIME_COLUMN].dt.tz_localize(None)}).to_parquet(
        tmp_path / "naive.parquet"
    )
    windows = plan(week(4).isoformat(), week(5).isoformat(), training_days=21)
    meta = prepare(str(tmp_path / "naive.parquet"), "is_fraud", str(tmp_path / "out"), time_column=TIME_COLUMN,
                   windows=windows)  # fmt: skip
    assert meta.rows["test"] == 7 * 200 and meta.windows["evaluation"][0] == week(4).isoformat()
    said = [r.message for r in caplog.records if "has no time zone" in r.message]
    assert said == [f"time column '{TIME_COLUMN}' has no time zone: its times are taken as UTC, as the data "
                    "interval's bounds are; if they are local times, write them with their offset (e.g. "
                    "2026-03-02T09:00:00+01:00)"]  # fmt: skip


def write_partitions(root: Path, first: pd.Timestamp, days: int, skip: tuple[int, ...] = ()) -> None:
    frame = generate_range(first, first + pd.Timedelta(days=days), rows_per_day=150, seed=3)
    for day, rows in frame.groupby(frame[TIME_COLUMN].dt.date):
        if (day - first.date()).days not in skip:
            (root / f"dt={day}").mkdir(parents=True)
            rows.to_parquet(root / f"dt={day}" / "part-0.parquet")


def test_hive_partitions_only_the_windows_days_are_read(tmp_path: Path) -> None:
    write_partitions(tmp_path / "tx", week(1), 70)
    windows = plan(week(6).isoformat(), week(7).isoformat(), training_days=14)
    read = read_source(str(tmp_path / "tx"), time_column=TIME_COLUMN, window=windows.whole)
    assert [Path(p).name for p in read.inputs] == [f"dt={d}" for d in windows.whole.days()]
    assert len(read.frame) == 21 * 150
    meta = prepare(
        str(tmp_path / "tx"), "is_fraud", str(tmp_path / "out"), time_column=TIME_COLUMN, windows=windows
    )
    assert meta.rows["test"] == 7 * 150 and len(meta.inputs) == 21


def test_a_missing_partition_in_the_window_is_an_error_naming_the_day(tmp_path: Path) -> None:
    write_partitions(tmp_path / "tx", week(1), 42, skip=(30,))
    windows = plan(week(5).isoformat(), week(6).isoformat(), training_days=14)
    missing = (week(1) + pd.Timedelta(days=30)).date()
    with pytest.raises(
        StageError, match=rf"has no partition for 1 of the 21 days of the window .*: {missing} "
    ):
        prepare(
            str(tmp_path / "tx"), "is_fraud", str(tmp_path / "out"), time_column=TIME_COLUMN, windows=windows
        )
    assert not (tmp_path / "out").exists()


def test_a_date_templated_uri_reads_one_table_per_day_and_names_a_missing_one(tmp_path: Path) -> None:
    frame = generate_range(week(1), week(4), rows_per_day=100, seed=4)
    for day, rows in frame.groupby(frame[TIME_COLUMN].dt.date):
        (tmp_path / f"{day:%Y/%m}").mkdir(parents=True, exist_ok=True)
        rows.to_parquet(tmp_path / f"{day:%Y/%m/%d}.parquet")
    uri = str(tmp_path) + "/{date:%Y/%m/%d}.parquet"
    read = read_source(uri, time_column=TIME_COLUMN, window=window(2, 3))
    assert len(read.frame) == 14 * 100 and len(read.inputs) == 14
    with pytest.raises(
        StageError, match=r"7 of the 14 daily tables of the window .* are missing: .*/2025/01/27\.parquet"
    ):
        read_source(uri, time_column=TIME_COLUMN, window=window(3, 4))
    with pytest.raises(StageError, match=r"names one table per \{date\}: it needs a data interval"):
        read_source(uri)


def test_hive_partitions_on_s3_with_moto(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Partition listing and reads through boto3 against moto's in-process mock of S3 (no AWS here)."""
    import boto3
    from moto import mock_aws

    for name, value in {"AWS_DEFAULT_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "testing",
                        "AWS_SECRET_ACCESS_KEY": "testing"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    write_partitions(tmp_path / "tx", week(1), 28)
    with mock_aws():
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="lake")
        for path in (tmp_path / "tx").rglob("*.parquet"):
            s3.upload_file(str(path), "lake", f"tx/{path.relative_to(tmp_path / 'tx')}")
        read = read_source("s3://lake/tx/", time_column=TIME_COLUMN, window=window(2, 3))
        assert read.inputs[0] == f"s3://lake/tx/dt={week(2).date()}" and len(read.inputs) == 14
        assert len(read.frame) == 14 * 150
        with pytest.raises(StageError, match=r"has no partition for 7 of the 14 days"):
            read_source("s3://lake/tx", time_column=TIME_COLUMN, window=window(4, 5))


def test_without_a_time_column_the_interval_selects_nothing_and_the_table_is_split_at_random(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(0)
    pd.DataFrame({"x": rng.random(2000), "y": np.tile([0, 0, 0, 1], 500)}).to_csv(
        tmp_path / "t.csv", index=False
    )
    meta = prepare(str(tmp_path / "t.csv"), "y", str(tmp_path / "out"),
                   windows=plan("2026-03-02", "2026-03-09", training_days=56))  # fmt: skip
    assert sum(meta.rows.values()) == 2000 and meta.windows == {}
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["windows"] == {}


def test_windows_of_a_weekly_interval_are_whole_utc_days() -> None:
    windows = plan("2026-11-16T03:00:00+00:00", "2026-11-23T03:00:00+00:00", training_days=56)
    assert windows.interval.start == pd.Timestamp("2026-11-16T03:00", tz="UTC")  # the run's, as recorded
    assert windows.evaluation == Window(
        pd.Timestamp("2026-11-16", tz="UTC"), pd.Timestamp("2026-11-23", tz="UTC")
    )
    assert windows.training.end == windows.evaluation.start
    hourly = plan("2026-11-16T03:00:00+00:00", "2026-11-16T04:00:00+00:00", training_days=1)
    assert hourly.evaluation == hourly.interval
