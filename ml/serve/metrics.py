"""The API's Prometheus metrics. Alert rules and canary analysis query these names: change them here only."""

from __future__ import annotations

import logging
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
from starlette.requests import ClientDisconnect

log = logging.getLogger(__name__)

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
#: Each decision's series, exported from the start (so that increase() sees the first decisions), and kept: a
#: request counts its decisions without looking them up.
DECISIONS = {decision: PREDICTIONS.labels(decision=decision) for decision in ("positive", "negative")}
MODEL_INFO = Gauge(
    "model_info",
    "The model version being served (value 1).",
    ["model_name", "model_version"],
    registry=REGISTRY,
)
CONNECTIONS_CLOSED = Counter(
    "http_connections_closed",
    "Connections the server closed before a request reached the app, by reason (header_timeout, header_too_large).",
    ["reason"], registry=REGISTRY,
)  # fmt: skip
RECORDS_WRITTEN = Counter(
    "prediction_records_written", "Scored rows written to the prediction record (ml.serve.recorder).",
    registry=REGISTRY,
)  # fmt: skip
RECORDS_DROPPED = Counter(
    "prediction_records_dropped",
    "Scored rows the prediction record could not keep, by reason (buffer_full: storage fell behind).",
    ["reason"], registry=REGISTRY,
)  # fmt: skip
RECORDS_DROPPED.labels(reason="buffer_full")
RECORD_WRITE_ERRORS = Counter(
    "prediction_record_write_errors",
    "Failed writes of the prediction record (their rows are kept in the buffer and written again).",
    registry=REGISTRY,
)  # fmt: skip
RECORDS_BUFFERED = Gauge(
    "prediction_records_buffered", "Scored rows waiting to be written to the prediction record.",
    registry=REGISTRY,
)  # fmt: skip
#: Paths are labelled as routed; anything else is one label, so scanners cannot explode the series count.
KNOWN_PATHS = frozenset({"/predict", "/invocations", "/health", "/ready", "/metrics"})
#: The Open Inference Protocol's inference path, whatever model name it carries, is one label.
V2_INFER = "/v2/models/{name}/infer"
#: The paths that score: what the availability and latency SLOs count (the chart's ``inference-api.sloSelector``
#: matches exactly these labels; a test holds them equal).
SCORING_PATHS = frozenset({"/predict", "/invocations", V2_INFER})
# Exported from the start (at 0) for the scoring paths and the answers the SLOs and the canary count: a series born
# at its first request has no sample before it, so increase() and rate() would never see that first count.
for _path in SCORING_PATHS:
    HTTP_DURATION.labels(method="POST", path=_path)
    for _status in ("200", "422", "500"):
        HTTP_REQUESTS.labels(method="POST", path=_path, status=_status)
#: The status label of a request whose client went away before the answer (nginx's "client closed request"):
#: not a server error, so neither the error-rate alert nor the canary's success rate counts it as one.
CLIENT_CLOSED = 499
#: Answers whose duration is the client's, not the server's (its body timed out, or it left): not observed in
#: the latency histogram, which the latency alert and the canary's p99 read.
CLIENT_PACED = frozenset({408, CLIENT_CLOSED})
#: The key of a request's ASGI scope ``state`` where ``ml.serve.limits`` leaves the ``time.perf_counter()`` at which
#: it stopped waiting for the body (all of it came, or it was refused): the histogram times a request from there,
#: so a client's slow upload is not the server's latency. A request without a body is timed from its headers.
BODY_READ_AT = "ml.serve.body_read_at"


def observe_many(histogram: Any, values: Any) -> None:
    """``histogram.observe`` of every value at once: a 10,000-row batch's scores cost one pass in NumPy, not
    10,000 calls. It fills the histogram's own buckets and sum (prometheus_client's internals at the locked version;
    a test holds it equal to observing one value at a time)."""
    import numpy as np

    values = np.asarray(values, dtype=np.float64)
    if values.size == 1:  # a single record: prometheus_client's own observe costs less than the pass below
        histogram.observe(float(values.reshape(-1)[0]))
        return
    bounds = histogram._upper_bounds
    counts = np.bincount(np.searchsorted(bounds, values, side="left"), minlength=len(bounds))
    for bucket, count in zip(histogram._buckets, counts, strict=True):
        if count:
            bucket.inc(int(count))
    histogram._sum.inc(float(values.sum()))


def exposition() -> tuple[bytes, str]:
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


#: The answer to a request the app failed on.
SERVER_ERROR = b'{"detail":"internal server error: the server failed to answer this request"}'
SERVER_ERROR_HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(SERVER_ERROR)).encode()),
]


class RequestMetrics:
    """ASGI middleware counting requests and timing them (cheaper than a Starlette BaseHTTPMiddleware).

    A request whose client disconnects before its body has arrived is counted with status 499 and logged; it is
    not an error of the server (no traceback, no 500). A request is timed from the end of its body (``BODY_READ_AT``),
    not from its headers: how long the client took to send it is the client's time.

    An exception the app did not handle (a model that fails to score) is answered here with a 500, its traceback
    in the log, and the connection stays open. Left to Starlette, the 500 is sent and the exception raised on, and
    uvicorn then closes the connection: a proxy that kept it alive (nginx, the local router) finds it closed under
    its next request and answers that client 502. An exception after the answer started is raised on: the answer
    is cut, and only closing the connection says so.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status: dict[str, int] = {}  # the answer's, once it started

        async def capture(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        path = scope["path"] if scope["path"] in KNOWN_PATHS else "other"
        if path == "other" and scope["path"].startswith("/v2/models/") and scope["path"].endswith("/infer"):
            path = V2_INFER
        method = scope["method"]
        try:
            await self.app(scope, receive, capture)
        except ClientDisconnect:
            status["code"] = CLIENT_CLOSED
            log.info("%s %s: the client closed the connection before its request was read", method, path)
        except Exception:
            if status:
                raise
            log.exception("%s %s failed", method, scope["path"])
            await capture({"type": "http.response.start", "status": 500, "headers": SERVER_ERROR_HEADERS})
            await capture({"type": "http.response.body", "body": SERVER_ERROR})
        finally:
            status.setdefault("code", 500)
            HTTP_REQUESTS.labels(method=method, path=path, status=str(status["code"])).inc()
            if status["code"] not in CLIENT_PACED:
                started = scope.get("state", {}).get(BODY_READ_AT, started)
                HTTP_DURATION.labels(method=method, path=path).observe(time.perf_counter() - started)
