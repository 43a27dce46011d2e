"""The request shapes besides the API's records: columnar JSON, Arrow streams, MLflow's scoring protocol and the Open
Inference Protocol v2, each against a real registered model; the protocols through their own client libraries
(MLflow's scoring client, Triton's HTTP client) against a running server."""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pytest

from ml.serve.app import create_app
from ml.serve.settings import Settings
from tests.conftest import free_port
from tests.helpers import CHAMPION
from tests.ml.serve.test_app import MODEL, client, registered  # noqa: F401 - the fixtures shared with the API tests


def expected(client: Any, records: list[dict[str, Any]]) -> np.ndarray:  # noqa: F811
    """The record path's scores: what every other shape must give."""
    body = client.post("/predict", json={"instances": records}).json()
    return np.array([p["probability"] for p in body["predictions"]])


def split_of(records: list[dict[str, Any]]) -> dict[str, Any]:
    columns = list(records[0])
    return {"columns": columns, "data": [[record[c] for c in columns] for record in records]}


def arrow_body(frame: pd.DataFrame) -> bytes:
    table = pa.Table.from_pandas(frame, preserve_index=False)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


def test_columnar_json_gives_the_record_paths_scores_by_column(client, registered) -> None:  # noqa: F811
    records = registered["records"][:50]
    response = client.post("/predict", json={"dataframe_split": split_of(records)})
    assert response.status_code == 200, response.text
    body = response.json()
    np.testing.assert_allclose(body["probability"], expected(client, records), rtol=1e-9)
    assert body["decision"] == [p >= body["threshold"] for p in body["probability"]]
    assert body["model_name"] == MODEL


def test_an_arrow_stream_gives_the_record_paths_scores_as_a_stream(client, registered) -> None:  # noqa: F811
    records = registered["records"][:200]
    frame = pd.DataFrame(records)
    frame.loc[3, "amount"] = None  # a null is a missing value, as null is in JSON
    records[3] = {**records[3], "amount": None}
    response = client.post("/predict", content=arrow_body(frame),
                           headers={"Content-Type": "application/vnd.apache.arrow.stream"})  # fmt: skip
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/vnd.apache.arrow.stream"
    table = pa.ipc.open_stream(response.content).read_all()
    assert table.column_names == ["probability", "decision"]
    np.testing.assert_allclose(table.column("probability").to_numpy(), expected(client, records), rtol=1e-9)
    assert table.schema.metadata[b"model_name"] == MODEL.encode()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f.drop(columns="amount"), "amount: Field required"),
        (lambda f: f.assign(extra=1.0), "extra: Extra inputs are not permitted"),
        (lambda f: f.assign(amount=f["amount"].astype(str)), "amount: Input should be a valid number"),
        (lambda f: f.assign(channel=1.0), "channel: Input should be a valid string"),
        (lambda f: f.assign(amount=np.where(f.index == 7, np.inf, f["amount"])), "amount[7]: Input should be a finite number"),
        (lambda f: f.iloc[0:0], "the table: the batch is empty"),
    ],
)  # fmt: skip
def test_arrow_input_is_checked_as_records_are(client, registered, change, message) -> None:  # noqa: F811
    frame = change(pd.DataFrame(registered["records"][:20]))
    response = client.post("/predict", content=arrow_body(frame),
                           headers={"Content-Type": "application/vnd.apache.arrow.stream"})  # fmt: skip
    assert response.status_code == 422, response.text
    assert message in response.json()["detail"]


def test_a_body_that_is_not_an_arrow_stream_is_a_400(client) -> None:  # noqa: F811
    response = client.post("/predict", content=b"not arrow",
                           headers={"Content-Type": "application/vnd.apache.arrow.stream"})  # fmt: skip
    assert response.status_code == 400 and "not an Arrow IPC stream" in response.json()["detail"]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"dataframe_split": {"columns": ["amount"], "data": [[1.0]]}}, 422, "Field required"),
        (
            {"dataframe_split": {"columns": "amount", "data": []}},
            422,
            "dataframe_split.columns: must be a list",
        ),
        ({"dataframe_records": [{"amount": "12"}]}, 422, "Field required"),
        ({"inputs": {"amount": [1.0, 2.0]}}, 422, "Field required"),
        ({"dataframe_split": {}, "inputs": []}, 400, "exactly one of"),
        ({"nothing": 1}, 400, "exactly one of"),
    ],
)
def test_invocations_refuses_bad_input_as_mlflow_words_errors(client, body, status, message) -> None:  # noqa: F811
    response = client.post("/invocations", json=body)
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error_code", "message"} and message in response.json()["message"]


