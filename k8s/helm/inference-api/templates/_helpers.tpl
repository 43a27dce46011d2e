{{/* Names, labels and image of the chart, defined once and included by every template. */}}

{{- define "inference-api.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The object name prefix: "<release>-<chart>", or the release name when it already contains the chart's. */}}
{{- define "inference-api.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "inference-api.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels: stable for the release's lifetime (a selector cannot change). */}}
{{- define "inference-api.selectorLabels" -}}
app.kubernetes.io/name: {{ include "inference-api.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of every object, less the component. */}}
{{- define "inference-api.commonLabels" -}}
helm.sh/chart: {{ include "inference-api.chart" . }}
{{ include "inference-api.selectorLabels" . }}
app.kubernetes.io/version: {{ include "inference-api.imageTag" . | quote }}
app.kubernetes.io/part-of: airflow-mlops
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "inference-api.labels" -}}
{{ include "inference-api.commonLabels" . }}
app.kubernetes.io/component: inference-api
{{- end }}

{{/*
Annotations of the Rollout and the Deployment: the scanner findings the workload keeps on purpose, each with its
reason (checkov reads them; `make k8s-check` scans the chart rendered as a Deployment, the same pod template).
*/}}
{{- define "inference-api.scanJustifications" -}}
checkov.io/skip1: CKV_K8S_43=Releases name the image by a tag per build (CI deploys image.tag set to the commit SHA) and the model by a pinned version; the chart ships before any image digest exists.
{{- end }}

{{- define "inference-api.imageTag" -}}
{{- .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "inference-api.image" -}}
{{- printf "%s:%s" .Values.image.repository (include "inference-api.imageTag" .) }}
{{- end }}

{{- define "inference-api.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "inference-api.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "inference-api.isRollout" -}}
{{- if eq .Values.workload.kind "rollout" }}true{{ end }}
{{- end }}

{{- define "inference-api.isCanary" -}}
{{- if and (include "inference-api.isRollout" .) (eq .Values.workload.strategy "canary") }}true{{ end }}
{{- end }}

{{/* The Service carrying the new model's traffic: "-canary" (canary) or "-preview" (blue-green). */}}
{{- define "inference-api.newServiceName" -}}
{{- if eq .Values.workload.strategy "canary" }}
{{- printf "%s-canary" (include "inference-api.fullname" .) }}
{{- else }}
{{- printf "%s-preview" (include "inference-api.fullname" .) }}
{{- end }}
{{- end }}

{{/* Label selector of the API's series in Prometheus (as the ServiceMonitor scrapes them). */}}
{{- define "inference-api.targetSelector" -}}
namespace="{{ .Release.Namespace }}",service="{{ include "inference-api.fullname" . }}-metrics"
{{- end }}

{{/* The same, narrowed to the scoring endpoint the canary analysis replays and compares. */}}
{{- define "inference-api.seriesSelector" -}}
{{ include "inference-api.targetSelector" . }},path="/predict"
{{- end }}

{{/* The same, over every path that scores (the API's own record, MLflow's and the Open Inference Protocol's):
  what the SLOs count (ml/serve/metrics.py SCORING_PATHS; a test holds them equal). */}}
{{- define "inference-api.sloSelector" -}}
{{ include "inference-api.targetSelector" . }},path=~"/predict|/invocations|/v2/models/[{]name[}]/infer"
{{- end }}

{{/* The registered model of a pinned model URI (models:/<name>/<version>). */}}
{{- define "inference-api.registeredModel" -}}
{{- regexReplaceAll "^models:/([^/@]+)/[0-9]+$" .Values.model.uri "${1}" }}
{{- end }}

{{/* The version of a pinned model URI (models:/<name>/<version>). */}}
{{- define "inference-api.modelVersion" -}}
{{- regexReplaceAll "^models:/[^/@]+/([0-9]+)$" .Values.model.uri "${1}" }}
{{- end }}

{{/* "true" when this revision runs the champion check: the check is set and was armed by this very revision. Values
  reused from an earlier revision (an image upgrade with --reset-then-reuse-values) carry that revision's number,
  so the check they inherit is not run: it was about another release's champion. */}}
{{- define "inference-api.championCheckArmed" -}}
{{- $check := .Values.championCheck }}
{{- if and $check.expectedVersion (eq (int $check.revision) (int .Release.Revision)) }}true{{ end }}
{{- end }}

{{/* Cross-field rules, checked at render time with a message rather than at deploy time. */}}
{{- define "inference-api.validate" -}}
{{- $check := .Values.championCheck }}
{{- if and $check.expectedVersion (not (int $check.revision)) }}
{{- fail (printf "championCheck.expectedVersion needs championCheck.revision: the release revision that arms the check (this one is %d)" (int .Release.Revision)) }}
{{- end }}
{{- if and $check.expectedVersion (gt (int $check.revision) (int .Release.Revision)) }}
{{- fail (printf "championCheck.revision %d is ahead of this release's revision %d" (int $check.revision) (int .Release.Revision)) }}
{{- end }}
{{- if and (include "inference-api.championCheckArmed" .) (not (regexMatch "^models:/[^/@]+/[0-9]+$" .Values.model.uri)) }}
{{- fail "championCheck.expectedVersion needs model.uri to pin a version (models:/<name>/<version>)" }}
{{- end }}
{{- if and (include "inference-api.championCheckArmed" .) (not $check.alias) }}
{{- fail "championCheck.expectedVersion needs championCheck.alias: the alias to check" }}
{{- end }}
{{- if and (include "inference-api.isCanary" .) (not .Values.ingress.enabled) }}
{{- fail "workload.strategy=canary splits traffic at the nginx ingress: set ingress.enabled=true (or use blueGreen)" }}
{{- end }}
{{- if and .Values.autoscaling.enabled (lt (int .Values.autoscaling.maxReplicas) (int .Values.autoscaling.minReplicas)) }}
{{- fail "autoscaling.maxReplicas must be at least autoscaling.minReplicas" }}
{{- end }}
{{- if and (include "inference-api.isCanary" .) .Values.analysis.enabled (ge (int .Values.analysis.startingStep) (len .Values.canary.steps)) }}
{{- fail "analysis.startingStep must name one of canary.steps (0-based)" }}
{{- end }}
{{- if and .Values.podDisruptionBudget.enabled (not .Values.autoscaling.enabled) (le (int .Values.workload.replicas) (int .Values.podDisruptionBudget.maxUnavailable)) }}
{{- fail "podDisruptionBudget.maxUnavailable must be below workload.replicas, or every pod may be evicted at once" }}
{{- end }}
{{- end }}
