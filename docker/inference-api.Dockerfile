# syntax=docker/dockerfile:1.7
# The inference API: `docker build -f docker/inference-api.Dockerfile -t inference-api .` from the repository root.
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS builder
COPY --from=ghcr.io/astral-sh/uv:0.13.9 /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never
WORKDIR /app
# Dependencies in their own layer, rebuilt only when the lock changes; the image takes the project's
# dependencies alone (no Airflow, no MLflow server, no dev tools).
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=bind,source=uv.lock,target=uv.lock \
    --mount=type=bind,source=pyproject.toml,target=pyproject.toml \
    uv sync --frozen --no-default-groups --no-install-project

FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime
# The user the Kubernetes securityContext runs as (kubernetes.run_as_user in plugins/mlops/platform.yaml).
ARG APP_UID=10001
RUN groupadd --gid "${APP_UID}" app \
    && useradd --uid "${APP_UID}" --gid app --no-create-home --shell /usr/sbin/nologin app
WORKDIR /app
COPY --from=builder /app/.venv /app/.venv
COPY contract/ /app/contract/
COPY ml/ /app/ml/
ENV PATH="/app/.venv/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    WEB_CONCURRENCY=1
USER ${APP_UID}:${APP_UID}
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2)"]
# Workers: WEB_CONCURRENCY. Model: SERVE_MODEL_URI (e.g. models:/card-fraud-detector@champion) and
# MLFLOW_TRACKING_URI. Tracing: SERVE_TRACING=true and OTEL_EXPORTER_OTLP_ENDPOINT. Limits (body size and
# deadline, header deadline, requests at once): the other SERVE_* variables, read by `python -m ml.serve`,
# which runs uvicorn (uvloop, httptools) with them; see ml/serve/settings.py.
CMD ["python", "-m", "ml.serve", "--host", "0.0.0.0", "--port", "8000"]