def test_invocations_takes_the_four_shapes_and_answers_as_mlflow_models_serve(client, registered) -> None:  # noqa: F811
    records = registered["records"][:30]
    scores = expected(client, records)
    columns = {name: [r[name] for r in records] for name in records[0]}
    bodies = {
        "dataframe_split": {"dataframe_split": split_of(records)},
        "dataframe_records": {"dataframe_records": records},
        "instances": {"instances": records},
        "inputs (columns)": {"inputs": columns},
    }
    for shape, body in bodies.items():
        response = client.post("/invocations", json=body)
        assert response.status_code == 200, (shape, response.text)
        predictions = np.array(response.json()["predictions"])
        assert predictions.shape == (30, 2), shape
        np.testing.assert_allclose(predictions[:, 1], scores, rtol=1e-9, err_msg=shape)
        np.testing.assert_allclose(predictions.sum(axis=1), 1.0)


def test_a_wrong_value_in_a_columnar_body_names_its_row_and_column(client, registered) -> None:  # noqa: F811
    records = [dict(r) for r in registered["records"][:5]]
    records[2]["amount"] = True
    response = client.post("/predict", json={"dataframe_split": split_of(records)})
    assert response.status_code == 422
    assert response.json()["detail"] == "dataframe_split.data[2].amount: Input should be a valid number"


@pytest.fixture(scope="module")
def server(registered: dict[str, Any]) -> Iterator[str]:  # noqa: F811
    """The API on a real HTTP server on loopback (uvicorn, in a thread of this process: the clients' requests go
    through the network stack and the same app ``python -m ml.serve`` runs)."""
    import threading

    import uvicorn

    port = free_port()
    app = create_app(Settings(model_uri=f"models:/{MODEL}@{CHAMPION}"))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the API did not become ready"
            time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def test_mlflows_own_scoring_client_switches_by_changing_the_url(server, client, registered) -> None:  # noqa: F811
    from mlflow.pyfunc.scoring_server.client import ScoringServerClient

    host, port = server.split(":")
    scoring = ScoringServerClient(host, port)
    scoring.wait_server_ready(timeout=30)
    frame = pd.DataFrame(registered["records"][:40])
    frame.loc[0, "amount"] = np.nan  # MLflow's client writes a DataFrame's missing value as NaN
    predictions = np.asarray(scoring.invoke(frame).get_predictions())
    records = frame.astype(object).where(frame.notna(), None).to_dict("records")
    np.testing.assert_allclose(predictions[:, 1], expected(client, records), rtol=1e-9)


def test_tritons_http_client_speaks_the_open_inference_protocol(server, client, registered) -> None:  # noqa: F811
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    records = registered["records"][:64]
    frame = pd.DataFrame(records)
    triton_client = triton.InferenceServerClient(url=server)
    assert triton_client.is_server_live() and triton_client.is_server_ready()
    assert triton_client.is_model_ready(MODEL)
    metadata = triton_client.get_model_metadata(MODEL)
    categorical = set(registered["manifest"]["categorical"])
    assert {i["name"]: i["datatype"] for i in metadata["inputs"]} == {
        name: "BYTES" if name in categorical else "FP64" for name in registered["manifest"]["features"]
    }
    scores = expected(client, records)
    for binary in (True, False):
        inputs = []
        for name in registered["manifest"]["features"]:
            values = frame[name].to_numpy(dtype=object if name in categorical else np.float64)
            tensor = triton.InferInput(name, [len(frame)], "BYTES" if name in categorical else "FP64")
            tensor.set_data_from_numpy(values, binary_data=binary)
            inputs.append(tensor)
        outputs = [triton.InferRequestedOutput(n, binary_data=binary) for n in ("probability", "decision")]
        result = triton_client.infer(MODEL, inputs, outputs=outputs)
        np.testing.assert_allclose(
            result.as_numpy("probability"), scores, rtol=1e-9, err_msg=f"binary={binary}"
        )
        threshold = result.get_response()["parameters"]["threshold"]
        np.testing.assert_array_equal(result.as_numpy("decision"), scores >= threshold)
    with pytest.raises(InferenceServerException, match="is not served here"):
        triton_client.get_model_metadata("another-model")
    wrong = triton.InferInput("amount", [1], "FP64")
    wrong.set_data_from_numpy(np.array([1.0]), binary_data=False)
    with pytest.raises(InferenceServerException, match="Field required"):
        triton_client.infer(MODEL, [wrong])


