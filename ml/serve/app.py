"""FastAPI app serving a registered model: ``/predict``, ``/health``, ``/ready`` and ``/metrics``.

    SERVE_MODEL_URI=models:/card-fraud-detector@champion uvicorn ml.serve.app:create_app --factory

The model loads once, in the background at start-up: ``/health`` answers at once (liveness), ``/ready`` and
``/predict`` answer 503 until the model is in memory. Requests are validated against the model's own features:
a missing, extra or mistyped field, NaN or infinity, an empty or oversized batch, malformed JSON or an oversized
body each get a 4xx naming the problem, never a 500.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, SecretStr, TypeAdapter, ValidationError
from pydantic import create_model as create_pydantic_model
from pydantic_settings import BaseSettings, SettingsConfigDict

from ml.serve import metrics, tracing
from ml.serve.model import ModelCard, Scorer, load

log = logging.getLogger(__name__)


class Settings(BaseSettings):
    """Everything the API reads from its environment (prefix ``SERVE_``)."""

    model_config = SettingsConfigDict(env_prefix="SERVE_", protected_namespaces=())

    model_uri: str
    max_batch_size: int = 1000
    max_body_bytes: int = 2_000_000
    tracing: bool = False
    # Bearer token for POST /reload; unset (the default) turns reloading over HTTP off.
    admin_token: SecretStr | None = None


# Under the record's strict config a float field takes ints and floats, never booleans or numeric strings.
Number = float | None
Category = str | None


def record_model(card: ModelCard) -> type[BaseModel]:
    """The pydantic model of one record: exactly the model's features, strictly typed, no NaN or infinity."""
    fields: dict[str, Any] = {
        name: (Category if name in card.categorical else Number, ...) for name in card.features
    }
    config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)
    return create_pydantic_model("Record", __config__=config, **fields)


class Prediction(BaseModel):
    probability: float
    decision: bool


class PredictResponse(BaseModel):
    model_name: str
    model_version: str
    threshold: float
    predictions: list[Prediction]


def json_response(payload: Any, status_code: int = 200) -> Response:
    """Serialize with orjson (several times faster than the standard library on float arrays)."""
    return Response(orjson.dumps(payload), status_code=status_code, media_type="application/json")


