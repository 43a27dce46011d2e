"""Data tests of the leakage guard and of two-valued labels: what ``prepare`` keeps, drops, and why."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ml import leakage
from ml.errors import DataValidationError
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
    assert meta["flagged_columns"]["fraud_scenario"].startswith("kept as asked, although: target leak")
    assert "keeping 'fraud_scenario', as asked, although the leakage guard found: target leak" in caplog.text


#: The table of cases: what the guard must do with each column of ``case_table``, and why. "keep": a real feature;
#: "flag": kept, with the finding recorded (the person who knows the column decides); "drop": a leak.
CASES = {
    "amount_cents": (
        "keep",
        "an amount: nearly one value per row, but its order ranks the frauds (ROC-AUC 0.79)",
    ),
    "merchant_id": ("keep", "400 merchants, 12 of them where most frauds happen, week after week"),
    "account_age_days": (
        "flag",
        "follows the time (rank correlation 0.99), and young accounts are the frauds",
    ),
    "risk_score": ("keep", "a strong real score (ROC-AUC 0.90)"),
    "vendor_score": (
        "flag",
        "as strong as a feature gets (ROC-AUC 0.955): a person checks where it comes from",
    ),
    "terminal_id": ("keep", "an identifier of 50 terminals: a category"),
    "txn_count_24h": ("keep", "a count"),
    "customer_age": ("keep", "a few dozen values"),
    "city": ("keep", "text of 300 values, a few with more fraud"),
    "transaction_id": ("drop", "one value per row, in time order"),
    "customer_id": ("drop", "12,000 customers, none with frauds that recur"),
    "card_number": ("drop", "one random number per row"),
    "device_id": ("drop", "a fraud ring's devices, used in the first weeks only: nothing carries over"),
    "batch_number": ("drop", "batches of ten rows in time order"),
    "hours_since_start": ("drop", "a counter of time"),
    "review_flag": ("drop", "equal to the label on 97 % of the rows (ROC-AUC 0.975): written after the fact"),
    "chargeback_code": ("drop", "a code only frauds have"),
    "dispute_age_days": ("drop", "missing exactly when the row is not a fraud"),
    "currency": ("drop", "constant"),
    "session_uuid": ("drop", "unique text"),
}


def case_table(rows: int = 16_800, seed: int = 7) -> pd.DataFrame:
    """Eight weeks of transactions (1.5 % frauds) with a column for each case of ``CASES``."""
    rng = np.random.default_rng(seed)
    days = np.sort(rng.random(rows)) * 56
    label = (rng.random(rows) < 0.015).astype(int)
    fraud = label == 1
    merchant = np.where(
        fraud & (rng.random(rows) < 0.7), rng.integers(0, 12, rows) * 33, rng.integers(0, 400, rows)
    )
    opened = np.where(
        fraud & (rng.random(rows) < 0.5), days - rng.random(rows) * 10, rng.random(rows) * 3 - 3
    )
    ring = fraud & (days < 21) & (rng.random(rows) < 0.6)
    city = np.where(fraud & (rng.random(rows) < 0.5), rng.integers(0, 5, rows), rng.integers(0, 300, rows))
    return pd.DataFrame(
        {
            "transaction_id": np.arange(rows) + 5_000_000,
            "customer_id": rng.integers(0, 12_000, rows),
            "card_number": rng.integers(10**14, 10**15, rows),
            "device_id": np.where(ring, rng.integers(0, 20, rows), 100 + rng.integers(0, 10_000, rows)),
            "batch_number": np.arange(rows) // 10,
            "hours_since_start": np.floor(days * 24).astype(int),
            "review_flag": np.where(fraud, rng.random(rows) < 0.98, rng.random(rows) < 0.03).astype(int),
            "chargeback_code": np.where(fraud, rng.integers(1, 4, rows), 0),
            "dispute_age_days": np.where(fraud, rng.integers(0, 60, rows), np.nan),
            "currency": "EUR",
            "session_uuid": [f"{x:032x}" for x in rng.integers(0, 2**62, rows)],
            "amount_cents": np.round(np.exp(rng.normal(13 + 2.05 * label, 1.8))).astype(np.int64),
            "merchant_id": merchant,
            "account_age_days": np.floor(days - opened).astype(int),
            "risk_score": rng.normal(1.81 * label, 1.0),
            "vendor_score": rng.normal(2.40 * label, 1.0),
            "terminal_id": rng.integers(0, 50, rows),
            "txn_count_24h": rng.poisson(2 + 2 * label),
            "customer_age": rng.integers(18, 90, rows),
            "city": np.char.add("city-", city.astype(str)),
            "when": pd.Timestamp("2026-01-05", tz="UTC") + pd.to_timedelta(days, unit="D"),
            "label": label,
        }
    )


def test_the_table_of_cases_has_no_false_positive_and_no_false_negative(tmp_path: Path) -> None:
    """The guard's verdict on each case, through ``prepare`` (a time split, as the pipeline runs it). Before the
    signal rules it dropped three real features (amount_cents, merchant_id, account_age_days: 3 false positives)
    and let the review flag through (1 false negative)."""
    meta = prepare_table(case_table(), tmp_path / "cases")
    verdicts = {
        column: "drop"
        if column in meta["dropped_columns"]
        else "flag"
        if column in meta["flagged_columns"]
        else "keep"
        for column in CASES
    }
    false_positives = sorted(c for c, (want, _) in CASES.items() if want != "drop" and verdicts[c] == "drop")
    false_negatives = sorted(c for c, (want, _) in CASES.items() if want == "drop" and verdicts[c] != "drop")
    assert (false_positives, false_negatives) == ([], []), {c: meta["dropped_columns"].get(c) for c in CASES}
    assert {c: verdicts[c] for c in CASES} == {c: want for c, (want, _) in CASES.items()}
    assert meta["flagged_columns"]["vendor_score"].startswith("NEAR COPY OF THE LABEL?")
    assert meta["flagged_columns"]["account_age_days"].startswith(
        "follows the time column (rank correlation 0.9"
    )
    assert meta["dropped_columns"]["review_flag"].startswith("target leak: alone it separates the classes")


def test_keep_columns_keeps_what_the_guard_drops_with_its_finding_recorded(tmp_path: Path) -> None:
    meta = prepare_table(case_table(), tmp_path / "kept", keep_columns=["device_id", "session_uuid"])
    assert {"device_id", "session_uuid"} <= set(meta["features"])
    assert meta["flagged_columns"]["device_id"].startswith(
        "kept as asked, although: identifier: named like one"
    )
    assert "review_flag" in meta["dropped_columns"]  # the guard still screens the others
    for keep, message in (("nope", "kept column not found"), ("label", "it is also the target")):
        with pytest.raises(DataValidationError, match=message):
            validate(case_table(200), "label", time_column="when", keep_columns=[keep])


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