def v2_inputs(registered: dict[str, Any], record: dict[str, Any] | None = None) -> list[dict[str, Any]]:  # noqa: F811
    record = record or registered["records"][0]
    categorical = set(registered["manifest"]["categorical"])
    return [{"name": name, "shape": [1], "datatype": "BYTES" if name in categorical else "FP64",
             "data": [record[name]]} for name in registered["manifest"]["features"]]  # fmt: skip


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda body: {**body, "parameters": [1]}, "parameters: must be an object"),
        (lambda body: {**body, "outputs": 3}, "outputs: must be a list"),
        (lambda body: {**body, "outputs": [{"name": "margin"}]}, "'margin' is not an output"),
        (
            lambda body: {"inputs": [{**t, "shape": [1, 2]} for t in body["inputs"]]},
            "a feature is one value a row",
        ),
        (
            lambda body: {"inputs": [{**t, "shape": [2]} for t in body["inputs"]]},
            "has 1 values for the shape [2]",
        ),
        (
            lambda body: {"inputs": [{**t, "datatype": "BOOL"} for t in body["inputs"]]},
            "is not a number type",
        ),
    ],
)
def test_a_broken_inference_request_is_a_4xx_naming_the_part(client, registered, change, message) -> None:  # noqa: F811
    body = change({"inputs": v2_inputs(registered)})
    response = client.post(f"/v2/models/{MODEL}/infer", json=body)
    assert response.status_code == 422, response.text
    assert message in response.json()["error"]


def binary_features(registered: dict[str, Any]) -> tuple[str, str]:  # noqa: F811
    """A category (a BYTES tensor) and a number (FP64) among the model's features."""
    categorical = registered["manifest"]["categorical"]
    return categorical[0], next(n for n in registered["manifest"]["features"] if n not in categorical)


def binary_body(
    registered: dict[str, Any],  # noqa: F811
    raws: dict[str, bytes],
    tail: bytes = b"",
    sizes: dict[str, Any] | None = None,
    record: dict[str, Any] | None = None,
) -> tuple[bytes, dict[str, str]]:
    """A binary-extension request of ``record`` (the first by default): the tensors named in ``raws`` sent as
    those bytes (declared as their length, or as ``sizes`` says), the others as JSON, then ``tail``."""
    inputs = v2_inputs(registered, record)
    for tensor in inputs:
        if tensor["name"] in raws:
            tensor.pop("data")
            size = (sizes or {}).get(tensor["name"], len(raws[tensor["name"]]))
            tensor["parameters"] = {"binary_data_size": size}
    header = orjson.dumps({"inputs": inputs})
    body = header + b"".join(raws[t["name"]] for t in inputs if t["name"] in raws) + tail
    return body, {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(header)),
    }


def element(text: str) -> bytes:
    """One element of a binary BYTES tensor: its length (4 bytes, little-endian), then its bytes."""
    return struct.pack("<I", len(text.encode())) + text.encode()


