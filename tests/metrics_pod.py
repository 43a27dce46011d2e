"""An inference API's metrics as a pod exposes them, without the API: prometheus_client counters and a histogram
with the API's metric names and labels (``ml/serve/metrics.py``), served on loopback for a real Prometheus to
scrape, with counts a test sets."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from tests.conftest import free_port

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5)


class Pod:
    """An API's metrics as prometheus_client exposes them (the API's metric names), served on loopback."""

    def __init__(self, template_hash: str) -> None:
        self.hash, registry = template_hash, CollectorRegistry()
        self.requests = Counter("http_requests", "", ["method", "path", "status"], registry=registry)
        self.duration = Histogram("http_request_duration_seconds", "", ["method", "path"], buckets=BUCKETS,
                                  registry=registry)  # fmt: skip
        self.decisions = Counter("predictions", "", ["decision"], registry=registry)
        for status in ("200", "422", "500"):  # the series exist before traffic, as the counters start at 0
            self.requests.labels("POST", "/predict", status)
        self.duration.labels("POST", "/predict")
        for decision in ("positive", "negative"):
            self.decisions.labels(decision)
        self.port = free_port()
        self.server, _ = start_http_server(self.port, addr="127.0.0.1", registry=registry)
        self.url = f"http://127.0.0.1:{self.port}"

    def serve(self, ok: int = 0, errors: int = 0, client_errors: int = 0, latency: float | None = 0.001,
              positives: int = 0) -> None:  # fmt: skip
        """Answer requests: ``ok`` 200s (``positives`` of them positive decisions), 5xx and 4xx, each taking
        ``latency`` seconds (None: not timed, as the API leaves the answers a client paced)."""
        for status, count in (("200", ok), ("500", errors), ("422", client_errors)):
            self.requests.labels("POST", "/predict", status).inc(count)
        if latency is not None:
            for _ in range(ok + errors + client_errors):
                self.duration.labels("POST", "/predict").observe(latency)
        self.decisions.labels("positive").inc(positives)
        self.decisions.labels("negative").inc(ok - positives)
        self.requests.labels("GET", "/health", "200").inc(50)  # not scored traffic: never counted

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
