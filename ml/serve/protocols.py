"""The request shapes the API speaks besides its own records, each read into the model's matrix and answered.

- **Columnar JSON** on ``/predict``: ``{"dataframe_split": {"columns": [...], "data": [[...], ...]}}``, answered
  by column (``probability``, ``decision``).
- **Arrow IPC streams** on ``/predict`` (``Content-Type: application/vnd.apache.arrow.stream``): a table whose
  columns are the features, answered with a stream of ``probability`` and ``decision`` (the model's name, version
  and threshold in the schema's metadata).
- **MLflow's scoring protocol** on ``/invocations``: ``dataframe_split``, ``dataframe_records``, ``instances`` and
  ``inputs`` (a list of records or an object of columns), answered as ``mlflow models serve`` answers for this
  model (``{"predictions": [[p0, p1], ...]}``: its pyfunc's ``predict_proba``) and erring as it does
  (``{"error_code": ..., "message": ...}``).
- **Open Inference Protocol v2** (KServe, Triton, MLServer) under ``/v2``: one input tensor per feature (``BYTES``
  for categories, a number type for the rest; a JSON ``null`` is a missing value), as JSON or with the binary
  tensor extension (``Inference-Header-Content-Length``), outputs ``probability`` (FP64) and ``decision`` (BOOL).

Every shape goes through the checks of the record path with its words (``ml.serve.columns``).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import orjson

from ml.serve.columns import arrow_matrix, check_names, check_rows, json_matrix
from ml.serve.service import Problem, Service

ARROW_STREAM = "application/vnd.apache.arrow.stream"
#: The binary tensor extension's header: the length of the JSON part before the tensors' bytes.
BINARY_HEADER = "inference-header-content-length"
#: Open Inference Protocol datatypes of the numbers a feature may arrive as, and their NumPy types.
NUMBER_TYPES = {
    "FP64": "<f8", "FP32": "<f4", "FP16": "<f2", "INT64": "<i8", "INT32": "<i4", "INT16": "<i2", "INT8": "i1",
    "UINT64": "<u8", "UINT32": "<u4", "UINT16": "<u2", "UINT8": "u1",
}  # fmt: skip


def _object(payload: Any, what: str) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise Problem(422, f"{what}: must be a JSON object")
    return payload


def parse_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as err:
        raise Problem(400, f"malformed JSON: {err}") from err


# -- Columnar JSON and records in MLflow's shapes -----------------------------------------------------------


def split_matrix(service: Service, split: Any, what: str) -> tuple[np.ndarray, Mapping[str, Sequence[Any]]]:
    """The matrix of ``{"columns": [...], "data": [[...], ...]}`` (``index``, if any, is ignored), and its
    columns."""
    split = _object(split, what)
    columns, data = split.get("columns"), split.get("data")
    if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
        raise Problem(422, f"{what}.columns: must be a list of column names")
    if not isinstance(data, list) or not all(isinstance(row, list) for row in data):
        raise Problem(422, f"{what}.data: must be a list of rows, each a list of values")
    check_rows(len(data), service.settings.max_batch_size, f"{what}.data")
    short = [row for row, values in enumerate(data) if len(values) != len(columns)]
    if short:
        raise Problem(
            422, f"{what}.data[{short[0]}]: has {len(data[short[0]])} values for {len(columns)} columns"
        )
    check_names(columns, service.scorer, lambda name, row: f"{what}.columns: {name}")
    by_column = {name: [values[i] for values in data] for i, name in enumerate(columns)}

    def where(name: str, row: int | None) -> str:
        return f"{what}.data[{row}].{name}" if row is not None else f"{what}.{name}"

    return json_matrix(service.scorer, by_column, len(data), where), by_column


def records_matrix(
    service: Service, records: Any, what: str
) -> tuple[np.ndarray, Mapping[str, Sequence[Any]]]:
    """The matrix of a list of records (``[{"amount": 12.5, ...}, ...]``), and its columns."""
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise Problem(422, f"{what}: must be a list of records (JSON objects)")
    check_rows(len(records), service.settings.max_batch_size, what)
    names = list(dict.fromkeys(name for record in records for name in record))
    check_names(names, service.scorer, lambda name, row: f"{what}: {name}")
    incomplete = [row for row, record in enumerate(records) if len(record) != len(service.scorer.features)]
    if incomplete:
        row = incomplete[0]
        missing = next(name for name in service.scorer.features if name not in records[row])
        raise Problem(422, f"{what}[{row}].{missing}: Field required")
    by_column = {name: [record[name] for record in records] for name in service.scorer.features}

    def where(name: str, row: int | None) -> str:
        return f"{what}[{row}].{name}" if row is not None else f"{what}.{name}"

    return json_matrix(service.scorer, by_column, len(records), where), by_column


def columns_matrix(
    service: Service, columns: Any, what: str
) -> tuple[np.ndarray, Mapping[str, Sequence[Any]]]:
    """The matrix of an object of columns (``{"amount": [12.5, ...], ...}``), and its columns."""
    columns = _object(columns, what)
    check_names(list(columns), service.scorer, lambda name, row: f"{what}.{name}")
    lengths = {len(v) if isinstance(v, list) else -1 for v in columns.values()}
    if -1 in lengths or len(lengths) != 1:
        raise Problem(422, f"{what}: each column must be a list of values, all of one length")
    rows = lengths.pop()
    check_rows(rows, service.settings.max_batch_size, what)

    def where(name: str, row: int | None) -> str:
        return f"{what}.{name}[{row}]" if row is not None else f"{what}.{name}"

    return json_matrix(service.scorer, columns, rows, where), columns


async def scored(
    service: Service, matrix: np.ndarray, columns: Mapping[str, Sequence[Any]], what: str
) -> np.ndarray:
    return await service.score(matrix, lambda row, name: f"{what}[{row}].{name}: {columns[name][row]}")


async def predict_split(service: Service, payload: dict[str, Any]) -> dict[str, Any]:
    """``/predict`` with columnar JSON: the scores by column."""
    matrix, columns = split_matrix(service, payload["dataframe_split"], "dataframe_split")
    scores = await scored(service, matrix, columns, "dataframe_split.data")
    threshold = service.card.threshold
    return {
        "model_name": service.card.name,
        "model_version": service.card.version,
        "threshold": threshold,
        "probability": scores.tolist(),
        "decision": (scores >= threshold).tolist(),
    }


#: MLflow's input shapes, as its scoring server names them.
MLFLOW_SHAPES = ("dataframe_split", "dataframe_records", "instances", "inputs")


async def invocations(service: Service, body: bytes) -> dict[str, Any]:
    """MLflow's scoring protocol: the positive and negative class's probability of each row, as the model's pyfunc
    (``predict_proba``) gives them to ``mlflow models serve``."""
    payload = _object(_mlflow_json(body), "the body")
    shapes = [key for key in MLFLOW_SHAPES if key in payload]
    unknown = sorted(set(payload) - {*MLFLOW_SHAPES, "params"})
    if len(shapes) != 1 or unknown:
        raise Problem(
            400, f"the body must hold exactly one of {list(MLFLOW_SHAPES)} (and optionally params); it has "
            f"{sorted(payload)}",
        )  # fmt: skip
    shape = shapes[0]
    value = payload[shape]
    if shape == "dataframe_split":
        matrix, columns = split_matrix(service, value, shape)
    elif shape == "dataframe_records" or isinstance(value, list):
        matrix, columns = records_matrix(service, value, shape)
    else:
        matrix, columns = columns_matrix(service, value, shape)
    scores = await scored(service, matrix, columns, shape)
    return {"predictions": np.column_stack([1.0 - scores, scores]).tolist()}


def _mlflow_json(body: bytes) -> Any:
    """The body as MLflow's scoring server reads it: its client writes a DataFrame's missing values as ``NaN``,
    which is not JSON; here, as there, a ``NaN`` is a missing value (``Infinity`` stays a number, refused)."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as err:
        import json

        try:
            return json.loads(body, parse_constant=lambda name: None if name == "NaN" else float(name))
        except ValueError:
            raise Problem(400, f"malformed JSON: {err}") from err


