"""FastAPI app serving a registered model: ``/predict``, ``/health``, ``/ready`` and ``/metrics``; the clients
people already have through MLflow's ``/invocations`` and the Open Inference Protocol's ``/v2``
(``ml.serve.protocols``).

    SERVE_MODEL_URI=models:/card-fraud-detector@champion python -m ml.serve --port 8000

The model loads once, in the background at start-up: ``/health`` answers at once (liveness), ``/ready`` and
``/predict`` answer 503 until the model is in memory. Requests are validated against the model's own features:
a missing, extra or mistyped field, NaN or infinity, an empty or oversized batch, malformed JSON, a body not sent
as JSON, too large or too slow each get a 4xx naming the problem, never a 500; a client that leaves before its
request was read is counted as 499 ("client closed request"), not as a server error.

``/predict`` takes a record, a batch of records, columnar JSON (``dataframe_split``) or an Arrow IPC stream; every
shape is checked with the same rules and words.

Layout: ``settings`` (the environment), ``service`` (validation, scoring and the model holder), ``columns`` and
``protocols`` (the columnar and foreign shapes), ``routes``,
``limits`` (body size and deadline, requests at once) and ``server`` (``python -m ml.serve``: uvicorn with the
settings' limits, and a deadline for the request headers).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response

from ml.serve import metrics, tracing
from ml.serve.limits import Limits
from ml.serve.routes import json_response, router
from ml.serve.service import ModelHolder, Problem
from ml.serve.settings import Settings


def create_app(settings: Settings | None = None, span_exporter: Any = None) -> FastAPI:
    """Build the app; the model starts loading when the app starts.

    Args:
        settings: The configuration; read from the environment when omitted.
        span_exporter: Where spans go when tracing is on (OTLP over HTTP when omitted).
    """
    settings = settings or Settings()  # type: ignore[call-arg]  # model_uri comes from the environment
    holder = ModelHolder(settings, tracing.tracer(settings.tracing, span_exporter))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if holder.service is None:  # a model already in memory is reloaded only when asked to
            holder.start_loading()
        if holder.recorder is not None and not holder.recorder.thread.is_alive():
            holder.recorder.start()
        yield
        holder.stop_loading()
        if holder.recorder is not None:  # what was answered is written before the process exits
            await asyncio.to_thread(holder.recorder.close)

    app = FastAPI(title="Inference API", lifespan=lifespan)
    app.state.settings, app.state.holder = settings, holder
    app.add_middleware(Limits, settings=settings)
    # Added last, so outermost: it counts what Limits refuses, and answers what the app fails on (a 500).
    app.add_middleware(metrics.RequestMetrics)
    app.include_router(router)

    @app.exception_handler(Problem)
    async def problem(request: Request, exc: Problem) -> Response:
        return json_response({"detail": exc.message}, status_code=exc.status)

    app.openapi = lambda: openapi(app)  # type: ignore[method-assign]
    holder.on_loaded.append(lambda: setattr(app, "openapi_schema", None))  # the body follows the features
    return app


def openapi(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document, with /predict's body described by the loaded model's own features."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    document = get_openapi(title=app.title, version=app.version, routes=app.routes)
    holder: ModelHolder = app.state.holder
    if holder.service is None:
        return document  # not cached: the body's shape is known once the model is in memory
    record = holder.service.record.model_json_schema(ref_template="#/components/schemas/{model}")
    document.setdefault("components", {}).setdefault("schemas", {})["Record"] = record
    reference = {"$ref": "#/components/schemas/Record"}
    batch = {
        "type": "object",
        "properties": {
            "instances": {
                "type": "array", "items": reference, "minItems": 1, "maxItems": holder.settings.max_batch_size,
            }
        },
        "required": ["instances"],
        "additionalProperties": False,
    }  # fmt: skip
    split = {
        "type": "object",
        "properties": {
            "columns": {"type": "array", "items": {"type": "string", "enum": list(holder.service.card.features)}},
            "data": {"type": "array", "items": {"type": "array"}, "minItems": 1,
                     "maxItems": holder.settings.max_batch_size},
            "index": {"type": "array"},
        },
        "required": ["columns", "data"],
    }  # fmt: skip
    columnar = {"type": "object", "properties": {"dataframe_split": split}, "required": ["dataframe_split"],
                "additionalProperties": False}  # fmt: skip
    arrow = {"schema": {"type": "string", "format": "binary"}}
    document["paths"]["/predict"]["post"]["requestBody"] = {
        "required": True,
        "content": {
            "application/json": {"schema": {"oneOf": [reference, batch, columnar]}},
            "application/vnd.apache.arrow.stream": arrow,
        },
    }
    for path, body in protocol_bodies(reference, split, list(holder.service.card.features),
                                      holder.settings.max_batch_size).items():  # fmt: skip
        document["paths"][path]["post"]["requestBody"] = body
    app.openapi_schema = document
    return document


def protocol_bodies(
    reference: dict[str, Any], split: dict[str, Any], features: list[str], limit: int
) -> dict[str, Any]:
    """The request bodies of ``/invocations`` (MLflow's four shapes) and the Open Inference Protocol's infer routes,
    by path; ``reference`` is the record's schema, ``split`` columnar JSON's."""
    records = {"type": "array", "items": reference, "minItems": 1, "maxItems": limit}
    columns = {"type": "object", "additionalProperties": {"type": "array"}}
    shapes = {"dataframe_split": split, "dataframe_records": records, "instances": {"oneOf": [records, columns]},
              "inputs": {"oneOf": [records, columns]}}  # fmt: skip
    bodies = {"/invocations": {
        "required": True,
        "description": "MLflow's scoring protocol: exactly one of the four input shapes.",
        "content": {"application/json": {"schema": {"oneOf": [
            {"type": "object", "properties": {shape: body, "params": {"type": "object"}}, "required": [shape],
             "additionalProperties": False}
            for shape, body in shapes.items()
        ]}}},
    }}  # fmt: skip
    tensor = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "enum": features},
            "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
            "datatype": {"type": "string", "enum": ["BYTES", "FP64", "FP32", "INT64", "INT32"]},
            "data": {"type": "array"},
            "parameters": {"type": "object"},
        },
        "required": ["name", "shape", "datatype"],
    }
    infer = {"type": "object", "properties": {"id": {"type": "string"}, "inputs": {"type": "array", "items": tensor},
             "outputs": {"type": "array"}, "parameters": {"type": "object"}}, "required": ["inputs"]}  # fmt: skip
    for path in ("/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer"):
        bodies[path] = {
            "required": True,
            "description": "Open Inference Protocol v2: a tensor per feature (BYTES for categories); with the "
            "binary tensor extension, application/octet-stream and Inference-Header-Content-Length. A body that "
            "cannot be read is a 400: malformed JSON, or binary tensors whose bytes do not hold exactly the values "
            "their shape declares, or bytes after the last tensor's; a body that reads but breaks the schema or "
            "the model's inputs is a 422. Either names the tensor.",
            "content": {"application/json": {"schema": infer},
                        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        }  # fmt: skip
    return bodies