class Problem(Exception):
    """A client error: status code and a message that names the field and the problem."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _describe(error: ValidationError, batch: bool) -> str:
    """One line per problem, each naming its field: ``instances[3].amount: ...`` or ``amount: ...``."""
    parts = []
    for item in error.errors()[:10]:
        loc = item["loc"] if batch else item["loc"][1:]  # a single record is validated as a batch of one
        location = ("instances" if batch else "") + "".join(
            f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc
        )
        parts.append(f"{location.lstrip('.')}: {item['msg']}")
    more = error.error_count() - len(parts)
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


class Service:
    """The loaded model and what validating and scoring a request needs."""

    def __init__(self, card: ModelCard, scorer: Scorer, settings: Settings, tracer: Any = None) -> None:
        self.card, self.scorer, self.settings, self.tracer = card, scorer, settings, tracer
        self.record = record_model(card)
        self.records: TypeAdapter[list[Any]] = TypeAdapter(list[self.record])  # type: ignore[name-defined]

    def parse(self, body: bytes) -> tuple[list[dict[str, Any]], bool]:
        """Return the validated records of a request body (one record, or a batch under ``instances``), and
        whether it was a batch."""
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError as err:
            raise Problem(400, f"malformed JSON: {err}") from err
        if not isinstance(payload, dict):
            raise Problem(422, 'the body must be a JSON object: one record, or {"instances": [records]}')
        batch = set(payload) == {"instances"}
        records = payload["instances"] if batch else [payload]
        if not isinstance(records, list):
            raise Problem(422, "instances: must be a list of records")
        if not records:
            raise Problem(422, "instances: the batch is empty")
        if len(records) > self.settings.max_batch_size:
            raise Problem(
                422, f"instances: {len(records)} records is over the limit of {self.settings.max_batch_size}"
            )
        try:
            self.records.validate_python(records)
        except ValidationError as err:
            raise Problem(422, _describe(err, batch)) from err
        return records, batch

    def predict(self, records: list[dict[str, Any]], batch: bool) -> dict[str, Any]:
        matrix = self.scorer.matrix(records)
        overflowed = np.isinf(matrix)
        if overflowed.any():
            # The model scores float32: a number of larger magnitude would reach it as infinity.
            row, column = map(int, np.argwhere(overflowed)[0])
            where = (f"instances[{row}]." if batch else "") + self.scorer.features[column]
            raise Problem(
                422, f"{where}: {records[row][self.scorer.features[column]]} is beyond float32's range"
            )
        if self.tracer is None:
            scores = self.scorer.predict(matrix)
        else:
            with self.tracer.start_as_current_span("predict") as span:
                scores = self.scorer.predict(matrix)
                span.set_attributes(
                    {
                        "model.name": self.card.name,
                        "model.version": self.card.version,
                        "input.size": len(records),
                        "prediction.score": float(scores[0]) if len(scores) == 1 else float(scores.max()),
                        "prediction.positives": int((scores >= self.card.threshold).sum()),
                    }
                )
        for score in scores:
            metrics.PREDICTION_SCORE.observe(float(score))
        threshold = self.card.threshold
        return {
            "model_name": self.card.name,
            "model_version": self.card.version,
            "threshold": threshold,
            "predictions": [{"probability": float(s), "decision": bool(s >= threshold)} for s in scores],
        }


def create_app(settings: Settings | None = None, span_exporter: Any = None) -> FastAPI:
    """Build the app; the model starts loading when the app starts.

    Args:
        settings: The configuration; read from the environment when omitted.
        span_exporter: Where spans go when tracing is on (OTLP over HTTP when omitted).
    """
    settings = settings or Settings()  # type: ignore[call-arg]  # model_uri comes from the environment
    state: dict[str, Any] = {"service": None, "error": None, "loading": None}
    span_tracer = tracing.tracer(settings.tracing, span_exporter)

    async def load_model() -> None:
        try:
            card, scorer = await asyncio.to_thread(load, settings.model_uri)
        except Exception as err:  # kept for /ready to report; the process stays up for its probes
            log.exception("loading %s failed", settings.model_uri)
            state["error"] = f"{type(err).__name__}: {err}"
            return
        finally:
            state["loading"] = None
        previous: Service | None = state["service"]
        state["service"], state["error"] = Service(card, scorer, settings, span_tracer), None
        if previous is not None:
            metrics.MODEL_INFO.remove(previous.card.name, previous.card.version)
        metrics.MODEL_INFO.labels(model_name=card.name, model_version=card.version).set(1)
        app.openapi_schema = None  # the body schema follows the model's features

    def start_loading() -> None:
        if state["loading"] is None:
            state["loading"] = asyncio.create_task(load_model())

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        if state["service"] is None:  # a model already in memory is reloaded only when asked to
            start_loading()
        yield
        if state["loading"] is not None:
            state["loading"].cancel()

    app = FastAPI(title="Inference API", lifespan=lifespan)
    app.add_middleware(metrics.RequestMetrics)

    def openapi() -> dict[str, Any]:
        """The OpenAPI document, with /predict's body described by the loaded model's own features."""
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = get_openapi(title=app.title, version=app.version, routes=app.routes)
        service: Service | None = state["service"]
        if service is None:
            return document  # not cached: the body's shape is known once the model is in memory
        record = service.record.model_json_schema(ref_template="#/components/schemas/{model}")
        document.setdefault("components", {}).setdefault("schemas", {})["Record"] = record
        reference = {"$ref": "#/components/schemas/Record"}
        batch = {
            "type": "object",
            "properties": {
                "instances": {
                    "type": "array", "items": reference, "minItems": 1, "maxItems": settings.max_batch_size,
                }
            },
            "required": ["instances"],
            "additionalProperties": False,
        }  # fmt: skip
        document["paths"]["/predict"]["post"]["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": {"oneOf": [reference, batch]}}},
        }
        app.openapi_schema = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]

    @app.exception_handler(Problem)
    async def problem(request: Request, exc: Problem) -> Response:
        return json_response({"detail": exc.message}, status_code=exc.status)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> Response:
        service: Service | None = state["service"]
        if service is None or state["loading"] is not None:
            detail = "model is loading" if state["loading"] is not None else state["error"]
            return json_response({"ready": False, "detail": detail}, status_code=503)
        return json_response(
            {"ready": True, "model_name": service.card.name, "model_version": service.card.version}
        )

    @app.post("/reload", status_code=202, responses={401: {}, 404: {}})
    async def reload(request: Request) -> Response:
        """Load the model URI again (an alias may have moved). Until the new model is in memory /ready says
        no, so a load balancer drains this replica, while /predict keeps answering with the old model."""
        if settings.admin_token is None:
            raise Problem(404, "reloading over HTTP is off: set SERVE_ADMIN_TOKEN to turn it on")
        given = request.headers.get("authorization", "").removeprefix("Bearer ")
        if not secrets.compare_digest(given.encode(), settings.admin_token.get_secret_value().encode()):
            raise Problem(401, "reloading needs the admin bearer token")
        start_loading()
        return json_response({"detail": "reloading"}, status_code=202)

    @app.get("/metrics")
    async def prometheus() -> Response:
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    @app.post("/predict", response_model=PredictResponse, responses={400: {}, 413: {}, 422: {}, 503: {}})
    async def predict(request: Request) -> Response:
        service: Service | None = state["service"]
        if service is None:
            return json_response({"detail": state["error"] or "model is loading"}, status_code=503)
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > settings.max_body_bytes:
            raise Problem(413, f"body of {declared} bytes is over the limit of {settings.max_body_bytes}")
        body = await request.body()
        if len(body) > settings.max_body_bytes:
            raise Problem(413, f"body of {len(body)} bytes is over the limit of {settings.max_body_bytes}")
        records, batch = service.parse(body)
        return json_response(service.predict(records, batch))

    return app