# -- Arrow IPC streams ------------------------------------------------------------------------------------


async def predict_arrow(service: Service, body: bytes) -> bytes:
    """``/predict`` with an Arrow stream: a stream of ``probability`` and ``decision``."""
    import pyarrow as pa

    try:
        table = pa.ipc.open_stream(body).read_all()
    except (pa.ArrowException, OSError) as err:
        raise Problem(400, f"the body is not an Arrow IPC stream: {err}") from err
    check_names(table.column_names, service.scorer, lambda name, row: name)
    check_rows(table.num_rows, service.settings.max_batch_size, "the table")
    matrix = arrow_matrix(
        service.scorer, table, lambda name, row: f"{name}[{row}]" if row is not None else name
    )
    scores = await service.score(
        matrix, lambda row, name: f"{name}[{row}]: {table.column(name)[row].as_py()}"
    )
    card = service.card
    result = pa.table(
        {"probability": scores, "decision": scores >= card.threshold},
        metadata={"model_name": card.name, "model_version": card.version, "threshold": repr(card.threshold)},
    )
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, result.schema) as writer:
        writer.write_table(result)
    return bytes(sink.getvalue().to_pybytes())


# -- Open Inference Protocol v2 --------------------------------------------------------------------------


def model_metadata(service: Service) -> dict[str, Any]:
    """``GET /v2/models/{name}``: the model's inputs (a tensor per feature) and outputs."""
    scorer = service.scorer
    return {
        "name": service.card.name,
        "versions": [service.card.version],
        "platform": "xgboost",
        "inputs": [
            {"name": name, "datatype": "BYTES" if name in scorer.categories else "FP64", "shape": [-1]}
            for name in scorer.features
        ],
        "outputs": [
            {"name": "probability", "datatype": "FP64", "shape": [-1]},
            {"name": "decision", "datatype": "BOOL", "shape": [-1]},
        ],
        "parameters": {"threshold": service.card.threshold},
    }


