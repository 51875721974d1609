{{- define "tollgate.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "tollgate.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "tollgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tollgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "tollgate.labels" -}}
{{ include "tollgate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "tollgate.webhookSecret" -}}
{{- printf "%s-webhook-tls" (include "tollgate.fullname" .) -}}
{{- end -}}

{{- /* The HostDelegations document tollgate reads (--host-delegations); its sha256 rolls the pods. */ -}}
{{- define "tollgate.hostDelegations" -}}
apiVersion: tollgate.dev/v1alpha1
kind: HostDelegations
undelegatedHosts: {{ .Values.undelegatedHosts | default "OldestClaim" }}
delegations:
{{- range .Values.hostDelegations }}
- namespace: {{ .namespace | toJson }}
  hosts:
  {{- range .hosts }}
  - {{ . | toJson }}
  {{- end }}
{{- end }}
{{ end -}}

{{- /* Whether tollgate gets a delegations file: delegations, or a stricter undelegatedHosts. */ -}}
{{- define "tollgate.hasHostDelegations" -}}
{{- if or .Values.hostDelegations (ne (.Values.undelegatedHosts | default "OldestClaim") "OldestClaim") -}}true{{- end -}}
{{- end -}}

{{- define "tollgate.hostDelegationsPath" -}}
/etc/tollgate/host-delegations/delegations.yaml
{{- end -}}
