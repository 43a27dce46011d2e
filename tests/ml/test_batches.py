"""A table larger than a batch: prepare passes it a batch at a time and train feeds XGBoost a row group at a time,
with the same results as in one piece. The batch and sample sizes are made small here so that small tables take
the paths that a hundred million rows take."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import average_precision_score

from ml import leakage, sources
from ml.errors import DataValidationError
from ml.prepare import SPLITS, prepare
from ml.splits import Pieces
from ml.synthetic import generate
from ml.train import fit_model
from ml.windows import plan
from tests.helpers import train_config

ROWS = 12_000


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("raw") / "tx.parquet"
    generate(ROWS, seed=5).to_parquet(path, row_group_size=1_000)
    return path


def published(folder: Path) -> dict[str, pd.DataFrame]:
    return {name: pd.read_parquet(folder / f"{name}.parquet") for name in SPLITS}


def prepared(table: Path, out: Path, monkeypatch: pytest.MonkeyPatch, *, batch: int, **kwargs) -> dict:
    monkeypatch.setattr(sources, "BATCH_ROWS", batch)
    arguments = {"time_column": "timestamp", "drop_columns": ["transaction_id"], **kwargs}
    meta = prepare(str(table), "is_fraud", str(out), **arguments)
    return {"meta": meta, "splits": published(out)}


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"windows": plan("2025-03-03", "2025-03-10", training_days=21)}],
    ids=["time split", "data windows"],
)
def test_a_table_passed_a_batch_at_a_time_splits_exactly_as_in_one_batch(
    table: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kwargs: dict
) -> None:
    whole = prepared(table, tmp_path / "whole", monkeypatch, batch=10 * ROWS, **kwargs)
    batched = prepared(table, tmp_path / "batched", monkeypatch, batch=700, **kwargs)
    assert batched["meta"].rows == whole["meta"].rows
    assert batched["meta"].positives == whole["meta"].positives
    assert batched["meta"].time_ranges == whole["meta"].time_ranges
    assert (batched["meta"].features, batched["meta"].categorical) == (
        whole["meta"].features,
        whole["meta"].categorical,
    )
    for name in SPLITS:
        pd.testing.assert_frame_equal(batched["splits"][name], whole["splits"][name])
    assert pq.ParquetFile(tmp_path / "batched" / "train.parquet").num_row_groups > 1


def test_a_random_split_in_batches_keeps_each_classs_exact_counts_and_its_seed(
    table: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = prepared(table, tmp_path / "whole", monkeypatch, batch=10 * ROWS, time_column=None)
    batched = prepared(table, tmp_path / "batched", monkeypatch, batch=700, time_column=None)
    again = prepared(table, tmp_path / "again", monkeypatch, batch=700, time_column=None)
    assert batched["meta"].rows == whole["meta"].rows
    assert batched["meta"].positives == whole["meta"].positives
    assert batched["meta"].digest == again["meta"].digest
    # Every row is in exactly one split.
    rows = pd.concat(batched["splits"].values())
    assert len(rows) == ROWS and not rows.duplicated().any()


def test_kinds_and_leaks_are_decided_on_a_uniform_sample_when_the_table_is_larger(
    table: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(leakage, "SAMPLE_ROWS", 2_000)
    frame = pd.read_parquet(table).assign(
        order_ref=[f"o-{i}" for i in range(ROWS)], row_number=np.arange(ROWS)
    )
    frame.to_parquet(tmp_path / "with-ids.parquet", row_group_size=1_000)
    result = prepared(tmp_path / "with-ids.parquet", tmp_path / "out", monkeypatch, batch=1_500)
    dropped = result["meta"].dropped_columns
    assert "row identifier: text with 2000 distinct values in 2000 rows" in dropped["order_ref"]
    assert "row_number" in dropped and "row_number" not in result["meta"].features
    assert set(result["meta"].categorical) == {"merchant_category", "channel", "country"}
    assert sum(result["meta"].rows.values()) == ROWS
    # The time cuts come from the sample's quantiles: the shares are close to the asked 70/15/15.
    assert result["meta"].rows["test"] == pytest.approx(0.15 * ROWS, rel=0.1)


def test_a_rare_positive_class_outside_the_sample_is_still_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(leakage, "SAMPLE_ROWS", 100)
    rng = np.random.default_rng(0)
    labels = np.where(np.arange(4_000) % 1_000 == 999, "chargeback", "ok")  # 4 in 4,000: likely none of 100
    frame = pd.DataFrame({"amount": rng.random(4_000), "label": labels})
    frame.to_parquet(tmp_path / "t.parquet", row_group_size=500)
    monkeypatch.setattr(sources, "BATCH_ROWS", 500)
    meta = prepare(str(tmp_path / "t.parquet"), "label", str(tmp_path / "out"), positive_label="chargeback")
    assert sum(meta.positives.values()) == 4


@pytest.mark.parametrize(
    ("column", "value", "problem"),
    [
        ("is_fraud", 7, "target must have two values"),
        ("timestamp", "not a time", "time column is not a time: 1 value(s) do not parse, e.g. 'not a time'"),
        ("amount", "12a", "column is numeric but 1 value(s) do not parse as numbers, e.g. '12a'"),
    ],
)
def test_a_bad_value_in_the_last_batch_fails_the_stage_and_publishes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, column: str, value: object, problem: str
) -> None:
    monkeypatch.setattr(leakage, "SAMPLE_ROWS", 500)
    frame = generate(4_000, seed=6).drop(columns="transaction_id")
    # Text where the bad value is text (a CSV's numbers and times, as a Parquet of strings holds them).
    frame = frame.astype({column: str if isinstance(value, str) else object})
    frame.loc[len(frame) - 1, column] = value
    frame.to_parquet(tmp_path / "t.parquet", row_group_size=500)
    monkeypatch.setattr(sources, "BATCH_ROWS", 500)
    with pytest.raises(DataValidationError, match=re.escape(problem)) as caught:
        prepare(str(tmp_path / "t.parquet"), "is_fraud", str(tmp_path / "out"), time_column="timestamp")
    assert caught.value.column == column
    assert not (tmp_path / "out").exists()


class NoWholeFrame(Pieces):
    """Pieces that refuse to be read as one frame: what trains on them reads them a piece at a time."""

    def frame(self) -> pd.DataFrame:
        raise AssertionError("the split was read whole")


def test_xgboost_trains_a_piece_at_a_time_as_well_as_in_one_piece(
    table: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setattr(sources, "BATCH_ROWS", 1_000)
    meta = prepare(str(table), "is_fraud", str(tmp_path / "out"), time_column="timestamp",
                   drop_columns=["transaction_id"])  # fmt: skip
    pieces = {name: Pieces.published(str(tmp_path / "out"), name) for name in ("train", "validation")}
    assert len(pieces["train"].loaders) > 5 and len(pieces["train"]) == meta.rows["train"]
    streamed = {name: NoWholeFrame(p.loaders, p.rows) for name, p in pieces.items()}
    kwargs = {
        "features": meta.features,
        "categorical": meta.categorical,
        "target": "is_fraud",
        "device": "cpu",
    }
    config = train_config(n_estimators=60, refit=False)
    in_pieces = fit_model(config, streamed["train"], streamed["validation"], **kwargs)
    in_one = fit_model(config, pieces["train"].frame(), pieces["validation"].frame(), **kwargs)
    labels = pieces["validation"].column("is_fraud")
    assert (
        in_pieces.pipeline.named_steps["encode"].categories_
        == in_one.pipeline.named_steps["encode"].categories_
    )
    assert average_precision_score(labels, in_pieces.validation_scores) == pytest.approx(
        average_precision_score(labels, in_one.validation_scores), abs=0.01
    )
    # The scores kept for the threshold are the logged pipeline's own.
    validation = pieces["validation"].frame()
    np.testing.assert_allclose(
        in_pieces.pipeline.predict_proba(validation[meta.features])[:, 1],
        in_pieces.validation_scores,
        rtol=1e-6,
    )
