# syntax=docker/dockerfile:1.7
# Airflow for docker-compose.yaml (and the MLflow server there): the official image plus the exact versions of
# uv.lock's project and `airflow` groups, so tasks run the stages in the local pod runtime with the same
# libraries as a workstation, and MLflow's server matches its clients.
# `docker build -f docker/airflow.Dockerfile -t airflow-mlops/airflow .` from the repository root.
ARG AIRFLOW_VERSION=3.3.2
ARG PYTHON_VERSION=3.11

FROM ghcr.io/astral-sh/uv:0.13.9 AS uv

FROM apache/airflow:${AIRFLOW_VERSION}-python${PYTHON_VERSION}
COPY --from=uv /uv /usr/local/bin/uv
# Pinned by the lock, installed as Airflow's own docs recommend for extending its image (pip, as the airflow user).
RUN --mount=type=bind,source=uv.lock,target=/tmp/lock/uv.lock \
    --mount=type=bind,source=pyproject.toml,target=/tmp/lock/pyproject.toml \
    uv export --frozen --no-default-groups --group airflow --no-hashes --no-emit-project \
        --project /tmp/lock --output-file /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt
# What the local pod runtime runs (MLOPS_LOCAL_WORKDIR): the stages, the contract, and the embedded stand-ins
# (the local `helm` and rollouts controller) with the chart they release; dags/ and plugins/ are mounted.
COPY contract/ /opt/airflow/project/contract/
COPY ml/ /opt/airflow/project/ml/
COPY standins/ /opt/airflow/project/standins/
COPY k8s/helm/ /opt/airflow/project/k8s/helm/
ENV MLOPS_LOCAL_WORKDIR=/opt/airflow/project \
    PYTHONPATH=/opt/airflow/project:/opt/airflow/plugins