def _tensor_values(tensor: dict[str, Any], raw: bytes | None, where: str) -> list[Any]:
    """A tensor's values as a flat list: from its JSON ``data`` or its bytes (binary tensor extension)."""
    datatype, shape = tensor.get("datatype"), tensor.get("shape")
    if not isinstance(shape, list) or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise Problem(422, f"{where}.shape: must be a list of sizes")
    count = int(np.prod(shape)) if shape else 1
    if len(shape) > 2 or (len(shape) == 2 and shape[1] != 1):
        raise Problem(422, f"{where}.shape: a feature is one value a row: [rows] or [rows, 1], not {shape}")
    values: list[Any] | None
    if raw is not None:
        if datatype == "BYTES":
            values, offset = [], 0
            while offset < len(raw):
                if offset + 4 > len(raw):
                    raise Problem(422, f"{where}: its bytes end inside an element's length")
                (size,) = struct.unpack_from("<I", raw, offset)
                values.append(raw[offset + 4 : offset + 4 + size].decode("utf-8", "replace"))
                offset += 4 + size
        elif datatype in NUMBER_TYPES:
            kind = np.dtype(NUMBER_TYPES[datatype])
            if len(raw) % kind.itemsize:
                raise Problem(422, f"{where}: {len(raw)} bytes are not a whole number of {datatype} values")
            values = np.frombuffer(raw, dtype=kind).astype(np.float64).tolist()
        else:
            raise Problem(422, f"{where}.datatype: {datatype!r} is not a number type nor BYTES")
    else:
        data = tensor.get("data")
        values = np.asarray(data, dtype=object).ravel().tolist() if isinstance(data, list) else None
        if values is None:
            raise Problem(422, f"{where}.data: must be a list of values")
    if len(values) != count:
        raise Problem(422, f"{where}: has {len(values)} values for the shape {shape}")
    if datatype == "BOOL" or (datatype != "BYTES" and datatype not in NUMBER_TYPES):
        raise Problem(422, f"{where}.datatype: {datatype!r} is not a number type nor BYTES")
    return values


