# airflow-mlops: every target builds what it needs from nothing (Python 3.11 and make are all it assumes).
#
#   make demo        run the training DAG end to end on the embedded defaults
#   make test        the test suite (what CI runs)
#   make airflow-ui  Airflow (standalone) and MLflow UIs, to trigger runs with the form
#   make bench       pipeline benchmarks (1M rows; 10M rows for prepare)
#   make bench-serve inference API against `mlflow models serve` (needs wrk: installed with apt-get)
#   make serve       the inference API on the registry's champion (ALIAS=challenger for the candidate)

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3.11
UV_VERSION := 0.13.9
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
RUN := $(VENV)/bin/python
LOCAL := $(CURDIR)/.local
MLFLOW_PORT ?= 5000
AIRFLOW_PORT ?= 8080
DEMO_ROWS ?= 200000

# The embedded defaults: Airflow on SQLite, MLflow on loopback, local files, the local pod runtime.
LOCAL_ENV := \
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH \
	AIRFLOW_HOME=$(LOCAL)/airflow \
	AIRFLOW__CORE__DAGS_FOLDER=$(CURDIR)/dags \
	AIRFLOW__CORE__PLUGINS_FOLDER=$(CURDIR)/plugins \
	AIRFLOW__CORE__LOAD_EXAMPLES=False \
	AIRFLOW__API__PORT=$(AIRFLOW_PORT) \
	AIRFLOW__CORE__EXECUTION_API_SERVER_URL=http://127.0.0.1:$(AIRFLOW_PORT)/execution/ \
	AIRFLOW_VAR_MLFLOW_TRACKING_URI=http://127.0.0.1:$(MLFLOW_PORT) \
	AIRFLOW_VAR_MLOPS_DATA_ROOT=$(LOCAL)/data \
	AIRFLOW_VAR_MLOPS_POD_RUNTIME=local \
	PYTHONPATH=$(CURDIR):$(CURDIR)/plugins

ALIAS ?= champion

.PHONY: help install demo airflow-ui mlflow-up mlflow-down test test-fast lint browser bench bench-serve serve clean

help:
	@grep -E '^#   make' Makefile | sed 's/^#   //'

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

# The environment is rebuilt only when the lock changes; `--frozen` installs exactly what uv.lock pins.
$(VENV)/.synced: uv.lock pyproject.toml | $(UV)
	UV_PYTHON_DOWNLOADS=never $(UV) sync --frozen --python $(PYTHON)
	touch $@

install: $(VENV)/.synced

$(LOCAL)/airflow/airflow.db: | install
	mkdir -p $(LOCAL)/airflow
	$(LOCAL_ENV) $(VENV)/bin/airflow db migrate > $(LOCAL)/airflow/migrate.log

mlflow-up: install
	$(RUN) -m scripts.local_mlflow start --root $(LOCAL)/mlflow --port $(MLFLOW_PORT)

mlflow-down:
	-$(RUN) -m scripts.local_mlflow stop --root $(LOCAL)/mlflow

demo: install $(LOCAL)/airflow/airflow.db mlflow-up
	$(LOCAL_ENV) $(RUN) -m scripts.demo --rows $(DEMO_ROWS)

airflow-ui: install $(LOCAL)/airflow/airflow.db mlflow-up
	@echo "MLflow UI:  http://127.0.0.1:$(MLFLOW_PORT)"
	@echo "Airflow UI: http://127.0.0.1:$(AIRFLOW_PORT) (user and password in $(LOCAL)/airflow/simple_auth_manager_passwords.json.generated)"
	$(LOCAL_ENV) $(VENV)/bin/airflow standalone

test: install lint browser
	$(RUN) -m pytest

test-fast: install
	$(RUN) -m pytest -m "not e2e and not browser"

# Debian's Chromium for the browser test (Playwright drives it; Playwright's own browser download is not used).
browser: /usr/bin/chromium
/usr/bin/chromium:
	apt-get install -y --no-install-recommends chromium || (apt-get update && apt-get install -y --no-install-recommends chromium)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: install
	PYTHONPATH=$(CURDIR):$(CURDIR)/plugins $(RUN) -m benchmarks.bench_pipeline

bench-serve: install
	command -v wrk >/dev/null || apt-get install -y wrk || (apt-get update && apt-get install -y wrk)
	PYTHONPATH=$(CURDIR):$(CURDIR)/plugins $(RUN) -m benchmarks.bench_serve

serve: install mlflow-up
	MLFLOW_TRACKING_URI=http://127.0.0.1:$(MLFLOW_PORT) PYTHONPATH=$(CURDIR):$(CURDIR)/plugins \
		$(RUN) -m scripts.serve --alias $(ALIAS)

clean: mlflow-down
	rm -rf $(LOCAL) $(VENV) $(TOOLS)
