{{- define "aenv-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "aenv-operator.fullname" -}}
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

{{- define "aenv-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "aenv-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "aenv-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "aenv-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "aenv-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "aenv-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Namespace of EnvInstances (REST API and watch). */}}
{{- define "aenv-operator.instanceNamespace" -}}
{{- default .Release.Namespace .Values.namespace }}
{{- end }}

{{/* Namespace of the instances' Pods (Kubernetes engine). */}}
{{- define "aenv-operator.sandboxNamespace" -}}
{{- default (include "aenv-operator.instanceNamespace" .) .Values.sandboxNamespace }}
{{- end }}

{{- define "aenv-operator.leaderElect" -}}
{{- if or .Values.leaderElection.enabled (gt (int .Values.replicaCount) 1) }}true{{ end }}
{{- end }}

{{/* The Docker socket path when docker.host is unix://PATH, else empty. */}}
{{- define "aenv-operator.dockerSocket" -}}
{{- if hasPrefix "unix://" .Values.docker.host }}{{ trimPrefix "unix://" .Values.docker.host }}{{ end }}
{{- end }}