async def infer(
    service: Service, body: bytes, header_length: str | None
) -> tuple[dict[str, Any], list[bytes]]:
    """``POST /v2/models/{name}/infer``: the JSON answer, and the outputs' bytes when they were asked for
    binary (then the answer's JSON is followed by them)."""
    if header_length is not None:
        try:
            split = int(header_length)
        except ValueError:
            split = -1
        if not 0 <= split <= len(body):
            raise Problem(
                400, f"Inference-Header-Content-Length: {header_length!r} is not a length within the body"
            )
        request, binary = _object(parse_json(body[:split]), "the request"), body[split:]
    else:
        request, binary = _object(parse_json(body), "the request"), b""
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or not all(isinstance(t, dict) for t in inputs):
        raise Problem(422, "inputs: must be a list of tensors")
    columns: dict[str, list[Any]] = {}
    offset = 0
    for tensor in inputs:
        name = tensor.get("name")
        where = f"inputs.{name}"
        size = _parameters(tensor).get("binary_data_size")
        raw = None
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise Problem(422, f"{where}.parameters.binary_data_size: {size!r} runs past the body")
            raw, offset = binary[offset : offset + size], offset + size
        columns[str(name)] = _tensor_values(tensor, raw, where)
    names = [str(t.get("name")) for t in inputs]
    check_names(names, service.scorer, lambda name, row: f"inputs.{name}")
    rows = {len(values) for values in columns.values()}
    if len(rows) != 1:
        raise Problem(422, "inputs: every tensor must hold one value a row, all of one length")
    count = rows.pop()
    check_rows(count, service.settings.max_batch_size, "inputs")
    matrix = json_matrix(service.scorer, columns, count,
                         lambda name, row: f"inputs.{name}[{row}]" if row is not None else f"inputs.{name}")  # fmt: skip
    scores = await service.score(matrix, lambda row, name: f"inputs.{name}[{row}]: {columns[name][row]}")
    decisions = scores >= service.card.threshold
    return _answer(service, request, scores, decisions)


def _parameters(part: dict[str, Any]) -> dict[str, Any]:
    """A request's, tensor's or output's ``parameters`` (an object, or none)."""
    parameters = part.get("parameters")
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise Problem(422, f"parameters: must be an object, not {type(parameters).__name__}")
    return parameters


def _answer(
    service: Service, request: dict[str, Any], scores: np.ndarray, decisions: np.ndarray
) -> tuple[dict[str, Any], list[bytes]]:
    every_binary = bool(_parameters(request).get("binary_data_output"))
    asked = request.get("outputs") or [{"name": "probability"}, {"name": "decision"}]
    if not isinstance(asked, list):
        raise Problem(422, "outputs: must be a list of the outputs wanted")
    values = {"probability": ("FP64", scores.astype("<f8")), "decision": ("BOOL", decisions.astype(bool))}
    outputs, raws = [], []
    for wanted in asked:
        name = wanted.get("name") if isinstance(wanted, dict) else None
        if name not in values:
            raise Problem(422, f"outputs: {name!r} is not an output of the model (probability, decision)")
        datatype, array = values[name]
        output: dict[str, Any] = {"name": name, "datatype": datatype, "shape": [len(array)]}
        if every_binary or _parameters(wanted).get("binary_data"):
            raw = array.tobytes()
            output["parameters"] = {"binary_data_size": len(raw)}
            raws.append(raw)
        else:
            output["data"] = array.tolist()
        outputs.append(output)
    answer = {
        "model_name": service.card.name,
        "model_version": service.card.version,
        "outputs": outputs,
        "parameters": {"threshold": service.card.threshold},
    }
    if "id" in request:
        answer["id"] = request["id"]
    return answer, raws
