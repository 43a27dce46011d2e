"""Data tests of the prepare stage: validation errors, splits, and all-or-nothing output."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from contract import XCOM_DIR_ENV, XCOM_RESULT_FILE
from ml.errors import DataValidationError, StageError
from ml.prepare import SPLITS, _digest, prepare, split, validate
from ml.storage import MANIFEST, publish_by_content, publish_folder, read_manifest, read_published_table
from ml.synthetic import generate

ROOT = Path(__file__).resolve().parents[2]


def small_table(rows: int = 400) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "amount": rng.random(rows) * 100,
            "merchant": rng.choice(["a", "b", "c"], rows),
            "when": pd.date_range("2026-01-01", periods=rows, freq="h").astype(str),
            "label": np.tile([0, 0, 0, 1], rows // 4),
        }
    )


@pytest.mark.parametrize(
    ("mutate", "kwargs", "column", "problem"),
    [
        (lambda f: f.iloc[0:0], {}, None, "the table is empty"),
        (lambda f: f.drop(columns="label"), {}, "label", "target column not found"),
        (lambda f: f, {"feature_columns": ["amount", "nope"]}, "nope", "feature column not found"),
        (lambda f: f.assign(label=np.arange(len(f)) % 3), {}, "label", "target must have two values; found 3"),
        (lambda f: f.assign(label=np.where(f.index % 2, "yes", "no")), {}, "label",
         "say which one is the positive class with --positive-label"),
        (lambda f: f.assign(label=np.where(f.index % 2, "yes", "no")), {"positive_label": "oui"}, "label",
         "the positive label 'oui' does not occur in the target, whose values are ['no', 'yes']"),
        (lambda f: f.assign(label=0), {}, "label", "single class"),
        (lambda f: f.assign(label=f["label"].where(f.index > 0)), {}, "label", "1 missing value"),
        (lambda f: f.assign(empty=np.nan), {}, "empty", "entirely null"),
        (lambda f: f.assign(amount=f["amount"].astype(str).where(f.index > 2, "12a")), {}, "amount",
         "do not parse as numbers, e.g. '12a'"),
        (lambda f: f.assign(blob=[{"a": 1}] * len(f)), {}, "blob", "unsupported type(s) ['dict']"),
        (lambda f: f.assign(when=f["when"].where(f.index > 0, "not a date")), {"time_column": "when"}, "when",
         "time column is not a time: 1 value(s) do not parse, e.g. 'not a date'"),
        (lambda f: f.assign(when=np.arange(len(f))), {"time_column": "when"}, "when", "time column is not a time"),
        (lambda f: f, {"time_column": "missing"}, "missing", "time column not found"),
    ],
)  # fmt: skip
def test_bad_input_names_the_column_and_the_problem(mutate, kwargs, column, problem) -> None:
    with pytest.raises(DataValidationError) as caught:
        validate(mutate(small_table()), "label", **kwargs)
    assert caught.value.column == column
    assert problem in str(caught.value)
    if column:
        assert f"'{column}'" in str(caught.value)


def test_cli_rejects_bad_input_with_exit_code_2_and_the_message(tmp_path: Path) -> None:
    source = tmp_path / "bad.csv"
    small_table().assign(label=7).to_csv(source, index=False)
    result = subprocess.run(
        [sys.executable, "-m", "ml.prepare", "--source", str(source), "--target", "label", "--output",
         str(tmp_path / "out")],
        cwd=ROOT, capture_output=True, text=True, env={XCOM_DIR_ENV: str(tmp_path / "x"), "PATH": ""},
    )  # fmt: skip
    assert result.returncode == 2
    assert "ERROR: column 'label': target has a single class (7); both classes are needed" in result.stderr
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "x" / XCOM_RESULT_FILE).exists()


def test_booleans_and_text_categories_are_accepted_and_identifiers_dropped() -> None:
    frame = small_table().assign(
        label=lambda f: f["label"].astype(bool), flag=True, order_id=[f"id-{i}" for i in range(400)]
    )
    frame.loc[0, "flag"] = False
    cleaned, meta = validate(frame, "label", time_column="when")
    assert cleaned["label"].dtype == np.int8
    assert meta.categorical == ["merchant"]
    assert "order_id" not in meta.features
    assert "row identifier: text" in meta.dropped_columns["order_id"]


def test_time_split_trains_on_the_past_and_tests_on_the_future() -> None:
    frame, meta = validate(generate(20_000, seed=1), "is_fraud", time_column="timestamp")
    parts = split(frame, meta, val_fraction=0.15, test_fraction=0.15, seed=0)
    assert parts["train"]["timestamp"].max() < parts["validation"]["timestamp"].min()
    assert parts["validation"]["timestamp"].max() < parts["test"]["timestamp"].min()
    assert sum(len(p) for p in parts.values()) == len(frame)
    assert len(parts["test"]) == pytest.approx(0.15 * len(frame), rel=0.02)


def test_random_split_is_stratified_and_seeded() -> None:
    frame, meta = validate(generate(20_000, seed=1), "is_fraud")
    parts = split(frame, meta, val_fraction=0.2, test_fraction=0.2, seed=0)
    rates = [p["is_fraud"].mean() for p in parts.values()]
    assert max(rates) - min(rates) < 0.0015
    again = split(frame, meta, val_fraction=0.2, test_fraction=0.2, seed=0)
    assert parts["test"].index.equals(again["test"].index)


def test_a_split_without_both_classes_is_refused() -> None:
    frame = small_table()
    frame["label"] = 0
    frame.loc[:5, "label"] = 1  # every positive in the earliest hours: none left for the later splits
    cleaned, meta = validate(frame, "label", time_column="when")
    with pytest.raises(DataValidationError, match=r"the validation split has .* both classes are needed"):
        split(cleaned, meta, val_fraction=0.15, test_fraction=0.15, seed=0)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_prepare_publishes_splits_and_a_manifest(tmp_path: Path, suffix: str) -> None:
    source = tmp_path / f"raw{suffix}"
    raw = generate(5_000, seed=2)
    raw.to_csv(source, index=False) if suffix == ".csv" else raw.to_parquet(source)
    out = tmp_path / "prepared"
    meta = prepare(
        str(source), "is_fraud", str(out), time_column="timestamp", drop_columns=["transaction_id"]
    )
    manifest = read_manifest(str(out))
    assert manifest["digest"] == meta.digest and len(meta.digest) == 64
    assert sorted(p.name for p in out.iterdir()) == sorted([MANIFEST, *(f"{s}.parquet" for s in SPLITS)])
    assert sum(manifest["rows"].values()) == 5_000
    assert "transaction_id" not in manifest["features"]
    assert set(manifest["categorical"]) == {"merchant_category", "channel", "country"}
    assert list(read_published_table(str(out), "test.parquet").columns)[-2:] == ["is_fraud", "timestamp"]


@pytest.mark.parametrize("separator", [";", "\t", "|"])
def test_a_csv_separated_otherwise_than_by_commas_is_read_with_its_separator(
    tmp_path: Path, separator: str, caplog
) -> None:
    """A ';'-separated CSV failed with pandas' "Expected 1 fields in line 3, saw 2", naming no separator."""
    caplog.set_level(logging.INFO, logger="ml.sources")
    raw = generate(3_000, seed=2)
    raw.to_csv(tmp_path / "raw.csv", sep=separator, index=False)
    meta = prepare(str(tmp_path / "raw.csv"), "is_fraud", str(tmp_path / "out"), time_column="timestamp")
    assert sum(meta.rows.values()) == 3_000 and "amount" in meta.features
    assert f"columns separated by {separator!r}" in caplog.text


