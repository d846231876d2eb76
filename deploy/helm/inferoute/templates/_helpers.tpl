{{/* Names and labels shared by the templates. */}}

{{- define "inferoute.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "inferoute.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* The picker's Deployment, Service and ConfigMap name. */}}
{{- define "inferoute.eppName" -}}
{{- printf "%s-epp" (include "inferoute.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "inferoute.poolName" -}}
{{- default (include "inferoute.fullname" .) .Values.inferencePool.name -}}
{{- end -}}

{{- define "inferoute.modelName" -}}
{{- default (include "inferoute.poolName" .) .Values.model -}}
{{- end -}}

{{- define "inferoute.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "inferoute.eppName" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "inferoute.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{ include "inferoute.selectorLabels" . }}
{{- end -}}

{{- define "inferoute.selectorLabels" -}}
app.kubernetes.io/name: {{ include "inferoute.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: endpoint-picker
{{- end -}}