def test_well_formed_binary_tensors_mixed_with_json_ones_are_scored(client, registered) -> None:  # noqa: F811
    """The control for the malformed bodies below: the same request, its bytes as they should be."""
    category, number = binary_features(registered)
    record = next(r for r in registered["records"] if r[category] is not None and r[number] is not None)
    raws = {category: element(record[category]), number: struct.pack("<d", record[number])}
    body, headers = binary_body(registered, raws, record=record)
    response = client.post(f"/v2/models/{MODEL}/infer", content=body, headers=headers)
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(response.json()["outputs"][0]["data"], expected(client, [record]), rtol=1e-9)


#: Binary tensors whose bytes do not frame as their JSON header declares: the category's bytes, the number's bytes
#: (None: sent as JSON), what follows them, the number's declared size (None: its bytes' length), and the message
#: that must name the tensor at fault ({last}: the later of the two in the request).
MALFORMED_BINARY = {
    "an element's length runs past the tensor": (
        struct.pack("<I", 0xFFFFFFF0) + b"x" * 11, None, b"", None,
        "{category}: element 0's length 4294967280 runs past its bytes (11 left)",
    ),
    "bytes left inside a BYTES tensor after its elements": (
        element("online") + b"xyz", None, b"", None, "{category}: 3 bytes are left over after its 1 elements",
    ),
    "a BYTES tensor that ends inside an element's length": (
        b"\x06\x00", None, b"", None, "{category}: its 2 bytes end at element 0 of the 1 its shape declares",
    ),
    "a BYTES tensor with fewer elements than its shape": (
        b"", None, b"", None, "{category}: its 0 bytes end at element 0 of the 1 its shape declares",
    ),
    "a number tensor that is not a whole number of values": (
        None, b"\x07\x00", b"", None, "{number}: 2 bytes are not the 1 FP64 values (8 bytes) its shape declares",
    ),
    "a number tensor of more values than its shape": (
        None, struct.pack("<2d", 1.0, 2.0), b"", None, "{number}: 16 bytes are not the 1 FP64 values",
    ),
    "a binary_data_size that runs past the body": (
        None, struct.pack("<d", 1.0)[:4], b"", 8,
        "{number}.parameters.binary_data_size: 8 bytes from byte 0 run past the 4 bytes of binary data",
    ),
    "junk after the last tensor's bytes": (
        element("online"), struct.pack("<d", 1.0), b"\xff" * 1000, None,
        "the body has 1000 bytes after the last binary tensor, {last},",
    ),
    "bytes after the JSON header and no binary tensor": (
        None, None, b"junk", None, "the body has 4 bytes after the JSON header, and no tensor is binary",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", MALFORMED_BINARY)
def test_malformed_binary_tensors_are_a_400_naming_the_tensor(client, registered, case) -> None:  # noqa: F811
    category, number = binary_features(registered)
    category_raw, number_raw, tail, number_size, message = MALFORMED_BINARY[case]
    raws = {name: raw for name, raw in ((category, category_raw), (number, number_raw)) if raw is not None}
    body, headers = binary_body(registered, raws, tail, {number: number_size} if number_size else None)
    response = client.post(f"/v2/models/{MODEL}/infer", content=body, headers=headers)
    assert response.status_code == 400, response.text
    features = registered["manifest"]["features"]
    where = {name: f"inputs[{features.index(name)}] ({name!r})" for name in (category, number)}
    last = where[max((category, number), key=features.index)]
    assert (
        message.format(category=where[category], number=where[number], last=last) in response.json()["error"]
    )


@pytest.mark.parametrize("size", ["8", -1, True, 1.5])
def test_a_binary_data_size_that_is_no_size_is_a_422_naming_the_tensor(client, registered, size) -> None:  # noqa: F811
    """The JSON header is the schema: a size that is no size is a 422, as any other field of the wrong type."""
    _, number = binary_features(registered)
    body, headers = binary_body(registered, {number: struct.pack("<d", 1.0)}, sizes={number: size})
    response = client.post(f"/v2/models/{MODEL}/infer", content=body, headers=headers)
    assert response.status_code == 422, response.text
    where = f"inputs[{registered['manifest']['features'].index(number)}] ({number!r})"
    assert f"{where}.parameters.binary_data_size: {size!r} is not a size in bytes" in response.json()["error"]