def test_rerun_replaces_the_output_whole(tmp_path: Path) -> None:
    out = tmp_path / "prepared"
    first = prepare("synthetic://card-transactions?rows=4000&seed=1", "is_fraud", str(out))
    (out / "stale.txt").write_text("left by an older version")
    second = prepare("synthetic://card-transactions?rows=4000&seed=1", "is_fraud", str(out))
    assert first.digest == second.digest
    assert not (out / "stale.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["prepared"]  # no staging or retired folders left


def test_a_crash_mid_publish_leaves_the_previous_output_untouched(tmp_path: Path) -> None:
    out = tmp_path / "prepared"
    prepare("synthetic://card-transactions?rows=4000&seed=1", "is_fraud", str(out))
    before = json.loads((out / MANIFEST).read_text())
    with pytest.raises(RuntimeError, match="disk full"), publish_folder(str(out)) as staging:
        (staging / "train.parquet").write_bytes(b"half")
        raise RuntimeError("disk full")
    assert json.loads((out / MANIFEST).read_text()) == before
    assert [p.name for p in tmp_path.iterdir()] == ["prepared"]


def test_published_by_content_data_never_changes_and_a_retry_finds_its_own(tmp_path: Path) -> None:
    """Two runs of one week with other settings used to share the interval's folder: the second replaced what the
    first run's model version learnt from (its digest no longer matched). By content, each keeps its own; a retry
    with the same rows finds its folder complete and writes nothing."""
    source = "synthetic://card-transactions?rows=4000&seed=1"
    week = tmp_path / "prepared" / "pipeline" / "20260302T000000_20260309T000000"
    first = prepare(source, "is_fraud", str(week / "manual__1"), seed=1, by_content=True)
    assert first.uri == str(week / "manual__1" / first.digest[:16])
    published = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in Path(first.uri).iterdir()}

    retry = prepare(source, "is_fraud", str(week / "manual__1"), seed=1, by_content=True)
    assert (retry.uri, retry.digest) == (first.uri, first.digest)
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in Path(first.uri).iterdir()} == published

    other = prepare(
        source, "is_fraud", str(week / "manual__2"), seed=2, drop_columns=["amount"], by_content=True
    )
    assert other.uri != first.uri and other.digest != first.digest
    assert read_manifest(first.uri)["digest"] == first.digest == _digest(Path(first.uri))
    assert "amount" in read_manifest(first.uri)["features"]
    # A retry after the source changed publishes beside the first output, which stays as it was.
    changed = prepare(
        "synthetic://card-transactions?rows=4500&seed=1", "is_fraud", str(week / "manual__1"), seed=1,
        by_content=True,
    )  # fmt: skip
    assert changed.uri != first.uri and _digest(Path(first.uri)) == first.digest
    assert sorted(p.name for p in (week / "manual__1").iterdir()) == sorted(
        [first.digest[:16], changed.digest[:16]]
    )  # no staging folder left


