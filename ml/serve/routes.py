"""The inference API's routes: probes, metrics, reloading and scoring.

The app keeps the model holder and the settings in ``app.state``; routes read them from the request.
"""

from __future__ import annotations

import secrets
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from ml.serve import metrics
from ml.serve.service import ModelHolder, PredictResponse, Problem
from ml.serve.settings import Settings

router = APIRouter()


def json_response(payload: Any, status_code: int = 200) -> Response:
    """Serialize with orjson (several times faster than the standard library on float arrays)."""
    return Response(orjson.dumps(payload), status_code=status_code, media_type="application/json")


def _holder(request: Request) -> ModelHolder:
    holder: ModelHolder = request.app.state.holder
    return holder


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/ready")
async def ready(request: Request) -> Response:
    holder = _holder(request)
    service = holder.service
    if service is None or holder.loading is not None:
        detail = "model is loading" if holder.loading is not None else holder.error
        return json_response({"ready": False, "detail": detail}, status_code=503)
    card = service.card
    return json_response({"ready": True, "model_name": card.name, "model_version": card.version})


@router.post("/reload", status_code=202, responses={401: {}, 404: {}})
async def reload(request: Request) -> Response:
    """Load the model URI again (an alias may have moved). Until the new model is in memory /ready says
    no, so a load balancer drains this replica, while /predict keeps answering with the old model."""
    token = _settings(request).admin_token
    if token is None:
        raise Problem(404, "reloading over HTTP is off: set SERVE_ADMIN_TOKEN to turn it on")
    given = request.headers.get("authorization", "").removeprefix("Bearer ")
    if not secrets.compare_digest(given.encode(), token.get_secret_value().encode()):
        raise Problem(401, "reloading needs the admin bearer token")
    _holder(request).start_loading()
    return json_response({"detail": "reloading"}, status_code=202)


@router.get("/metrics")
async def prometheus() -> Response:
    body, content_type = metrics.exposition()
    return Response(body, media_type=content_type)


def check_json(request: Request) -> None:
    """415 unless the body is declared ``application/json`` (a charset parameter, if any, must be UTF-8)."""
    declared = request.headers.get("content-type", "")
    media, *parameters = (part.strip().lower() for part in declared.split(";"))
    charsets = {
        value.strip('"') for name, _, value in (p.partition("=") for p in parameters) if name == "charset"
    }
    if media != "application/json" or not charsets <= {"utf-8", "utf8"}:
        got = f"Content-Type: {declared}" if declared else "no Content-Type"
        raise Problem(415, f"the body must be JSON, sent with Content-Type: application/json ({got})")


# The 200 body is documented, not validated by FastAPI: ``Service.predict`` builds it and orjson writes it (a
# response_model would re-validate every prediction on the hot path). A test holds real answers to the schema.
# The body's size and deadline are enforced while it streams in (``ml.serve.limits``): 413 and 408 come from there.
@router.post(
    "/predict",
    responses={200: {"model": PredictResponse}, 400: {}, 408: {}, 413: {}, 415: {}, 422: {}, 503: {}},
)
async def predict(request: Request) -> Response:
    check_json(request)
    holder = _holder(request)
    service = holder.service
    if service is None:
        return json_response({"detail": holder.error or "model is loading"}, status_code=503)
    body = await request.body()
    records, batch = service.parse(body)
    return json_response(service.predict(records, batch))
