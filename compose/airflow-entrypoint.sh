#!/usr/bin/env bash
# Entrypoint of the Airflow services in docker-compose.yaml: picks the pod runtime, then hands over to the
# image's own entrypoint. With a kubeconfig mounted at KUBECONFIG_FILE (see compose/kind.yaml), stage pods run
# in that cluster through the `kubernetes_default` connection; without one, they run in the local pod runtime.
set -euo pipefail

KUBECONFIG_FILE="${KUBECONFIG_FILE:-/opt/airflow/.kube/config}"
AIRFLOW_ENTRYPOINT="${AIRFLOW_ENTRYPOINT:-/entrypoint}"

if [[ -f "${KUBECONFIG_FILE}" ]]; then
  export AIRFLOW_VAR_MLOPS_POD_RUNTIME=kubernetes
  export AIRFLOW_CONN_KUBERNETES_DEFAULT="{\"conn_type\": \"kubernetes\", \"extra\": {\"kube_config_path\": \"${KUBECONFIG_FILE}\", \"in_cluster\": false}}"
else
  export AIRFLOW_VAR_MLOPS_POD_RUNTIME=local
fi

exec "${AIRFLOW_ENTRYPOINT}" "$@"