def test_a_crash_mid_publish_by_content_publishes_nothing(tmp_path: Path) -> None:
    with (
        pytest.raises(RuntimeError, match="disk full"),
        publish_by_content(str(tmp_path / "run")) as publication,
    ):
        (publication.staging / "train.parquet").write_bytes(b"half")
        raise RuntimeError("disk full")
    assert list((tmp_path / "run").iterdir()) == []


def test_a_folder_without_manifest_is_not_complete(tmp_path: Path) -> None:
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "train.parquet").write_bytes(b"")
    with pytest.raises(StageError, match=r"is not a complete output: it has no manifest\.json"):
        read_manifest(str(tmp_path / "half"))


def test_s3_source_and_output_with_moto(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """S3 through boto3 against moto's in-process mock of S3 (no AWS here)."""
    import boto3
    from moto import mock_aws

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="data")
        local = tmp_path / "raw.parquet"
        generate(3_000, seed=4).to_parquet(local)
        s3.upload_file(str(local), "data", "raw/tx.parquet")
        s3.put_object(Bucket="data", Key="prepared/run1/stale.parquet", Body=b"old")
        prepare("s3://data/raw/tx.parquet", "is_fraud", "s3://data/prepared/run1", time_column="timestamp")
        keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="data", Prefix="prepared/")["Contents"])
        assert keys == sorted(f"prepared/run1/{n}" for n in [MANIFEST, *(f"{s}.parquet" for s in SPLITS)])
        assert sum(read_manifest("s3://data/prepared/run1")["rows"].values()) == 3_000
        assert len(read_published_table("s3://data/prepared/run1", "test.parquet")) > 0
        with pytest.raises(StageError, match=r"input table 's3://data/raw/missing\.parquet' does not exist"):
            prepare("s3://data/raw/missing.parquet", "is_fraud", "s3://data/prepared/run2")

        # By content: a retry with the same rows finds the published objects and uploads nothing again.
        first = prepare("s3://data/raw/tx.parquet", "is_fraud", "s3://data/prepared/run3", by_content=True)
        assert first.uri == f"s3://data/prepared/run3/{first.digest[:16]}"
        listed = {o["Key"]: o["LastModified"] for o in s3.list_objects_v2(Bucket="data", Prefix="prepared/run3/")[
            "Contents"
        ]}  # fmt: skip
        assert sorted(listed) == sorted(f"prepared/run3/{first.digest[:16]}/{n}" for n in [MANIFEST, *(
            f"{s}.parquet" for s in SPLITS)])  # fmt: skip
        s3.delete_object(Bucket="data", Key=f"prepared/run3/{first.digest[:16]}/test.parquet")
        again = prepare("s3://data/raw/tx.parquet", "is_fraud", "s3://data/prepared/run3", by_content=True)
        assert again.uri == first.uri  # complete by its manifest: left as it is, not uploaded again
        assert f"prepared/run3/{first.digest[:16]}/test.parquet" not in {
            o["Key"] for o in s3.list_objects_v2(Bucket="data", Prefix="prepared/run3/")["Contents"]
        }
