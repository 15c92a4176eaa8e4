{{/* The name of every object: the release name when it contains the chart's name. */}}
{{- define "asklepios.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The pods' label, also the Deployment's, PDB's and Service's selector. */}}
{{- define "asklepios.selectorLabels" -}}
app.kubernetes.io/name: {{ default .Chart.Name .Values.nameOverride }}
{{- end -}}

{{/* Labels of every object. hack/render-k8s.py drops the Helm-only ones (instance,
managed-by, helm.sh/chart) from k8s/, which kustomize applies. */}}
{{- define "asklepios.labels" -}}
{{ include "asklepios.selectorLabels" . }}
app.kubernetes.io/component: node-healer
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* ASKLEPIOS_NAMESPACE: the Lease, the records and the fencing Secret live here. */}}
{{- define "asklepios.namespace" -}}
{{- default .Release.Namespace .Values.settings.namespace -}}
{{- end -}}

{{/* The ServiceAccount as an RBAC subject. */}}
{{- define "asklepios.subject" -}}
- kind: ServiceAccount
  name: {{ include "asklepios.fullname" . }}
  namespace: {{ .Release.Namespace }}
{{- end -}}

{{- define "asklepios.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* A setting's value as the string the variable holds: "60", "false", "50%". */}}
{{- define "asklepios.str" -}}
{{- if kindIs "float64" . -}}{{- int64 . -}}{{- else -}}{{- toString . -}}{{- end -}}
{{- end -}}

{{/* ASKLEPIOS_FENCING: `fencing: off` unquoted is YAML's false, which means off too. */}}
{{- define "asklepios.fencingValue" -}}
{{- $v := .Values.settings.fencing -}}
{{- if and (kindIs "bool" $v) (not $v) -}}off{{- else -}}{{- toString $v -}}{{- end -}}
{{- end -}}

{{/* Fencing is on unless the setting says off (bad values are refused by Asklepios). */}}
{{- define "asklepios.fencing" -}}
{{- if ne (include "asklepios.fencingValue" .) "off" -}}true{{- end -}}
{{- end -}}
