# syntax=docker/dockerfile:1.7
# The image every pipeline pod runs (`python -m ml.<stage>`); images.ml_stage in plugins/mlops/platform.yaml.
# `docker build -f docker/ml-stage.Dockerfile -t ml-stage .` from the repository root.
#
# GPU: the xgboost wheel for Linux x86-64 is built with CUDA and needs only the NVIDIA driver, which the
# NVIDIA container runtime mounts from the node; NCCL comes from its pip dependency. No CUDA base image needed.
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS builder
COPY --from=ghcr.io/astral-sh/uv:0.13.9 /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never
WORKDIR /app
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=bind,source=uv.lock,target=uv.lock \
    --mount=type=bind,source=pyproject.toml,target=pyproject.toml \
    uv sync --frozen --no-default-groups --group distributed --no-install-project

# The release stage (python -m ml.release) runs Helm against the cluster; the version is the Makefile's HELM_VERSION.
FROM alpine/helm:3.19.0 AS helm

FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime
ARG APP_UID=10001
RUN groupadd --gid "${APP_UID}" app \
    && useradd --uid "${APP_UID}" --gid app --no-create-home --shell /usr/sbin/nologin app
WORKDIR /app
COPY --from=builder /app/.venv /app/.venv
COPY contract/ /app/contract/
COPY ml/ /app/ml/
COPY --from=helm /usr/bin/helm /usr/local/bin/helm
# The chart the release stage installs, at the path platform.yaml gives relative to the working directory.
COPY k8s/helm/ /app/k8s/helm/
# The pod's root filesystem is read-only: HOME and caches point at its writable /tmp volume.
ENV PATH="/app/.venv/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER ${APP_UID}:${APP_UID}
# A pod is one stage run, not a server: the health of the run is its exit code.
HEALTHCHECK NONE
ENTRYPOINT ["python", "-m"]
CMD ["ml.prepare", "--help"]
