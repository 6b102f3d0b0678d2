{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "token-broker.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: the release name alone when it already contains the chart name. */}}
{{- define "token-broker.fullname" -}}
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

{{- define "token-broker.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "token-broker.selectorLabels" -}}
app.kubernetes.io/name: {{ include "token-broker.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "token-broker.labels" -}}
helm.sh/chart: {{ include "token-broker.chart" . }}
{{ include "token-broker.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: token-broker
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "token-broker.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "token-broker.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "token-broker.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* The generated cache-key Secret, used unless the existing Secret supplies the keys. */}}
{{- define "token-broker.cacheKeysFromExisting" -}}
{{- if and .Values.secrets.existingSecret .Values.secrets.keys.cacheKeys }}true{{ end }}
{{- end }}

{{- define "token-broker.generatedSecretName" -}}
{{- printf "%s-cache-keys" (include "token-broker.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "token-broker.generatesCacheKeys" -}}
{{- if and (not (include "token-broker.cacheKeysFromExisting" .)) .Values.secrets.generateCacheKeys }}true{{ end }}
{{- end }}

{{/* Where the generated Secret is mounted: apart from the existing Secret's files. */}}
{{- define "token-broker.generatedMountPath" -}}
/run/secrets/token-broker-cache-keys
{{- end }}

{{/* Whether the broker gets a Redis URL at all (directly or from the existing Secret). */}}
{{- define "token-broker.hasRedis" -}}
{{- if or .Values.redis.url (and .Values.secrets.existingSecret .Values.secrets.keys.redisUrl) }}true{{ end }}
{{- end }}

{{/* More than one pod can run: PDB, anti-affinity matter; Redis should be set. */}}
{{- define "token-broker.multiReplica" -}}
{{- if or .Values.autoscaling.enabled (gt (int .Values.replicaCount) 1) }}true{{ end }}
{{- end }}
