"""The API's Prometheus metrics. Alert rules and canary analysis query these names: change them here only."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

REGISTRY = CollectorRegistry()

HTTP_REQUESTS = Counter(
    "http_requests", "HTTP requests by method, path and status code.", ["method", "path", "status"],
    registry=REGISTRY,
)  # fmt: skip
HTTP_DURATION = Histogram(
    "http_request_duration_seconds", "Time to answer an HTTP request.", ["method", "path"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
    registry=REGISTRY,
)  # fmt: skip
PREDICTION_SCORE = Histogram(
    "prediction_score", "Scores (positive-class probabilities) returned by /predict.",
    buckets=tuple(i / 20 for i in range(1, 21)), registry=REGISTRY,
)  # fmt: skip
PREDICTIONS = Counter(
    "predictions", "Decisions returned by /predict, by decision (positive or negative, at the model's threshold).",
    ["decision"], registry=REGISTRY,
)  # fmt: skip
for _decision in ("positive", "negative"):  # exported from the start, so increase() sees the first decisions
    PREDICTIONS.labels(decision=_decision)
MODEL_INFO = Gauge(
    "model_info",
    "The model version being served (value 1).",
    ["model_name", "model_version"],
    registry=REGISTRY,
)
#: Paths are labelled as routed; anything else is one label, so scanners cannot explode the series count.
KNOWN_PATHS = frozenset({"/predict", "/health", "/ready", "/metrics"})


def exposition() -> tuple[bytes, str]:
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


class RequestMetrics:
    """ASGI middleware counting requests and timing them (cheaper than a Starlette BaseHTTPMiddleware)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500}

        async def capture(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            path = scope["path"] if scope["path"] in KNOWN_PATHS else "other"
            method = scope["method"]
            HTTP_REQUESTS.labels(method=method, path=path, status=str(status["code"])).inc()
            HTTP_DURATION.labels(method=method, path=path).observe(time.perf_counter() - started)
