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

{{/* The picker's Deployment, Service and ConfigMap name: always ends in -epp, so it differs
from the pool's name even for the longest release names. It names a Service, so it must be an
RFC 1035 label (a release called "7b" or "a.b" fails here with a clear message). */}}
{{- define "inferoute.eppName" -}}
{{- $name := printf "%s-epp" (include "inferoute.fullname" . | trunc 59 | trimSuffix "-") -}}
{{- if not (regexMatch "^[a-z]([-a-z0-9]*[a-z0-9])?$" $name) -}}
{{- fail (printf "the picker's Service name %q is not a valid DNS-1035 label (lowercase letters, digits and '-', starting with a letter): use a release name that starts with a letter and has no dots" $name) -}}
{{- end -}}
{{- $name -}}
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

{{/* The packaged policy the picker runs by name (`schedulingConfig.policy`), or "" when the
ConfigMap's picker.yaml holds its config: `custom`, `weights` (the generated scorers), or
`precise.enabled` (the generated scorers with the precise prefix scorer). */}}
{{- define "inferoute.namedPolicy" -}}
{{- $sc := .Values.schedulingConfig -}}
{{- $policy := $sc.policy | default "weights" -}}
{{- if not (or $sc.custom .Values.precise.enabled (eq $policy "weights")) -}}
{{- $policy -}}
{{- end -}}
{{- end -}}
