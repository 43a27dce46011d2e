{{/* The pod template shared by the Rollout and the Deployment. Meets the "restricted" Pod Security Standard. */}}
{{- define "inference-api.podTemplate" -}}
metadata:
  labels:
    {{- include "inference-api.selectorLabels" . | nindent 4 }}
    app.kubernetes.io/component: inference-api
    app.kubernetes.io/part-of: airflow-mlops
  annotations:
    # A changed model URI or setting changes the pod template, which is what starts a new rollout.
    checksum/config: {{ include (print $.Template.BasePath "/configmap.yaml") . | sha256sum }}
    mlops.airflow-mlops.io/model-uri: {{ .Values.model.uri | quote }}
    {{- with .Values.secrets.vault }}
    {{- if .enabled }}
    # Vault's Agent injector renders the KV v2 secret as KEY="value" lines into /vault/secrets/env (SERVE_ENV_FILE).
    vault.hashicorp.com/agent-inject: "true"
    vault.hashicorp.com/role: {{ .role | quote }}
    vault.hashicorp.com/agent-pre-populate-only: {{ .prePopulateOnly | quote }}
    vault.hashicorp.com/agent-service-account-token-volume-name: vault-token
    vault.hashicorp.com/agent-inject-secret-env: {{ .envPath | quote }}
    vault.hashicorp.com/agent-inject-template-env: |
      {{`{{- with secret "`}}{{ .envPath }}{{`" -}}`}}
      {{`{{- range $key, $value := .Data.data }}`}}
      {{`{{ $key }}={{ $value | toJSON }}`}}
      {{`{{- end }}`}}
      {{`{{- end }}`}}
    {{- end }}
    {{- end }}
    {{- with .Values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "inference-api.serviceAccountName" . }}
  # The API never calls the Kubernetes API; IRSA injects its own projected token.
  automountServiceAccountToken: false
  terminationGracePeriodSeconds: {{ .Values.workload.terminationGracePeriodSeconds }}
  securityContext:
    runAsNonRoot: true
    runAsUser: {{ .Values.runAsUser }}
    runAsGroup: {{ .Values.runAsUser }}
    fsGroup: {{ .Values.runAsUser }}
    seccompProfile:
      type: RuntimeDefault
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- range . }}
    - name: {{ . }}
    {{- end }}
  {{- end }}
  containers:
    - name: api
      image: {{ include "inference-api.image" . | quote }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      ports:
        - name: http
          containerPort: {{ .Values.containerPort }}
          protocol: TCP
      envFrom:
        - configMapRef:
            name: {{ include "inference-api.fullname" . }}
        {{- with .Values.secrets.envFromSecret }}
        - secretRef:
            name: {{ . }}
        {{- end }}
      {{- if or .Values.secrets.adminTokenSecret .Values.secrets.vault.enabled }}
      env:
        {{- with .Values.secrets.adminTokenSecret }}
        - name: SERVE_ADMIN_TOKEN
          valueFrom:
            secretKeyRef:
              name: {{ . }}
              key: {{ $.Values.secrets.adminTokenKey }}
        {{- end }}
        {{- if .Values.secrets.vault.enabled }}
        - name: SERVE_ENV_FILE
          value: /vault/secrets/env
        {{- end }}
      {{- end }}
      # The model loads in the background: /health answers at once, /ready once the model is in memory.
      startupProbe:
        httpGet: {path: /ready, port: http}
        periodSeconds: {{ .Values.probes.periodSeconds }}
        timeoutSeconds: {{ .Values.probes.timeoutSeconds }}
        failureThreshold: {{ div .Values.probes.startupSeconds .Values.probes.periodSeconds | max 1 }}
      livenessProbe:
        httpGet: {path: /health, port: http}
        periodSeconds: {{ .Values.probes.periodSeconds }}
        timeoutSeconds: {{ .Values.probes.timeoutSeconds }}
        failureThreshold: {{ .Values.probes.livenessFailureThreshold }}
      readinessProbe:
        httpGet: {path: /ready, port: http}
        periodSeconds: {{ .Values.probes.periodSeconds }}
        timeoutSeconds: {{ .Values.probes.timeoutSeconds }}
        failureThreshold: 2
      resources:
        {{- toYaml .Values.resources | nindent 8 }}
      securityContext:
        allowPrivilegeEscalation: false
        readOnlyRootFilesystem: true
        runAsNonRoot: true
        capabilities:
          drop: [ALL]
        seccompProfile:
          type: RuntimeDefault
      volumeMounts:
        # MLflow downloads the model here; the root filesystem is read-only.
        - name: tmp
          mountPath: /tmp
  volumes:
    - name: tmp
      emptyDir:
        sizeLimit: 2Gi
    {{- if .Values.secrets.vault.enabled }}
    # The service account token Vault's agent logs in with; the API's own container mounts none.
    - name: vault-token
      projected:
        sources:
          - serviceAccountToken:
              path: token
              expirationSeconds: 600
    {{- end }}
  {{- with .Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- if .Values.topologySpread.enabled }}
  topologySpreadConstraints:
    {{- range list "topology.kubernetes.io/zone" "kubernetes.io/hostname" }}
    - maxSkew: 1
      topologyKey: {{ . }}
      whenUnsatisfiable: ScheduleAnyway
      labelSelector:
        matchLabels:
          {{- include "inference-api.selectorLabels" $ | nindent 10 }}
    {{- end }}
  {{- end }}
{{- end }}
