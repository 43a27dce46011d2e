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

A body that cannot be read as its shape is a 400 (malformed JSON, not an Arrow stream, binary tensors whose bytes do
not frame as the JSON header declares them); a body that reads but breaks the model's contract or the shape's schema
is a 422. With binary tensors, the header is the schema (a ``binary_data_size`` that is not a size is a 422) and the
bytes after it are the framing: each tensor's bytes must hold exactly the values its ``shape`` declares (every
``BYTES`` element's length within them, nothing left over; a number tensor's size the item size times the count),
and the body must end where the last tensor's bytes end. Each such 400 names the tensor as ``inputs[i] ('name')``:
a binary tensor is found by its position as much as by its name.
"""

from __future__ import annotations

import math
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
    """A tensor's values as a flat list: from its JSON ``data`` or its bytes (binary tensor extension).

    Args:
        tensor: The tensor's JSON object.
        raw: Its bytes when it came as binary data, else None.
        where: How messages name the tensor.

    Raises:
        Problem: 422 when the tensor's JSON breaks the schema, 400 when its bytes do not hold what it declares.
    """
    datatype, shape = tensor.get("datatype"), tensor.get("shape")
    if not isinstance(shape, list) or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise Problem(422, f"{where}.shape: must be a list of sizes")
    if len(shape) > 2 or (len(shape) == 2 and shape[1] != 1):
        raise Problem(422, f"{where}.shape: a feature is one value a row: [rows] or [rows, 1], not {shape}")
    if datatype != "BYTES" and datatype not in NUMBER_TYPES:
        raise Problem(422, f"{where}.datatype: {datatype!r} is not a number type nor BYTES")
    count = math.prod(shape)
    if raw is not None:
        return (
            _bytes_values(raw, count, where)
            if datatype == "BYTES"
            else _number_values(raw, datatype, count, where)
        )
    data = tensor.get("data")
    if not isinstance(data, list):
        raise Problem(422, f"{where}.data: must be a list of values")
    values: list[Any] = np.asarray(data, dtype=object).ravel().tolist()
    if len(values) != count:
        raise Problem(422, f"{where}: has {len(values)} values for the shape {shape}")
    return values


def _bytes_values(raw: bytes, count: int, where: str) -> list[str]:
    """The ``count`` elements of a binary ``BYTES`` tensor, each a 4-byte little-endian length and its bytes.

    Raises:
        Problem: 400 when the bytes end before ``count`` elements, an element's length runs past them, or bytes
            are left over after the last element.
    """
    values, offset = [], 0
    for element in range(count):
        if offset + 4 > len(raw):
            raise Problem(
                400,
                f"{where}: its {len(raw)} bytes end at element {element} of the {count} its shape declares",
            )
        (size,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if size > len(raw) - offset:
            raise Problem(
                400,
                f"{where}: element {element}'s length {size} runs past its bytes ({len(raw) - offset} left)",
            )
        values.append(raw[offset : offset + size].decode("utf-8", "replace"))
        offset += size
    if offset != len(raw):
        raise Problem(400, f"{where}: {len(raw) - offset} bytes are left over after its {count} elements")
    return values


def _number_values(raw: bytes, datatype: str, count: int, where: str) -> list[float]:
    """The ``count`` values of a binary number tensor.

    Raises:
        Problem: 400 when the bytes are not exactly ``count`` values of ``datatype``.
    """
    kind = np.dtype(NUMBER_TYPES[datatype])
    if len(raw) != count * kind.itemsize:
        raise Problem(
            400, f"{where}: {len(raw)} bytes are not the {count} {datatype} values ({count * kind.itemsize} "
            "bytes) its shape declares",
        )  # fmt: skip
    return np.frombuffer(raw, dtype=kind).astype(np.float64).tolist()


async def infer(
    service: Service, body: bytes, header_length: str | None
) -> tuple[dict[str, Any], list[bytes]]:
    """``POST /v2/models/{name}/infer``: the JSON answer, and the outputs' bytes when they were asked for
    binary (then the answer's JSON is followed by them).

    Args:
        service: The model served.
        body: The request's body: its JSON, then (with the binary tensor extension) the tensors' bytes.
        header_length: ``Inference-Header-Content-Length``: where the JSON ends, if the body has binary tensors.

    Raises:
        Problem: 400 when the body cannot be read (its JSON, or its binary tensors' framing), 422 when it breaks
            the schema or the model's contract.
    """
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
    wheres = [f"inputs[{position}] ({tensor.get('name')!r})" for position, tensor in enumerate(inputs)]
    raws = _binary_tensors(inputs, binary, wheres)
    columns = {
        str(tensor.get("name")): _tensor_values(tensor, raw, where)
        for tensor, raw, where in zip(inputs, raws, wheres, strict=True)
    }
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


def _binary_tensors(inputs: list[dict[str, Any]], binary: bytes, wheres: list[str]) -> list[bytes | None]:
    """Each tensor's share of the bytes after the JSON header, in order (None for a tensor sent as JSON).

    Args:
        inputs: The request's tensors.
        binary: The body's bytes after its JSON header.
        wheres: How messages name each tensor.

    Raises:
        Problem: 422 for a ``binary_data_size`` that is not a size; 400 when the sizes run past the bytes, or
            bytes are left after the last tensor's.
    """
    raws: list[bytes | None] = []
    offset, last = 0, None
    for tensor, where in zip(inputs, wheres, strict=True):
        size = _parameters(tensor).get("binary_data_size")
        if size is None:
            raws.append(None)
            continue
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise Problem(422, f"{where}.parameters.binary_data_size: {size!r} is not a size in bytes")
        if size > len(binary) - offset:
            raise Problem(
                400, f"{where}.parameters.binary_data_size: {size} bytes from byte {offset} run past the "
                f"{len(binary)} bytes of binary data",
            )  # fmt: skip
        raws.append(binary[offset : offset + size])
        offset, last = offset + size, where
    if offset != len(binary):
        after = f"the last binary tensor, {last}," if last else "the JSON header, and no tensor is binary,"
        raise Problem(400, f"the body has {len(binary) - offset} bytes after {after} that no tensor declares")
    return raws


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
