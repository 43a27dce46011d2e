"""The prediction record: every row the inference API scores, written to Parquet off the hot path, by model and day,
with what the model saw and answered; nothing lost silently. A real model in a real MLflow server on loopback."""

from __future__ import annotations

import io
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from ml.schema import to_model_input
from ml.serve import recorder
from ml.serve.app import create_app
from ml.serve.model import ModelCard
from ml.serve.settings import Settings
from tests.helpers import CHAMPION, register_champion, split_records

MODEL = "serve-recorded-model"


@pytest.fixture(scope="module")
def registered(trained_model: dict[str, Any]) -> dict[str, Any]:
    out, trained = trained_model["prepared"], trained_model["trained"]
    _, version = register_champion(out, trained, MODEL, run_key="serve/recorded")
    manifest, _, records = split_records(out, 50)
    return {"version": version, "records": records, "manifest": manifest}


def serving(settings: Settings) -> TestClient:
    client = TestClient(create_app(settings))
    client.__enter__()
    deadline = time.monotonic() + 60
    while client.get("/ready").status_code != 200:
        assert time.monotonic() < deadline, client.get("/ready").json()
        time.sleep(0.2)
    return client


def counter(client: TestClient, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    raise AssertionError(f"{name} {labels} is not exported")


def arrow_body(records: list[dict[str, Any]]) -> bytes:
    table = pa.Table.from_pandas(pd.DataFrame(records), preserve_index=False)
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def test_every_scored_row_is_written_with_its_ids_inputs_score_and_decision(registered, tmp_path) -> None:
    records = registered["records"]
    client = serving(
        Settings(model_uri=f"models:/{MODEL}@{CHAMPION}", record_uri=str(tmp_path / "predictions"))
    )
    answers = [
        client.post("/predict", json=records[0], headers={"X-Request-ID": "tx-1"}).json(),
        client.post(
            "/predict", json={"instances": records[1:4]}, headers={"X-Request-ID": "tx-2, tx-3,tx-4"}
        ).json(),
        client.post(
            "/predict", json={"instances": records[4:6]}
        ).json(),  # no ids: the API makes a request id
    ]
    arrow = client.post(
        "/predict",
        content=arrow_body(records[6:10]),
        headers={"Content-Type": "application/vnd.apache.arrow.stream", "X-Request-ID": "batch-9"},
    )
    mlflow_shape = client.post("/invocations", json={"dataframe_records": records[10:12]})
    assert arrow.status_code == mlflow_shape.status_code == 200
    client.__exit__(None, None, None)  # a shutdown writes what is buffered

    day = datetime.now(UTC).strftime("%Y-%m-%d")
    files = sorted((tmp_path / "predictions" / MODEL).glob("date=*/*.parquet"))
    assert files and {f.parent.name for f in files} == {f"date={day}"}
    assert all(f.name.startswith(f"{registered['version']}-") for f in files)
    assert not list((tmp_path / "predictions").rglob("*.partial"))
    table = (
        pq.read_table(files).to_pandas().sort_values(["time", "row"], kind="stable").reset_index(drop=True)
    )
    assert len(table) == 12
    assert table["id"].tolist()[:4] == ["tx-1", "tx-2", "tx-3", "tx-4"]
    assert table["id"].iloc[4:6].isna().all() and table["request_id"].iloc[4] == table["request_id"].iloc[5]
    assert table["request_id"].iloc[4] != table["request_id"].iloc[6]  # made up, one per request
    assert table["id"].iloc[6:10].isna().all() and set(table["request_id"].iloc[6:10]) == {"batch-9"}
    assert table["row"].tolist()[:6] == [0, 0, 1, 2, 0, 1]
    assert set(table["model_name"]) == {MODEL} and set(table["model_version"]) == {registered["version"]}
    # What the model saw, per feature, and what it answered.
    sent = to_model_input(pd.DataFrame(records[:12]), registered["manifest"]["categorical"])
    for feature in registered["manifest"]["features"]:
        if feature in registered["manifest"]["categorical"]:
            assert table[feature].tolist() == sent[feature].astype(object).tolist(), feature
        else:
            np.testing.assert_allclose(
                table[feature], sent[feature].astype(np.float32), rtol=1e-7, err_msg=feature
            )
    scores = [p["probability"] for answer in answers for p in answer["predictions"]]
    np.testing.assert_allclose(table["score"].iloc[:6], scores, rtol=1e-9)
    assert (table["decision"] == (table["score"] >= table["threshold"])).all()


def test_a_full_buffer_drops_new_rows_and_counts_them(registered, tmp_path) -> None:
    records = registered["records"]
    settings = Settings(model_uri=f"models:/{MODEL}@{CHAMPION}", record_uri=str(tmp_path / "predictions"),
                        record_max_rows=5, record_flush_seconds=3600)  # fmt: skip
    client = serving(settings)
    dropped = counter(client, "prediction_records_dropped_total", reason="buffer_full")
    for size in (3, 2, 4):  # the third does not fit in what is left
        assert client.post("/predict", json={"instances": records[:size]}).status_code == 200
    assert counter(client, "prediction_records_dropped_total", reason="buffer_full") - dropped == 4
    assert counter(client, "prediction_records_buffered") == 5
    client.__exit__(None, None, None)
    assert pq.read_table(sorted((tmp_path / "predictions").rglob("*.parquet"))).num_rows == 5


def test_a_failed_write_keeps_its_rows_and_the_next_one_writes_them(tmp_path) -> None:
    """Storage that refuses a write (here a file where the folder should be) loses nothing: the rows stay buffered,
    the error is counted, and once storage takes writes again they are written."""
    from ml.serve import metrics

    blocked = tmp_path / "predictions"
    blocked.write_text("not a folder")
    card = ModelCard(name="m", version="3", uri="models:/m/3", threshold=0.5, features=("amount", "channel"),
                     categorical=("channel",))  # fmt: skip
    kept = recorder.Recorder(str(blocked), max_rows=100, flush_rows=100, flush_seconds=3600)
    errors = metrics.RECORD_WRITE_ERRORS._value.get()
    kept.add(card, {"channel": ["web", "pos"]}, np.array([[1.5, 0.0], [np.nan, np.nan]], np.float32),
             np.array([0.7, 0.2]))  # fmt: skip
    kept.flush()
    assert metrics.RECORD_WRITE_ERRORS._value.get() == errors + 1 and kept.rows == 2
    blocked.unlink()
    kept.flush()
    assert kept.rows == 0
    (written,) = Path(blocked / "m").glob("date=*/3-*.parquet")
    table = pq.read_table(written).to_pydict()
    assert table["amount"] == [1.5, None] and table["channel"] == ["web", None]
    assert table["score"] == [0.7, 0.2] and table["decision"] == [True, False]


def test_the_writer_writes_on_its_period_not_after_each_of_its_own_flushes(tmp_path) -> None:
    """A steady trickle of one-row requests makes a file per flush period (and per full chunk), not a file per
    few rows: a writer that woke itself with each flush once wrote without pause, at a sixth of the API's
    single-record throughput."""
    card = ModelCard(name="m", version="1", uri="models:/m/1", threshold=0.5, features=("amount",),
                     categorical=())  # fmt: skip
    period_s, trickle_s = 0.5, 1.5
    writer = recorder.Recorder(
        str(tmp_path), max_rows=10_000, flush_rows=10_000, flush_seconds=period_s
    ).start()
    deadline = time.monotonic() + trickle_s
    sent = 0
    while time.monotonic() < deadline:
        writer.add(card, {}, np.array([[float(sent)]], np.float32), np.array([0.1]))
        sent += 1
        time.sleep(0.0002)
    writer.close()
    files = list(tmp_path.rglob("*.parquet"))
    assert pq.read_table(files).num_rows == sent > 200
    assert len(files) <= trickle_s / period_s + 2, f"{len(files)} files for {sent} rows"
