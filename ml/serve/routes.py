"""The inference API's routes: probes, metrics, reloading and scoring.

The app keeps the model holder and the settings in ``app.state``; routes read them from the request.
"""

from __future__ import annotations

import secrets
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from ml.serve import metrics, protocols, recorder
from ml.serve.service import ModelHolder, PredictResponse, Problem, Service
from ml.serve.settings import Settings

router = APIRouter()


def json_response(payload: Any, status_code: int = 200) -> Response:
    """Serialize with orjson (several times faster than the standard library on float arrays)."""
    return Response(orjson.dumps(payload), status_code=status_code, media_type="application/json")


def _holder(request: Request) -> ModelHolder:
    holder: ModelHolder = request.app.state.holder
    return holder


def _scoring(request: Request) -> ModelHolder:
    """The model holder, for a scoring route; the request's id is noted for the prediction record, if one is kept."""
    holder = _holder(request)
    if holder.recorder is not None:
        recorder.REQUEST_ID.set(recorder.request_id(request.headers))
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


def check_json(request: Request, *others: str) -> str:
    """The body's media type: 415 unless it is declared ``application/json`` (a charset parameter, if any, must
    be UTF-8) or one of ``others``."""
    declared = request.headers.get("content-type", "")
    if declared == "application/json":  # what nearly every client sends: no parameters to read
        return declared
    media, *parameters = (part.strip().lower() for part in declared.split(";"))
    if media in others:
        return media
    charsets = {
        value.strip('"') for name, _, value in (p.partition("=") for p in parameters) if name == "charset"
    }
    if media != "application/json" or not charsets <= {"utf-8", "utf8"}:
        got = f"Content-Type: {declared}" if declared else "no Content-Type"
        accepted = " or ".join(["application/json", *others])
        raise Problem(415, f"the body must be JSON, sent with Content-Type: {accepted} ({got})")
    return media


# The 200 body is documented, not validated by FastAPI: ``Service.predict`` builds it and orjson writes it (a
# response_model would re-validate every prediction on the hot path). A test holds real answers to the schema.
# The body's size and deadline are enforced while it streams in (``ml.serve.limits``): 413 and 408 come from there.
@router.post(
    "/predict",
    responses={200: {"model": PredictResponse}, 400: {}, 408: {}, 413: {}, 415: {}, 422: {}, 503: {}},
)
async def predict(request: Request) -> Response:
    media = check_json(request, protocols.ARROW_STREAM)
    holder = _scoring(request)
    service = holder.service
    if service is None:
        return json_response({"detail": holder.error or "model is loading"}, status_code=503)
    body = await request.body()
    if media == protocols.ARROW_STREAM:
        return Response(await protocols.predict_arrow(service, body), media_type=protocols.ARROW_STREAM)
    payload = protocols.parse_json(body)
    if isinstance(payload, dict) and set(payload) == {"dataframe_split"}:
        return json_response(await protocols.predict_split(service, payload))
    records, batch = service.records_of(payload)
    return json_response(await service.predict(records, batch))


# -- MLflow's scoring protocol ---------------------------------------------------------------------------


def mlflow_error(status: int, message: str) -> Response:
    """An error as MLflow's scoring server words it."""
    code = {400: "BAD_REQUEST", 415: "BAD_REQUEST", 422: "INVALID_PARAMETER_VALUE"}.get(
        status, "INTERNAL_ERROR"
    )
    if status == 503:
        code = "TEMPORARILY_UNAVAILABLE"
    return json_response({"error_code": code, "message": message}, status_code=status)


@router.post("/invocations", responses={200: {}, 400: {}, 408: {}, 413: {}, 415: {}, 422: {}, 503: {}})
async def invocations(request: Request) -> Response:
    """MLflow's scoring protocol (``mlflow models serve``'s ``/invocations``): ``dataframe_split``,
    ``dataframe_records``, ``instances`` or ``inputs``; the answer is ``{"predictions": [[p0, p1], ...]}``."""
    try:
        check_json(request)
        service = _scoring(request).service
        if service is None:
            return mlflow_error(503, _holder(request).error or "model is loading")
        return json_response(await protocols.invocations(service, await request.body()))
    except Problem as problem:
        return mlflow_error(problem.status, problem.message)


@router.get("/ping")
async def ping(request: Request) -> Response:
    """MLflow's scoring server's health check: 200 once the model is in memory."""
    return await ready(request)


# -- Open Inference Protocol v2 ---------------------------------------------------------------------------


def v2_error(status: int, message: str) -> Response:
    return json_response({"error": message}, status_code=status)


def _served(request: Request, name: str, version: str | None = None) -> Service:
    """The service of the model the path names, or a Problem: 503 while loading, 404 for another model."""
    service = _holder(request).service
    if service is None:
        raise Problem(503, _holder(request).error or "model is loading")
    if name != service.card.name or (version is not None and version != service.card.version):
        asked = f"{name} version {version}" if version is not None else name
        raise Problem(404, f"model {asked!r} is not served here: this server serves {service.card.name} version "
                           f"{service.card.version}")  # fmt: skip
    return service


@router.get("/v2")
async def v2_server() -> Response:
    return json_response({"name": "inference-api", "version": "2", "extensions": ["binary_tensor_data"]})


@router.get("/v2/health/live")
async def v2_live() -> Response:
    return json_response({"live": True})


@router.get("/v2/health/ready")
async def v2_ready(request: Request) -> Response:
    ready = _holder(request).service is not None and _holder(request).loading is None
    return json_response({"ready": ready}, status_code=200 if ready else 503)


@router.get("/v2/models/{name}")
@router.get("/v2/models/{name}/versions/{version}")
async def v2_model(request: Request, name: str, version: str | None = None) -> Response:
    try:
        return json_response(protocols.model_metadata(_served(request, name, version)))
    except Problem as problem:
        return v2_error(problem.status, problem.message)


@router.get("/v2/models/{name}/ready")
@router.get("/v2/models/{name}/versions/{version}/ready")
async def v2_model_ready(request: Request, name: str, version: str | None = None) -> Response:
    try:
        _served(request, name, version)
    except Problem as problem:
        return v2_error(problem.status, problem.message)
    return json_response({"name": name, "ready": True})


@router.post(
    "/v2/models/{name}/infer", responses={200: {}, 400: {}, 404: {}, 413: {}, 415: {}, 422: {}, 503: {}}
)
@router.post("/v2/models/{name}/versions/{version}/infer")
async def v2_infer(request: Request, name: str, version: str | None = None) -> Response:
    """Open Inference Protocol v2 inference: a tensor per feature, as JSON or binary (the binary tensor
    extension); outputs ``probability`` and ``decision``."""
    try:
        if "content-type" in request.headers:  # Triton's client sends its JSON requests without one
            check_json(request, "application/octet-stream")
        service = _served(request, name, version)
        _scoring(request)
        header = request.headers.get(protocols.BINARY_HEADER)
        answer, raws = await protocols.infer(service, await request.body(), header)
    except Problem as problem:
        return v2_error(problem.status, problem.message)
    document = orjson.dumps(answer)
    if not raws:
        return Response(document, media_type="application/json")
    return Response(
        document + b"".join(raws), media_type="application/octet-stream",
        headers={protocols.BINARY_HEADER: str(len(document))},
    )  # fmt: skip
