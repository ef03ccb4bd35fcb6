{{/* Names and labels. */}}
{{- define "circuit-serve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "circuit-serve.fullname" -}}
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

{{- define "circuit-serve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "circuit-serve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "circuit-serve.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "circuit-serve.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: server
{{- end }}

{{- define "circuit-serve.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "circuit-serve.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The model: rendering fails without one. */}}
{{- define "circuit-serve.model" -}}
{{- required "model.name is required: a model directory in the pod (storage.models) or a Hugging Face repo id org/name[@revision] in the HF cache (storage.hfCache), e.g. --set model.name=google/gemma-2-2b" .Values.model.name }}
{{- end }}

{{- define "circuit-serve.metricsServiceName" -}}
{{- printf "%s-metrics" (include "circuit-serve.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "circuit-serve.authSecretName" -}}
{{- default (printf "%s-auth" (include "circuit-serve.fullname" .)) .Values.auth.existingSecret }}
{{- end }}

{{- define "circuit-serve.tlsSecretName" -}}
{{- default (printf "%s-tls" (include "circuit-serve.fullname" .)) .Values.tls.existingSecret }}
{{- end }}

{{/* The port the kubelet's (plaintext) gRPC probes use: the health port when TLS is on. */}}
{{- define "circuit-serve.probePort" -}}
{{- if .Values.tls.enabled }}{{ .Values.tls.healthPort }}{{ else }}{{ .Values.server.grpcPort }}{{ end }}
{{- end }}

{{- define "circuit-serve.terminationGracePeriodSeconds" -}}
{{- add .Values.server.preStopSleepSeconds .Values.server.gracePeriodSeconds .Values.server.terminationMarginSeconds }}
{{- end }}

{{- define "circuit-serve.featuresEnabled" -}}
{{- if or .Values.features.labels .Values.features.watchlist }}true{{ end }}
{{- end }}

{{/* Checks that span values; each fails rendering with what to set. */}}
{{- define "circuit-serve.validate" -}}
{{- if and .Values.tls.enabled (not .Values.tls.existingSecret) (or (not .Values.tls.cert) (not .Values.tls.key)) }}
{{- fail "tls.enabled needs tls.existingSecret (a kubernetes.io/tls Secret) or both tls.cert and tls.key" }}
{{- end }}
{{- if and .Values.tls.enabled .Values.tls.mtls (not .Values.tls.existingSecret) (not .Values.tls.clientCA) }}
{{- fail "tls.mtls needs tls.clientCA (or ca.crt in tls.existingSecret)" }}
{{- end }}
{{- if and .Values.tls.enabled (eq (int .Values.tls.healthPort) (int .Values.server.grpcPort)) }}
{{- fail "tls.healthPort must differ from server.grpcPort (it serves plaintext health beside the TLS port)" }}
{{- end }}
{{- if and .Values.auth.enabled (not .Values.auth.existingSecret) (not .Values.auth.tokens) }}
{{- fail "auth.enabled needs auth.tokens or auth.existingSecret (a Secret with key tokens.yaml)" }}
{{- end }}
{{- if and .Values.redis.enabled (not .Values.redis.host) }}
{{- fail "redis.enabled needs redis.host (the cluster's Redis service)" }}
{{- end }}
{{- if and .Values.keda.enabled (not .Values.keda.prometheusAddress) }}
{{- fail "keda.enabled needs keda.prometheusAddress (the Prometheus KEDA queries)" }}
{{- end }}
{{- if and .Values.storage.models.enabled (not .Values.storage.models.volume) }}
{{- fail "storage.models.enabled needs storage.models.volume (a volume source, e.g. persistentVolumeClaim)" }}
{{- end }}
{{- if and .Values.storage.hfCache.enabled (not .Values.storage.hfCache.volume) }}
{{- fail "storage.hfCache.enabled needs storage.hfCache.volume (a volume source, e.g. persistentVolumeClaim)" }}
{{- end }}
{{- end }}

{{/* `circuit-serve serve` arguments, each from one value. */}}
{{- define "circuit-serve.args" -}}
{{- $v := .Values }}
{{- $args := list "--host" "0.0.0.0" "--port" (toString $v.server.grpcPort) "--metrics-host" "0.0.0.0" "--metrics-port" (toString $v.server.metricsPort) "--grace-period" (toString $v.server.gracePeriodSeconds) "--model" (include "circuit-serve.model" .) "--cache-dir" (printf "%s/circuit-serve" $v.storage.cache.mountPath) }}
{{- with $v.model.servedModelName }}{{ $args = concat $args (list "--served-model-name" .) }}{{ end }}
{{- with $v.model.transcoders }}{{ $args = concat $args (list "--transcoders" .) }}{{ end }}
{{- with $v.model.dtype }}{{ $args = concat $args (list "--dtype" .) }}{{ end }}
{{- with $v.model.maxModelLen }}{{ $args = concat $args (list "--max-model-len" (toString .)) }}{{ end }}
{{- with $v.model.gpuMemoryUtilization }}{{ $args = concat $args (list "--gpu-memory-utilization" (toString .)) }}{{ end }}
{{- with $v.model.tensorParallelSize }}{{ $args = concat $args (list "--tensor-parallel-size" (toString .)) }}{{ end }}
{{- with $v.model.attributionDevice }}{{ $args = concat $args (list "--attribution-device" .) }}{{ end }}
{{- with $v.server.logLevel }}{{ $args = concat $args (list "--log-level" .) }}{{ end }}
{{- with $v.server.reflection }}{{ $args = concat $args (list "--reflection" .) }}{{ end }}
{{- with $v.redis.prefix }}{{ $args = concat $args (list "--redis-prefix" .) }}{{ end }}
{{- if $v.features.labels }}{{ $args = concat $args (list "--labels" "/etc/circuit/features/labels.yaml") }}{{ end }}
{{- if $v.features.watchlist }}{{ $args = concat $args (list "--watchlist" "/etc/circuit/features/watchlist.yaml") }}{{ end }}
{{- if $v.features.monitorAll }}{{ $args = append $args "--monitor-all" }}{{ end }}
{{- if $v.auth.enabled }}{{ $args = concat $args (list "--auth-tokens" "/etc/circuit/auth/tokens.yaml") }}{{ end }}
{{- if $v.tls.enabled }}
{{- $args = concat $args (list "--tls-cert" "/etc/circuit/tls/tls.crt" "--tls-key" "/etc/circuit/tls/tls.key" "--health-port" (toString $v.tls.healthPort)) }}
{{- if $v.tls.mtls }}{{ $args = concat $args (list "--tls-client-ca" "/etc/circuit/tls/ca.crt") }}{{ end }}
{{- end }}
{{- $args = concat $args $v.server.extraArgs }}
{{- toYaml $args }}
{{- end }}

{{/* The Redis URL (env CIRCUIT_REDIS_URL, so the password stays out of the command line); the kubelet
     expands $(REDIS_PASSWORD) from the env entry before it. */}}
{{- define "circuit-serve.redisUrl" -}}
{{- $r := .Values.redis }}
{{- $auth := "" }}
{{- if $r.password.existingSecret }}{{ $auth = printf "%s:$(REDIS_PASSWORD)@" $r.username }}{{ else if $r.username }}{{ $auth = printf "%s@" $r.username }}{{ end }}
{{- printf "%s://%s%s:%v/%v" $r.scheme $auth $r.host $r.port $r.db }}
{{- end }}
