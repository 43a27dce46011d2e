"""OpenTelemetry tracing of inferences: off unless ``SERVE_TRACING=true``; OTLP endpoint from ``OTEL_*``."""

from __future__ import annotations

from typing import Any


def tracer(enabled: bool, exporter: Any = None) -> Any | None:
    """Return a tracer exporting spans over OTLP/HTTP, or None when tracing is off (no cost per request).

    The exporter reads the standard variables (``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_EXPORTER_OTLP_HEADERS``);
    the service name comes from ``OTEL_SERVICE_NAME``. Tests pass an in-memory ``exporter``.
    """
    if not enabled:
        return None
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": "inference-api"}))
    if exporter is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    else:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider.get_tracer("ml.serve")
