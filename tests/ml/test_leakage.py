"""Data tests of the leakage guard and of two-valued labels: what ``prepare`` keeps, drops, and why."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ml import leakage
from ml.prepare import prepare, validate
from ml.storage import read_manifest, read_published_table

ROWS = 4000
CENSUS_POSITIVES = 734  # rows labelled >50K in the fixture


def leaky_table(rows: int = ROWS) -> pd.DataFrame:
    """A fraud-like table with one of each leak, and honest features that must survive."""
    rng = np.random.default_rng(5)
    label = (rng.random(rows) < 0.1).astype(int)
    signal = rng.normal(size=rows) + 1.5 * label  # informative, but far from separating the classes alone
    when = pd.Timestamp("2026-01-01", tz="UTC") + pd.to_timedelta(np.sort(rng.random(rows)) * 60, unit="D")
    return pd.DataFrame(
        {
            "row_id": np.arange(10_000, 10_000 + rows),  # unique per row
            "CUSTOMER_ID": rng.integers(0, 800, rows),  # an entity, not unique, named as an id
            "store_id": rng.integers(0, 30, rows),  # an id with a few values: a category, kept
            "hours_since_start": ((when - when[0]).total_seconds() // 3600).astype(int),
            "fraud_scenario": np.where(label == 1, rng.integers(1, 4, rows), 0),  # written after the label
            "currency": "EUR",
            "amount": rng.gamma(2, 30, rows).round(2),
            "signal": signal,
            "age": rng.integers(18, 90, rows),
            "channel": rng.choice(["web", "pos", "app"], rows),
            "when": when,
            "label": label,
        }
    )


def test_each_kind_of_leak_is_dropped_with_its_reason_and_honest_columns_stay(tmp_path: Path) -> None:
    out = tmp_path / "prepared"
    meta = prepare_table(leaky_table(), out)
    dropped = meta["dropped_columns"]
    assert set(dropped) == {"row_id", "CUSTOMER_ID", "hours_since_start", "fraud_scenario", "currency"}
    assert dropped["row_id"].startswith("row identifier: 4000 distinct values in 4000 rows")
    assert dropped["CUSTOMER_ID"].startswith("identifier: named like one ('id')")
    assert dropped["hours_since_start"].startswith("counter of time")
    assert dropped["fraud_scenario"].startswith("target leak: alone it separates the classes")
    assert dropped["currency"] == "constant: every training row holds 'EUR'"
    assert meta["features"] == ["store_id", "amount", "signal", "age", "channel"]
    assert set(read_published_table(str(out), "train.parquet").columns) == {
        *meta["features"],
        "label",
        "when",
    }


def test_a_column_named_as_a_feature_is_kept_with_the_warning(tmp_path: Path, caplog) -> None:
    meta = prepare_table(
        leaky_table(), tmp_path / "p", feature_columns=["fraud_scenario", "amount", "signal"]
    )
    assert meta["features"] == ["fraud_scenario", "amount", "signal"]
    assert meta["flagged_columns"]["fraud_scenario"].startswith("target leak")
    assert "keeping 'fraud_scenario', named as a feature, although it looks like a leak" in caplog.text


def test_a_counter_that_follows_the_row_order_is_an_identifier_without_a_time_column() -> None:
    frame = leaky_table().drop(columns=["row_id", "when"])
    # A batch number: two rows per value, so not unique per row, but it counts the rows.
    frame["batch"] = np.repeat(np.arange(len(frame) // 2), 2)
    (finding,) = [f for f in _screen(frame) if f.column == "batch"]
    assert finding.kind == "identifier"
    assert (
        finding.reason
        == "row identifier: follows the row order (rank correlation 1.000) with 2000 distinct values"
    )


def test_a_table_sorted_by_a_feature_keeps_it() -> None:
    """Sorted by age, age follows the row order; with few values per row it is a feature, not a row number."""
    frame = leaky_table().drop(columns=["row_id", "hours_since_start", "fraud_scenario", "CUSTOMER_ID"])
    frame = frame.sort_values("age", kind="stable").reset_index(drop=True)
    assert [f.column for f in _screen(frame)] == ["currency"]


def test_the_real_census_table_loses_no_column() -> None:
    """UCI Adult (census income): its sampling weight `fnlwgt` has many values but is not an identifier (nor is
    any column of the whole table, 32,561 rows)."""
    frame = census()
    cleaned, meta = validate(frame, "income", positive_label=">50K")
    findings = leakage.screen(cleaned, "income", meta.features, categorical=meta.categorical)
    assert findings == []
    assert meta.positive_label == ">50K" and cleaned["income"].sum() == CENSUS_POSITIVES


@pytest.mark.parametrize(
    ("labels", "positive", "expected"),
    [
        ([" yes", "no ", "yes"], "yes", [1, 0, 1]),
        (["<=50K", ">50K", ">50K"], " >50K ", [0, 1, 1]),
        ([1, 2, 2], "2", [0, 1, 1]),
        ([True, False, True], "false", [0, 1, 0]),
        ([0, 1, 1], None, [0, 1, 1]),
    ],
)
def test_a_two_valued_label_becomes_0_1_with_the_positive_label(labels, positive, expected) -> None:
    frame = pd.DataFrame({"x": [0.1, 0.2, 0.3], "y": labels})
    cleaned, _ = validate(frame, "y", positive_label=positive)
    assert cleaned["y"].tolist() == expected


def test_a_string_labelled_table_trains_end_to_end_through_prepare(tmp_path: Path) -> None:
    out = tmp_path / "census"
    source = tmp_path / "census.parquet"
    census().to_parquet(source)
    meta = prepare(str(source), "income", str(out), positive_label=">50K").__dict__
    manifest = read_manifest(str(out))
    assert manifest["positive_label"] == ">50K" == meta["positive_label"]
    assert sum(manifest["positives"].values()) == CENSUS_POSITIVES
    assert json.dumps(manifest)  # the manifest is plain JSON


def census() -> pd.DataFrame:
    """3,000 rows of the real census table (``tests/fixtures/README.md``), loaded as a user would, naming its
    columns (it has no header)."""
    names = [
        "age", "workclass", "fnlwgt", "education", "education_num", "marital_status", "occupation",
        "relationship", "race", "sex", "capital_gain", "capital_loss", "hours_per_week", "native_country", "income",
    ]  # fmt: skip
    path = Path(__file__).resolve().parents[1] / "fixtures" / "census_income_3000.csv"
    return pd.read_csv(path, header=None, names=names, skipinitialspace=True, na_values="?")


def prepare_table(frame: pd.DataFrame, out: Path, **kwargs) -> dict:
    source = out.parent / f"{out.name}.parquet"
    frame.to_parquet(source)
    prepare(str(source), "label", str(out), time_column="when", **kwargs)
    return read_manifest(str(out))


def _screen(frame: pd.DataFrame) -> list[leakage.Finding]:
    cleaned, meta = validate(frame, "label")
    return leakage.screen(cleaned, "label", meta.features, categorical=meta.categorical)
